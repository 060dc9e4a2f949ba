//! Running as a service: systemd notification and watchdog ([`notify`]), thread heartbeats
//! ([`health`]) and the Prometheus metrics endpoint ([`prometheus`]).

pub mod health;
pub mod notify;
pub mod prometheus;
