//! The client side: one request to a running writer's control socket.

use super::{addressable, server::read_line, socket_path, MAX_RESPONSE_BYTES};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use vdisk_engine::Disk;

/// How long a client waits for an answer (snapshot operations take milliseconds; later
/// operations such as a merge may take longer).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long to retry when the bundle is locked but nobody answers on the socket (a
/// short-lived writer such as `vdisk write` holds the lock).
const LOCKED_RETRY: Duration = Duration::from_secs(3);

/// Why the socket could not be reached.
#[derive(Debug)]
enum Unreachable {
    /// No socket file.
    Missing,
    /// A socket file nobody listens on.
    Stale,
}

fn connect(bundle: &Path) -> Result<std::result::Result<UnixStream, Unreachable>> {
    let path = socket_path(bundle);
    let (addr, _dir) = match addressable(&path) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(Unreachable::Missing)),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    match UnixStream::connect(&addr) {
        Ok(s) => Ok(Ok(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Err(Unreachable::Missing)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Err(Unreachable::Stale)),
        Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
}

fn unreachable_message(bundle: &Path, why: &Unreachable) -> String {
    let path = socket_path(bundle);
    match why {
        Unreachable::Missing => format!(
            "{} is locked by another writer, which has no control socket ({} is missing): \
             wait for that command to finish",
            bundle.display(),
            path.display()
        ),
        Unreachable::Stale => format!(
            "{} is locked by another writer, but nobody listens on its control socket {} \
             (a stale socket left by a writer that died; the lock holder is another command)",
            bundle.display(),
            path.display()
        ),
    }
}

fn request(
    stream: UnixStream,
    op: &str,
    mut args: Map<String, Value>,
) -> Result<Map<String, Value>> {
    stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    stream.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
    args.insert("op".into(), Value::String(op.to_string()));
    let mut line = serde_json::to_vec(&Value::Object(args))?;
    line.push(b'\n');
    let mut w = &stream;
    w.write_all(&line).context("sending the request")?;
    w.flush()?;
    let mut r = BufReader::new(&stream);
    let resp = read_line(&mut r, MAX_RESPONSE_BYTES)
        .context("reading the response")?
        .ok_or_else(|| anyhow!("the writer closed the connection without answering"))?;
    let v: Value = serde_json::from_slice(&resp).context("the response is not JSON")?;
    let Value::Object(mut m) = v else {
        bail!("the response is not a JSON object");
    };
    match m.remove("ok") {
        Some(Value::Bool(true)) => Ok(m),
        Some(Value::Bool(false)) => {
            let msg = m
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error message");
            bail!("{msg}")
        }
        _ => bail!("the response has no \"ok\" member"),
    }
}

/// Who carries out a write operation on a bundle: this process (the bundle was free) or the
/// long-lived writer holding it, through its control socket.
pub enum WriterAccess {
    /// Opened here.
    Local(Box<Disk>),
    /// Locked by a writer that answers on its control socket.
    Remote(Remote),
}

/// A connection to the control socket of the writer holding a bundle.
pub struct Remote {
    bundle: std::path::PathBuf,
    stream: UnixStream,
}

impl Remote {
    /// Sends `{"op": op, ...args}` and returns the response's members when it says
    /// `"ok": true`, its `error` otherwise.
    pub fn call(self, op: &str, args: Map<String, Value>) -> Result<Map<String, Value>> {
        let path = socket_path(&self.bundle);
        request(self.stream, op, args).with_context(|| format!("control socket {}", path.display()))
    }
}

impl WriterAccess {
    /// Opens the bundle for writing, or finds the writer holding it. When the lock is held
    /// by a writer without a control socket, retries for a few seconds before giving up.
    pub fn open(bundle: &Path) -> Result<WriterAccess> {
        let deadline = Instant::now() + LOCKED_RETRY;
        loop {
            match crate::open::disk(bundle) {
                Ok(d) => return Ok(WriterAccess::Local(Box::new(d))),
                Err(e) if is_locked(&e) => {}
                Err(e) => return Err(e),
            }
            match connect(bundle)? {
                Ok(stream) => {
                    return Ok(WriterAccess::Remote(Remote {
                        bundle: bundle.to_path_buf(),
                        stream,
                    }))
                }
                Err(why) if Instant::now() >= deadline => {
                    bail!("{}", unreachable_message(bundle, &why))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// True when `e` says another process holds the writer lock.
pub fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<vdisk_engine::Error>(),
            Some(vdisk_engine::Error::Locked { .. })
        )
    })
}
