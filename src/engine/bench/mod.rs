//! Probe throughput benchmark (fake swarm, kernel floor, engine run).
