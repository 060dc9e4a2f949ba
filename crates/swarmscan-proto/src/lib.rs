//! Pure protocol code: codecs and state machines. No sockets, no threads, no clock
//! (time, where needed, is passed in by the caller).

pub mod bencode;
pub mod bttest;
pub mod client_id;
pub mod dht;
pub mod hex;
pub mod http;
pub mod krpc;
pub mod magnet;
pub mod metainfo;
pub mod mse;
pub mod peer_wire;
pub mod probe;
pub mod session;
pub mod sink_classify;
pub mod tracker_http;
pub mod tracker_udp;
pub mod utp;
