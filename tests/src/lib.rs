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
