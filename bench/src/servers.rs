//! Long-running peers of the NBD and FUSE groups: `vdisk serve`, `vdisk mount`, `qemu-nbd`,
//! `qemu-storage-daemon`'s FUSE export, and the reader loops they are measured with.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `vdisk` binary: `$VDISK_BIN`, else next to this benchmark's binary.
pub fn vdisk_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("VDISK_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("vdisk"))
        .context("no directory of the benchmark binary")?;
    if !bin.exists() {
        bail!(
            "{} missing: build it (cargo build --release --bins) or set VDISK_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// True when a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Peer {
    child: Child,
    /// `nbd://…` URL, or the path of a FUSE-exported file.
    pub target: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if !wait_for(Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `vdisk serve BUNDLE --listen 127.0.0.1:0 ARGS`, ready when it printed its address.
pub fn vdisk_serve(bundle: &Path, args: &[&str]) -> Result<Peer> {
    let mut child = Command::new(vdisk_bin()?)
        .arg("serve")
        .arg(bundle)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting vdisk serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("nbd://")) {
                let _ = tx.send(url.to_string());
            } else {
                eprintln!("  [vdisk serve] {line}");
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(target) => Ok(Peer { child, target }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("vdisk serve {} did not start", bundle.display())
        }
    }
}

/// `qemu-nbd` serving `image` (format `fmt`, its backing chain included) on a free port.
pub fn qemu_nbd(image: &Path, fmt: &str) -> Result<Peer> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("qemu-nbd")
        .args(["-f", fmt, "-t", "-b", "127.0.0.1", "-p", &port.to_string()])
        .args(["-x", "", "--cache=writeback", "--aio=threads"])
        .arg(image)
        .stdout(Stdio::null())
        .spawn()
        .context("starting qemu-nbd")?;
    let peer = Peer {
        child,
        target: format!("nbd://127.0.0.1:{port}"),
    };
    if !wait_for(Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        bail!("qemu-nbd did not listen on port {port}");
    }
    Ok(peer)
}

/// `vdisk mount BUNDLE DIR --foreground` (read-only); the target is `DIR/head.raw`.
pub fn vdisk_mount(bundle: &Path, dir: &Path) -> Result<Peer> {
    std::fs::create_dir_all(dir)?;
    let child = Command::new(vdisk_bin()?)
        .arg("mount")
        .arg(bundle)
        .arg(dir)
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting vdisk mount")?;
    let head = dir.join("head.raw");
    let peer = Peer {
        child,
        target: head.display().to_string(),
    };
    if !wait_for(Duration::from_secs(20), || head.exists()) {
        bail!("vdisk mount of {} did not show head.raw", bundle.display());
    }
    Ok(peer)
}

/// qemu-storage-daemon exporting `image` (qcow2, with its backing chain) read-only over FUSE
/// on the regular file `at`.
pub fn qsd_fuse(image: &Path, at: &Path, size: u64) -> Result<Peer> {
    File::create(at)?;
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=off",
            image.display()
        ))
        .args(["--blockdev", "driver=qcow2,node-name=disk,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=fuse,id=exp0,node-name=disk,mountpoint={},writable=off",
            at.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .context("starting qemu-storage-daemon")?;
    let peer = Peer {
        child,
        target: at.display().to_string(),
    };
    if !wait_for(Duration::from_secs(20), || {
        std::fs::metadata(at)
            .map(|m| m.len() == size)
            .unwrap_or(false)
    }) {
        bail!("qemu-storage-daemon did not export {}", at.display());
    }
    Ok(peer)
}

/// `qemu-img bench` of reads on an NBD URL, `count` requests of `block` bytes, the offset
/// advancing by `step`, `queue` requests in flight; returns seconds (qemu-img's own timer).
pub fn qemu_bench_nbd(url: &str, count: u64, block: u64, step: u64, queue: u32) -> Result<f64> {
    let o = Command::new("qemu-img")
        .args(["bench", "-f", "raw"])
        .args(["-d", &queue.to_string(), "-c", &count.to_string()])
        .args(["-s", &block.to_string(), "-S", &step.to_string()])
        .arg(url)
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        bail!(
            "qemu-img bench {url}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    out.lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|l| l.trim_end_matches(" seconds.").trim().parse().ok())
        .with_context(|| format!("qemu-img bench printed no time: {out}"))
}

/// Drops a file's cached pages (FUSE files: the next read goes to the server).
pub fn drop_cache(f: &File) {
    // SAFETY: fadvise on an open descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// The same reader loop for every FUSE peer: `count` preads of `block` bytes, the offset
/// advancing by `step` modulo `size`, on a freshly opened file with its cache dropped. A
/// scattered pattern (`step != block`) turns the kernel's readahead off, so every read is one
/// request to the server, not a hit in pages read ahead. Returns operations per second.
pub fn read_file_loop(path: &Path, count: u64, block: usize, step: u64, size: u64) -> Result<f64> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    drop_cache(&f);
    if step != block as u64 {
        // SAFETY: fadvise on an open descriptor; no memory is passed.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    }
    read_loop(count, block, step, size, |b, o| Ok(f.read_exact_at(b, o)?))
}

/// The loop itself, over any reader.
pub fn read_loop(
    count: u64,
    block: usize,
    step: u64,
    size: u64,
    mut read: impl FnMut(&mut [u8], u64) -> Result<()>,
) -> Result<f64> {
    let mut buf = vec![0u8; block];
    let mut off = 0u64;
    let t = Instant::now();
    for _ in 0..count {
        read(&mut buf, off)?;
        off = (off + step) % size;
    }
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

/// Median of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
