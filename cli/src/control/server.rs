//! The control socket's listener: owner-only, bounded, stopped and removed on exit.

use super::{addressable, ops, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST_BYTES};
use crate::adapters::Writer;
use anyhow::{Context, Result};
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
    /// Listens on `path` for requests on `writer`. The caller holds the writer lock, so a
    /// socket file left there is stale (its writer died) and is replaced.
    pub fn start(path: &Path, writer: Arc<Writer>) -> Result<ControlServer> {
        let what = || format!("control socket {}", path.display());
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                anyhow::bail!("{}: exists and is not a socket", what());
            }
            std::fs::remove_file(path).with_context(|| format!("removing stale {}", what()))?;
        }
        let (addr, _dir) = addressable(path).with_context(what)?;
        let listener = UnixListener::bind(&addr).with_context(|| format!("binding {}", what()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", what()))?;
        let ino = std::fs::symlink_metadata(path).with_context(what)?.ino();
        listener.set_nonblocking(true).with_context(what)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("vdisk-control".into())
            .spawn(move || accept_loop(&listener, &writer, &flag))
            .with_context(what)?;
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

fn accept_loop(listener: &UnixListener, writer: &Arc<Writer>, stop: &AtomicBool) {
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let conns: Conns = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !stop.load(Ordering::Acquire) {
        wait_readable(listener.as_raw_fd());
        let stream = match listener.accept() {
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
        let (w, c) = (Arc::clone(writer), Arc::clone(&conns));
        match thread::Builder::new()
            .name("vdisk-control-conn".into())
            .spawn(move || {
                serve(stream, &w);
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
        "busy"
    } else {
        "refused"
    };
    let r = serde_json::json!({"ok": false, "error": message, "code": code});
    let _ = writeln!(stream, "{r}");
}

/// Reads one line of at most `max` bytes. `Ok(None)` at a clean end of stream; an error
/// when the line is longer.
pub(crate) fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Option<Vec<u8>>> {
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
fn serve(stream: UnixStream, writer: &Writer) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    loop {
        let resp = match read_line(&mut input, MAX_REQUEST_BYTES) {
            Ok(None) => return,
            Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(line)) => ops::answer(writer, &line),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let r = ops::error_response(&ops::OpError::bad_request(format!(
                    "request too long (at most {MAX_REQUEST_BYTES} bytes)"
                )));
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
