//! Shared helpers of the integration tests: an in-process server and a raw NBD client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vdisk_nbd::proto::{cmd, opt, rep, IHAVEOPT, NBDMAGIC, OPTION_REPLY_MAGIC};
use vdisk_nbd::{ExportProvider, ListenAddr, Server, ServerConfig, ServerError, ShutdownSignal};

/// A server running on 127.0.0.1 with a free port, in a background thread.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: ShutdownSignal,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    pub fn start(provider: Arc<dyn ExportProvider>) -> TestServer {
        TestServer::with_config(provider, ServerConfig::default())
    }

    pub fn with_config(provider: Arc<dyn ExportProvider>, config: ServerConfig) -> TestServer {
        let server = Server::bind_tcp("127.0.0.1:0").expect("bind");
        let ListenAddr::Tcp(addr) = server.local_addr().clone() else {
            panic!("not tcp")
        };
        let shutdown = ShutdownSignal::new();
        let sd = shutdown.clone();
        let handle = std::thread::spawn(move || server.run(provider, config, sd));
        TestServer {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    /// `nbd://127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("nbd://{}/{}", self.addr, name)
    }

    /// Triggers the shutdown and waits for `run` to return.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown.trigger();
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("server thread")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.shutdown.trigger();
            let _ = h.join();
        }
    }
}

/// Runs a command, asserts it succeeded, returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns (success, stdout + stderr).
pub fn try_run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().expect("spawn");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// One option reply.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// One reply message of the transmission phase.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple {
        error: u32,
        handle: u64,
    },
    Chunk {
        flags: u16,
        kind: u16,
        handle: u64,
        payload: Vec<u8>,
    },
}

/// A raw NBD client that lets tests send anything.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient { stream }
    }

    /// Reads the greeting and sends client flags (fixed newstyle + no zeroes).
    pub fn greet(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::connect(addr);
        let mut g = [0u8; 18];
        c.stream.read_exact(&mut g).expect("greeting");
        assert_eq!(&g[0..8], &NBDMAGIC.to_be_bytes());
        assert_eq!(&g[8..16], &IHAVEOPT.to_be_bytes());
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        c.send(&3u32.to_be_bytes());
        c
    }

    /// Greets, negotiates structured replies and `base:allocation`, then GOes to `name`.
    /// Returns the client, the export size and the transmission flags.
    pub fn open(addr: SocketAddr, name: &str, structured: bool) -> (RawClient, u64, u16) {
        let mut c = RawClient::greet(addr);
        if structured {
            c.option(opt::STRUCTURED_REPLY, &[]);
            assert_eq!(c.opt_reply().kind, rep::ACK);
            let mut data = Vec::new();
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(&1u32.to_be_bytes());
            data.extend_from_slice(&15u32.to_be_bytes());
            data.extend_from_slice(b"base:allocation");
            c.option(opt::SET_META_CONTEXT, &data);
            assert_eq!(c.opt_reply().kind, rep::META_CONTEXT);
            assert_eq!(c.opt_reply().kind, rep::ACK);
        }
        let (size, flags) = c.go(name).expect("GO succeeds");
        (c, size, flags)
    }

    /// Sends GO; returns (size, flags) on ACK, or the error reply type.
    pub fn go(&mut self, name: &str) -> Result<(u64, u16), u32> {
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(opt::GO, &data);
        let mut export = None;
        loop {
            let r = self.opt_reply();
            match r.kind {
                rep::INFO => {
                    let kind = u16::from_be_bytes([r.data[0], r.data[1]]);
                    if kind == 0 {
                        let size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                        let flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                        export = Some((size, flags));
                    }
                }
                rep::ACK => return Ok(export.expect("NBD_INFO_EXPORT before ACK")),
                err => return Err(err),
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut out = Vec::new();
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        self.send(&out);
    }

    pub fn opt_reply(&mut self) -> OptReply {
        let mut h = [0u8; 20];
        self.stream.read_exact(&mut h).expect("option reply header");
        assert_eq!(&h[0..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut data)
            .expect("option reply data");
        OptReply {
            option: u32::from_be_bytes(h[8..12].try_into().unwrap()),
            kind: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            data,
        }
    }

    pub fn request(&mut self, command: u16, flags: u16, handle: u64, offset: u64, len: u32) {
        let header = vdisk_nbd::request::encode_request(flags, command, handle, offset, len);
        self.send(&header);
    }

    pub fn write(&mut self, handle: u64, offset: u64, data: &[u8], flags: u16) {
        self.request(cmd::WRITE, flags, handle, offset, data.len() as u32);
        self.send(data);
    }

    /// Reads one reply message; for a simple reply to a successful READ, `read_len` bytes
    /// of data follow and are returned as a pseudo-chunk payload by `read_simple_data`.
    pub fn reply(&mut self) -> Reply {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic).expect("reply magic");
        match u32::from_be_bytes(magic) {
            0x6744_6698 => {
                let mut rest = [0u8; 12];
                self.stream.read_exact(&mut rest).expect("simple reply");
                Reply::Simple {
                    error: u32::from_be_bytes(rest[0..4].try_into().unwrap()),
                    handle: u64::from_be_bytes(rest[4..12].try_into().unwrap()),
                }
            }
            0x668e_33ef => {
                let mut rest = [0u8; 16];
                self.stream.read_exact(&mut rest).expect("chunk header");
                let len = u32::from_be_bytes(rest[12..16].try_into().unwrap());
                let mut payload = vec![0u8; len as usize];
                self.stream.read_exact(&mut payload).expect("chunk payload");
                Reply::Chunk {
                    flags: u16::from_be_bytes(rest[0..2].try_into().unwrap()),
                    kind: u16::from_be_bytes(rest[2..4].try_into().unwrap()),
                    handle: u64::from_be_bytes(rest[4..12].try_into().unwrap()),
                    payload,
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    pub fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data).expect("read data");
        data
    }

    /// Reads chunks of one structured reply until DONE.
    pub fn structured(&mut self, handle: u64) -> Vec<(u16, Vec<u8>)> {
        let mut chunks = Vec::new();
        loop {
            match self.reply() {
                Reply::Chunk {
                    flags,
                    kind,
                    handle: h,
                    payload,
                } => {
                    assert_eq!(h, handle);
                    chunks.push((kind, payload));
                    if flags & 1 != 0 {
                        return chunks;
                    }
                }
                other => panic!("expected a chunk, got {other:?}"),
            }
        }
    }

    /// Error code of a reply that must be an error (simple or structured).
    pub fn error_of(&mut self, handle: u64) -> u32 {
        match self.reply() {
            Reply::Simple { error, handle: h } => {
                assert_eq!(h, handle);
                error
            }
            Reply::Chunk {
                kind,
                handle: h,
                payload,
                flags,
            } => {
                assert_eq!(h, handle);
                assert_eq!(kind, 0x8001, "expected an error chunk");
                assert_eq!(flags & 1, 1);
                u32::from_be_bytes(payload[0..4].try_into().unwrap())
            }
        }
    }

    /// True when the server closed the connection (EOF or reset) within the read timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    /// Assembles a structured READ reply into bytes (holes as zeroes); checks coverage.
    pub fn read_structured(&mut self, handle: u64, offset: u64, len: usize) -> (Vec<u8>, usize) {
        let mut data = vec![0xeeu8; len];
        let mut covered = 0usize;
        let mut holes = 0;
        for (kind, payload) in self.structured(handle) {
            match kind {
                0 => {}
                1 => {
                    let off = u64::from_be_bytes(payload[0..8].try_into().unwrap());
                    let start = (off - offset) as usize;
                    data[start..start + payload.len() - 8].copy_from_slice(&payload[8..]);
                    covered += payload.len() - 8;
                }
                2 => {
                    let off = u64::from_be_bytes(payload[0..8].try_into().unwrap());
                    let n = u32::from_be_bytes(payload[8..12].try_into().unwrap()) as usize;
                    let start = (off - offset) as usize;
                    data[start..start + n].fill(0);
                    covered += n;
                    holes += 1;
                }
                other => panic!("unexpected chunk type {other}"),
            }
        }
        assert_eq!(covered, len, "chunks must cover the read exactly");
        (data, holes)
    }
}
