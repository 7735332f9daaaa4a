//! Helpers of the FUSE, NBD and control-socket tests: long-running `vdisk mount` / `vdisk
//! serve` processes as guards, waiting on conditions, and skipping loudly when a peer (root,
//! /dev/fuse, qemu) is missing.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vdisk_tests::{have, vdisk_bin, vdisk_ok};

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Whether every requirement holds; prints a loud SKIP line naming what is missing.
pub fn require(test: &str, root: bool, fuse: bool, cmds: &[&str]) -> bool {
    let mut missing = Vec::new();
    if root && !is_root() {
        missing.push("root".to_string());
    }
    if fuse && !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    for c in cmds {
        if !have(c) {
            missing.push((*c).to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    eprintln!("\n*** SKIP {test}: missing {} ***\n", missing.join(", "));
    false
}

/// Runs a command, requires success, returns stdout.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command; true on success.
pub fn run_status(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A new bundle of `size` (e.g. "64M") at `dir/name`.
pub fn bundle(dir: &Path, name: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    vdisk_ok(&["create", p.to_str().unwrap(), "--size", size]);
    p
}

/// Writes `data` at `offset` of the head with `vdisk write`.
pub fn write_at(disk: &Path, dir: &Path, offset: u64, data: &[u8]) {
    let f = dir.join(format!("in-{offset}"));
    std::fs::write(&f, data).unwrap();
    vdisk_ok(&[
        "write",
        disk.to_str().unwrap(),
        "--offset",
        &offset.to_string(),
        "--input",
        f.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(f);
}

/// `vdisk read` of a range of the head or a snapshot.
pub fn read_range(disk: &Path, snapshot: Option<&str>, offset: u64, len: u64) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let (o, l) = (offset.to_string(), len.to_string());
    let mut args = vec![
        "read",
        disk.to_str().unwrap(),
        "--offset",
        &o,
        "--length",
        &l,
        "--output",
        out.path().to_str().unwrap(),
    ];
    if let Some(s) = snapshot {
        args.extend(["--snapshot", s]);
    }
    vdisk_ok(&args);
    std::fs::read(out.path()).unwrap()
}

/// A running `vdisk serve`, killed (SIGTERM, then SIGKILL) when dropped.
pub struct Served {
    pub child: Child,
    /// `nbd://127.0.0.1:PORT` (or the nbd+unix URL).
    pub url: String,
    /// Everything the server printed on stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `vdisk serve DISK --listen 127.0.0.1:0 ARGS…` and waits for its address line.
    /// Port 0: the kernel picks a free port, and the server prints the one it got.
    pub fn start(disk: &Path, args: &[&str]) -> Served {
        let mut all = vec!["serve", disk.to_str().unwrap()];
        if !args.contains(&"--socket") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        all.extend(args);
        Self::spawn(&all)
    }

    fn spawn(args: &[&str]) -> Served {
        let mut child = Command::new(vdisk_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vdisk serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split_whitespace().find(|w| {
                    w.starts_with("nbd://")
                        || w.starts_with("nbds://")
                        || w.starts_with("nbd+unix://")
                }) {
                    let _ = tx.send(url.to_string());
                }
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let st = child.wait();
                panic!(
                    "vdisk serve {args:?} did not start ({st:?}): {}",
                    log.lock().unwrap()
                );
            }
        };
        Served { child, url, log }
    }

    /// The URL of a named export.
    pub fn export(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    /// Sends SIGTERM and waits (at most 30 s) for a clean exit; returns the exit success.
    pub fn terminate(&mut self) -> bool {
        signal(self.child.id(), libc::SIGTERM);
        let ok = wait_exit(&mut self.child, Duration::from_secs(30));
        assert!(ok.is_some(), "vdisk serve ignored SIGTERM: {}", self.log());
        ok.unwrap_or(false)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            if wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned; no memory involved.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Waits for a child's exit: Some(success) or None on timeout.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<bool> {
    let mut status = None;
    wait_until(timeout, || match child.try_wait() {
        Ok(Some(s)) => {
            status = Some(s.success());
            true
        }
        Ok(None) => false,
        Err(_) => {
            status = Some(false);
            true
        }
    });
    status
}

/// True while a process exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// A `vdisk mount` (background) that is unmounted when dropped.
pub struct Mounted {
    pub dir: PathBuf,
    pub disk: PathBuf,
    /// Pid of the process serving the mount (from info.json).
    pub pid: u32,
}

impl Mounted {
    /// `vdisk mount DISK DIR ARGS…`: returns once mounted (the command waits for it).
    pub fn start(disk: &Path, dir: &Path, args: &[&str]) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let mut all = vec!["mount", disk.to_str().unwrap(), dir.to_str().unwrap()];
        all.extend(args);
        vdisk_ok(&all);
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
        let pid = info["pid"].as_u64().unwrap() as u32;
        Mounted {
            dir: dir.to_path_buf(),
            disk: disk.to_path_buf(),
            pid,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// True while the mount is in /proc/self/mountinfo.
    pub fn is_mounted(&self) -> bool {
        is_mountpoint(&self.dir)
    }
}

/// True when something is mounted at `dir`.
pub fn is_mountpoint(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let want = dir.to_str().unwrap_or("").replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.is_mounted() {
            let d = self.dir.to_str().unwrap_or("");
            if !run_status(vdisk_bin().to_str().unwrap_or("vdisk"), &["umount", d]) {
                let _ = run_status("umount", &["-l", d]);
            }
        }
        wait_until(Duration::from_secs(20), || !alive(self.pid));
    }
}

/// A loop mount of an image file, unmounted when dropped.
pub struct LoopMount {
    pub dir: PathBuf,
}

impl LoopMount {
    pub fn new(image: &Path, dir: &Path, read_only: bool) -> LoopMount {
        std::fs::create_dir_all(dir).unwrap();
        let opts = if read_only { "loop,ro" } else { "loop" };
        run_ok(
            "mount",
            &["-o", opts, image.to_str().unwrap(), dir.to_str().unwrap()],
        );
        LoopMount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap_or("");
        if !run_status("umount", &[d]) {
            let _ = run_status("umount", &["-l", d]);
        }
    }
}
