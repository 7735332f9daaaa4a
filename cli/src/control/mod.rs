//! The writer's control socket (DESIGN.md §3 "Concurrency"; protocol in
//! `format-spec/control.md`).
//!
//! A long-lived writer (`vdisk mount --read-write`, `vdisk serve`) holds the bundle's writer
//! lock, so other `vdisk` commands cannot open the bundle for writing. It answers instead on
//! `<bundle>/control.sock`: one JSON request per line, one JSON response per line. `vdisk
//! snapshot create|delete|…` run from another shell find the bundle locked and send their
//! request here ([`client`]).
//!
//! - [`server`]: the listener (owner-only, bounded requests and connections).
//! - [`ops`]: the operations; a new one is one match arm and one function.
//! - [`client`]: one request, one response, with clear errors for a missing or stale socket.

pub mod client;
pub mod ops;
pub mod server;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Largest request line in bytes (the newline included).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response line a client accepts.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Connections served at once; more are answered `busy` and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection silent this long is closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// File name of the socket inside the bundle directory.
pub const SOCKET_NAME: &str = "control.sock";

/// The control socket path of the bundle at `bundle`.
pub fn socket_path(bundle: &Path) -> PathBuf {
    crate::open::control_socket(bundle)
}

/// Longest path `sockaddr_un` holds (108 bytes with the terminating NUL).
const SUN_PATH_MAX: usize = 107;

/// A path usable with bind/connect: the path itself when short enough, otherwise
/// `/proc/self/fd/N/NAME` through a descriptor of the parent directory (kept open in the
/// returned guard for as long as the path is used).
pub(crate) fn addressable(path: &Path) -> io::Result<(PathBuf, Option<OwnedFd>)> {
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
