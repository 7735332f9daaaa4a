//! Hosted sparse extents (`KDMV`): monolithicSparse, twoGbMaxExtentSparse extents and
//! streamOptimized files, with grain directories, grain tables and (compressed) grains.

pub mod header;
mod inflate;
mod scan;

pub use header::{Marker, SparseHeader, GD_AT_END, SECTOR};
pub use inflate::inflate_grain;
pub use scan::scan_stream;

use crate::error::{Result, VmdkError};
use crate::source::ReadAt;
use header::{MARKER_EOS, MARKER_FOOTER};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use vdisk_blockdev::ExtentKind;

/// Largest grain directory accepted, in entries (64 TiB of 8 KiB grains).
pub const MAX_GD_ENTRIES: u64 = 1 << 24;
/// Grain tables kept in memory per extent (512 entries each: 2 KiB).
const GT_CACHE_ENTRIES: usize = 4096;
/// Bytes of compressed data accepted for one grain, beyond the grain size itself.
const COMPRESSED_SLACK: u64 = 4096;

/// Where a grain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainLoc {
    /// Not stored in this extent.
    Unallocated,
    /// Stored as "zeroed grain" (GTE 1 with the zeroed-grain flag).
    Zero,
    /// Stored at this sector of the file (grain marker sector for stream files).
    At(u64),
}

enum Index {
    /// Grain directory entries (sector of each grain table, 0 = none).
    Tables { gd: Vec<u32> },
    /// Grains found by walking the stream's markers: grain index → marker sector.
    Scanned { grains: BTreeMap<u64, u64> },
}

/// An open hosted sparse extent.
pub struct SparseExtent {
    name: String,
    file: Arc<dyn ReadAt>,
    file_len: u64,
    /// The effective header (the footer's for streams with the directory at the end).
    pub header: SparseHeader,
    /// The embedded descriptor bytes, if any.
    pub embedded_descriptor: Option<Vec<u8>>,
    index: Index,
    capacity_bytes: u64,
    grain_bytes: u64,
    /// Sorted, disjoint byte ranges holding metadata; no grain may overlap them.
    metadata: Vec<(u64, u64)>,
    gt_cache: Mutex<HashMap<u64, Arc<Vec<u32>>>>,
    last_grain: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn overlaps(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = ranges.partition_point(|&(_, e)| e <= start);
    ranges.get(i).is_some_and(|&(s, _)| s < end)
}

impl SparseExtent {
    /// Opens and checks a sparse extent: header (or footer), descriptor and grain
    /// directory bounds, grain table placement. Grain tables are read lazily.
    pub fn open(file: Arc<dyn ReadAt>, name: &str) -> Result<Self> {
        let file_len = file
            .len()
            .map_err(|e| VmdkError::io(name, "get file length", e))?;
        if file_len < SECTOR {
            return Err(VmdkError::invalid(
                name,
                "sparse header",
                format!("file is {file_len} bytes, too short for a header"),
            ));
        }
        let mut hbuf = [0u8; 512];
        file.read_at(&mut hbuf, 0)
            .map_err(|e| VmdkError::io(name, "read sparse header", e))?;
        let primary = SparseHeader::decode(&hbuf, name)?;
        let mut header = primary.clone();
        if primary.gd_offset == GD_AT_END {
            if let Some(footer) = read_footer(&*file, file_len, name)? {
                if footer.capacity != primary.capacity || footer.grain_size != primary.grain_size {
                    return Err(VmdkError::invalid(
                        name,
                        "footer",
                        "capacity or grain size differs from the header",
                    ));
                }
                header = footer;
            }
        }
        let sector_range = |field: &str, offset: u64, bytes: u64| -> Result<(u64, u64)> {
            let start = offset.checked_mul(SECTOR);
            let end = start.and_then(|s| s.checked_add(bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => Ok((s, e)),
                _ => Err(VmdkError::invalid(
                    name,
                    field,
                    format!(
                        "sector {offset} + {bytes} bytes lies past the end of the file ({file_len} bytes)"
                    ),
                )),
            }
        };
        let mut metadata = vec![(0, SECTOR)];
        let mut embedded_descriptor = None;
        if header.descriptor_size > 0 {
            let bytes = header.descriptor_size.saturating_mul(SECTOR);
            if bytes > crate::descriptor::MAX_DESCRIPTOR_BYTES {
                return Err(VmdkError::invalid(
                    name,
                    "sparse header descriptorSize",
                    format!("{} sectors is more than 1 MiB", header.descriptor_size),
                ));
            }
            let (s, e) = sector_range(
                "sparse header descriptorOffset",
                header.descriptor_offset,
                bytes,
            )?;
            let mut d = vec![0u8; (e - s) as usize];
            file.read_at(&mut d, s)
                .map_err(|e| VmdkError::io(name, "read embedded descriptor", e))?;
            metadata.push((s, e));
            embedded_descriptor = Some(d);
        }
        let capacity_bytes = header.capacity * SECTOR;
        let grain_bytes = header.grain_bytes();
        let index = if header.gd_offset == GD_AT_END || header.gd_offset == 0 {
            if !header.markers() {
                return Err(VmdkError::invalid(
                    name,
                    "sparse header gdOffset",
                    format!("{:#x} and no markers to find the grains", header.gd_offset),
                ));
            }
            Index::Scanned {
                grains: scan_stream(&*file, file_len, &header, name)?,
            }
        } else {
            let entries = header.gd_entries();
            if entries > MAX_GD_ENTRIES {
                return Err(VmdkError::invalid(
                    name,
                    "grain directory",
                    format!("{entries} entries, more than {MAX_GD_ENTRIES}"),
                ));
            }
            let (gs, ge) = sector_range("sparse header gdOffset", header.gd_offset, entries * 4)?;
            if overlaps(&metadata, gs, ge) {
                return Err(VmdkError::invalid(
                    name,
                    "sparse header gdOffset",
                    "grain directory overlaps the header or the descriptor",
                ));
            }
            let mut raw = vec![0u8; (ge - gs) as usize];
            file.read_at(&mut raw, gs).map_err(|e| {
                VmdkError::io(name, format!("read grain directory at byte {gs}"), e)
            })?;
            let gd: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            metadata.push((gs, ge));
            if header.redundant_gd() && header.rgd_offset != 0 {
                if let Ok((rs, re)) = sector_range("rgdOffset", header.rgd_offset, entries * 4) {
                    metadata.push((rs, re));
                }
            }
            metadata.sort_unstable();
            let fixed = metadata.clone();
            let gt_bytes = u64::from(header.num_gtes_per_gt) * 4;
            let mut tables = Vec::new();
            for (i, &gde) in gd.iter().enumerate() {
                if gde == 0 {
                    continue;
                }
                let field = format!("grain directory entry {i}");
                let (s, e) = sector_range(&field, u64::from(gde), gt_bytes)?;
                if overlaps(&fixed, s, e) {
                    return Err(VmdkError::invalid(
                        name,
                        field,
                        format!("grain table at sector {gde} overlaps the header, descriptor or grain directory"),
                    ));
                }
                tables.push((s, e, i));
            }
            tables.sort_unstable();
            for w in tables.windows(2) {
                if w[1].0 < w[0].1 {
                    return Err(VmdkError::invalid(
                        name,
                        format!("grain directory entries {} and {}", w[0].2, w[1].2),
                        "grain tables overlap (shared or looping tables)",
                    ));
                }
            }
            metadata.extend(tables.iter().map(|&(s, e, _)| (s, e)));
            Index::Tables { gd }
        };
        metadata.sort_unstable();
        Ok(SparseExtent {
            name: name.to_string(),
            file,
            file_len,
            header,
            embedded_descriptor,
            index,
            capacity_bytes,
            grain_bytes,
            metadata,
            gt_cache: Mutex::new(HashMap::new()),
            last_grain: Mutex::new(None),
        })
    }

    /// Memory held by the grain directory and the table bookkeeping, in bytes (grain
    /// tables themselves are cached with a fixed bound).
    pub fn table_bytes(&self) -> u64 {
        let index = match &self.index {
            Index::Tables { gd } => gd.len() as u64 * 4,
            // A BTreeMap entry of two u64 costs about twice its payload.
            Index::Scanned { grains } => grains.len() as u64 * 32,
        };
        index + self.metadata.len() as u64 * 16
    }

    /// Extent size in bytes (the header's capacity).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The file's name as used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn load_gt(&self, gd_index: u64, gde: u32) -> Result<Arc<Vec<u32>>> {
        if let Some(gt) = lock(&self.gt_cache).get(&gd_index) {
            return Ok(gt.clone());
        }
        let n = self.header.num_gtes_per_gt as usize;
        let mut raw = vec![0u8; n * 4];
        let at = u64::from(gde) * SECTOR;
        self.file.read_at(&mut raw, at).map_err(|e| {
            VmdkError::io(
                &self.name,
                format!("read grain table {gd_index} at byte {at}"),
                e,
            )
        })?;
        let gt: Arc<Vec<u32>> = Arc::new(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        let mut cache = lock(&self.gt_cache);
        if cache.len() >= GT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(gd_index, gt.clone());
        Ok(gt)
    }

    /// Where grain `grain` is stored.
    pub fn lookup(&self, grain: u64) -> Result<GrainLoc> {
        match &self.index {
            Index::Scanned { grains } => Ok(grains
                .get(&grain)
                .map_or(GrainLoc::Unallocated, |&s| GrainLoc::At(s))),
            Index::Tables { gd } => {
                let per_gt = u64::from(self.header.num_gtes_per_gt);
                let gd_index = grain / per_gt;
                let gde = usize::try_from(gd_index)
                    .ok()
                    .and_then(|i| gd.get(i).copied())
                    .unwrap_or(0);
                if gde == 0 {
                    return Ok(GrainLoc::Unallocated);
                }
                let gt = self.load_gt(gd_index, gde)?;
                let gte = gt.get((grain % per_gt) as usize).copied().unwrap_or(0);
                Ok(match gte {
                    0 => GrainLoc::Unallocated,
                    1 if self.header.zeroed_grain() => GrainLoc::Zero,
                    s => GrainLoc::At(u64::from(s)),
                })
            }
        }
    }

    /// Classifies `[offset, offset + max_len)` (extent-relative bytes): returns the kind at
    /// `offset` and how many bytes from there share it (at least 1, at most `max_len`).
    pub fn probe(&self, offset: u64, max_len: u64) -> Result<(ExtentKind, u64)> {
        let grain = offset / self.grain_bytes;
        let mut run_end = (grain + 1) * self.grain_bytes;
        let kind = match &self.index {
            Index::Tables { gd } => {
                let per_gt = u64::from(self.header.num_gtes_per_gt);
                let gd_index = grain / per_gt;
                let gde = usize::try_from(gd_index)
                    .ok()
                    .and_then(|i| gd.get(i).copied())
                    .unwrap_or(0);
                if gde == 0 {
                    run_end = (gd_index + 1) * per_gt * self.grain_bytes;
                    ExtentKind::Unallocated
                } else {
                    self.kind_of(self.lookup(grain)?)
                }
            }
            Index::Scanned { .. } => self.kind_of(self.lookup(grain)?),
        };
        let len = run_end
            .min(self.capacity_bytes)
            .saturating_sub(offset)
            .min(max_len)
            .max(1);
        Ok((kind, len))
    }

    fn kind_of(&self, loc: GrainLoc) -> ExtentKind {
        match loc {
            GrainLoc::Unallocated => ExtentKind::Unallocated,
            GrainLoc::Zero => ExtentKind::Zero,
            GrainLoc::At(_) => ExtentKind::Data,
        }
    }

    /// Reads extent-relative bytes; unallocated and zeroed grains read as zeros (callers
    /// that fall through to a parent probe first).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / self.grain_bytes;
            let in_grain = pos % self.grain_bytes;
            let n = ((self.grain_bytes - in_grain) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.lookup(grain)? {
                GrainLoc::Unallocated | GrainLoc::Zero => out.fill(0),
                GrainLoc::At(sector) => self.read_grain(grain, sector, in_grain, out)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Bytes of grain `grain` that lie inside the capacity.
    fn grain_len(&self, grain: u64) -> u64 {
        self.capacity_bytes
            .saturating_sub(grain * self.grain_bytes)
            .min(self.grain_bytes)
    }

    fn read_grain(&self, grain: u64, sector: u64, in_grain: u64, out: &mut [u8]) -> Result<()> {
        let field = || format!("grain table entry for grain {grain}");
        let start = sector.saturating_mul(SECTOR);
        if self.header.compressed() {
            let data = self.inflate(grain, start)?;
            let from = in_grain as usize;
            let avail = data.len().saturating_sub(from).min(out.len());
            out[..avail].copy_from_slice(&data[from..from + avail]);
            out[avail..].fill(0);
            return Ok(());
        }
        let len = self.grain_len(grain);
        let end = start.saturating_add(len);
        if end > self.file_len {
            return Err(VmdkError::invalid(
                &self.name,
                field(),
                format!(
                    "sector {sector} lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        if overlaps(&self.metadata, start, end) {
            return Err(VmdkError::invalid(
                &self.name,
                field(),
                format!("sector {sector} points into metadata (header, descriptor or tables)"),
            ));
        }
        let at = start + in_grain;
        self.file
            .read_at(out, at)
            .map_err(|e| VmdkError::io(&self.name, format!("read grain at byte {at}"), e))
    }

    fn inflate(&self, grain: u64, start: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((g, data)) = lock(&self.last_grain).as_ref() {
            if *g == grain {
                return Ok(data.clone());
            }
        }
        let field = || format!("grain table entry for grain {grain}");
        if start >= self.file_len {
            return Err(VmdkError::invalid(
                &self.name,
                field(),
                format!(
                    "byte {start} lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        let (data_start, data_end) = if self.header.markers() {
            let mut m = [0u8; 12];
            if start + 12 > self.file_len {
                return Err(VmdkError::invalid(
                    &self.name,
                    field(),
                    "grain marker truncated",
                ));
            }
            self.file.read_at(&mut m, start).map_err(|e| {
                VmdkError::io(&self.name, format!("read grain marker at byte {start}"), e)
            })?;
            let marker = Marker::decode(&m);
            let lba = grain * self.header.grain_size;
            if marker.val != lba {
                return Err(VmdkError::invalid(
                    &self.name,
                    format!("grain marker at byte {start}"),
                    format!(
                        "LBA {} where grain {grain} (LBA {lba}) was expected",
                        marker.val
                    ),
                ));
            }
            let size = u64::from(marker.size);
            if size == 0 || size > self.grain_bytes + COMPRESSED_SLACK {
                return Err(VmdkError::invalid(
                    &self.name,
                    format!("grain marker at byte {start}"),
                    format!(
                        "compressed size {size} (grain is {} bytes)",
                        self.grain_bytes
                    ),
                ));
            }
            (start + 12, start + 12 + size)
        } else {
            (start, (start + 2 * self.grain_bytes).min(self.file_len))
        };
        if data_end > self.file_len {
            return Err(VmdkError::invalid(
                &self.name,
                format!("grain marker at byte {start}"),
                format!(
                    "compressed data runs past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        if self.header.markers() && overlaps(&self.metadata, start, data_end) {
            return Err(VmdkError::invalid(
                &self.name,
                field(),
                format!("byte {start} points into metadata (header, descriptor or tables)"),
            ));
        }
        let mut input = vec![0u8; (data_end - data_start) as usize];
        self.file.read_at(&mut input, data_start).map_err(|e| {
            VmdkError::io(
                &self.name,
                format!("read compressed grain at byte {data_start}"),
                e,
            )
        })?;
        let data = inflate_grain(&input, self.grain_bytes as usize, &self.name, start)?;
        let need = self.grain_len(grain);
        if (data.len() as u64) < need {
            return Err(VmdkError::Deflate {
                file: self.name.clone(),
                offset: start,
                detail: format!("grain inflates to {} bytes, {need} expected", data.len()),
            });
        }
        let data = Arc::new(data);
        *lock(&self.last_grain) = Some((grain, data.clone()));
        Ok(data)
    }
}

/// Reads the footer of a stream-optimized file (footer marker, header copy, end-of-stream
/// marker in its last three sectors). `None` when the file does not end that way.
fn read_footer(file: &dyn ReadAt, file_len: u64, name: &str) -> Result<Option<SparseHeader>> {
    let end = file_len / SECTOR * SECTOR;
    if end < 4 * SECTOR {
        return Ok(None);
    }
    let at = end - 3 * SECTOR;
    let mut buf = vec![0u8; 3 * SECTOR as usize];
    file.read_at(&mut buf, at)
        .map_err(|e| VmdkError::io(name, format!("read footer at byte {at}"), e))?;
    let fm = Marker::decode(&buf[..512]);
    let eos = Marker::decode(&buf[1024..]);
    let footer = &buf[512..1024];
    if fm.size != 0 || fm.kind != MARKER_FOOTER || eos.size != 0 || eos.kind != MARKER_EOS {
        return Ok(None);
    }
    if !SparseHeader::has_magic(footer) {
        return Ok(None);
    }
    SparseHeader::decode(footer, name)
        .map_err(|e| VmdkError::invalid(name, "footer", e.to_string()))
        .map(Some)
}
