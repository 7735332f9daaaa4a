//! A chain of images (a VMDK delta chain: `disk-000001.vmdk` over `disk.vmdk`) into a fresh
//! bundle, one snapshot per image, base first: each layer's own allocation is replayed into
//! the head (its data read from the layer's view of the chain, its zero ranges as zero
//! writes that hide the parent) and then sealed as a snapshot named after the file. The
//! head ends equal to the top of the chain.

use crate::copy::{copy_ranges, CopyError, CopyOptions, Zeros};
use std::collections::HashSet;
use std::path::Path;
use vdisk_blockdev::{clip, BlockDevice, Extent, ExtentKind};
use vdisk_engine::format::manifest::check_snapshot_name;
use vdisk_engine::Disk;

/// Longest snapshot name the engine accepts, in bytes.
const MAX_NAME_BYTES: usize = 128;

/// One image of a chain.
pub struct ChainLayer<'a> {
    /// The image's file (names the snapshot and the errors).
    pub file: String,
    /// The disk as of this image: this file over its parents.
    pub content: &'a dyn BlockDevice,
    /// What this file itself stores: `Data`, or `Zero` where it hides its parent.
    pub own: Vec<Extent>,
}

/// What [`import_chain`] did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Snapshots created, base first.
    pub snapshots: Vec<String>,
    /// Guest bytes copied (data of every layer).
    pub bytes: u64,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Copying a layer's data failed.
    #[error("copying {file}")]
    Copy {
        file: String,
        #[source]
        source: CopyError,
    },
    /// The engine refused a step (zeroing, flush, snapshot).
    #[error("{step} for {file}")]
    Engine {
        file: String,
        step: String,
        #[source]
        source: vdisk_engine::Error,
    },
}

/// Bytes of `Data` in the layers' own allocations, for a progress total.
pub fn chain_data_bytes(layers: &[ChainLayer]) -> u64 {
    layers
        .iter()
        .flat_map(|l| &l.own)
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.length)
        .sum()
}

/// Imports `layers` (base first) into the freshly created `disk`. See the module doc.
pub fn import_chain(
    layers: &[ChainLayer],
    disk: &Disk,
    opts: &CopyOptions,
) -> Result<ImportReport, ImportError> {
    let size = disk.virtual_size();
    let mut report = ImportReport::default();
    let mut used = HashSet::new();
    for layer in layers {
        let upper = !report.snapshots.is_empty();
        let engine = |step: String| {
            let file = layer.file.clone();
            move |source| ImportError::Engine { file, step, source }
        };
        let mut data = Vec::new();
        for e in &layer.own {
            let Some((off, end)) = clip(e.offset, e.length, size) else {
                continue;
            };
            match e.kind {
                ExtentKind::Data => data.push((off, end - off)),
                // A fresh base reads zeros already; above it, zeros hide the parent.
                ExtentKind::Zero if upper => disk
                    .write_zeroes(off, end - off)
                    .map_err(engine(format!("zeroing {off}+{}", end - off)))?,
                _ => {}
            }
        }
        let layer_opts = CopyOptions {
            zeros: if upper { Zeros::Hide } else { Zeros::Skip },
            progress: opts.progress,
            ..*opts
        };
        report.bytes += copy_ranges(layer.content, disk, &data, &layer_opts).map_err(|source| {
            ImportError::Copy {
                file: layer.file.clone(),
                source,
            }
        })?;
        disk.flush().map_err(engine("flush".into()))?;
        let name = unique(snapshot_name_for(&layer.file), &mut used);
        disk.snapshot_create(&name)
            .map_err(engine(format!("creating snapshot {name:?}")))?;
        report.snapshots.push(name);
    }
    Ok(report)
}

/// A valid snapshot name from a file name: its stem, `/` and control characters replaced by
/// `_`, no leading `-`, at most 128 bytes, never empty.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vdisk_blockdev::MemDevice;
    use vdisk_engine::{CreateOptions, MemStore};

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

    #[test]
    fn a_chain_becomes_snapshots() {
        // Base: data in the first 64 KiB; delta: data at 128 KiB and zeros over 0..4 KiB.
        let base = MemDevice::new(1 << 20);
        base.write_at(&[1u8; 65536], 0).unwrap();
        let top = MemDevice::new(1 << 20);
        top.write_at(&[1u8; 65536], 0).unwrap();
        top.write_zeroes(0, 4096).unwrap();
        top.write_at(&[2u8; 4096], 131072).unwrap();
        let layers = [
            ChainLayer {
                file: "d.vmdk".into(),
                content: &base,
                own: vec![Extent::new(0, 65536, ExtentKind::Data)],
            },
            ChainLayer {
                file: "d-000001.vmdk".into(),
                content: &top,
                own: vec![
                    Extent::new(0, 4096, ExtentKind::Zero),
                    Extent::new(131072, 4096, ExtentKind::Data),
                ],
            },
        ];
        assert_eq!(chain_data_bytes(&layers), 65536 + 4096);
        let disk = Disk::create(Arc::new(MemStore::new()), &CreateOptions::new(1 << 20)).unwrap();
        let r = import_chain(&layers, &disk, &CopyOptions::default()).unwrap();
        assert_eq!(r.snapshots, ["d", "d-000001"]);
        let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        disk.snapshot_view("d").unwrap().read_at(&mut a, 0).unwrap();
        base.read_at(&mut b, 0).unwrap();
        assert!(a == b);
        BlockDevice::read_at(&disk, &mut a, 0).unwrap();
        top.read_at(&mut b, 0).unwrap();
        assert!(a == b);
    }
}
