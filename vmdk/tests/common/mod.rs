//! Helpers shared by the integration tests.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use vdisk_vmdk::{BlockDevice, Extent};

/// The interop corpus (`VDISK_CORPUS`, default `../shared/corpus` from the workspace root).
pub fn corpus() -> PathBuf {
    match std::env::var_os("VDISK_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    }
}

/// sha256 of the whole virtual content of `src`, read in 1 MiB pieces.
pub fn sha256_of(src: &dyn BlockDevice) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < src.size() {
        let n = (src.size() - pos).min(buf.len() as u64) as usize;
        src.read_at(&mut buf[..n], pos).unwrap();
        h.update(&buf[..n]);
        pos += n as u64;
    }
    format!("{:x}", h.finalize())
}

/// The whole content of `src`.
pub fn read_all(src: &dyn BlockDevice) -> Vec<u8> {
    let mut v = vec![0u8; src.size() as usize];
    src.read_at(&mut v, 0).unwrap();
    v
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A raw test image: `size` bytes, random 64 KiB chunks at the given 64 KiB indices, plus
/// a few odd-sized writes so partial grains and sector tails get exercised.
pub fn make_raw(path: &Path, size: u64, chunks: &[u64]) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for (i, &c) in chunks.iter().enumerate() {
        let off = (c * 65536) as usize;
        if off >= v.len() {
            continue;
        }
        let n = 65536.min(v.len() - off);
        v[off..off + n].copy_from_slice(&pseudo_random(i as u64 + 1, n));
    }
    if v.len() > 70_000 {
        v[65_537..65_600].copy_from_slice(&pseudo_random(99, 63));
    }
    std::fs::write(path, &v).unwrap();
    v
}

/// An in-memory block source with an explicit allocation map.
pub struct MemSource {
    pub data: Vec<u8>,
    pub map: Vec<Extent>,
}

impl BlockDevice for MemSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn extents(&self, offset: u64, length: u64) -> std::io::Result<Vec<Extent>> {
        let end = offset + length;
        Ok(self
            .map
            .iter()
            .filter(|e| e.end() > offset && e.offset < end)
            .map(|e| {
                let s = e.offset.max(offset);
                Extent::new(s, e.end().min(end) - s, e.kind)
            })
            .collect())
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vmdk-test")
        .tempdir()
        .unwrap()
}
