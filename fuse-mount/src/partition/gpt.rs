//! GUID partition tables (UEFI spec §5.3): a CRC-checked header at LBA 1 (backup at the last
//! LBA) pointing to a CRC-checked array of entries.

use super::{le_u32, le_u64, read_bytes, Partition, PartitionError};
use vdisk_blockdev::BlockDevice;

/// Most entries accepted in an array: the spec's minimum array is 128 entries; real tools
/// never write more than a few hundred. Bounds the allocation below.
pub const MAX_GPT_ENTRIES: u32 = 4096;
/// Largest entry size accepted (the spec requires 128 × 2^n).
pub const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// Largest entry array read, whatever the header says.
const MAX_ARRAY_BYTES: u64 = 1 << 20;
/// The header's fixed part; `header_size` may be larger up to one block.
const MIN_HEADER_SIZE: u32 = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";

/// The fields of a GPT header that locate and check the entry array.
#[derive(Debug, Clone, Copy)]
struct GptHeader {
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// Decodes and checks the header in `block` read from `lba` of a disk of `disk_blocks`
/// blocks of `block` bytes.
fn decode_header(block: &[u8], lba: u64, disk_blocks: u64) -> Result<GptHeader, PartitionError> {
    let field =
        |field: &'static str, value: u64| PartitionError::GptHeaderField { lba, field, value };
    let short = || {
        field(
            "header_size",
            u64::try_from(block.len()).unwrap_or(u64::MAX),
        )
    };
    if block.get(0..8) != Some(SIGNATURE.as_slice()) {
        return Err(field("signature", le_u64(block, 0).unwrap_or(0)));
    }
    let header_size = le_u32(block, 12).ok_or_else(short)?;
    let hs = usize::try_from(header_size).unwrap_or(usize::MAX);
    if header_size < MIN_HEADER_SIZE || hs > block.len() {
        return Err(field("header_size", u64::from(header_size)));
    }
    let stored = le_u32(block, 16).ok_or_else(short)?;
    let mut copy = block.get(..hs).ok_or_else(short)?.to_vec();
    copy.get_mut(16..20).ok_or_else(short)?.fill(0);
    let computed = crc32fast::hash(&copy);
    if stored != computed {
        return Err(PartitionError::GptCrc {
            lba,
            what: "header",
            stored,
            computed,
        });
    }
    let my_lba = le_u64(block, 24).ok_or_else(short)?;
    if my_lba != lba {
        return Err(field("my_lba", my_lba));
    }
    let h = GptHeader {
        first_usable: le_u64(block, 40).ok_or_else(short)?,
        last_usable: le_u64(block, 48).ok_or_else(short)?,
        entries_lba: le_u64(block, 72).ok_or_else(short)?,
        num_entries: le_u32(block, 80).ok_or_else(short)?,
        entry_size: le_u32(block, 84).ok_or_else(short)?,
        entries_crc: le_u32(block, 88).ok_or_else(short)?,
    };
    if h.last_usable >= disk_blocks || h.first_usable > h.last_usable {
        return Err(field("last_usable", h.last_usable));
    }
    if h.first_usable < 2 {
        return Err(field("first_usable", h.first_usable));
    }
    if h.num_entries > MAX_GPT_ENTRIES {
        return Err(field("num_partition_entries", u64::from(h.num_entries)));
    }
    if h.entry_size < 128 || h.entry_size > MAX_GPT_ENTRY_SIZE || !h.entry_size.is_multiple_of(128)
    {
        return Err(field("partition_entry_size", u64::from(h.entry_size)));
    }
    if h.entries_lba < 2 || h.entries_lba >= disk_blocks {
        return Err(field("partition_entry_lba", h.entries_lba));
    }
    Ok(h)
}

/// Reads and checks the header at `lba` and its entry array; returns the partitions.
fn read_at_lba(
    dev: &dyn BlockDevice,
    block: u64,
    lba: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let disk_blocks = dev.size() / block;
    let block_len = usize::try_from(block).unwrap_or(512);
    let header_bytes = read_bytes(dev, lba.saturating_mul(block), block_len)?;
    let h = decode_header(&header_bytes, lba, disk_blocks)?;
    let array_len = u64::from(h.num_entries) * u64::from(h.entry_size);
    let field =
        |field: &'static str, value: u64| PartitionError::GptHeaderField { lba, field, value };
    if array_len > MAX_ARRAY_BYTES {
        return Err(field("num_partition_entries", u64::from(h.num_entries)));
    }
    let array_at = h
        .entries_lba
        .checked_mul(block)
        .ok_or_else(|| field("partition_entry_lba", h.entries_lba))?;
    let array_end = array_at.saturating_add(array_len);
    if array_end > dev.size() {
        return Err(field("partition_entry_lba", h.entries_lba));
    }
    let array = read_bytes(dev, array_at, usize::try_from(array_len).unwrap_or(0))?;
    let computed = crc32fast::hash(&array);
    if computed != h.entries_crc {
        return Err(PartitionError::GptCrc {
            lba,
            what: "partition entry array",
            stored: h.entries_crc,
            computed,
        });
    }
    let entry_size = usize::try_from(h.entry_size).unwrap_or(128);
    let mut parts = Vec::new();
    for (index, raw) in (0u32..).zip(array.chunks_exact(entry_size)) {
        let type_guid = raw.get(0..16).unwrap_or(&[]);
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let first_lba = le_u64(raw, 32).unwrap_or(0);
        let last_lba = le_u64(raw, 40).unwrap_or(0);
        let bad = || PartitionError::GptEntryRange {
            index,
            first_lba,
            last_lba,
            first_usable: h.first_usable,
            last_usable: h.last_usable,
        };
        if first_lba > last_lba || first_lba < h.first_usable || last_lba > h.last_usable {
            return Err(bad());
        }
        // last_usable < disk_blocks, so these cannot overflow; checked anyway.
        let start = first_lba.checked_mul(block).ok_or_else(bad)?;
        let length = (last_lba - first_lba + 1)
            .checked_mul(block)
            .ok_or_else(bad)?;
        parts.push(Partition {
            number: index.saturating_add(1),
            start,
            length,
        });
    }
    Ok(parts)
}

/// Finds the block size: the header sits at LBA 1, i.e. byte 512 or byte 4096.
fn block_size(dev: &dyn BlockDevice) -> Result<u64, PartitionError> {
    for block in [512u64, 4096] {
        if dev.size() >= block * 2 && read_bytes(dev, block, 8)? == SIGNATURE {
            return Ok(block);
        }
    }
    Ok(512)
}

/// Reads the GPT of a disk with a protective MBR: the primary header, or the backup one at
/// the last LBA when the primary is damaged.
pub(crate) fn read_gpt(dev: &dyn BlockDevice) -> Result<Vec<Partition>, PartitionError> {
    let block = block_size(dev)?;
    let primary = match read_at_lba(dev, block, 1) {
        Ok(parts) => return Ok(parts),
        Err(e) => e,
    };
    let last = (dev.size() / block).saturating_sub(1);
    read_at_lba(dev, block, last).map_err(|backup| PartitionError::NoValidGpt {
        primary: Box::new(primary),
        backup: Box::new(backup),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::mbr::tests::put_entry;
    use super::super::testdev::Bytes;
    use super::super::{read_partition_table, TableKind};
    use super::*;

    /// Builds a GPT disk of `blocks` blocks of `bs` bytes with `parts` (first, last LBA),
    /// primary and backup headers, 128 entries of 128 bytes.
    pub(crate) fn gpt_disk(bs: usize, blocks: u64, parts: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; bs * blocks as usize];
        put_entry(
            &mut d,
            0,
            0,
            0xEE,
            1,
            u32::try_from(blocks - 1).unwrap_or(u32::MAX),
        );
        let mut array = vec![0u8; 128 * 128];
        for (i, (first, last)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&[0xAF; 16]);
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        let array_blocks = (array.len() / bs) as u64;
        let array_crc = crc32fast::hash(&array);
        let last_lba = blocks - 1;
        for (my, alt, entries) in [(1, last_lba, 2), (last_lba, 1, last_lba - array_blocks)] {
            let at = entries as usize * bs;
            d[at..at + array.len()].copy_from_slice(&array);
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&(2 + array_blocks).to_le_bytes());
            h[48..56].copy_from_slice(&(last_lba - array_blocks - 1).to_le_bytes());
            h[72..80].copy_from_slice(&entries.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            let at = my as usize * bs;
            d[at..at + 92].copy_from_slice(&h);
        }
        d
    }

    #[test]
    fn reads_gpt_512_and_4k() {
        for bs in [512usize, 4096] {
            let d = gpt_disk(bs, 2048, &[(40, 99), (100, 1000)]);
            let t = read_partition_table(&Bytes(d)).unwrap();
            assert_eq!(t.kind, TableKind::Gpt);
            let b = bs as u64;
            assert_eq!(
                t.partitions,
                vec![
                    Partition {
                        number: 1,
                        start: 40 * b,
                        length: 60 * b
                    },
                    Partition {
                        number: 2,
                        start: 100 * b,
                        length: 901 * b
                    },
                ]
            );
        }
    }

    #[test]
    fn falls_back_to_backup_header() {
        let mut d = gpt_disk(512, 2048, &[(40, 99)]);
        d[512 + 30] ^= 1; // corrupt the primary header: its CRC no longer matches
        let t = read_partition_table(&Bytes(d.clone())).unwrap();
        assert_eq!(t.partitions.len(), 1);
        let last = (2047 * 512) as usize;
        d[last + 30] ^= 1;
        let err = read_partition_table(&Bytes(d)).unwrap_err();
        assert!(matches!(err, PartitionError::NoValidGpt { .. }), "{err}");
    }

    #[test]
    fn refuses_bad_entries() {
        // Reversed range.
        let d = gpt_disk(512, 2048, &[(99, 40)]);
        assert!(matches!(
            read_partition_table(&Bytes(d)),
            Err(PartitionError::NoValidGpt { .. })
        ));
        // Overlap.
        let d = gpt_disk(512, 2048, &[(40, 99), (99, 200)]);
        assert!(matches!(
            read_partition_table(&Bytes(d)),
            Err(PartitionError::Overlap { a: 1, b: 2 })
        ));
        // Past the usable area.
        let d = gpt_disk(512, 2048, &[(40, 2047)]);
        assert!(read_partition_table(&Bytes(d)).is_err());
    }

    #[test]
    fn refuses_corrupt_entry_array() {
        let mut d = gpt_disk(512, 2048, &[(40, 99)]);
        d[2 * 512 + 33] ^= 1; // primary array
        d[(2047 - 32) * 512 + 33] ^= 1; // backup array
        let err = read_partition_table(&Bytes(d)).unwrap_err();
        let msg = format!("{err}");
        assert!(
            msg.contains("CRC32") && msg.contains("entry array"),
            "{msg}"
        );
    }

    proptest::proptest! {
        /// Any set of disjoint partitions written as a GPT reads back exactly.
        #[test]
        fn gpt_round_trip(gaps in proptest::collection::vec((0u64..50, 1u64..200), 0..20), bs4k in proptest::bool::ANY) {
            let bs = if bs4k { 4096 } else { 512 };
            let blocks = 8192u64;
            let mut parts = Vec::new();
            let mut next = 40u64;
            for (gap, len) in gaps {
                let first = next + gap;
                let last = first + len - 1;
                if last >= blocks - 40 {
                    break;
                }
                parts.push((first, last));
                next = last + 1;
            }
            let t = read_partition_table(&Bytes(gpt_disk(bs, blocks, &parts))).unwrap();
            let b = bs as u64;
            let want: Vec<_> = parts
                .iter()
                .enumerate()
                .map(|(i, (f, l))| Partition { number: i as u32 + 1, start: f * b, length: (l - f + 1) * b })
                .collect();
            proptest::prop_assert_eq!(t.partitions, want);
        }
    }

    #[test]
    fn bounds_entry_count() {
        let mut d = gpt_disk(512, 2048, &[(40, 99)]);
        for lba in [1usize, 2047] {
            let at = lba * 512;
            d[at + 80..at + 84].copy_from_slice(&1_000_000u32.to_le_bytes());
            d[at + 16..at + 20].fill(0);
            let crc = crc32fast::hash(&d[at..at + 92]);
            d[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
        }
        let err = read_partition_table(&Bytes(d)).unwrap_err();
        assert!(format!("{err}").contains("num_partition_entries"), "{err}");
    }
}
