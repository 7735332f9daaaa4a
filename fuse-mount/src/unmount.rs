//! Unmounting: as root with umount(2), otherwise through `fusermount3 -u` (the setuid helper
//! of the fuse3 package), falling back to `fusermount -u` and `umount`.
//!
//! Only FUSE mounts are unmounted: the mountpoint is looked up in /proc/self/mountinfo first.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::FuseError;

/// How to unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Fail with `Busy` while files are open.
    Normal,
    /// Detach now; the filesystem goes away when its last file closes.
    Lazy,
}

/// The mountpoint as an absolute path without resolving it (a dead FUSE mount cannot be
/// stat'ed, so `canonicalize` would fail on exactly the mounts that need unmounting).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space…).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if let (Some(b'\\'), Some(oct)) = (b.get(i), b.get(i + 1..i + 4)) {
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        if let Some(&c) = b.get(i) {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// The filesystem type mounted at `mountpoint` (the last such mount), from mountinfo text.
pub(crate) fn fstype_at(mountinfo: &str, mountpoint: &Path) -> Option<String> {
    let want = mountpoint.as_os_str().as_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mp = left.split(' ').nth(4)?;
        (unescape(mp) == want).then(|| right.split(' ').next().unwrap_or("").to_string())
    })
}

fn cstring(path: &Path) -> Result<CString, FuseError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FuseError::NotMounted {
        mountpoint: path.to_path_buf(),
    })
}

/// umount2(2) on `mp`.
fn umount2(mp: &Path, mode: Mode) -> io::Result<()> {
    let c = cstring(mp).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = match mode {
        Mode::Normal => 0,
        Mode::Lazy => libc::MNT_DETACH,
    };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs one helper command; `Err` carries what it printed.
fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

/// Unmounts the FUSE mount at `mp` (already absolute) without checking mountinfo.
pub(crate) fn unmount_path(mp: &Path, mode: Mode) -> Result<(), FuseError> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return match umount2(mp, mode) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(FuseError::Busy {
                mountpoint: mp.to_path_buf(),
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(FuseError::NotMounted {
                mountpoint: mp.to_path_buf(),
            }),
            Err(e) => Err(FuseError::Unmount {
                mountpoint: mp.to_path_buf(),
                detail: e.to_string(),
            }),
        };
    }
    let path = mp.as_os_str();
    let lazy = mode == Mode::Lazy;
    let fuse_args: Vec<&std::ffi::OsStr> = if lazy {
        vec!["-u".as_ref(), "-z".as_ref(), path]
    } else {
        vec!["-u".as_ref(), path]
    };
    let umount_args: Vec<&std::ffi::OsStr> = if lazy {
        vec!["-l".as_ref(), path]
    } else {
        vec![path]
    };
    let mut detail = Vec::new();
    for (program, args) in [
        ("fusermount3", &fuse_args),
        ("fusermount", &fuse_args),
        ("umount", &umount_args),
    ] {
        match run(program, args) {
            Ok(()) => return Ok(()),
            Err(e) if e.contains("busy") => {
                return Err(FuseError::Busy {
                    mountpoint: mp.to_path_buf(),
                })
            }
            Err(e) => detail.push(e),
        }
    }
    Err(FuseError::Unmount {
        mountpoint: mp.to_path_buf(),
        detail: detail.join("; "),
    })
}

/// Checks that a FUSE filesystem is mounted at `mp` (absolute).
fn check_fuse_mount(mp: &Path) -> Result<(), FuseError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| FuseError::Unmount {
        mountpoint: mp.to_path_buf(),
        detail: format!("reading /proc/self/mountinfo: {e}"),
    })?;
    match fstype_at(&info, mp) {
        None => Err(FuseError::NotMounted {
            mountpoint: mp.to_path_buf(),
        }),
        Some(t) if t == "fuse" || t.starts_with("fuse.") => Ok(()),
        Some(fstype) => Err(FuseError::NotFuseMount {
            mountpoint: mp.to_path_buf(),
            fstype,
        }),
    }
}

/// Unmounts the vdisk mount at `mountpoint` (for `vdisk umount`).
///
/// Refuses a path where no FUSE filesystem is mounted, and answers [`FuseError::Busy`] while
/// files under it are open. The process serving the mount then flushes the head and exits.
pub fn unmount(mountpoint: &Path) -> Result<(), FuseError> {
    let mp = absolute(mountpoint);
    check_fuse_mount(&mp)?;
    unmount_path(&mp, Mode::Normal)
}

/// Detaches the vdisk mount at `mountpoint` now, even while files under it are open
/// (`umount -l`); the serving process ends when the last of them closes.
pub fn unmount_lazy(mountpoint: &Path) -> Result<(), FuseError> {
    let mp = absolute(mountpoint);
    check_fuse_mount(&mp)?;
    unmount_path(&mp, Mode::Lazy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
50 22 0:45 / /mnt/my\\040disk rw,nosuid,nodev shared:30 - fuse vdisk:web rw,user_id=0,group_id=0
51 22 0:46 / /mnt/other rw shared:31 - fuse.sshfs host: rw
52 22 0:47 / /tmp rw shared:32 - tmpfs tmpfs rw
";

    #[test]
    fn finds_fstype_with_escaped_path() {
        assert_eq!(
            fstype_at(INFO, Path::new("/mnt/my disk")).as_deref(),
            Some("fuse")
        );
        assert_eq!(
            fstype_at(INFO, Path::new("/mnt/other")).as_deref(),
            Some("fuse.sshfs")
        );
        assert_eq!(fstype_at(INFO, Path::new("/tmp")).as_deref(), Some("tmpfs"));
        assert_eq!(fstype_at(INFO, Path::new("/nope")), None);
        assert_eq!(fstype_at("garbage\n\n - \n", Path::new("/")), None);
    }

    #[test]
    fn unescape_keeps_bad_escapes() {
        assert_eq!(unescape("a\\040b"), b"a b");
        assert_eq!(unescape("a\\9b\\"), b"a\\9b\\");
        assert_eq!(
            unescape("\\777"),
            b"\\777",
            "out-of-range octal is kept as text"
        );
    }
}
