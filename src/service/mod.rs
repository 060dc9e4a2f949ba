//! Running as a service: systemd notification and watchdog ([`notify`]), thread heartbeats
//! ([`health`]), the Prometheus metrics endpoint ([`prometheus`]), and one scan per database
//! ([`instance`]: the `<database>.pid` lock that `add` and `remove` wake the scan through).

pub mod health;
pub mod instance;
pub mod notify;
pub mod prometheus;
