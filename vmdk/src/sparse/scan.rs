//! Locating grains of a stream-optimized extent by walking its markers, for streams whose
//! grain directory cannot be found (no footer).

use super::header::{
    Marker, SparseHeader, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, SECTOR,
};
use crate::error::{Result, VmdkError};
use crate::source::ReadAt;
use std::collections::BTreeMap;

/// Walks the markers from the first grain to the end-of-stream marker and returns the
/// sector of each grain's marker, by grain index.
///
/// Every step moves forward by at least one sector, so the walk ends; a stream without an
/// end-of-stream marker as its last sector is refused (it was truncated).
pub fn scan_stream(
    file: &dyn ReadAt,
    file_len: u64,
    header: &SparseHeader,
    name: &str,
) -> Result<BTreeMap<u64, u64>> {
    let desc_end = header
        .descriptor_offset
        .saturating_add(header.descriptor_size)
        .max(1);
    let file_sectors = file_len / SECTOR;
    let mut sector = if header.overhead >= desc_end && header.overhead < file_sectors {
        header.overhead
    } else {
        desc_end
    };
    let mut grains = BTreeMap::new();
    let mut buf = [0u8; 512];
    loop {
        let pos = sector.saturating_mul(SECTOR);
        if sector >= file_sectors {
            return Err(VmdkError::invalid(
                name,
                "stream",
                format!("ends at byte {file_len} without an end-of-stream marker (truncated?)"),
            ));
        }
        file.read_at(&mut buf, pos)
            .map_err(|e| VmdkError::io(name, format!("read marker at byte {pos}"), e))?;
        let m = Marker::decode(&buf);
        if m.size != 0 {
            if !m.val.is_multiple_of(header.grain_size) || m.val >= header.capacity {
                return Err(VmdkError::invalid(
                    name,
                    format!("grain marker at byte {pos}"),
                    format!(
                        "LBA {} is not a grain start inside the capacity of {} sectors",
                        m.val, header.capacity
                    ),
                ));
            }
            let grain = m.val / header.grain_size;
            if grains.insert(grain, sector).is_some() {
                return Err(VmdkError::invalid(
                    name,
                    format!("grain marker at byte {pos}"),
                    format!("second grain for LBA {}", m.val),
                ));
            }
            let end = pos + 12 + u64::from(m.size);
            sector = end.div_ceil(SECTOR);
            continue;
        }
        match m.kind {
            MARKER_EOS => {
                if pos + SECTOR != file_sectors * SECTOR {
                    return Err(VmdkError::invalid(
                        name,
                        format!("end-of-stream marker at byte {pos}"),
                        format!("the file goes on to byte {file_len}"),
                    ));
                }
                return Ok(grains);
            }
            MARKER_GT | MARKER_GD | MARKER_FOOTER => {
                sector = sector
                    .checked_add(1)
                    .and_then(|s| s.checked_add(m.val))
                    .ok_or_else(|| {
                        VmdkError::invalid(name, format!("marker at byte {pos}"), "size overflows")
                    })?;
            }
            k => {
                return Err(VmdkError::invalid(
                    name,
                    format!("marker at byte {pos}"),
                    format!("unknown type {k}"),
                ))
            }
        }
    }
}
