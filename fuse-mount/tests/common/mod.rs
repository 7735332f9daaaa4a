//! Test sources: an in-memory device with a 4 KiB allocation map, a file-backed device, and a
//! `Volume` whose "snapshot" copies the head and bumps the generation.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use vdisk_blockdev::{BlockDevice, Export, Extent, ExtentKind, SnapshotEntry, Volume};

pub const BLOCK: u64 = 4096;

/// Bytes in memory; a 4 KiB block is "data" once written, a hole before.
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
    allocated: RwLock<Vec<bool>>,
    read_only: bool,
    pub flushes: AtomicU64,
}

impl MemDevice {
    pub fn new(size: u64) -> Self {
        Self {
            bytes: RwLock::new(vec![0; size as usize]),
            allocated: RwLock::new(vec![false; size.div_ceil(BLOCK) as usize]),
            read_only: false,
            flushes: AtomicU64::new(0),
        }
    }

    /// A read-only copy (what a snapshot of this head holds).
    pub fn frozen_copy(&self) -> Self {
        Self {
            bytes: RwLock::new(self.bytes.read().unwrap().clone()),
            allocated: RwLock::new(self.allocated.read().unwrap().clone()),
            read_only: true,
            flushes: AtomicU64::new(0),
        }
    }

    pub fn contents(&self) -> Vec<u8> {
        self.bytes.read().unwrap().clone()
    }
}

impl Export for MemDevice {}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.bytes.read().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let b = self.bytes.read().unwrap();
        let o = offset as usize;
        let src = b
            .get(o..o + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let mut b = self.bytes.write().unwrap();
        let o = offset as usize;
        b.get_mut(o..o + buf.len())
            .ok_or(io::ErrorKind::InvalidInput)?
            .copy_from_slice(buf);
        let mut a = self.allocated.write().unwrap();
        if !buf.is_empty() {
            for blk in (offset / BLOCK)..=((offset + buf.len() as u64 - 1) / BLOCK) {
                a[blk as usize] = true;
            }
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let a = self.allocated.read().unwrap();
        let end = (offset + len).min(self.size());
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = a[(pos / BLOCK) as usize];
            let next = ((pos / BLOCK + 1) * BLOCK).min(end);
            match out.last_mut() {
                Some(e) if e.kind.is_hole() != data => e.length += next - pos,
                _ => out.push(Extent::new(
                    pos,
                    next - pos,
                    if data {
                        ExtentKind::Data
                    } else {
                        ExtentKind::Unallocated
                    },
                )),
            }
            pos = next;
        }
        Ok(out)
    }
}

/// A plain file as a device; allocation from SEEK_DATA/SEEK_HOLE of the file.
pub struct FileDevice {
    pub file: File,
    pub path: PathBuf,
    size: u64,
}

impl FileDevice {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
        })
    }
}

fn seek(fd: i32, off: u64, whence: i32) -> Option<u64> {
    // SAFETY: lseek on a descriptor the caller keeps open; no memory involved.
    let r = unsafe { libc::lseek(fd, off as i64, whence) };
    (r >= 0).then_some(r as u64)
}

impl Export for FileDevice {}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let fd = self.file.as_raw_fd();
        let end = (offset + len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data_at = seek(fd, pos, libc::SEEK_DATA).unwrap_or(end).min(end);
            if data_at > pos {
                out.push(Extent::new(pos, data_at - pos, ExtentKind::Unallocated));
            }
            if data_at >= end {
                break;
            }
            let hole_at = seek(fd, data_at, libc::SEEK_HOLE).unwrap_or(end).min(end);
            out.push(Extent::new(data_at, hole_at - data_at, ExtentKind::Data));
            pos = hole_at;
        }
        Ok(out)
    }
}

/// A disk: a head and snapshots, with a generation bumped by every snapshot change.
pub struct TestSource {
    pub head: RwLock<Option<Arc<MemDevice>>>,
    pub snaps: Mutex<Vec<(SnapshotEntry, Arc<dyn Export>)>>,
    pub generation: AtomicU64,
    pub writable: bool,
    next_id: AtomicU64,
}

impl TestSource {
    pub fn new(head: MemDevice, writable: bool) -> Arc<Self> {
        Arc::new(Self {
            head: RwLock::new(Some(Arc::new(head))),
            snaps: Mutex::new(Vec::new()),
            generation: AtomicU64::new(1),
            writable,
            next_id: AtomicU64::new(100),
        })
    }

    pub fn head_device(&self) -> Arc<MemDevice> {
        self.head.read().unwrap().clone().unwrap()
    }

    /// Copies the head into a new snapshot `name` created at `created`.
    pub fn snapshot_at(&self, name: &str, created: SystemTime) -> u64 {
        let copy = Arc::new(self.head_device().frozen_copy());
        self.add_snapshot(name, created, copy)
    }

    pub fn snapshot(&self, name: &str) -> u64 {
        self.snapshot_at(name, SystemTime::now())
    }

    pub fn add_snapshot(&self, name: &str, created: SystemTime, dev: Arc<dyn Export>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let entry = SnapshotEntry {
            name: name.into(),
            key: id,
            created,
            size: dev.size(),
        };
        self.snaps.lock().unwrap().push((entry, dev));
        self.generation.fetch_add(1, Ordering::SeqCst);
        id
    }

    pub fn delete_snapshot(&self, name: &str) {
        self.snaps.lock().unwrap().retain(|(e, _)| e.name != name);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Volume for TestSource {
    fn location(&self) -> String {
        "test".into()
    }
    fn head(&self) -> Option<Arc<dyn Export>> {
        self.head
            .read()
            .unwrap()
            .clone()
            .map(|d| d as Arc<dyn Export>)
    }
    fn head_writable(&self) -> bool {
        self.writable
    }
    fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>> {
        Ok(self
            .snaps
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect())
    }
    fn open_snapshot(&self, name: &str) -> io::Result<Arc<dyn Export>> {
        self.snaps
            .lock()
            .unwrap()
            .iter()
            .find(|(e, _)| e.name == name)
            .map(|(_, d)| Arc::clone(d))
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    fn info_json(&self) -> String {
        format!("{{\"snapshots\": {}}}\n", self.snaps.lock().unwrap().len())
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Fails the test unless FUSE and root are available: these tests are the point.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (modprobe fuse)"
    );
    assert_eq!(
        // SAFETY: geteuid cannot fail and touches no memory.
        unsafe { libc::geteuid() },
        0,
        "the FUSE tests run as root (loop mounts, mount(2))"
    );
}

/// Whether a filesystem is mounted at `path`, from /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Waits for `cond` up to `timeout`, polling.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop mount that is undone on drop, even when the test fails.
pub struct LoopMount(pub PathBuf);

impl LoopMount {
    pub fn new(image: &Path, at: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &["-o", opts, image.to_str().unwrap(), at.to_str().unwrap()],
        );
        Self(at.to_path_buf())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// FUSE connections of the mounts made by this test process (fusectl names).
static CONNECTIONS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static WATCHDOG: std::sync::Once = std::sync::Once::new();
/// A test process still running after this long is hung.
const WATCHDOG_AFTER: Duration = Duration::from_secs(300);

/// Registers the mount at `mp` with the watchdog. A FUSE server and its client in one process
/// can deadlock on a bug (a request read by a thread that then dies is waited for
/// uninterruptibly), which would hang CI; the watchdog aborts our connections and exits.
pub fn watch(mp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mp).unwrap().dev();
    let conn = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
    CONNECTIONS.lock().unwrap().push(conn);
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(WATCHDOG_AFTER);
            eprintln!(
                "watchdog: tests still running after {WATCHDOG_AFTER:?}; aborting FUSE connections"
            );
            let conns = match CONNECTIONS.lock() {
                Ok(c) => c.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let fusectl = "/sys/fs/fuse/connections";
            if std::fs::read_dir(fusectl).map_or(true, |mut d| d.next().is_none()) {
                let _ = std::process::Command::new("mount")
                    .args(["-t", "fusectl", "fusectl", fusectl])
                    .status();
            }
            for c in conns {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{c}/abort"), "1");
            }
            std::process::exit(101);
        });
    });
}

/// A page-aligned buffer (O_DIRECT needs one).
pub struct Aligned(Vec<u8>, usize);

impl Aligned {
    pub fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let off = v.as_ptr().align_offset(4096);
        Self(v, off)
    }
    pub fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.0[self.1..self.1 + len]
    }
}
