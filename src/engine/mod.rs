//! io_uring engine: the only code that touches sockets, io_uring and time. (to be written)
