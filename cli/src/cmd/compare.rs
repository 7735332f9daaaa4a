//! `vdisk compare [-f FMT] [-F FMT] [-s] A B`: byte-for-byte comparison of two images of any
//! formats, as `qemu-img compare` does it: exit 0 when identical, 1 when they differ, 2 on
//! an error. Images of different sizes are identical when the larger one reads as zeros
//! past the smaller one's end (unless `--strict`).

use crate::image::{open_image, Format};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_blockdev::{is_zero, BlockDevice};

/// Exit status when the images differ.
const DIFFERENT: u8 = 1;
/// Exit status of an error (qemu-img compare's).
const ERROR: u8 = 2;
/// Bytes compared at a time.
const CHUNK: u64 = 1 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Format of the first image (default: guessed).
    #[arg(short = 'f', long = "format-a")]
    pub format_a: Option<Format>,
    /// Format of the second image (default: guessed).
    #[arg(short = 'F', long = "format-b")]
    pub format_b: Option<Format>,
    /// Images of different sizes differ, whatever the extra bytes hold.
    #[arg(short = 's', long)]
    pub strict: bool,
    /// Compare this snapshot of a vdisk first image instead of its head.
    #[arg(long)]
    pub snapshot_a: Option<String>,
    /// Compare this snapshot of a vdisk second image instead of its head.
    #[arg(long)]
    pub snapshot_b: Option<String>,
    /// The first image.
    pub a: PathBuf,
    /// The second image.
    pub b: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    match compare(&a) {
        Ok(None) => {
            crate::say!("Images are identical.");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Some(why)) => {
            crate::say!("{why}");
            Ok(ExitCode::from(DIFFERENT))
        }
        Err(e) => {
            eprintln!("vdisk: error: {e:#}");
            Ok(ExitCode::from(ERROR))
        }
    }
}

/// `None` when identical, else what differs first.
fn compare(a: &Args) -> Result<Option<String>> {
    let ia = open_image(&a.a, a.format_a, a.snapshot_a.as_deref(), &[])?;
    let ib = open_image(&a.b, a.format_b, a.snapshot_b.as_deref(), &[])?;
    let (da, db) = (ia.device(), ib.device());
    if da.size() != db.size() && a.strict {
        return Ok(Some(format!(
            "Strict mode: image size mismatch ({} is {} bytes, {} is {})",
            a.a.display(),
            da.size(),
            a.b.display(),
            db.size()
        )));
    }
    let common = da.size().min(db.size());
    // Outside both images' data extents everything reads as zeros on both sides.
    let mut ranges =
        data_ranges(da, common).with_context(|| format!("mapping {}", a.a.display()))?;
    ranges.extend(data_ranges(db, common).with_context(|| format!("mapping {}", a.b.display()))?);
    for (off, end) in merge(ranges) {
        if let Some(at) = first_difference(da, db, off, end)? {
            return Ok(Some(format!("Content mismatch at offset {at}!")));
        }
    }
    let (larger, name) = if da.size() > db.size() {
        (da, &a.a)
    } else {
        (db, &a.b)
    };
    if larger.size() > common {
        for (off, end) in merge(data_ranges_from(larger, common)?) {
            if let Some(at) = first_non_zero(larger, off, end)? {
                return Ok(Some(format!(
                    "Content mismatch at offset {at}! ({} is larger and not zero there)",
                    name.display()
                )));
            }
        }
    }
    Ok(None)
}

/// `(start, end)` of the extents of `d` below `limit` that may hold non-zero bytes.
fn data_ranges(d: &dyn BlockDevice, limit: u64) -> Result<Vec<(u64, u64)>> {
    Ok(d.extents(0, limit)?
        .into_iter()
        .filter(|e| !e.kind.is_hole())
        .map(|e| (e.offset, e.end().min(limit)))
        .collect())
}

fn data_ranges_from(d: &dyn BlockDevice, from: u64) -> Result<Vec<(u64, u64)>> {
    Ok(d.extents(from, d.size() - from)?
        .into_iter()
        .filter(|e| !e.kind.is_hole())
        .map(|e| (e.offset, e.end()))
        .collect())
}

/// Sorted, non-overlapping union of ranges.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn first_difference(
    a: &dyn BlockDevice,
    b: &dyn BlockDevice,
    off: u64,
    end: u64,
) -> Result<Option<u64>> {
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    let mut pos = off;
    while pos < end {
        let n = (end - pos).min(CHUNK) as usize;
        a.read_at(&mut ba[..n], pos)?;
        b.read_at(&mut bb[..n], pos)?;
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    Ok(None)
}

fn first_non_zero(d: &dyn BlockDevice, off: u64, end: u64) -> Result<Option<u64>> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = off;
    while pos < end {
        let n = (end - pos).min(CHUNK) as usize;
        d.read_at(&mut buf[..n], pos)?;
        if !is_zero(&buf[..n]) {
            let i = buf[..n].iter().position(|&x| x != 0).unwrap_or(0);
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(vec![(5, 10), (0, 3), (2, 6), (20, 30)]),
            vec![(0, 10), (20, 30)]
        );
        assert!(merge(vec![]).is_empty());
    }
}
