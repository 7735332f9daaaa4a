//! Read throughput through the mount vs the device directly vs the raw file, printed as a
//! table. Run with:
//!
//! ```text
//! cargo test --release -p vdisk-fuse --test bench -- --ignored --nocapture
//! ```
//!
//! The backing file sits in the page cache (written just before), so the figures compare IO
//! paths, not the disk: the mount's own page cache is dropped before each buffered pass.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vdisk_blockdev::{BlockDevice, Export, SnapshotEntry, Volume};
use vdisk_fuse::{mount, MountOptions};

const SIZE: u64 = 256 << 20;
const SEQ_BLOCK: usize = 1 << 20;
const RAND_BLOCK: usize = 4096;
const RAND_TIME: Duration = Duration::from_secs(2);

struct FileSource(Arc<FileDevice>);

impl Volume for FileSource {
    fn location(&self) -> String {
        "test".into()
    }
    fn head(&self) -> Option<Arc<dyn Export>> {
        Some(Arc::clone(&self.0) as Arc<dyn Export>)
    }
    fn head_writable(&self) -> bool {
        false
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

fn drop_cache(f: &File) {
    // SAFETY: fadvise on an open descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn mb_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

/// Sequential 1 MiB reads of the whole size with `read`.
fn seq_file(path: &Path, direct: bool, evict: bool) -> f64 {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)
        .unwrap();
    if evict {
        drop_cache(&f);
    }
    let mut b = Aligned::new(SEQ_BLOCK);
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(b.buf(SEQ_BLOCK)).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    mb_per_s(total, start.elapsed())
}

fn seq_device(dev: &dyn BlockDevice) -> f64 {
    let mut b = vec![0u8; SEQ_BLOCK];
    let start = Instant::now();
    let mut off = 0;
    while off < SIZE {
        dev.read_at(&mut b, off).unwrap();
        off += SEQ_BLOCK as u64;
    }
    mb_per_s(SIZE, start.elapsed())
}

/// Random aligned 4 KiB reads for `RAND_TIME` on `threads` threads; returns thousands of IOPS.
fn random(threads: usize, read: impl Fn(&mut [u8], u64) + Sync) -> f64 {
    let count = std::sync::atomic::AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (read, count) = (&read, &count);
            s.spawn(move || {
                let mut b = Aligned::new(RAND_BLOCK);
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
                let blocks = SIZE / RAND_BLOCK as u64;
                let mut n = 0;
                while start.elapsed() < RAND_TIME {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    read(b.buf(RAND_BLOCK), (x % blocks) * RAND_BLOCK as u64);
                    n += 1;
                }
                count.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    count.into_inner() as f64 / start.elapsed().as_secs_f64() / 1e3
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture, preferably --release"]
fn bench_read_throughput() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.raw");
    {
        let f = File::create(&img).unwrap();
        let chunk = pattern(99, 8 << 20);
        for i in 0..(SIZE / chunk.len() as u64) {
            f.write_all_at(&chunk, i * chunk.len() as u64).unwrap();
        }
    }
    let dev = Arc::new(FileDevice::open(&img).unwrap());
    let mp = tmp.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let mut opts = MountOptions::default();
    // Knobs for exploring: VDISK_BENCH_THREADS, VDISK_BENCH_READAHEAD (bytes).
    if let Some(t) = std::env::var("VDISK_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.threads = t;
    }
    if let Some(r) = std::env::var("VDISK_BENCH_READAHEAD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.max_readahead = r;
    }
    println!(
        "\nvdisk mount options: {} threads, max_readahead {} KiB",
        opts.threads,
        opts.max_readahead >> 10
    );
    let handle = mount(Arc::new(FileSource(Arc::clone(&dev))), &mp, opts).unwrap();
    watch(&mp);
    let head = mp.join("head.raw");
    let qsd = QsdExport::start(&img, &tmp.path().join("qsd.raw"));
    // Warm the backing file's page cache so every path reads from memory.
    seq_device(dev.as_ref());

    // (label, path, evict the path's page cache before buffered passes)
    let mut targets = vec![
        ("raw file", img.clone(), false),
        ("vdisk mount head.raw", head.clone(), true),
    ];
    if let Some(q) = &qsd {
        targets.push(("qemu-storage-daemon FUSE export", q.path.clone(), true));
    }
    println!(
        "vdisk-fuse read bench: {} MiB file, page-cached backing file",
        SIZE >> 20
    );
    println!("{:<52} {:>10}", "sequential 1 MiB reads", "MB/s");
    println!(
        "{:<52} {:>10.0}",
        "BlockDevice::read_at (pread on the file)",
        seq_device(dev.as_ref())
    );
    for (label, path, evict) in &targets {
        println!(
            "{:<52} {:>10.0}",
            format!("{label}, read()"),
            seq_file(path, false, *evict)
        );
        if *evict {
            println!(
                "{:<52} {:>10.0}",
                format!("{label}, O_DIRECT read()"),
                seq_file(path, true, false)
            );
        }
    }
    println!("{:<52} {:>10}", "random 4 KiB reads", "kIOPS");
    for threads in [1, 4] {
        let r = random(threads, |b, o| dev.read_at(b, o).unwrap());
        println!(
            "{:<52} {:>10.1}",
            format!("BlockDevice::read_at, {threads} thread(s)"),
            r
        );
        for (label, path, evict) in &targets {
            let direct = if *evict { libc::O_DIRECT } else { 0 };
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(direct)
                .open(path)
                .unwrap();
            let r = random(threads, |b, o| f.read_exact_at(b, o).unwrap());
            let how = if *evict { "O_DIRECT pread" } else { "pread" };
            println!(
                "{:<52} {:>10.1}",
                format!("{label}, {how}, {threads} thread(s)"),
                r
            );
        }
    }
    drop(qsd);
    handle.unmount().unwrap();
}

/// The same file exported by qemu-storage-daemon over FUSE (the peer of DESIGN.md §6), if
/// qemu-storage-daemon is installed.
struct QsdExport {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl QsdExport {
    fn start(img: &Path, at: &Path) -> Option<Self> {
        File::create(at).unwrap();
        let child = std::process::Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={},cache.direct=off",
                img.display()
            ))
            .args(["--blockdev", "driver=raw,node-name=disk,file=file0"])
            .arg("--export")
            .arg(format!(
                "type=fuse,id=exp0,node-name=disk,mountpoint={},writable=off",
                at.display()
            ))
            .spawn()
            .ok()?;
        let q = Self {
            child,
            path: at.to_path_buf(),
        };
        if !wait_for(Duration::from_secs(10), || {
            std::fs::metadata(at)
                .map(|m| m.len() == SIZE)
                .unwrap_or(false)
        }) {
            println!(
                "qemu-storage-daemon did not export {}: left out",
                at.display()
            );
            return None;
        }
        Some(q)
    }
}

impl Drop for QsdExport {
    fn drop(&mut self) {
        // SAFETY: signals our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
