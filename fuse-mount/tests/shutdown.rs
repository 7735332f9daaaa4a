//! Ending a mount served by another process: SIGTERM while readers hammer the mount, and
//! `vdisk_fuse::unmount` from outside. The serving process is this test binary re-run as
//! the ignored `helper_serve_until_signal` test.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vdisk_blockdev::{Export, SnapshotEntry, Volume};
use vdisk_fuse::{mount, MountOptions};

const HELPER_ENV: &str = "VDISK_FUSE_HELPER_DIR";
const SIZE: u64 = 64 << 20;

/// A source whose head is a plain file and which has no snapshots.
struct FileSource(Arc<FileDevice>);

impl Volume for FileSource {
    fn location(&self) -> String {
        "test".into()
    }
    fn head(&self) -> Option<Arc<dyn Export>> {
        Some(Arc::clone(&self.0) as Arc<dyn Export>)
    }
    fn head_writable(&self) -> bool {
        true
    }
    fn snapshots(&self) -> std::io::Result<Vec<SnapshotEntry>> {
        Ok(Vec::new())
    }
    fn open_snapshot(&self, _: &str) -> std::io::Result<Arc<dyn Export>> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn generation(&self) -> u64 {
        0
    }
    fn info_json(&self) -> String {
        "{}".into()
    }
}

/// Not a test of its own: the process that serves the mount for the tests below.
#[test]
#[ignore = "helper process for the shutdown tests"]
fn helper_serve_until_signal() {
    let Some(dir) = std::env::var_os(HELPER_ENV).map(PathBuf::from) else {
        return;
    };
    let dev = Arc::new(FileDevice::open(&dir.join("head.img")).unwrap());
    let opts = MountOptions {
        read_write: true,
        handle_signals: true,
        ..MountOptions::default()
    };
    let handle = mount(Arc::new(FileSource(dev)), &dir.join("m"), opts).unwrap();
    match handle.wait() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("helper: {e}");
            std::process::exit(2)
        }
    }
}

fn spawn_helper(dir: &Path) -> Child {
    require_fuse();
    let img = dir.join("head.img");
    let f = File::create(&img).unwrap();
    f.set_len(SIZE).unwrap();
    f.write_all_at(&pattern(21, 8 << 20), 0).unwrap();
    fs::create_dir(dir.join("m")).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_serve_until_signal",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, dir)
        .spawn()
        .unwrap();
    let head = dir.join("m/head.raw");
    assert!(
        wait_for(Duration::from_secs(10), || head.exists()),
        "the helper mounted"
    );
    child
}

/// Waits for `child` to exit, killing it after `timeout`; returns its exit code.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn sigterm_under_load_exits_flushes_and_frees_the_mountpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = spawn_helper(dir);
    let head = dir.join("m/head.raw");

    // A write acknowledged before the signal must be in the file afterwards.
    let written = pattern(22, 3 << 20);
    let f = OpenOptions::new().write(true).open(&head).unwrap();
    f.write_all_at(&written, 20 << 20).unwrap();
    drop(f);

    // Readers: buffered sequential, and O_DIRECT (always a request in flight).
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for direct in [false, true] {
        let (stop, reads, head) = (Arc::clone(&stop), Arc::clone(&reads), head.clone());
        readers.push(std::thread::spawn(move || {
            let flags = if direct { libc::O_DIRECT } else { 0 };
            let Ok(mut f) = OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(&head)
            else {
                return;
            };
            let mut buf = Aligned::new(1 << 20);
            while !stop.load(Ordering::Relaxed) {
                match f.read(buf.buf(1 << 20)) {
                    Ok(0) => {
                        let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
                    }
                    Ok(_) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return, // ENOTCONN once the connection is aborted
                }
            }
        }));
    }
    assert!(
        wait_for(Duration::from_secs(5), || reads.load(Ordering::Relaxed)
            > 20),
        "readers are reading"
    );

    // SAFETY: signals our own child by pid; no memory involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = wait_exit(&mut child, Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        code,
        Some(0),
        "the serving process exits cleanly after SIGTERM"
    );
    assert!(!is_mountpoint(&dir.join("m")), "the mountpoint is freed");
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in readers {
        while !r.is_finished() {
            assert!(
                Instant::now() < deadline,
                "a reader hangs after the unmount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r.join().unwrap();
    }
    let mut got = vec![0; written.len()];
    File::open(dir.join("head.img"))
        .unwrap()
        .read_exact_at(&mut got, 20 << 20)
        .unwrap();
    assert!(got == written, "the acknowledged write survived");
}

#[test]
fn external_unmount_ends_the_serving_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = spawn_helper(dir);
    let mp = dir.join("m");
    // Busy while a file is open; refused outright for a non-FUSE path.
    let f = File::open(mp.join("head.raw")).unwrap();
    assert!(matches!(
        vdisk_fuse::unmount(&mp),
        Err(vdisk_fuse::FuseError::Busy { .. })
    ));
    drop(f);
    assert!(matches!(
        vdisk_fuse::unmount(dir),
        Err(vdisk_fuse::FuseError::NotMounted { .. })
    ));
    vdisk_fuse::unmount(&mp).unwrap();
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
    assert!(!is_mountpoint(&mp));
}
