//! Going to the background the way `sshfs` does: the command returns once the mount is
//! ready (exit 0) or has failed (exit 1 with the error), while a child process serves it.
//!
//! ```no_run
//! # fn open_and_mount() -> Result<vdisk_fuse::MountHandle, String> { unimplemented!() }
//! // Before opening the disk or starting any thread:
//! // SAFETY: no thread has been started yet.
//! let daemon = unsafe { vdisk_fuse::daemonize() }.expect("fork");
//! match open_and_mount() {
//!     Ok(handle) => {
//!         daemon.ready();
//!         let _ = handle.wait();
//!     }
//!     Err(e) => daemon.failed(&e),
//! }
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::FuseError;

/// The child's end of the readiness pipe to the waiting parent.
#[derive(Debug)]
pub struct Daemon {
    pipe: File,
}

fn sys(step: &'static str, rc: libc::c_int) -> Result<libc::c_int, FuseError> {
    if rc < 0 {
        Err(FuseError::Daemonize {
            step,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(rc)
    }
}

/// Forks: the parent waits for the child's [`Daemon::ready`] or [`Daemon::failed`] and exits
/// with 0 or 1; only the child returns, in a new session, detached from the terminal.
///
/// # Safety
/// The process must have a single thread (call it before opening the disk, starting a
/// logger thread or mounting): after `fork` the child continues with only the calling thread,
/// and any lock another thread held would stay locked forever.
pub unsafe fn daemonize() -> Result<Daemon, FuseError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    sys("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees the process is single-threaded.
    let pid = sys("fork", unsafe { libc::fork() })?;
    if pid > 0 {
        drop(write_end);
        parent_wait(File::from(read_end));
    }
    drop(read_end);
    // SAFETY: setsid has no memory effects; failure only means we already lead a session.
    let _ = unsafe { libc::setsid() };
    Ok(Daemon {
        pipe: File::from(write_end),
    })
}

/// In the parent: relays the child's verdict as the exit status. Never returns.
fn parent_wait(mut pipe: File) -> ! {
    let mut msg = Vec::new();
    let _ = Read::by_ref(&mut pipe)
        .take(64 * 1024)
        .read_to_end(&mut msg);
    match msg.split_first() {
        Some((0, _)) => std::process::exit(0),
        Some((_, text)) => {
            eprintln!("{}", String::from_utf8_lossy(text));
            std::process::exit(1)
        }
        None => {
            eprintln!("the mount process exited before the mount was ready");
            std::process::exit(1)
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null: the terminal may go away.
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open across the call.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

impl Daemon {
    /// Tells the parent the mount is up (it exits 0) and detaches from the terminal.
    pub fn ready(mut self) {
        let _ = self.pipe.write_all(&[0]);
        detach_stdio();
    }

    /// Tells the parent the mount failed; it prints `message` and exits 1.
    pub fn failed(mut self, message: &str) {
        let _ = self.pipe.write_all(&[1]);
        let _ = self.pipe.write_all(message.as_bytes());
    }
}
