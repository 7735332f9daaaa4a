//! VMDK → bundle import. A VMDK delta chain (VMware snapshots: `disk-000001.vmdk` over
//! `disk.vmdk`) becomes a bundle with one snapshot per VMDK file, base first: each layer's
//! own allocation is replayed into the head (its data read from the layer, its zeroed grains
//! as zero writes that hide the parent) and then sealed as a snapshot named after the file.
//! The head ends equal to the top of the chain. A lone VMDK is copied without snapshots.

use crate::transfer::{default_threads, nonzero_runs, par_copy, split, CHUNK};
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::collections::HashSet;
use std::path::Path;
use vdisk_engine::format::manifest::check_snapshot_name;
use vdisk_engine::Disk;
use vdisk_vmdk::{Allocation, BlockSource, VmdkImage};

/// Longest snapshot name the engine accepts, in bytes.
const MAX_NAME_BYTES: usize = 128;

/// A valid snapshot name from a VMDK file name: its stem, `/` and control characters
/// replaced by `_`, no leading `-`, at most 128 bytes, never empty.
pub fn snapshot_name_for(file: &str) -> String {
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    name = name.trim_start_matches('-').to_string();
    truncate(&mut name, MAX_NAME_BYTES);
    if name.is_empty() || check_snapshot_name(&name).is_err() {
        name = "layer".into();
    }
    name
}

/// Truncates to at most `max` bytes on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Makes `base` unique among `used` by appending `-2`, `-3`, ... (staying within the limit).
fn unique(base: String, used: &mut HashSet<String>) -> String {
    if used.insert(base.clone()) {
        return base;
    }
    let mut n = 2u64;
    loop {
        let suffix = format!("-{n}");
        let mut b = base.clone();
        truncate(&mut b, MAX_NAME_BYTES - suffix.len());
        let cand = format!("{b}{suffix}");
        if used.insert(cand.clone()) {
            return cand;
        }
        n += 1;
    }
}

/// What [`import`] did.
pub struct ImportReport {
    /// Snapshots created, base first (empty for a lone VMDK).
    pub snapshots: Vec<String>,
    /// Guest bytes copied (data of every layer).
    pub bytes: u64,
}

/// Bytes of `Data` in each layer's own allocation, for the progress total.
pub fn data_bytes(image: &VmdkImage) -> Result<u64> {
    let mut total = 0u64;
    if image.depth() > 1 {
        for l in image.chain_layers() {
            total += l
                .allocation()?
                .iter()
                .filter(|e| e.kind == Allocation::Data)
                .map(|e| e.length)
                .sum::<u64>();
        }
    } else {
        total = image
            .extents(0, image.size())?
            .iter()
            .filter(|e| e.kind == Allocation::Data)
            .map(|e| e.length)
            .sum();
    }
    Ok(total)
}

/// Imports `image` (and its parents) into the freshly created `disk`, whose virtual size is
/// the image's. See the module doc.
pub fn import(image: &VmdkImage, disk: &Disk, pb: &ProgressBar) -> Result<ImportReport> {
    let size = disk.virtual_size();
    let mut report = ImportReport {
        snapshots: Vec::new(),
        bytes: 0,
    };
    if image.depth() <= 1 {
        let data: Vec<(u64, u64)> = image
            .extents(0, image.size())?
            .into_iter()
            .filter(|e| e.kind == Allocation::Data)
            .map(|e| (e.offset, e.length))
            .collect();
        report.bytes = copy_layer(image, &data, disk, size, false, pb)?;
        return Ok(report);
    }
    let mut used = HashSet::new();
    for layer in image.chain_layers() {
        let upper = !report.snapshots.is_empty();
        let alloc = layer
            .allocation()
            .with_context(|| format!("reading the allocation of {}", layer.file))?;
        let mut data = Vec::new();
        for e in alloc {
            let Some((off, len)) = clip(e.offset, e.length, size) else {
                continue;
            };
            match e.kind {
                Allocation::Data => data.push((off, len)),
                // A fresh base reads zeros already; above it, zeros hide the parent.
                Allocation::Zero if upper => disk
                    .write_zeroes(off, len)
                    .with_context(|| format!("zeroing {off}+{len} for {}", layer.file))?,
                _ => {}
            }
        }
        report.bytes += copy_layer(&layer.content, &data, disk, size, upper, pb)
            .with_context(|| format!("copying {}", layer.file))?;
        disk.flush()?;
        let name = unique(snapshot_name_for(&layer.file), &mut used);
        disk.snapshot_create(&name)
            .with_context(|| format!("creating snapshot {name:?} for {}", layer.file))?;
        report.snapshots.push(name);
    }
    Ok(report)
}

fn clip(off: u64, len: u64, size: u64) -> Option<(u64, u64)> {
    let end = off.saturating_add(len).min(size);
    (end > off).then(|| (off, end - off))
}

/// Copies the `data` ranges of `src` into the head of `disk`. All-zero chunks are skipped on
/// a base (`hide_parent == false`) and written as zeros above one. Returns the bytes copied.
fn copy_layer(
    src: &VmdkImage,
    data: &[(u64, u64)],
    disk: &Disk,
    size: u64,
    hide_parent: bool,
    pb: &ProgressBar,
) -> Result<u64> {
    let data: Vec<(u64, u64)> = data.iter().filter_map(|&(o, l)| clip(o, l, size)).collect();
    let chunks = split(&data, CHUNK);
    let mut bytes = 0;
    par_copy(
        &chunks,
        default_threads(),
        &|buf, off| {
            src.read_at(buf, off)
                .with_context(|| format!("reading {} bytes at {off}", buf.len()))
        },
        |buf, off| {
            if hide_parent {
                // Zeros stored in a delta hide the parent: keep them as zero writes.
                if vdisk_engine::is_zero(buf) {
                    disk.write_zeroes(off, buf.len() as u64)?;
                } else {
                    disk.write_at(buf, off)?;
                }
                Ok(())
            } else {
                nonzero_runs(buf, off, |b, o| Ok(disk.write_at(b, o)?))
            }
        },
        |n| {
            bytes += n;
            pb.inc(n);
        },
    )?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_unique() {
        assert_eq!(snapshot_name_for("/a/b/disk-000001.vmdk"), "disk-000001");
        assert_eq!(snapshot_name_for("--x.vmdk"), "x");
        assert_eq!(snapshot_name_for("a\u{1}b.vmdk"), "a_b");
        assert_eq!(snapshot_name_for(".vmdk"), ".vmdk");
        assert_eq!(snapshot_name_for("/"), "layer");
        assert_eq!(snapshot_name_for("..vmdk"), "layer");
        let long = format!("{}.vmdk", "é".repeat(100));
        let n = snapshot_name_for(&long);
        assert!(n.len() <= 128 && check_snapshot_name(&n).is_ok());
        let mut used = HashSet::new();
        assert_eq!(unique("d".into(), &mut used), "d");
        assert_eq!(unique("d".into(), &mut used), "d-2");
        assert_eq!(unique("d".into(), &mut used), "d-3");
        let big = "x".repeat(128);
        assert_eq!(unique(big.clone(), &mut used), big);
        let second = unique(big, &mut used);
        assert!(second.len() <= 128 && second.ends_with("-2"));
    }
}
