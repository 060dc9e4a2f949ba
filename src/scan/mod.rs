//! Scan policy: peer tables, revisits, discovery schedule, routing. (to be written)
