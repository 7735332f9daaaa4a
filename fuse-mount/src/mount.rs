//! Mounting, serving and the clean shutdown: flush the head, unmount, and — when files are
//! still open under the mount — detach it and abort the FUSE connection so no reader can keep
//! the process alive.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use fuser::{MountOption, Session, SessionACL};
use log::{debug, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::FuseError;
use crate::fs::{FsCore, Tuning, VdiskFs};
use crate::unmount::{absolute, unmount_path, Mode};
use vdisk_blockdev::Volume;

/// How long to wait for request threads to stop after an unmount before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Where the kernel's fusectl filesystem lists FUSE connections (and their `abort` files).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Allow writes to `head.raw` (when the source's head is writable too).
    pub read_write: bool,
    /// Let other users than the mounting one in (`allow_other`; needs root or
    /// `user_allow_other` in /etc/fuse.conf). Permissions are then checked by the kernel.
    pub allow_other: bool,
    /// Request-serving threads (each with its own /dev/fuse clone).
    pub threads: usize,
    /// Readahead in bytes the kernel may issue (asked at init and, as root, raised in the
    /// mount's BDI so buffered sequential reads come in requests this large).
    pub max_readahead: u32,
    /// Largest write request in bytes (and, with `max_readahead`, the largest read).
    pub max_write: u32,
    /// Catch SIGINT and SIGTERM: flush the head and unmount, then [`MountHandle::wait`]
    /// returns. For the CLI's foreground process; a library user handling signals itself
    /// leaves it off and calls [`MountHandle::unmount`].
    pub handle_signals: bool,
    /// The source name shown in the mount table (`mount`, /proc/mounts), e.g. the bundle path.
    pub fs_name: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            read_write: false,
            allow_other: false,
            threads: 4,
            max_readahead: 128 << 10,
            max_write: 1 << 20,
            handle_signals: false,
            fs_name: "vdisk".into(),
        }
    }
}

/// What the waiter learns.
enum Event {
    /// The session's threads all returned.
    SessionEnded,
    /// An unmount was done but the threads did not stop within the grace period.
    GaveUp,
}

/// Everything the shutdown needs, shared by the handle and the signal thread.
struct Shutdown {
    core: Arc<FsCore>,
    mountpoint: PathBuf,
    /// The fusectl name of this mount's connection.
    connection: Option<u64>,
    events: Sender<Event>,
}

impl Shutdown {
    /// Flushes the head, then unmounts; if files are open, detaches and aborts the connection.
    fn run(&self) -> Result<(), FuseError> {
        let flushed = self.core.flush_head();
        let result = match unmount_path(&self.mountpoint, Mode::Normal) {
            Ok(()) => Ok(()),
            Err(FuseError::Busy { .. }) => {
                info!(
                    "{}: files still open; detaching and aborting the connection",
                    self.mountpoint.display()
                );
                let detached = unmount_path(&self.mountpoint, Mode::Lazy);
                self.abort_connection();
                detached
            }
            Err(FuseError::NotMounted { .. }) => {
                self.abort_connection();
                Ok(())
            }
            Err(e) => Err(e),
        };
        // Stop waiting for stuck request threads after a while; the handle then flushes and
        // returns, and the process exiting closes /dev/fuse.
        let events = self.events.clone();
        let _ = thread::Builder::new()
            .name("vdisk-fuse-grace".into())
            .spawn(move || {
                thread::sleep(SHUTDOWN_GRACE);
                let _ = events.send(Event::GaveUp);
            });
        flushed.map_err(|source| FuseError::Flush {
            mountpoint: self.mountpoint.clone(),
            source,
        })?;
        result
    }

    /// Writes to the connection's fusectl `abort` file: pending and future requests fail
    /// with ENOTCONN and the request threads see ENODEV and return.
    fn abort_connection(&self) {
        let Some(conn) = self.connection else { return };
        let path = Path::new(FUSECTL).join(conn.to_string()).join("abort");
        if !path.exists() {
            // fusectl is not mounted on every system; as root we can mount it.
            let _ = std::process::Command::new("mount")
                .args(["-t", "fusectl", "fusectl", FUSECTL])
                .output();
        }
        if let Err(e) = std::fs::write(&path, b"1") {
            warn!("aborting FUSE connection {}: {e}", path.display());
        }
    }
}

/// A live mount. Dropping it unmounts (like [`MountHandle::unmount`], errors logged).
pub struct MountHandle {
    shutdown: Arc<Shutdown>,
    events: Receiver<Event>,
    session: Option<JoinHandle<io::Result<()>>>,
    signals: Option<(signal_hook::iterator::Handle, JoinHandle<()>)>,
}

/// Mounts `source` on `mountpoint` and serves it on background threads.
///
/// Returns once the kernel has completed the FUSE handshake, so the files are visible when
/// this returns. Mounts with the mount(2) syscall as root, else through `fusermount3`.
pub fn mount(
    source: Arc<dyn Volume>,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<MountHandle, FuseError> {
    let not_dir = || FuseError::MountpointNotDirectory {
        mountpoint: mountpoint.to_path_buf(),
    };
    let meta = std::fs::metadata(mountpoint).map_err(|_| not_dir())?;
    if !meta.is_dir() {
        return Err(not_dir());
    }
    let mp = absolute(mountpoint);
    let mount_err = |step, source| FuseError::Mount {
        mountpoint: mp.clone(),
        step,
        source,
    };

    let tuning = Tuning {
        read_write: opts.read_write,
        max_write: opts.max_write.max(4096),
        max_readahead: opts.max_readahead.max(4096),
    };
    let core = Arc::new(FsCore::new(source, tuning));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::Subtype("vdisk".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        if opts.read_write {
            MountOption::RW
        } else {
            MountOption::RO
        },
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;

    let session = Session::new(
        VdiskFs {
            core: Arc::clone(&core),
        },
        &mp,
        &config,
    )
    .map_err(|e| mount_err("mount and FUSE handshake", e))?;
    let (tx, rx) = mpsc::channel();
    let ended = tx.clone();
    let thread = thread::Builder::new()
        .name("vdisk-fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = ended.send(Event::SessionEnded);
            r
        })
        .map_err(|e| mount_err("starting the session thread", e))?;

    let dev = std::fs::metadata(&mp).map(|m| m.dev()).ok();
    if let Some(dev) = dev {
        raise_readahead(dev, opts.max_readahead);
    }
    let shutdown = Arc::new(Shutdown {
        core,
        mountpoint: mp,
        // The kernel names the connection by its dev_t, (major << 20) | minor.
        connection: dev.map(|d| (u64::from(libc::major(d)) << 20) | u64::from(libc::minor(d))),
        events: tx,
    });
    let mut handle = MountHandle {
        shutdown,
        events: rx,
        session: Some(thread),
        signals: None,
    };
    if opts.handle_signals {
        handle.signals = Some(watch_signals(Arc::clone(&handle.shutdown))?);
    }
    Ok(handle)
}

/// Best effort: lets buffered sequential reads use `bytes` of readahead (the kernel offers
/// FUSE only 128 KiB at init; the BDI setting can be raised by root).
fn raise_readahead(dev: u64, bytes: u32) {
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let kb = bytes / 1024;
    let current = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if current.is_some_and(|c| c < kb) {
        if let Err(e) = std::fs::write(&path, kb.to_string()) {
            debug!("raising readahead in {path}: {e}");
        }
    }
}

fn watch_signals(
    shutdown: Arc<Shutdown>,
) -> Result<(signal_hook::iterator::Handle, JoinHandle<()>), FuseError> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(FuseError::Signals)?;
    let handle = signals.handle();
    let thread = thread::Builder::new()
        .name("vdisk-fuse-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!(
                    "signal {sig}: flushing and unmounting {}",
                    shutdown.mountpoint.display()
                );
                if let Err(e) = shutdown.run() {
                    warn!("{e}");
                }
            }
        })
        .map_err(FuseError::Signals)?;
    Ok((handle, thread))
}

impl MountHandle {
    /// The mountpoint (absolute).
    pub fn mountpoint(&self) -> &Path {
        &self.shutdown.mountpoint
    }

    /// Waits until the filesystem is unmounted — by `vdisk umount`/`fusermount3 -u`/`umount`,
    /// by a caught signal, or by [`unmount`](Self::unmount) — and the head is flushed.
    pub fn wait(mut self) -> Result<(), FuseError> {
        self.finish()
    }

    /// Flushes the head and unmounts; if files are still open under the mount, detaches it
    /// and aborts the connection (their pending and later calls fail with ENOTCONN).
    pub fn unmount(mut self) -> Result<(), FuseError> {
        let r = self.shutdown.run();
        let w = self.finish();
        r.and(w)
    }

    fn finish(&mut self) -> Result<(), FuseError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let event = self.events.recv().unwrap_or(Event::GaveUp);
        if let Some((handle, thread)) = self.signals.take() {
            handle.close();
            let _ = thread.join();
        }
        let mountpoint = self.shutdown.mountpoint.clone();
        match event {
            Event::SessionEnded => match session.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(FuseError::Session { mountpoint, source }),
                Err(_) => Err(FuseError::Session {
                    mountpoint,
                    source: io::Error::other("session thread panicked"),
                }),
            },
            Event::GaveUp => {
                // The session's destroy() did not run: flush here so acknowledged writes last.
                self.shutdown
                    .core
                    .flush_head()
                    .map_err(|source| FuseError::Flush {
                        mountpoint: mountpoint.clone(),
                        source,
                    })?;
                Err(FuseError::ShutdownTimedOut {
                    mountpoint,
                    seconds: SHUTDOWN_GRACE.as_secs(),
                })
            }
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.session.is_some() {
            if let Err(e) = self.shutdown.run() {
                warn!("{e}");
            }
            if let Err(e) = self.finish() {
                warn!("{e}");
            }
        }
    }
}
