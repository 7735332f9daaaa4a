//! monolithicSparse writer: qemu's layout (header, 20-sector descriptor, redundant GD and
//! tables, GD and tables, grains from the first grain boundary on), written in one pass.

use super::{
    capacity_sectors, data_grain_runs, make_descriptor, read_grains, report_progress,
    sparse_extent_line, WriteOptions, WriteReport, BATCH_GRAINS, GRAIN_BYTES, GRAIN_SECTORS,
    GTES_PER_GT, GT_COVERAGE,
};
use crate::error::{Result, VmdkError};
use crate::sparse::header::{FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GD, FLAG_ZEROED_GRAIN};
use crate::sparse::{SparseHeader, SECTOR};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use vdisk_blockdev::is_zero;
use vdisk_blockdev::BlockDevice;

/// Sectors reserved for the embedded descriptor (as qemu does).
const DESCRIPTOR_SECTORS: u64 = 20;

pub(super) fn write_monolithic_sparse(
    source: &dyn BlockDevice,
    dest: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    let dname = dest.display().to_string();
    let werr = |op: &str, e: std::io::Error| VmdkError::io(&dname, op, e);
    let sectors = capacity_sectors(source, &dname)?;
    let gd_entries = sectors.div_ceil(GRAIN_SECTORS * GTES_PER_GT);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let gt_sectors = GTES_PER_GT * 4 / SECTOR;
    let rgd = 1 + DESCRIPTOR_SECTORS;
    let rgt = rgd + gd_sectors;
    let gd = rgt + gd_entries * gt_sectors;
    let gt = gd + gd_sectors;
    let overhead = (gt + gd_entries * gt_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let header = SparseHeader {
        version: if opts.zeroed_grain { 2 } else { 1 },
        flags: FLAG_NEWLINE_TEST
            | FLAG_REDUNDANT_GD
            | if opts.zeroed_grain {
                FLAG_ZEROED_GRAIN
            } else {
                0
            },
        capacity: sectors,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: DESCRIPTOR_SECTORS,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset: rgd,
        gd_offset: gd,
        overhead,
        unclean_shutdown: false,
        newline_chars: *b"\n \r\n",
        compress_algorithm: 0,
    };
    let name = opts.extent_name.clone().unwrap_or_else(|| file_name(dest));
    let desc = make_descriptor(opts, sectors, sparse_extent_line(sectors, name)).render();
    if desc.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
        return Err(VmdkError::Write {
            file: dname,
            detail: "descriptor does not fit in 20 sectors".into(),
        });
    }
    let file = File::create(dest).map_err(|e| werr("create", e))?;
    file.set_len(overhead * SECTOR)
        .map_err(|e| werr("set length", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let at = |w: &mut BufWriter<File>, sector: u64, data: &[u8], what: &str| -> Result<()> {
        w.seek(SeekFrom::Start(sector * SECTOR))
            .and_then(|_| w.write_all(data))
            .map_err(|e| VmdkError::io(&dname, format!("write {what} at sector {sector}"), e))
    };
    at(&mut w, 0, &header.encode(), "header")?;
    at(&mut w, 1, desc.as_bytes(), "descriptor")?;
    let dir = |base: u64| -> Vec<u8> {
        (0..gd_entries)
            .flat_map(|i| ((base + i * gt_sectors) as u32).to_le_bytes())
            .collect()
    };
    at(&mut w, rgd, &dir(rgt), "redundant grain directory")?;
    at(&mut w, gd, &dir(gt), "grain directory")?;

    let mut report = WriteReport {
        files: vec![dest.to_path_buf()],
        virtual_size: sectors * SECTOR,
        ..Default::default()
    };
    let total = sectors * SECTOR;
    let mut next = overhead;
    let mut buf = Vec::new();
    let mut table = vec![0u32; GTES_PER_GT as usize];
    for t in 0..gd_entries {
        let start = t * GT_COVERAGE;
        let len = GT_COVERAGE.min(total - start);
        table.fill(0);
        let mut used = false;
        let mut pending = Vec::new();
        for (first, count) in data_grain_runs(source, start, len)? {
            let mut g = first;
            while g < first + count {
                let n = BATCH_GRAINS.min(first + count - g);
                read_grains(source, g, n, &mut buf)?;
                for (i, grain) in buf.chunks_exact(GRAIN_BYTES as usize).enumerate() {
                    if is_zero(grain) {
                        report.zero_grains_skipped += 1;
                        continue;
                    }
                    let sector = u32::try_from(next).map_err(|_| VmdkError::Write {
                        file: dname.clone(),
                        detail: "data exceeds the 2 TiB a monolithicSparse file can address".into(),
                    })?;
                    table[((g + i as u64) % GTES_PER_GT) as usize] = sector;
                    used = true;
                    pending.extend_from_slice(grain);
                    next += GRAIN_SECTORS;
                    report.grains_written += 1;
                }
                if !pending.is_empty() {
                    let first_sector = next - (pending.len() as u64 / SECTOR);
                    at(&mut w, first_sector, &pending, "grains")?;
                    pending.clear();
                }
                g += n;
                report_progress(opts, g * GRAIN_BYTES, total);
            }
        }
        if used {
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
            at(
                &mut w,
                rgt + t * gt_sectors,
                &bytes,
                "redundant grain table",
            )?;
            at(&mut w, gt + t * gt_sectors, &bytes, "grain table")?;
        }
        report_progress(opts, start + len, total);
    }
    let file = w.into_inner().map_err(|e| werr("flush", e.into_error()))?;
    file.sync_all().map_err(|e| werr("sync", e))?;
    report.bytes_written = next * SECTOR;
    Ok(report)
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk.vmdk".into())
}
