//! Errors of mounting, unmounting and running a mount.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a mount, an unmount or a mount's session failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FuseError {
    /// The mountpoint is missing or not a directory.
    #[error("mountpoint {mountpoint}: not a directory")]
    MountpointNotDirectory {
        /// The path given.
        mountpoint: PathBuf,
    },
    /// A step of mounting failed (opening /dev/fuse, mount(2) or fusermount3, the handshake).
    #[error("mounting on {mountpoint}: {step}")]
    Mount {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// Which step failed.
        step: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Nothing is mounted there.
    #[error("{mountpoint} is not a mountpoint")]
    NotMounted {
        /// The path given.
        mountpoint: PathBuf,
    },
    /// Something other than a FUSE filesystem is mounted there; refused so `vdisk umount`
    /// cannot unmount an unrelated filesystem.
    #[error("{mountpoint} holds a {fstype} filesystem, not a vdisk FUSE mount")]
    NotFuseMount {
        /// The path given.
        mountpoint: PathBuf,
        /// Its filesystem type from /proc/self/mountinfo.
        fstype: String,
    },
    /// Files under the mount are still open.
    #[error("{mountpoint} is busy: files under it are open (close them, or unmount lazily)")]
    Busy {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Unmounting failed for another reason.
    #[error("unmounting {mountpoint}: {detail}")]
    Unmount {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// What each method tried answered.
        detail: String,
    },
    /// Flushing the head before unmounting failed: writes may not be durable.
    #[error("flushing the head before unmounting {mountpoint}")]
    Flush {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// The device's error.
        #[source]
        source: io::Error,
    },
    /// The session serving the mount ended with an error.
    #[error("serving {mountpoint}")]
    Session {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// The session's error.
        #[source]
        source: io::Error,
    },
    /// After an unmount request, request threads did not stop in time (a device call hangs);
    /// the head was flushed, and exiting the process ends the connection.
    #[error("{mountpoint}: request threads still busy {seconds} s after unmounting")]
    ShutdownTimedOut {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// How long we waited.
        seconds: u64,
    },
    /// Installing the SIGINT/SIGTERM handler failed.
    #[error("installing the SIGINT/SIGTERM handler")]
    Signals(#[source] io::Error),
    /// A step of going to the background failed.
    #[error("daemonizing: {step}")]
    Daemonize {
        /// Which step failed.
        step: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
}
