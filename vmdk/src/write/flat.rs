//! monolithicFlat writer: `NAME.vmdk` descriptor plus a raw `NAME-flat.vmdk`, written
//! sparsely (the file is sized first; only non-zero grains are written).

use super::sparse::file_name;
use super::{
    capacity_sectors, data_grain_runs, make_descriptor, read_grains, report_progress, WriteOptions,
    WriteReport, BATCH_GRAINS, GRAIN_BYTES, GT_COVERAGE,
};
use crate::descriptor::{Access, ExtentLine, ExtentType};
use crate::error::{Result, VmdkError};
use crate::sparse::SECTOR;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use vdisk_blockdev::is_zero;
use vdisk_blockdev::BlockDevice;

/// The flat file name used for a descriptor at `dest`: `STEM-flat.vmdk`.
pub fn flat_file_name(dest: &Path) -> String {
    let stem = dest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    format!("{stem}-flat.vmdk")
}

pub(super) fn write_monolithic_flat(
    source: &dyn BlockDevice,
    dest: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    let dname = dest.display().to_string();
    let sectors = capacity_sectors(source, &dname)?;
    let flat_name = flat_file_name(dest);
    if flat_name == file_name(dest) {
        return Err(VmdkError::Write {
            file: dname,
            detail: "descriptor and flat file would have the same name".into(),
        });
    }
    let flat_path = dest.with_file_name(&flat_name);
    let fname = flat_path.display().to_string();
    let ferr = |op: &str, e: std::io::Error| VmdkError::io(&fname, op, e);
    let total = sectors * SECTOR;
    let file = File::create(&flat_path).map_err(|e| ferr("create", e))?;
    file.set_len(total).map_err(|e| ferr("set length", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut report = WriteReport {
        files: vec![dest.to_path_buf(), flat_path.clone()],
        virtual_size: total,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut pos = 0u64;
    let mut cursor = 0u64;
    while pos < total {
        let len = GT_COVERAGE.min(total - pos);
        for (first, count) in data_grain_runs(source, pos, len)? {
            let mut g = first;
            while g < first + count {
                let n = BATCH_GRAINS.min(first + count - g);
                read_grains(source, g, n, &mut buf)?;
                for (i, grain) in buf.chunks_exact(GRAIN_BYTES as usize).enumerate() {
                    let off = (g + i as u64) * GRAIN_BYTES;
                    if off >= total {
                        break;
                    }
                    if is_zero(grain) {
                        report.zero_grains_skipped += 1;
                        continue;
                    }
                    let keep = (total - off).min(GRAIN_BYTES) as usize;
                    if cursor != off {
                        w.seek(SeekFrom::Start(off)).map_err(|e| ferr("seek", e))?;
                    }
                    cursor = off + keep as u64;
                    w.write_all(&grain[..keep])
                        .map_err(|e| ferr(&format!("write at byte {off}"), e))?;
                    report.grains_written += 1;
                    report.bytes_written += keep as u64;
                }
                g += n;
                report_progress(opts, g * GRAIN_BYTES, total);
            }
        }
        pos += len;
        report_progress(opts, pos, total);
    }
    let file = w.into_inner().map_err(|e| ferr("flush", e.into_error()))?;
    file.sync_all().map_err(|e| ferr("sync", e))?;
    let extent = ExtentLine {
        access: Access::ReadWrite,
        sectors,
        kind: ExtentType::Flat,
        file: Some(flat_name),
        offset_sectors: 0,
    };
    let desc = make_descriptor(opts, sectors, extent).render();
    std::fs::write(dest, desc.as_bytes())
        .map_err(|e| VmdkError::io(&dname, "write descriptor", e))?;
    report.bytes_written += desc.len() as u64;
    Ok(report)
}
