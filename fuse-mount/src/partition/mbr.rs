//! DOS/MBR partition tables: four primary slots in sector 0 and an optional extended
//! partition holding a chain of EBRs, one logical partition each.

use std::collections::HashSet;

use super::{le_u32, read_bytes, Partition, PartitionError};
use vdisk_blockdev::BlockDevice;

/// MBR sectors are 512 bytes whatever the disk's block size.
pub(crate) const SECTOR: u64 = 512;
/// Partition type of the single entry of a GPT's protective MBR.
pub(crate) const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
/// Partition types that mark an extended partition (CHS, LBA, Linux).
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// Most logical partitions followed in an EBR chain: bounds the walk on a looping or
/// hostile chain (Linux stops at a similar count).
pub const MAX_LOGICAL_PARTITIONS: usize = 128;

/// Offset of the first of the four 16-byte entries in an MBR or EBR sector.
const ENTRIES_OFFSET: usize = 446;

/// One 16-byte MBR/EBR entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MbrEntry {
    pub(crate) kind: u8,
    start_lba: u32,
    sectors: u32,
}

impl MbrEntry {
    fn is_empty(&self) -> bool {
        self.kind == 0 || self.sectors == 0
    }

    fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.kind)
    }
}

/// Decodes the four entries of an MBR or EBR sector.
///
/// `None` when the sector has no 0x55AA signature or a status byte other than 0x00/0x80:
/// then it is not a partition table (a FAT or NTFS boot sector, a bare filesystem…).
pub(crate) fn decode_mbr(sector: &[u8]) -> Option<[MbrEntry; 4]> {
    if sector.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    let mut out = [MbrEntry {
        kind: 0,
        start_lba: 0,
        sectors: 0,
    }; 4];
    for (slot, entry) in out.iter_mut().enumerate() {
        let at = ENTRIES_OFFSET + slot * 16;
        let raw = sector.get(at..at + 16)?;
        let status = *raw.first()?;
        if status != 0 && status != 0x80 {
            return None;
        }
        *entry = MbrEntry {
            kind: *raw.get(4)?,
            start_lba: le_u32(raw, 8)?,
            sectors: le_u32(raw, 12)?,
        };
    }
    Some(out)
}

/// Checks that `[start, start + sectors)` lies in `[lo, hi)` (sectors) and converts to bytes.
fn span(
    table_offset: u64,
    slot: usize,
    start: u64,
    sectors: u64,
    (lo, hi): (u64, u64),
    limit: &'static str,
) -> Result<(u64, u64), PartitionError> {
    let bad = || PartitionError::MbrEntryOutOfRange {
        table_offset,
        slot,
        start_lba: start,
        sectors,
        limit,
    };
    let end = start.checked_add(sectors).ok_or_else(bad)?;
    if start < lo || end > hi {
        return Err(bad());
    }
    let bytes = |s: u64| s.checked_mul(SECTOR).ok_or_else(bad);
    Ok((bytes(start)?, bytes(sectors)?))
}

/// The partitions of an MBR disk whose sector 0 decoded to `entries`.
pub(crate) fn read_mbr_partitions(
    dev: &dyn BlockDevice,
    entries: &[MbrEntry; 4],
) -> Result<Vec<Partition>, PartitionError> {
    let disk_sectors = dev.size() / SECTOR;
    let mut parts = Vec::new();
    let mut extended = None;
    for (slot, e) in entries.iter().enumerate() {
        if e.is_empty() {
            continue;
        }
        // Sector 0 is the MBR itself, so no partition may start there.
        let range = (1, disk_sectors);
        let (start, length) = span(
            0,
            slot,
            u64::from(e.start_lba),
            u64::from(e.sectors),
            range,
            "the disk",
        )?;
        if e.is_extended() {
            // Linux follows only the first extended partition; so do we.
            if extended.is_none() {
                extended = Some((u64::from(e.start_lba), u64::from(e.sectors)));
            }
            continue;
        }
        let number = u32::try_from(slot + 1).unwrap_or(u32::MAX);
        parts.push(Partition {
            number,
            start,
            length,
        });
    }
    if let Some((ext_start, ext_sectors)) = extended {
        read_logical_partitions(dev, ext_start, ext_sectors, &mut parts)?;
    }
    Ok(parts)
}

/// Walks the EBR chain of the extended partition at `ext_start` (sectors), appending the
/// logical partitions numbered from 5.
fn read_logical_partitions(
    dev: &dyn BlockDevice,
    ext_start: u64,
    ext_sectors: u64,
    parts: &mut Vec<Partition>,
) -> Result<(), PartitionError> {
    // span() already checked ext_start + ext_sectors fits the disk.
    let ext_end = ext_start.saturating_add(ext_sectors);
    let mut visited = HashSet::new();
    let mut next_rel = Some(0u64);
    let mut number = 5u32;
    while let Some(rel) = next_rel.take() {
        let ebr_lba = ext_start.saturating_add(rel);
        let ebr_offset = ebr_lba.saturating_mul(SECTOR);
        if !visited.insert(ebr_lba) {
            return Err(PartitionError::EbrChain {
                ebr_offset,
                reason: "the chain loops",
            });
        }
        if visited.len() > MAX_LOGICAL_PARTITIONS {
            return Err(PartitionError::EbrChain {
                ebr_offset,
                reason: "too many logical partitions",
            });
        }
        if ebr_lba >= ext_end {
            return Err(PartitionError::EbrChain {
                ebr_offset,
                reason: "outside the extended partition",
            });
        }
        let sector = read_bytes(dev, ebr_offset, 512)?;
        let Some(entries) = decode_mbr(&sector) else {
            // An empty extended partition has a zeroed first EBR: no logical partitions.
            if rel == 0 && sector.iter().all(|&b| b == 0) {
                return Ok(());
            }
            return Err(PartitionError::EbrChain {
                ebr_offset,
                reason: "not a valid EBR sector",
            });
        };
        let [data, link, ..] = entries;
        if !data.is_empty() && !data.is_extended() {
            // Logical partitions are relative to their own EBR and must stay in the container.
            let start = ebr_lba.saturating_add(u64::from(data.start_lba));
            let (start, length) = span(
                ebr_offset,
                0,
                start,
                u64::from(data.sectors),
                (ebr_lba.saturating_add(1), ext_end),
                "the extended partition",
            )?;
            parts.push(Partition {
                number,
                start,
                length,
            });
            number = number.saturating_add(1);
        }
        if !link.is_empty() && link.is_extended() {
            // The link is relative to the start of the extended partition.
            next_rel = Some(u64::from(link.start_lba));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testdev::Bytes;
    use super::super::{read_partition_table, TableKind};
    use super::*;

    /// Writes an MBR/EBR entry into `disk` at the sector starting at byte `sector_at`.
    pub(crate) fn put_entry(
        disk: &mut [u8],
        sector_at: usize,
        slot: usize,
        kind: u8,
        start: u32,
        n: u32,
    ) {
        let at = sector_at + ENTRIES_OFFSET + slot * 16;
        disk[at + 4] = kind;
        disk[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        disk[at + 12..at + 16].copy_from_slice(&n.to_le_bytes());
        disk[sector_at + 510] = 0x55;
        disk[sector_at + 511] = 0xAA;
    }

    fn disk(sectors: usize) -> Vec<u8> {
        vec![0u8; sectors * 512]
    }

    #[test]
    fn primaries_and_logicals() {
        let mut d = disk(4096);
        put_entry(&mut d, 0, 0, 0x83, 2048, 1000);
        put_entry(&mut d, 0, 1, 0x05, 3072, 1024);
        // EBR 1 at 3072: logical at +1 for 100 sectors, link to next EBR at ext+200.
        put_entry(&mut d, 3072 * 512, 0, 0x83, 1, 100);
        put_entry(&mut d, 3072 * 512, 1, 0x05, 200, 300);
        // EBR 2 at 3272: logical at +2 for 50 sectors, end of chain.
        put_entry(&mut d, 3272 * 512, 0, 0x07, 2, 50);
        let t = read_partition_table(&Bytes(d)).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        let got: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.start / 512, p.length / 512))
            .collect();
        assert_eq!(got, vec![(1, 2048, 1000), (5, 3073, 100), (6, 3274, 50)]);
    }

    #[test]
    fn refuses_out_of_range_and_overlap() {
        let mut d = disk(100);
        put_entry(&mut d, 0, 0, 0x83, 10, 200);
        assert!(matches!(
            read_partition_table(&Bytes(d)),
            Err(PartitionError::MbrEntryOutOfRange { slot: 0, .. })
        ));
        let mut d = disk(100);
        put_entry(&mut d, 0, 0, 0x83, 10, 20);
        put_entry(&mut d, 0, 2, 0x83, 29, 20);
        assert!(matches!(
            read_partition_table(&Bytes(d)),
            Err(PartitionError::Overlap { a: 1, b: 3 })
        ));
        let mut d = disk(100);
        put_entry(&mut d, 0, 0, 0x83, 0, 20);
        assert!(
            read_partition_table(&Bytes(d)).is_err(),
            "a partition over the MBR is refused"
        );
    }

    #[test]
    fn refuses_looping_ebr_chain() {
        let mut d = disk(1000);
        put_entry(&mut d, 0, 0, 0x0F, 100, 800);
        put_entry(&mut d, 100 * 512, 0, 0x83, 1, 10);
        put_entry(&mut d, 100 * 512, 1, 0x05, 0, 10); // links back to itself
        assert!(matches!(
            read_partition_table(&Bytes(d)),
            Err(PartitionError::EbrChain {
                reason: "the chain loops",
                ..
            })
        ));
    }

    #[test]
    fn logical_must_stay_in_extended() {
        let mut d = disk(1000);
        put_entry(&mut d, 0, 0, 0x05, 100, 50);
        put_entry(&mut d, 100 * 512, 0, 0x83, 1, 100);
        assert!(matches!(
            read_partition_table(&Bytes(d)),
            Err(PartitionError::MbrEntryOutOfRange {
                limit: "the extended partition",
                ..
            })
        ));
    }

    #[test]
    fn boot_sector_without_valid_status_is_not_a_table() {
        let mut d = disk(100);
        put_entry(&mut d, 0, 0, 0x83, 10, 20);
        d[ENTRIES_OFFSET] = 0x12; // boot code where a status byte would be
        let t = read_partition_table(&Bytes(d)).unwrap();
        assert_eq!(t.kind, TableKind::None);
    }
}
