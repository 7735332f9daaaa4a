//! Writers: monolithicSparse, streamOptimized (also to a plain `Write`), monolithicFlat.
//!
//! All of them are sparse-aware: `Zero` and `Unallocated` ranges of the source are not
//! stored, and all-zero grains inside `Data` ranges are detected and skipped.

mod flat;
mod options;
mod sparse;
mod stream;

pub use options::{AdapterType, Subformat, WriteOptions, WriteReport};
pub use stream::write_stream_optimized;

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
use crate::error::{Result, VmdkError};
use crate::sparse::SECTOR;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use vdisk_blockdev::{BlockDevice, ExtentKind};

/// Grain size written, in sectors (64 KiB, as qemu and VMware write).
pub const GRAIN_SECTORS: u64 = 128;
/// Grain size written, in bytes.
pub const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per table.
pub const GTES_PER_GT: u64 = 512;
/// Virtual bytes covered by one grain table.
pub const GT_COVERAGE: u64 = GRAIN_BYTES * GTES_PER_GT;
/// Grains read from the source in one call.
pub(crate) const BATCH_GRAINS: u64 = 16;

/// Writes `source` as a VMDK at `dest` in `opts.subformat`. monolithicFlat also creates
/// `STEM-flat.vmdk` beside `dest`.
pub fn write_vmdk(
    source: &dyn BlockDevice,
    dest: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    check_options(opts, dest)?;
    match opts.subformat {
        Subformat::MonolithicSparse => sparse::write_monolithic_sparse(source, dest, opts),
        Subformat::MonolithicFlat => flat::write_monolithic_flat(source, dest, opts),
        Subformat::StreamOptimized => stream::write_stream_file(source, dest, opts),
    }
}

fn check_options(opts: &WriteOptions, dest: &Path) -> Result<()> {
    if opts.compat6 && opts.hw_version.is_some() {
        return Err(VmdkError::Write {
            file: dest.display().to_string(),
            detail: "compat6 cannot be combined with hwversion".into(),
        });
    }
    if opts.compression_level > 9 {
        return Err(VmdkError::Write {
            file: dest.display().to_string(),
            detail: format!("compression level {} (0..=9)", opts.compression_level),
        });
    }
    Ok(())
}

/// Virtual size rounded up to whole sectors, in sectors.
pub(crate) fn capacity_sectors(source: &dyn BlockDevice, dest: &str) -> Result<u64> {
    let sectors = source.size().div_ceil(SECTOR);
    if sectors > crate::descriptor::MAX_CAPACITY_SECTORS {
        return Err(VmdkError::Write {
            file: dest.to_string(),
            detail: format!("source of {} bytes is larger than 64 TiB", source.size()),
        });
    }
    Ok(sectors)
}

fn random_cid() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let c = h.finish() as u32;
    if c == NO_PARENT_CID {
        0x1234_5678
    } else {
        c
    }
}

/// The descriptor our writers emit (qemu's layout and keys).
pub(crate) fn make_descriptor(opts: &WriteOptions, sectors: u64, extent: ExtentLine) -> Descriptor {
    let mut d = Descriptor {
        version: Some(1),
        cid: Some(opts.cid.unwrap_or_else(random_cid)),
        parent_cid: Some(NO_PARENT_CID),
        create_type: Some(opts.subformat.create_type().to_string()),
        extents: vec![extent],
        ..Default::default()
    };
    let hw = if opts.compat6 {
        6
    } else {
        opts.hw_version.unwrap_or(4)
    };
    let heads = opts.adapter_type.heads();
    let cylinders = (sectors * SECTOR).div_ceil(63 * heads * SECTOR);
    d.ddb.insert("ddb.virtualHWVersion".into(), hw.to_string());
    d.ddb
        .insert("ddb.geometry.cylinders".into(), cylinders.to_string());
    d.ddb.insert("ddb.geometry.heads".into(), heads.to_string());
    d.ddb.insert("ddb.geometry.sectors".into(), "63".into());
    d.ddb
        .insert("ddb.adapterType".into(), opts.adapter_type.as_str().into());
    d.ddb.insert(
        "ddb.toolsVersion".into(),
        opts.tools_version
            .clone()
            .unwrap_or_else(|| "2147483647".into()),
    );
    d
}

/// An extent line for a single-file sparse VMDK.
pub(crate) fn sparse_extent_line(sectors: u64, name: String) -> ExtentLine {
    ExtentLine {
        access: Access::ReadWrite,
        sectors,
        kind: ExtentType::Sparse,
        file: Some(name),
        offset_sectors: 0,
    }
}

/// Runs `[first_grain, first_grain + count)` of grains that overlap `Data` in the window
/// `[start, start + len)` of the source.
pub(crate) fn data_grain_runs(
    source: &dyn BlockDevice,
    start: u64,
    len: u64,
) -> Result<Vec<(u64, u64)>> {
    let extents = source.extents(start, len).map_err(|e| VmdkError::Source {
        offset: start,
        source: e,
    })?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for e in extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Data && e.length > 0)
    {
        let first = e.offset / GRAIN_BYTES;
        let last = (e.end() - 1) / GRAIN_BYTES;
        match runs.last_mut() {
            Some((f, c)) if *f + *c >= first => {
                let end = (*f + *c).max(last + 1);
                *c = end - *f;
            }
            _ => runs.push((first, last - first + 1)),
        }
    }
    Ok(runs)
}

/// Reads `count` grains from `first`, zero-padded past the end of the source.
pub(crate) fn read_grains(
    source: &dyn BlockDevice,
    first: u64,
    count: u64,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let offset = first * GRAIN_BYTES;
    let want = (count * GRAIN_BYTES) as usize;
    buf.clear();
    buf.resize(want, 0);
    let avail = source.size().saturating_sub(offset).min(want as u64) as usize;
    source
        .read_at(&mut buf[..avail], offset)
        .map_err(|e| VmdkError::Source { offset, source: e })
}

/// Calls the progress callback, if any.
pub(crate) fn report_progress(opts: &WriteOptions, done: u64, total: u64) {
    if let Some(p) = opts.progress {
        p(done.min(total), total);
    }
}
