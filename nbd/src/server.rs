//! The listening server: accepts clients on TCP or a Unix socket, one thread per connection,
//! and shuts down cleanly.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::export::ExportProvider;
use crate::handshake::{negotiate, HandshakeConfig, HandshakeOutcome};
use crate::shutdown::ShutdownSignal;
use crate::stream::Stream;
use crate::tls::Connection;
use crate::transmission::{serve_requests, TransmissionConfig};
use vdisk_blockdev::Export;

/// How long the accept loop waits for a client before checking the shutdown signal again.
pub const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Tunables of a [`Server`]. `Default` gives sensible values for a local VMM backend.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Clients served at once; further ones are closed right after `accept`.
    pub max_connections: usize,
    /// Largest READ/WRITE length (the advertised maximum block size), 4 KiB..=1 GiB.
    /// The spec asks servers to accept at least 32 MiB, the default.
    pub max_request_bytes: u32,
    /// Worker threads per connection executing requests concurrently (1..=256).
    pub worker_threads: usize,
    /// Request data (WRITE payloads, READ buffers) one connection may hold at once; raised
    /// to `max_request_bytes` if smaller. Memory bound: `max_connections` times this.
    pub max_inflight_bytes: u64,
    /// Longest silence allowed during the handshake before the client is dropped.
    pub handshake_timeout: Option<Duration>,
    /// Longest a reply write may block (a client that stops reading is dropped).
    pub write_timeout: Option<Duration>,
    /// Answer READs with hole chunks where the export reports zeroes (asks the export for
    /// block status on every read).
    pub sparse_reads: bool,
    /// TLS credentials: when set, every client must upgrade with `NBD_OPT_STARTTLS`
    /// before anything else (the spec's FORCEDTLS mode).
    pub tls: Option<crate::tls::TlsConfig>,
    /// Refuse TCP clients that are not processes of this server's user (or root), as
    /// `/proc/net/tcp` tells; clients whose socket is not on this host are refused too.
    /// For a loopback listener without TLS, where every other local user could connect.
    pub tcp_owner_only: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 64,
            max_request_bytes: 32 * 1024 * 1024,
            worker_threads: 4,
            max_inflight_bytes: 64 * 1024 * 1024,
            handshake_timeout: Some(Duration::from_secs(30)),
            write_timeout: Some(Duration::from_secs(60)),
            sparse_reads: true,
            tls: None,
            tcp_owner_only: false,
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ServerError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ServerError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if !(4096..=1 << 30).contains(&self.max_request_bytes) {
            return bad("max_request_bytes", "must be between 4096 and 1 GiB");
        }
        if !(1..=256).contains(&self.worker_threads) {
            return bad("worker_threads", "must be between 1 and 256");
        }
        Ok(())
    }
}

/// Errors of [`Server`].
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listening socket failed.
    #[error("NBD server: cannot listen on {addr}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A configuration value out of range.
    #[error("NBD server config: {field} {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Preparing or polling the listening socket failed.
    #[error("NBD server: i/o error while {step}")]
    Io {
        /// What the server was doing.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Flushing an export at shutdown failed (the other exports were still flushed).
    #[error("NBD server: flushing export {export:?} at shutdown failed")]
    Flush {
        /// Export name (empty for the default export).
        export: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// How [`Server::bind_unix_with`] creates its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixSocketOptions {
    /// Permission bits of the socket file (0o600 by default: only its owner may connect;
    /// 0o660 lets the owner's group in). Set whatever the process umask is.
    pub mode: u32,
}

impl Default for UnixSocketOptions {
    fn default() -> Self {
        UnixSocketOptions { mode: 0o600 }
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (with the real port when bound to port 0).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

enum Listener {
    Tcp(TcpListener),
    /// With `owner_only`, peers of another user (root aside) are refused at accept.
    Unix {
        listener: UnixListener,
        owner_only: bool,
    },
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => Stream::Tcp(l.accept()?.0),
            Listener::Unix { listener, .. } => Stream::Unix(listener.accept()?.0),
        })
    }

    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix { listener, .. } => listener.as_raw_fd(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix { listener, .. } => listener.set_nonblocking(true),
        }
    }
}

/// An NBD server bound to a socket, ready to [`run`](Server::run).
pub struct Server {
    listener: Listener,
    addr: ListenAddr,
}

impl Server {
    /// Listens on a TCP address (`"127.0.0.1:10809"`; port 0 picks a free port).
    pub fn bind_tcp<A: ToSocketAddrs + std::fmt::Debug>(addr: A) -> Result<Server, ServerError> {
        let bind_err = |source| ServerError::Bind {
            addr: format!("{addr:?}"),
            source,
        };
        let listener = TcpListener::bind(&addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        Ok(Server {
            listener: Listener::Tcp(listener),
            addr: ListenAddr::Tcp(local),
        })
    }

    /// Listens on a Unix socket at `path`, owner-only ([`UnixSocketOptions::default`]).
    /// A stale socket left by a dead server is replaced; a live one, or any other file, is
    /// an error. The socket file is removed when `run` returns.
    pub fn bind_unix<P: AsRef<Path>>(path: P) -> Result<Server, ServerError> {
        Self::bind_unix_with(path, UnixSocketOptions::default())
    }

    /// Listens on a Unix socket at `path` with the permission bits of `opts`, set before
    /// the socket appears at `path`: it is bound inside a fresh private folder beside
    /// `path`, given its mode there, and moved into place (never over an existing file).
    pub fn bind_unix_with<P: AsRef<Path>>(
        path: P,
        opts: UnixSocketOptions,
    ) -> Result<Server, ServerError> {
        let path = path.as_ref();
        let bind_err = |source| ServerError::Bind {
            addr: path.display().to_string(),
            source,
        };
        if opts.mode & !0o777 != 0 {
            return Err(ServerError::Config {
                field: "socket mode",
                reason: format!("{:o} has bits beyond 0777", opts.mode),
            });
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
                std::fs::remove_file(path).map_err(bind_err)?;
            }
        }
        let listener = crate::socket::bind_private(path, opts.mode).map_err(bind_err)?;
        Ok(Server {
            listener: Listener::Unix {
                listener,
                owner_only: opts.mode & 0o077 == 0,
            },
            addr: ListenAddr::Unix(path.to_owned()),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// Serves clients until `shutdown` is triggered, then stops accepting, lets every
    /// connection finish the requests it already read, flushes every writable export that
    /// was opened (and the provider's default export), and returns.
    ///
    /// Per-client failures (malformed requests, disconnects) are logged and end only that
    /// client. Returns an error only for a bad configuration, a broken listening socket, or
    /// a failed final flush.
    pub fn run(
        self,
        provider: Arc<dyn ExportProvider>,
        config: ServerConfig,
        shutdown: ShutdownSignal,
    ) -> Result<(), ServerError> {
        config.validate()?;
        self.listener
            .set_nonblocking()
            .map_err(|source| ServerError::Io {
                step: "making the listening socket non-blocking",
                source,
            })?;
        let state = Arc::new(State::default());
        let result = self.accept_loop(&provider, &config, &shutdown, &state);

        // Wake every reader: each connection stops reading, finishes what it read, closes.
        for stream in lock(&state.connections).values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        for handle in std::mem::take(&mut *lock(&state.threads)) {
            if handle.join().is_err() {
                log::error!("an NBD connection thread panicked");
            }
        }
        let flushed = flush_all(&provider, &state);
        if let ListenAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
        result.and(flushed)
    }

    fn accept_loop(
        &self,
        provider: &Arc<dyn ExportProvider>,
        config: &ServerConfig,
        shutdown: &ShutdownSignal,
        state: &Arc<State>,
    ) -> Result<(), ServerError> {
        let mut next_id = 0u64;
        while !shutdown.is_triggered() {
            if !wait_readable(self.listener.fd(), ACCEPT_POLL_INTERVAL)? {
                continue;
            }
            let stream = match self.listener.accept() {
                Ok(stream) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: transient, do not spin.
                    log::warn!("NBD server: accept failed: {e}");
                    thread::sleep(ACCEPT_POLL_INTERVAL);
                    continue;
                }
            };
            if let (
                Listener::Unix {
                    owner_only: true, ..
                },
                Stream::Unix(s),
            ) = (&self.listener, &stream)
            {
                if let Err(why) = crate::socket::check_peer_is_owner(s) {
                    log::warn!("NBD server: refusing a Unix-socket client: {why}");
                    continue;
                }
            }
            if let (true, Stream::Tcp(s)) = (config.tcp_owner_only, &stream) {
                if let Err(why) = crate::socket::check_tcp_peer_is_owner(s) {
                    log::warn!("NBD server: refusing a TCP client: {why}");
                    continue;
                }
            }
            lock(&state.threads).retain(|h| !h.is_finished());
            if state.active.load(Ordering::Acquire) >= config.max_connections {
                log::warn!(
                    "NBD server: refusing {}: {} connections already open",
                    stream.peer(),
                    config.max_connections
                );
                continue;
            }
            next_id += 1;
            if let Err(e) =
                self.spawn_connection(next_id, stream, provider, config, shutdown, state)
            {
                log::warn!("NBD server: cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }

    fn spawn_connection(
        &self,
        id: u64,
        stream: Stream,
        provider: &Arc<dyn ExportProvider>,
        config: &ServerConfig,
        shutdown: &ShutdownSignal,
        state: &Arc<State>,
    ) -> io::Result<()> {
        stream.prepare()?;
        lock(&state.connections).insert(id, stream.try_clone()?);
        state.active.fetch_add(1, Ordering::AcqRel);
        let guard = ConnectionGuard {
            id,
            state: Arc::clone(state),
        };
        let provider = Arc::clone(provider);
        let config = config.clone();
        let shutdown = shutdown.clone();
        let state2 = Arc::clone(state);
        let handle = thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                let _guard = guard;
                let peer = stream.peer();
                if let Err(e) = serve_connection(stream, &*provider, &config, &shutdown, &state2) {
                    log::info!("NBD client {peer}: {}", error_chain(&*e));
                }
            })?;
        lock(&state.threads).push(handle);
        Ok(())
    }
}

/// Bookkeeping shared by the accept loop and the connection threads.
#[derive(Default)]
struct State {
    /// Clones of the open client sockets, to wake their readers at shutdown.
    connections: Mutex<HashMap<u64, Stream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicUsize,
    /// Writable exports opened by clients, flushed at shutdown.
    writable: Mutex<Vec<(String, Arc<dyn Export>)>>,
}

/// Unregisters a connection when its thread ends, however it ends.
struct ConnectionGuard {
    id: u64,
    state: Arc<State>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        lock(&self.state.connections).remove(&self.id);
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_connection(
    stream: Stream,
    provider: &dyn ExportProvider,
    config: &ServerConfig,
    shutdown: &ShutdownSignal,
    state: &State,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    stream.set_read_timeout(config.handshake_timeout)?;
    stream.set_write_timeout(config.write_timeout)?;
    let handshake = HandshakeConfig {
        max_request_bytes: config.max_request_bytes,
    };
    let mut stream = Connection::new(stream, config.tls.clone());
    let negotiated = match negotiate(&mut stream, provider, handshake, shutdown)? {
        HandshakeOutcome::Transmission(n) => n,
        HandshakeOutcome::Closed => return Ok(()),
    };
    log::debug!(
        "NBD client {} opened export {:?} (size {}, flags {:#06x})",
        stream.raw().peer(),
        negotiated.name,
        negotiated.size,
        negotiated.flags
    );
    if !negotiated.export.read_only() {
        let mut writable = lock(&state.writable);
        if !writable
            .iter()
            .any(|(_, e)| same_export(e, &negotiated.export))
        {
            writable.push((negotiated.name.clone(), Arc::clone(&negotiated.export)));
        }
    }
    // A client may stay idle in transmission for as long as it likes.
    stream.raw().set_read_timeout(None)?;
    if shutdown.is_triggered() {
        // The shutdown may have swept the connections before this one reached transmission.
        return Ok(());
    }
    let writer = stream.writer()?;
    let aborter = stream.raw().try_clone()?;
    let abort = move || {
        let _ = aborter.shutdown(Shutdown::Both);
    };
    let transmission = TransmissionConfig {
        workers: config.worker_threads,
        max_request_bytes: config.max_request_bytes,
        max_inflight_bytes: config.max_inflight_bytes,
        sparse_reads: config.sparse_reads,
    };
    let end = serve_requests(&mut stream, writer, &negotiated, transmission, &abort)?;
    log::debug!("NBD client {}: {end:?}", stream.raw().peer());
    Ok(())
}

fn same_export(a: &Arc<dyn Export>, b: &Arc<dyn Export>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Flushes every writable export clients opened, plus the default export.
fn flush_all(provider: &Arc<dyn ExportProvider>, state: &State) -> Result<(), ServerError> {
    let mut exports = std::mem::take(&mut *lock(&state.writable));
    if let Some(default) = provider.default_export() {
        if !default.read_only() && !exports.iter().any(|(_, e)| same_export(e, &default)) {
            exports.push((String::new(), default));
        }
    }
    let mut first_error = None;
    for (name, export) in exports {
        if let Err(source) = export.flush() {
            log::error!("NBD server: flushing export {name:?} at shutdown failed: {source}");
            first_error.get_or_insert(ServerError::Flush {
                export: name,
                source,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Waits until `fd` is readable or `timeout` passed; `Ok(false)` on timeout or signal.
fn wait_readable(fd: RawFd, timeout: Duration) -> Result<bool, ServerError> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid, initialised pollfd that outlives the call, and we pass a
    // count of exactly one entry.
    let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
    if ready < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(ServerError::Io {
            step: "polling the listening socket",
            source: err,
        });
    }
    Ok(ready > 0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `error: cause: cause` on one line, for logs.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
