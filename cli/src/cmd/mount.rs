//! `vdisk mount` and `vdisk umount`: a bundle's head, snapshots and their partitions as files,
//! through FUSE.
//!
//! ```text
//! MOUNTPOINT/head.raw                  the head (writable with --read-write)
//! MOUNTPOINT/head/partN.raw            its partitions
//! MOUNTPOINT/snapshots/NAME.raw        each snapshot, read-only, mtime = creation time
//! MOUNTPOINT/snapshots/NAME/partN.raw  its partitions (MBR or GPT)
//! MOUNTPOINT/info.json                 size, generation, snapshots
//! ```
//!
//! Read-only (the default), the mount takes no lock: snapshots never change, and `head.raw`
//! shows the head as of the last manifest change. With `--read-write` the mount is the
//! bundle's writer and answers other `vdisk` commands on the control socket.

use crate::open::Held;
use anyhow::{Context, Result};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_fuse::{MountHandle, MountOptions};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vdisk mount web.vdisk /mnt/web\n  mount -o loop,ro /mnt/web/snapshots/before-upgrade/part1.raw /mnt/old\n  vdisk mount --read-write web.vdisk /mnt/web && vdisk umount /mnt/web\n\nEnvironment: VDISK_LOG sets the log level (warn by default)."
)]
pub struct Args {
    /// The disk bundle.
    pub disk: PathBuf,
    /// An existing directory to mount on.
    pub mountpoint: PathBuf,
    /// Make head.raw writable. Takes the writer lock; `vdisk snapshot …` from another shell
    /// then goes through this process (control socket).
    #[arg(long, short = 'w')]
    pub read_write: bool,
    /// Show only this snapshot (no head).
    #[arg(long, conflicts_with = "read_write")]
    pub snapshot: Option<String>,
    /// Stay attached to the terminal (default: return once mounted, serve in the background).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Let other users in (FUSE allow_other; needs root or user_allow_other in fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Threads serving requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
}

#[derive(clap::Args)]
pub struct UmountArgs {
    /// Where the bundle is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even while files under the mount are open; the mount process ends when
    /// the last of them closes.
    #[arg(long, short = 'l')]
    pub lazy: bool,
}

/// A live mount and what it must close when it ends.
struct Mounted {
    handle: MountHandle,
    held: Held,
}

impl Mounted {
    fn start(a: &Args) -> Result<Mounted> {
        let path = crate::open::resolve(&a.disk)?;
        let held = if a.read_write {
            crate::open::writer(&path, "mount", "mount it without --read-write")?
        } else {
            let only = match a
                .snapshot
                .as_deref()
                .and_then(|s| crate::open::snapshot_spec(Some(s)))
            {
                Some(s) => Some(crate::open::snapshot_name(&path, s)?),
                None => None,
            };
            crate::open::reader(&path, only.as_deref())?
        };
        let opts = MountOptions {
            read_write: a.read_write,
            allow_other: a.allow_other,
            threads: usize::from(a.threads),
            handle_signals: true,
            fs_name: path.display().to_string(),
            ..MountOptions::default()
        };
        let handle = vdisk_fuse::mount(Arc::clone(held.volume()), &a.mountpoint, opts)
            .with_context(|| format!("cannot mount {}", path.display()))?;
        Ok(Mounted { handle, held })
    }

    /// Serves until unmounted (umount, SIGINT/SIGTERM), then closes the disk.
    fn wait(self) -> Result<()> {
        let served = self.handle.wait();
        let closed = self.held.close();
        served.context("the mount ended with an error")?;
        closed.context("closing the disk")
    }
}

/// Refuses a mountpoint that already has something mounted on it: a second mount would hide
/// the first (and a later `umount` take away the wrong one).
fn check_free(mp: &Path) -> Result<()> {
    let canon = mp
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve the mountpoint", mp.display()))?;
    if !canon.is_dir() {
        anyhow::bail!("{}: the mountpoint must be a directory", mp.display());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some((fstype, source)) = mounted_at(&info, &canon) {
        anyhow::bail!(
            "{}: already a mount point ({fstype} of {}); unmount it first",
            mp.display(),
            source.display()
        );
    }
    Ok(())
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(s) = &a.snapshot {
        // A wrong snapshot is the more useful message than a wrong mountpoint.
        crate::open::snapshot_name(&a.disk, s)?;
    }
    check_free(&a.mountpoint)?;
    let daemon = if a.foreground {
        None
    } else {
        // SAFETY: nothing has started a thread yet: main only raised the fd limit and parsed
        // the arguments before calling here.
        Some(unsafe { vdisk_fuse::daemonize() }.context("cannot go to the background")?)
    };
    crate::logger::init();
    let mounted = match (Mounted::start(&a), daemon) {
        (Ok(m), Some(d)) => {
            d.ready();
            m
        }
        (Ok(m), None) => {
            eprintln!(
                "vdisk: {} mounted on {}{}; stop with Ctrl-C or `vdisk umount {}`",
                a.disk.display(),
                a.mountpoint.display(),
                if a.read_write { " (read-write)" } else { "" },
                a.mountpoint.display()
            );
            m
        }
        (Err(e), Some(d)) => {
            d.failed(&format!("vdisk: error: {e:#}"));
            return Ok(ExitCode::FAILURE);
        }
        (Err(e), None) => return Err(e),
    };
    mounted.wait()?;
    Ok(ExitCode::SUCCESS)
}

/// The top mount at `mp` of any kind: (file system type, source).
fn mounted_at(mountinfo: &str, mp: &Path) -> Option<(String, PathBuf)> {
    let want = mp.as_os_str().as_encoded_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        if unescape(point) != want {
            return None;
        }
        let mut r = right.split(' ');
        let fstype = r.next()?.to_string();
        let source = PathBuf::from(String::from_utf8_lossy(&unescape(r.next()?)).into_owned());
        Some((fstype, source))
    })
}

/// What /proc/self/mountinfo says about the mount at `mp`: (source, read-write), for
/// FUSE mounts only.
fn mount_entry(mountinfo: &str, mp: &Path) -> Option<(PathBuf, bool)> {
    let want = mp.as_os_str().as_encoded_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut l = left.split(' ');
        let point = l.nth(4)?;
        let opts = l.next()?;
        if unescape(point) != want {
            return None;
        }
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let source = r.next()?;
        if !fstype.starts_with("fuse") {
            return None;
        }
        let src = PathBuf::from(String::from_utf8_lossy(&unescape(source)).into_owned());
        Some((src, opts.split(',').any(|o| o == "rw")))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            if let Some(oct) = b.get(i + 1..i + 4) {
                if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let v = oct.iter().fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(v) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Waits until no process holds the writer lock of `bundle` (the mount process closed the
/// disk), so that a command run right after `vdisk umount` can open it.
fn wait_released(bundle: &Path, timeout: Duration) -> bool {
    let Ok(f) = std::fs::File::open(bundle.join("lock")) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: flock on a descriptor we own; a shared non-blocking probe, released at once.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn umount(a: UmountArgs) -> Result<ExitCode> {
    let mp = a
        .mountpoint
        .canonicalize()
        .or_else(|_| std::path::absolute(&a.mountpoint))
        .unwrap_or_else(|_| a.mountpoint.clone());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Only a mount of ours: `vdisk umount` never takes away somebody else's file system.
    match mounted_at(&info, &mp) {
        // `fuse.vdisk` as root (mount(2) with our subtype); plain `fuse` through fusermount3,
        // then the source is the bundle we mounted.
        Some((fstype, source))
            if fstype == "fuse.vdisk"
                || (fstype == "fuse" && source.join("manifest").is_file()) => {}
        Some((fstype, source)) => anyhow::bail!(
            "{}: not a vdisk mount ({fstype} of {}); use umount(8) for it",
            a.mountpoint.display(),
            source.display()
        ),
        None => anyhow::bail!("{}: nothing is mounted there", a.mountpoint.display()),
    }
    let entry = mount_entry(&info, &mp);
    let r = if a.lazy {
        vdisk_fuse::unmount_lazy(&mp)
    } else {
        vdisk_fuse::unmount(&mp)
    };
    r.with_context(|| format!("cannot unmount {}", a.mountpoint.display()))?;
    if let Some((bundle, true)) = entry {
        if bundle.join("manifest").is_file()
            && !a.lazy
            && !wait_released(&bundle, Duration::from_secs(60))
        {
            eprintln!(
                "vdisk: warning: unmounted, but the mount process still holds {} after 60 s",
                bundle.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
50 22 0:45 / /mnt/my\\040disk rw,nosuid,nodev shared:30 - fuse.vdisk /b/d\\040x.vdisk rw,user_id=0
51 22 0:46 / /mnt/ro ro,nosuid shared:31 - fuse.vdisk /b/e.vdisk ro
52 22 0:47 / /tmp rw shared:32 - tmpfs tmpfs rw
";

    #[test]
    fn finds_the_bundle_of_a_mount() {
        assert_eq!(
            mount_entry(INFO, Path::new("/mnt/my disk")),
            Some((PathBuf::from("/b/d x.vdisk"), true))
        );
        assert_eq!(
            mount_entry(INFO, Path::new("/mnt/ro")),
            Some((PathBuf::from("/b/e.vdisk"), false))
        );
        assert_eq!(mount_entry(INFO, Path::new("/tmp")), None);
        assert_eq!(mount_entry(INFO, Path::new("/nope")), None);
        assert_eq!(mount_entry("junk\n - \n", Path::new("/")), None);
        assert_eq!(unescape("a\\9b\\"), b"a\\9b\\");
        assert_eq!(
            mounted_at(INFO, Path::new("/tmp")),
            Some(("tmpfs".to_string(), PathBuf::from("tmpfs")))
        );
        assert_eq!(
            mounted_at(INFO, Path::new("/mnt/ro")).map(|m| m.0),
            Some("fuse.vdisk".to_string())
        );
        assert_eq!(mounted_at(INFO, Path::new("/nope")), None);
    }
}
