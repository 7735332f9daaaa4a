//! Unix sockets that belong to their owner: created with an explicit mode whatever the
//! umask, without a moment at which another user could connect, and peers checked.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Binds a listening socket at `path` with permission bits `mode`.
///
/// The socket is bound inside a new folder of mode 0700 beside `path` (so nobody else can
/// reach it while its mode is set), chmod-ed, then renamed to `path` with
/// `RENAME_NOREPLACE`, which fails rather than replace a file that exists. Where the
/// temporary path would exceed the 108-byte socket-path limit, it binds at `path` directly
/// and chmods at once; the peer check of [`check_peer_is_owner`] then covers the moment in
/// between.
pub(crate) fn bind_private(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent.join(format!(".nbd-{}-{}", std::process::id(), unique()));
    let temp = dir.join("s");
    if temp.as_os_str().len() >= 108 {
        let l = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        return Ok(l);
    }
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let result = (|| {
        let l = UnixListener::bind(&temp)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
        rename_noreplace(&temp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&temp);
    let _ = std::fs::remove_dir(&dir);
    result
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into());
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 32)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call;
    // AT_FDCWD makes relative paths relative to the working directory, as for rename(2).
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::AlreadyExists {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} exists", to.display()),
            ));
        }
        Err(e)
    }
}

/// The user id of the process at the other end of `s`.
pub(crate) fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` holds its size, as SO_PEERCRED expects;
    // the fd is a connected Unix socket owned by `s` for the duration of the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(cred.uid)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Accepts a peer running as this process's user, or as root.
pub(crate) fn check_peer_is_owner(s: &UnixStream) -> Result<(), String> {
    let uid = peer_uid(s).map_err(|e| format!("cannot read its credentials: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid == me || uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} is not the owner (uid {me}); widen the socket mode to let others in"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn the_socket_has_the_asked_mode_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0) };
        let p = t.path().join("a.sock");
        let l = bind_private(&p, 0o600);
        let p2 = t.path().join("b.sock");
        let l2 = bind_private(&p2, 0o660);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let (_l, _l2) = (l.unwrap(), l2.unwrap());
        let m = std::fs::metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&p2).unwrap().mode() & 0o777, 0o660);
        // Nothing left beside it, and a client gets through.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 2);
        let c = UnixStream::connect(&p).unwrap();
        assert_eq!(peer_uid(&c).unwrap(), unsafe_euid());
    }

    fn unsafe_euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn an_existing_file_is_never_replaced() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x");
        std::fs::write(&p, b"keep").unwrap();
        let e = bind_private(&p, 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }
}

/// The user owning the local TCP socket connected from `peer` to `local` (both on this
/// host), found in `/proc/net/tcp` or `/proc/net/tcp6` as identd does. `None` when no such
/// socket is listed (the peer is on another host, or already gone).
pub(crate) fn tcp_peer_uid(
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> io::Result<Option<u32>> {
    let table = if peer.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table)?;
    Ok(find_socket_uid(&text, peer, local))
}

/// In a `/proc/net/tcp*` table, the uid of the socket whose local end is `from` and remote
/// end is `to`.
fn find_socket_uid(
    table: &str,
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        (parse_proc_addr(l)? == from && parse_proc_addr(r)? == to)
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` (IPv4, the address as one host-order word) or 32 hex digits of four
/// host-order words (IPv6), then the port in hex.
fn parse_proc_addr(s: &str) -> Option<std::net::SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip: std::net::IpAddr = match addr.len() {
        8 => std::net::Ipv4Addr::from(word(addr)?).into(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            let v6 = std::net::Ipv6Addr::from(b);
            // A v4 client of a dual-stack listener appears as ::ffff:a.b.c.d.
            match v6.to_ipv4_mapped() {
                Some(v4) => v4.into(),
                None => v6.into(),
            }
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// Accepts a loopback TCP peer run by this process's user (or root); refuses any other,
/// and any peer whose socket cannot be found.
pub(crate) fn check_tcp_peer_is_owner(s: &std::net::TcpStream) -> Result<(), String> {
    let (local, peer) = match (s.local_addr(), s.peer_addr()) {
        (Ok(l), Ok(p)) => (l, normalize(p)),
        _ => return Err("cannot read its address".into()),
    };
    let local = normalize(local);
    let uid = match tcp_peer_uid(local, peer) {
        Ok(Some(uid)) => uid,
        Ok(None) => return Err(format!("{peer}: no local socket found for it")),
        Err(e) => return Err(format!("{peer}: cannot read the socket table: {e}")),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid == me || uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "{peer} is run by uid {uid}, not the owner (uid {me}); use TLS to let others in"
        ))
    }
}

fn normalize(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod proc_tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:A3F2 0100007F:2A39 01 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0\n";
        let from: std::net::SocketAddr = "127.0.0.1:41970".parse().unwrap();
        let to: std::net::SocketAddr = "127.0.0.1:10809".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(find_socket_uid(table, from, to), Some(1000));
            assert_eq!(find_socket_uid(table, to, from), None);
        }
        assert_eq!(parse_proc_addr("garbage"), None);
    }

    #[test]
    fn a_real_loopback_connection_is_found_with_our_uid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(
            tcp_peer_uid(s.local_addr().unwrap(), s.peer_addr().unwrap()).unwrap(),
            // SAFETY: geteuid has no preconditions.
            Some(unsafe { libc::geteuid() })
        );
        assert!(check_tcp_peer_is_owner(&s).is_ok());
        drop(c);
    }
}
