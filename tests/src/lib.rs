//! Helpers shared by the cross-crate, CLI and interop tests in `tests/tests/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `vdisk` binary built for this test run (release or debug, next to the test).
pub fn vdisk_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VDISK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/test-xxx -> target/<profile>/vdisk
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("vdisk");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build -p vdisk-cli, same profile as the tests)",
        bin.display()
    );
    bin
}

/// Run `vdisk ARGS`.
pub fn vdisk(args: &[&str]) -> Output {
    Command::new(vdisk_bin())
        .args(args)
        .output()
        .expect("run vdisk")
}

/// Run `vdisk ARGS` and require success; returns stdout.
pub fn vdisk_ok(args: &[&str]) -> String {
    let o = vdisk(args);
    assert!(
        o.status.success(),
        "vdisk {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run `vdisk ARGS`, require failure without a panic; returns stderr.
pub fn vdisk_err(args: &[&str]) -> String {
    let o = vdisk(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "vdisk {args:?} succeeded unexpectedly");
    assert!(!err.contains("panicked"), "vdisk {args:?} panicked: {err}");
    assert!(
        !err.contains("RUST_BACKTRACE"),
        "vdisk {args:?} panicked: {err}"
    );
    err
}

/// Deterministic pseudo-random bytes.
pub fn rnd(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// True when a command exists on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The shared interop corpus (env `VDISK_CORPUS`, default `../shared/corpus` from the
/// workspace root).
pub fn corpus_dir() -> PathBuf {
    match std::env::var("VDISK_CORPUS") {
        Ok(p) => PathBuf::from(p),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Helpers of the VMM tests: a guest's serial log, its progress and its final hash.
pub mod vm {
    use std::path::Path;
    use std::process::Child;
    use std::time::{Duration, Instant};

    /// True when /dev/kvm exists; else says loudly that the VMM tests are skipped.
    pub fn kvm() -> bool {
        if Path::new("/dev/kvm").exists() {
            return true;
        }
        eprintln!("\n*** SKIPPED: no /dev/kvm on this machine: the VMM tests did not run ***\n");
        false
    }

    /// The guest's final hash in a serial log.
    pub fn hash_of(log: &Path) -> Option<String> {
        let s = std::fs::read_to_string(log).ok()?;
        let i = s.rfind("DONE hash=")?;
        Some(s.get(i + 10..i + 26)?.to_string())
    }

    /// The last `progress R/N` of a serial log as a fraction.
    pub fn progress_of(log: &Path) -> f64 {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        s.lines()
            .rev()
            .find_map(|l| {
                let (a, b) = l.strip_prefix("progress ")?.split_once('/')?;
                Some(a.parse::<f64>().ok()? / b.parse::<f64>().ok()?)
            })
            .unwrap_or(0.0)
    }

    /// Wait until the guest logged `want` of its rounds (panics if `child` exits or after 120 s).
    pub fn wait_progress(log: &Path, want: f64, child: &mut Child) {
        let t = Instant::now();
        while progress_of(log) < want {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the VMM exited before {want}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "no progress to {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
