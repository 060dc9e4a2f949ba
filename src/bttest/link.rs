//! The control connection: framed messages out, a reader thread in.
//!
//! The reader thread lets a side learn, while its own end of a flow is still running, that
//! the other side's end is over (`FlowEnd`): after a reset only the side that saw it knows.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::proto::bttest::{Control, ControlReader};

/// One control connection.
pub struct ControlLink {
    stream: TcpStream,
    peer: SocketAddr,
    incoming: Receiver<Result<Control, String>>,
    /// 1 + the index of the latest `FlowEnd` the other side sent (0: none yet).
    peer_flow_end: Arc<AtomicU32>,
}

impl ControlLink {
    /// Wraps a connected stream and starts its reader thread (it ends when the connection
    /// does: at the latest when this link is dropped).
    pub fn new(stream: TcpStream) -> std::io::Result<ControlLink> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let mut reading = stream.try_clone()?;
        let (tx, incoming) = crossbeam_channel::bounded(64);
        let peer_flow_end = Arc::new(AtomicU32::new(0));
        let flow_end = Arc::clone(&peer_flow_end);
        std::thread::Builder::new()
            .name("bttest-control".into())
            .spawn(move || {
                let mut reader = ControlReader::new();
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match reading.read(&mut buf) {
                        Ok(0) => {
                            let _ = tx.send(Err("the control connection was closed".into()));
                            return;
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(Err(format!("control connection: {e}")));
                            return;
                        }
                    };
                    reader.feed(&buf[..n]);
                    loop {
                        match reader.next_message() {
                            Ok(None) => break,
                            Ok(Some(Control::FlowEnd { index })) => {
                                flow_end.store(u32::from(index) + 1, Ordering::Release)
                            }
                            Ok(Some(msg)) => {
                                if tx.send(Ok(msg)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(format!("control connection: {e}")));
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(ControlLink {
            stream,
            peer,
            incoming,
            peer_flow_end,
        })
    }

    /// The other side's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &Control) -> Result<(), String> {
        self.stream
            .write_all(&msg.to_frame())
            .map_err(|e| format!("control connection to {}: {e}", self.peer))
    }

    /// The next message other than `FlowEnd`, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration, waiting_for: &str) -> Result<Control, String> {
        match self.incoming.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "{} sent no {waiting_for} within {} s",
                self.peer,
                timeout.as_secs()
            )),
            Err(RecvTimeoutError::Disconnected) => Err("the control connection was closed".into()),
        }
    }

    /// Whether the other side said its end of flow `index` is over.
    pub fn peer_ended(&self, index: u16) -> bool {
        self.peer_flow_end.load(Ordering::Acquire) == u32::from(index) + 1
    }

    /// Waits until the other side's end of flow `index` is over; false on timeout.
    pub fn wait_peer_end(&self, index: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.peer_ended(index) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for ControlLink {
    fn drop(&mut self) {
        // Ends the reader thread's blocking read.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
