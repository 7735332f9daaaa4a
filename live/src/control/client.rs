//! The client side: typed requests to a running writer's control socket.

use super::protocol::{ErrorCode, Request};
use super::server::read_line;
use super::{addressable, socket_path, ControlError, MAX_RESPONSE_BYTES};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::io::{BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_engine::{Disk, Store};

/// How long a client waits for an answer (snapshot operations take milliseconds; a merge or
/// compaction of a large layer longer).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long [`WriterAccess::open`] retries when the bundle is locked but nobody answers on
/// the socket (a short-lived writer such as `vdisk write` holds the lock).
pub const LOCKED_RETRY: Duration = Duration::from_secs(3);

/// A connection to a control socket.
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
}

/// Why a socket could not be reached.
enum Unreachable {
    Missing,
    Stale,
}

fn try_connect(path: &Path) -> Result<Result<UnixStream, Unreachable>, ControlError> {
    let io_err = |op, source| ControlError::Socket {
        path: path.to_path_buf(),
        op,
        source,
    };
    let (addr, _dir) = match addressable(path) {
        Ok(a) => a,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Err(Unreachable::Missing)),
        Err(e) => return Err(io_err("address", e)),
    };
    match UnixStream::connect(&addr) {
        Ok(s) => Ok(Ok(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Err(Unreachable::Missing)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Err(Unreachable::Stale)),
        Err(e) => Err(io_err("connect", e)),
    }
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ControlError> {
        match try_connect(path)? {
            Ok(stream) => Ok(Client {
                path: path.to_path_buf(),
                stream,
            }),
            Err(Unreachable::Missing) => Err(ControlError::Socket {
                path: path.to_path_buf(),
                op: "connect",
                source: ErrorKind::NotFound.into(),
            }),
            Err(Unreachable::Stale) => Err(ControlError::Socket {
                path: path.to_path_buf(),
                op: "connect",
                source: ErrorKind::ConnectionRefused.into(),
            }),
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `req` and returns the response's members when it says `"ok": true`.
    pub fn call(&mut self, req: &Request) -> Result<Map<String, Value>, ControlError> {
        let io_err = |op, source| ControlError::Socket {
            path: self.path.clone(),
            op,
            source,
        };
        let protocol = |reason: &str| ControlError::Protocol {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        self.stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .and_then(|()| self.stream.set_write_timeout(Some(RESPONSE_TIMEOUT)))
            .map_err(|e| io_err("set timeouts", e))?;
        let mut line = serde_json::to_vec(req).map_err(|e| protocol(&e.to_string()))?;
        line.push(b'\n');
        (&self.stream)
            .write_all(&line)
            .and_then(|()| (&self.stream).flush())
            .map_err(|e| io_err("send the request", e))?;
        let mut r = BufReader::new(&self.stream);
        let resp = read_line(&mut r, MAX_RESPONSE_BYTES)
            .map_err(|e| io_err("read the response", e))?
            .ok_or_else(|| protocol("the writer closed the connection without answering"))?;
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&resp) else {
            return Err(protocol("the response is not a JSON object"));
        };
        match m.remove("ok") {
            Some(Value::Bool(true)) => Ok(m),
            Some(Value::Bool(false)) => {
                let message = m
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error message")
                    .to_string();
                let code = m
                    .get("code")
                    .cloned()
                    .and_then(|c| serde_json::from_value(c).ok())
                    .unwrap_or(ErrorCode::Other);
                Err(ControlError::Remote { code, message })
            }
            _ => Err(protocol("the response has no \"ok\" member")),
        }
    }

    /// Sends `req` and decodes its result (the member [`Request::result_member`] names).
    pub fn request<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ControlError> {
        let mut m = self.call(req)?;
        let member = req.result_member().ok_or_else(|| ControlError::Protocol {
            path: self.path.clone(),
            reason: format!("{} has no result", req.name()),
        })?;
        let v = m.remove(member).ok_or_else(|| ControlError::Protocol {
            path: self.path.clone(),
            reason: format!("the response to {} has no {member:?}", req.name()),
        })?;
        serde_json::from_value(v).map_err(|e| ControlError::Protocol {
            path: self.path.clone(),
            reason: format!("the {member:?} of {}: {e}", req.name()),
        })
    }
}

/// Who carries out a write operation on a bundle: this process (the bundle was free) or the
/// long-lived writer holding it, through its control socket.
pub enum WriterAccess {
    /// Opened here.
    Local(Box<Disk>),
    /// Locked by a writer that answers on its control socket.
    Remote(Client),
}

impl WriterAccess {
    /// Opens the bundle for writing, or finds the writer holding it. When the lock is held
    /// by a writer without a control socket, retries for [`LOCKED_RETRY`] before giving up.
    pub fn open(store: Arc<dyn Store>) -> Result<WriterAccess, ControlError> {
        let deadline = Instant::now() + LOCKED_RETRY;
        loop {
            match Disk::open(Arc::clone(&store)) {
                Ok(d) => return Ok(WriterAccess::Local(Box::new(d))),
                Err(vdisk_engine::Error::Locked { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let path = socket_path(store.as_ref())?;
            match try_connect(&path)? {
                Ok(stream) => return Ok(WriterAccess::Remote(Client { path, stream })),
                Err(why) if Instant::now() >= deadline => {
                    let location = store.location();
                    return Err(match why {
                        Unreachable::Missing => ControlError::NoSocket { location, path },
                        Unreachable::Stale => ControlError::Stale { location, path },
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}
