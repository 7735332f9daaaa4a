//! The writer's control socket (DESIGN.md §3 "Concurrency"; protocol in
//! `format-spec/control.md`).
//!
//! A long-lived writer (`vdisk mount --read-write`, `vdisk serve`, `vdisk vm run`) holds the
//! bundle's writer lock, so other processes cannot open the bundle for writing. It answers
//! instead on its control socket, whose place the bundle's [`Store`] names: one JSON request
//! per line, one JSON response per line.
//!
//! - [`protocol`]: the typed requests and replies, shared by both ends.
//! - [`server`]: the listener (owner-only, bounded requests and connections).
//! - [`ops`]: what a [`crate::Writer`] does for each request.
//! - [`client`]: requests from another process, and [`WriterAccess`]: "open the bundle
//!   here, or reach the writer that holds it".

pub mod client;
pub mod ops;
pub mod protocol;
pub mod server;

pub use client::{Client, WriterAccess};
pub use protocol::{ErrorCode, OpError, Reply, Request};
pub use server::{ControlServer, Service};

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use vdisk_engine::Store;

/// Largest request line in bytes (the newline included).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response line a client accepts.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Connections served at once; more are answered `busy` and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection silent this long is closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Errors of the control socket, on either end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The engine refused to open the bundle.
    #[error(transparent)]
    Engine(#[from] vdisk_engine::Error),
    /// A socket call failed.
    #[error("control socket {}: {op} failed", path.display())]
    Socket {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Something other than a socket sits where the socket belongs.
    #[error("control socket {}: exists and is not a socket", path.display())]
    NotASocket { path: PathBuf },
    /// The store has no place for a control socket.
    #[error("{location}: this store has no control socket")]
    NoSocketPlace { location: String },
    /// The bundle is locked and nobody has a socket there.
    #[error(
        "{location} is locked by another writer, which has no control socket ({} is missing): \
         wait for that command to finish",
        path.display()
    )]
    NoSocket { location: String, path: PathBuf },
    /// The bundle is locked and nobody listens on its socket.
    #[error(
        "{location} is locked by another writer, but nobody listens on its control socket {} \
         (a stale socket left by a writer that died; the lock holder is another command)",
        path.display()
    )]
    Stale { location: String, path: PathBuf },
    /// The answer broke the protocol.
    #[error("control socket {}: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
    /// The writer refused the request.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

impl ControlError {
    /// True when the bundle is held by another writer (the engine said "locked").
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            ControlError::Engine(vdisk_engine::Error::Locked { .. })
        )
    }
}

/// The control socket of the bundle in `store`.
pub fn socket_path(store: &dyn Store) -> Result<PathBuf, ControlError> {
    store
        .control_socket_path()
        .ok_or_else(|| ControlError::NoSocketPlace {
            location: store.location(),
        })
}

/// Longest path `sockaddr_un` holds (108 bytes with the terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// A path usable with bind/connect: the path itself when short enough, otherwise
/// `/proc/self/fd/N/NAME` through a descriptor of the parent directory (kept open in the
/// returned guard for as long as the path is used).
pub fn addressable(path: &Path) -> io::Result<(PathBuf, Option<OwnedFd>)> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path has no parent",
        ));
    };
    let dir = std::fs::File::open(dir)?;
    let fd: OwnedFd = dir.into();
    let mut p = OsString::from(format!("/proc/self/fd/{}/", fd.as_raw_fd())).into_vec();
    p.extend_from_slice(name.as_encoded_bytes());
    Ok((PathBuf::from(OsString::from_vec(p)), Some(fd)))
}
