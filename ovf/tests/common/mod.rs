//! Shared helpers of the integration tests: an in-memory disk and a tar builder.
#![allow(dead_code)]

use std::io;
use std::path::Path;

use vdisk_ovf::tar;
use vdisk_vmdk::{BlockDevice, Extent, ExtentKind};

/// An in-memory disk: `Zero` where a 64 KiB block is all zeros, `Data` elsewhere.
pub struct MemDisk(pub Vec<u8>);

const BLK: u64 = 64 * 1024;

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let end = (offset + length).min(self.size());
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let next = ((at / BLK + 1) * BLK).min(end);
            let zero = self.0[at as usize..next as usize].iter().all(|b| *b == 0);
            let kind = if zero {
                ExtentKind::Zero
            } else {
                ExtentKind::Data
            };
            match out.last_mut() {
                Some(l) if l.kind == kind => l.length += next - at,
                _ => out.push(Extent::new(at, next - at, kind)),
            }
            at = next;
        }
        Ok(out)
    }
}

/// A disk of `size` bytes with pseudo-random data in a few places.
pub fn patterned_disk(size: usize, seed: u64) -> MemDisk {
    let mut v = vec![0u8; size];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for region in [0usize, size / 3, size - 70_000] {
        for b in v.iter_mut().skip(region).take(70_000) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    MemDisk(v)
}

/// Reads a whole block source.
pub fn read_all(src: &dyn BlockDevice) -> Vec<u8> {
    let mut v = vec![0u8; src.size() as usize];
    src.read_at(&mut v, 0).unwrap();
    v
}

/// Writes a tar archive of `members` (name, bytes) in this order.
pub fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
    let mut v = Vec::new();
    for (name, data) in members {
        v.extend_from_slice(&tar::header(name, data.len() as u64, 0).unwrap());
        v.extend_from_slice(data);
        v.resize(v.len() + tar::padding(data.len() as u64) as usize, 0);
    }
    v.resize(v.len() + 1024, 0);
    std::fs::write(path, v).unwrap();
}

/// The members of a tar archive as (name, bytes).
pub fn read_tar(path: &Path) -> Vec<(String, Vec<u8>)> {
    let data = std::fs::read(path).unwrap();
    let members = tar::scan(&data, "t").unwrap();
    members
        .into_iter()
        .map(|m| {
            let bytes = data[m.data_offset as usize..(m.data_offset + m.size) as usize].to_vec();
            (m.name, bytes)
        })
        .collect()
}

/// `SHA256(name)= hex` lines for members.
pub fn sha256_manifest(members: &[(&str, &[u8])]) -> String {
    use sha2::{Digest, Sha256};
    members
        .iter()
        .map(|(n, d)| {
            let h = Sha256::digest(d);
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            format!("SHA256({n})= {hex}\n")
        })
        .collect()
}
