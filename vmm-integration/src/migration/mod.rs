//! Moving a running VM between hosts (format-spec/migration.md): the frames (`wire`), the
//! source (`send`), the destination (`recv`) and the standby that receives a VM's
//! snapshots as they are taken (`replica`).

pub mod recv;
pub mod replica;
pub mod send;
pub mod wire;

use crate::error::VmmError;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;
use wire::{Message, WireError};

pub(crate) fn peer_err(peer: &str, e: impl std::fmt::Display) -> VmmError {
    VmmError::Peer {
        peer: peer.to_string(),
        reason: e.to_string(),
    }
}

/// Counts what goes out.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One protocol connection: buffered both ways, every wait bounded by the stream timeouts.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: BufWriter<Counting<TcpStream>>,
    /// The peer's address, for errors.
    pub peer: String,
}

impl Conn {
    /// Connect to `addr` (`host:port`) within `timeout`; reads and writes time out too.
    pub fn connect(addr: &str, timeout: Duration) -> crate::Result<Conn> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| peer_err(addr, format!("resolve: {e}")))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout.min(Duration::from_secs(10))) {
                Ok(s) => return Conn::new(s, addr, timeout),
                Err(e) => last = Some(e),
            }
        }
        Err(peer_err(
            addr,
            format!(
                "connect: {}",
                last.map(|e| e.to_string())
                    .unwrap_or_else(|| "no address".into())
            ),
        ))
    }

    /// Wrap an accepted or connected stream.
    pub fn new(s: TcpStream, peer: &str, timeout: Duration) -> crate::Result<Conn> {
        let io = |e: std::io::Error| peer_err(peer, e);
        s.set_nodelay(true).map_err(io)?;
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        let w = s.try_clone().map_err(io)?;
        Ok(Conn {
            r: BufReader::with_capacity(1 << 20, s),
            w: BufWriter::with_capacity(4 << 20, Counting { inner: w, n: 0 }),
            peer: peer.to_string(),
        })
    }

    /// Queue one message.
    pub fn send(&mut self, m: &Message) -> Result<(), WireError> {
        m.write(&mut self.w).map_err(WireError::Io)
    }

    /// Queue a PAGES message straight from guest memory (no copy).
    pub fn send_pages(&mut self, gpa: u64, data: &[u8]) -> Result<(), WireError> {
        wire::write_frame(&mut self.w, wire::ty::PAGES, &[&gpa.to_le_bytes(), data])
            .map_err(WireError::Io)
    }

    /// Push out what is queued.
    pub fn flush(&mut self) -> Result<(), WireError> {
        self.w.flush().map_err(WireError::Io)
    }

    /// Read one message (`memory` bounds guest addresses; 0 before HELLO told it).
    pub fn recv(&mut self, memory: u64) -> Result<Message, WireError> {
        wire::read_message(&mut self.r as &mut dyn Read, memory)
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.w.get_ref().n + self.w.buffer().len() as u64
    }

    /// Change the read timeout (a standby waits long for the next snapshot).
    pub fn set_read_timeout(&self, t: Option<Duration>) {
        let _ = self.r.get_ref().set_read_timeout(t);
    }
}
