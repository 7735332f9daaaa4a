//! The control socket's listener: owner-only, bounded, stopped and removed on exit. It
//! serves any [`Service`] (one JSON line in, one JSON line out); a [`Writer`] is the
//! bundle's service.

use super::protocol::{parse_request, response, OpError};
use super::{addressable, ControlError, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST_BYTES};
use crate::bundle::Writer;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// What answers on a control socket: one request line in, one response object out.
pub trait Service: Send + Sync + 'static {
    /// Answers one request line (never empty).
    fn answer(&self, line: &[u8]) -> Value;
}

impl Service for Writer {
    fn answer(&self, line: &[u8]) -> Value {
        match parse_request(line) {
            Ok((req, id)) => response(super::ops::execute(self, req), id),
            Err((e, id)) => response(Err(e), id),
        }
    }
}

/// A running control socket. [`stop`](ControlServer::stop) (or dropping it) stops accepting,
/// lets requests in progress finish, and removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    ino: u64,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Conns = Arc<Mutex<HashMap<u64, UnixStream>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ControlServer {
    /// Listens on `path` for requests to `service`. The caller holds the lock that makes it
    /// the only server of this path, so a socket file left there is stale (its server died)
    /// and is replaced. The socket is bound under umask 0177 (owner-only from its first
    /// instant) and every peer's uid is checked.
    pub fn start(path: &Path, service: Arc<dyn Service>) -> Result<ControlServer, ControlError> {
        let err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| ControlError::Socket { path, op, source }
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(err("remove the stale socket"))?;
        }
        let (addr, _dir) = addressable(path).map_err(err("address"))?;
        let listener = bind_private(&addr).map_err(err("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(err("chmod 0600"))?;
        let ino = std::fs::symlink_metadata(path).map_err(err("stat"))?.ino();
        listener
            .set_nonblocking(true)
            .map_err(err("set non-blocking"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("vdisk-control".into())
            .spawn(move || accept_loop(&listener, &service, &flag))
            .map_err(err("spawn the listener thread"))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            ino,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting, waits for requests in progress, removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        // wake the accept loop now rather than at its next poll timeout (a closing disk is
        // on a migration's downtime path): a connection to our own socket, never to one a
        // later server bound at the same path
        if self.thread.is_some()
            && std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino)
        {
            if let Ok((addr, _dir)) = addressable(&self.path) {
                let _ = UnixStream::connect(addr);
            }
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the control socket thread panicked");
            }
        }
        // Only our own socket: never one a later writer bound at the same path.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `addr` with the process umask set to 0177 for the call, so the socket file is
/// never reachable by others, whatever the caller's umask.
fn bind_private(addr: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask only swaps the process file-mode mask; it cannot fail. Other threads
    // creating files in this instant get the stricter mask, which only narrows access.
    let old = unsafe { libc::umask(0o177) };
    let r = UnixListener::bind(addr);
    // SAFETY: as above, restoring the caller's mask.
    unsafe { libc::umask(old) };
    r
}

/// The uid of the peer of a Unix stream.
fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a `ucred` into the struct we own; `len` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred.uid)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn wait_readable(fd: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(POLL.as_millis()).unwrap_or(100);
    // SAFETY: poll on one pollfd we own; a failure (EINTR) just means we loop again.
    unsafe { libc::poll(&mut p, 1, ms) };
}

fn accept_loop(listener: &UnixListener, service: &Arc<dyn Service>, stop: &AtomicBool) {
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let conns: Conns = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !stop.load(Ordering::Acquire) {
        wait_readable(listener.as_raw_fd());
        let stream = match listener.accept() {
            Ok(_) if stop.load(Ordering::Acquire) => break,
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("control socket: accept: {e}");
                thread::sleep(POLL);
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
        match peer_uid(&stream) {
            Ok(uid) if uid == me || uid == 0 => {}
            Ok(uid) => {
                log::warn!("control socket: refused a client of uid {uid}");
                refuse(stream, "refused: only the bundle's owner may control it");
                continue;
            }
            Err(e) => {
                log::warn!("control socket: peer credentials: {e}");
                continue;
            }
        }
        if lock(&conns).len() >= MAX_CONNECTIONS {
            refuse(stream, "busy: too many control connections");
            continue;
        }
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            lock(&conns).insert(id, clone);
        }
        let (w, c) = (Arc::clone(service), Arc::clone(&conns));
        match thread::Builder::new()
            .name("vdisk-control-conn".into())
            .spawn(move || {
                serve(stream, w.as_ref());
                lock(&c).remove(&id);
            }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                log::warn!("control socket: spawning a connection thread: {e}");
                lock(&conns).remove(&id);
            }
        }
    }
    // Wake every connection waiting for a request; one being answered finishes first.
    for s in lock(&conns).values() {
        let _ = s.shutdown(Shutdown::Read);
    }
    for t in threads {
        let _ = t.join();
    }
}

fn refuse(mut stream: UnixStream, message: &str) {
    let code = if message.starts_with("busy") {
        super::protocol::ErrorCode::Busy
    } else {
        super::protocol::ErrorCode::Refused
    };
    let e = OpError {
        code,
        message: message.to_string(),
    };
    let _ = writeln!(stream, "{}", response(Err(e), None));
}

/// Reads one line of at most `max` bytes. `Ok(None)` at a clean end of stream; an error
/// when the line is longer.
pub fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    let n = r.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    // A last line without a newline is accepted; a line that filled `max` is not.
    if line.last() != Some(&b'\n') && line.len() >= max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    Ok(Some(line))
}

/// Answers the requests of one connection, in order, until it ends.
fn serve(stream: UnixStream, service: &dyn Service) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    loop {
        let resp = match read_line(&mut input, MAX_REQUEST_BYTES) {
            Ok(None) => return,
            Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(line)) => service.answer(&line),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let r = response(
                    Err(OpError::bad_request(format!(
                        "request too long (at most {MAX_REQUEST_BYTES} bytes)"
                    ))),
                    None,
                );
                let _ = writeln!(out, "{r}");
                return;
            }
            Err(_) => return, // timeout, reset, shutdown
        };
        if writeln!(out, "{resp}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn lines_are_bounded() {
        let mut r = Cursor::new(b"abc\ndef".to_vec());
        assert_eq!(read_line(&mut r, 10).unwrap().unwrap(), b"abc\n");
        assert_eq!(read_line(&mut r, 10).unwrap().unwrap(), b"def");
        assert!(read_line(&mut r, 10).unwrap().is_none());
        let mut r = Cursor::new(vec![b'x'; 100]);
        assert_eq!(
            read_line(&mut r, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
