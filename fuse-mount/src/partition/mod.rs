//! Partition tables (MBR with extended/logical partitions, and GPT) read from a device, so
//! each partition can be shown as its own file.
//!
//! The parser is strict: an entry that reaches past the disk, overlaps another partition or
//! breaks the table's own structure makes the whole table an error rather than a guess, and
//! every count read from disk is bounded before anything is allocated.

mod gpt;
mod mbr;

use std::io;

use thiserror::Error;

use vdisk_blockdev::BlockDevice;

pub use gpt::{MAX_GPT_ENTRIES, MAX_GPT_ENTRY_SIZE};
pub use mbr::MAX_LOGICAL_PARTITIONS;

/// One partition as the filesystem exposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// The number Linux gives it: MBR slots 1–4, logical partitions from 5, GPT entry index + 1.
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Which kind of table was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// No recognised partition table (an unpartitioned disk or a bare filesystem).
    None,
    /// A DOS/MBR table, possibly with logical partitions.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

/// A partition table: its kind and its partitions, sorted by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// Which table was found.
    pub kind: TableKind,
    /// The partitions, sorted by number.
    pub partitions: Vec<Partition>,
}

/// Why a partition table could not be read.
#[derive(Debug, Error)]
pub enum PartitionError {
    /// The device failed to read table bytes.
    #[error("reading partition table bytes at offset {offset}")]
    Read {
        /// Byte offset of the failed read.
        offset: u64,
        /// The device's error.
        #[source]
        source: io::Error,
    },
    /// An MBR or EBR entry names sectors outside the disk or its container.
    #[error("MBR table at byte {table_offset}, entry {slot}: sectors {start_lba}+{sectors} lie outside {limit}")]
    MbrEntryOutOfRange {
        /// Byte offset of the MBR/EBR sector holding the entry.
        table_offset: u64,
        /// Entry slot 0–3 in that sector.
        slot: usize,
        /// The entry's absolute first sector.
        start_lba: u64,
        /// The entry's sector count.
        sectors: u64,
        /// What it must fit in ("the disk" or "the extended partition").
        limit: &'static str,
    },
    /// The EBR chain loops, points backwards or is too long.
    #[error("extended partition chain: EBR at byte {ebr_offset}: {reason}")]
    EbrChain {
        /// Byte offset of the offending EBR.
        ebr_offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A GPT header field is invalid.
    #[error("GPT header at LBA {lba}: field {field} = {value} is invalid")]
    GptHeaderField {
        /// LBA of the header.
        lba: u64,
        /// Name of the field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A GPT header or entry array fails its CRC32.
    #[error(
        "GPT header at LBA {lba}: {what} CRC32 stored {stored:#010x}, computed {computed:#010x}"
    )]
    GptCrc {
        /// LBA of the header.
        lba: u64,
        /// "header" or "partition entry array".
        what: &'static str,
        /// CRC stored on disk.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// A GPT entry's range is reversed or outside the usable area.
    #[error("GPT entry {index}: LBA {first_lba}..={last_lba} outside usable {first_usable}..={last_usable}")]
    GptEntryRange {
        /// Entry index (0-based).
        index: u32,
        /// The entry's first LBA.
        first_lba: u64,
        /// The entry's last LBA (inclusive).
        last_lba: u64,
        /// The header's first usable LBA.
        first_usable: u64,
        /// The header's last usable LBA.
        last_usable: u64,
    },
    /// Neither GPT header is usable.
    #[error("both GPT headers are invalid; primary: {primary}")]
    NoValidGpt {
        /// Why the primary header was refused.
        primary: Box<PartitionError>,
        /// Why the backup header was refused.
        #[source]
        backup: Box<PartitionError>,
    },
    /// Two partitions share sectors.
    #[error("partitions {a} and {b} overlap")]
    Overlap {
        /// Number of the first partition.
        a: u32,
        /// Number of the second partition.
        b: u32,
    },
}

/// Reads `len` bytes at `offset` of `dev`, naming the offset on failure.
fn read_bytes(dev: &dyn BlockDevice, offset: u64, len: usize) -> Result<Vec<u8>, PartitionError> {
    let mut buf = vec![0u8; len];
    let end = offset.checked_add(u64::try_from(len).unwrap_or(u64::MAX));
    if end.is_none_or(|e| e > dev.size()) {
        return Err(PartitionError::Read {
            offset,
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the disk"),
        });
    }
    dev.read_at(&mut buf, offset)
        .map_err(|source| PartitionError::Read { offset, source })?;
    Ok(buf)
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Refuses partitions that share sectors; `parts` need not be sorted.
fn check_overlaps(parts: &mut [Partition]) -> Result<(), PartitionError> {
    parts.sort_by_key(|p| p.start);
    for pair in parts.windows(2) {
        if let [a, b] = pair {
            if a.start.saturating_add(a.length) > b.start {
                return Err(PartitionError::Overlap {
                    a: a.number,
                    b: b.number,
                });
            }
        }
    }
    parts.sort_by_key(|p| p.number);
    Ok(())
}

/// Reads the partition table of `dev`.
///
/// A disk without a table (no boot signature, or a boot sector that is not a partition table)
/// gives [`TableKind::None`] and no partitions; a table that is present but inconsistent is an
/// error.
pub fn read_partition_table(dev: &dyn BlockDevice) -> Result<PartitionTable, PartitionError> {
    if dev.size() < mbr::SECTOR {
        return Ok(PartitionTable {
            kind: TableKind::None,
            partitions: Vec::new(),
        });
    }
    let sector0 = read_bytes(dev, 0, 512)?;
    let Some(entries) = mbr::decode_mbr(&sector0) else {
        return Ok(PartitionTable {
            kind: TableKind::None,
            partitions: Vec::new(),
        });
    };
    let (kind, mut partitions) = if entries.iter().any(|e| e.kind == mbr::TYPE_GPT_PROTECTIVE) {
        (TableKind::Gpt, gpt::read_gpt(dev)?)
    } else {
        (TableKind::Mbr, mbr::read_mbr_partitions(dev, &entries)?)
    };
    check_overlaps(&mut partitions)?;
    Ok(PartitionTable { kind, partitions })
}

/// A read-only device over a byte slice: the partition table of an in-memory disk image.
struct SliceDevice<'a>(&'a [u8]);

impl BlockDevice for SliceDevice<'_> {
    fn size(&self) -> u64 {
        u64::try_from(self.0.len()).unwrap_or(u64::MAX)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::PermissionDenied.into())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<vdisk_blockdev::Extent>> {
        Ok(vec![vdisk_blockdev::Extent::new(
            offset,
            len,
            vdisk_blockdev::ExtentKind::Data,
        )])
    }
}

/// [`read_partition_table`] of a disk image held in memory (for fuzzing and tools).
pub fn read_partition_table_from_bytes(disk: &[u8]) -> Result<PartitionTable, PartitionError> {
    read_partition_table(&SliceDevice(disk))
}

#[cfg(test)]
pub(crate) mod testdev {
    //! A byte-vector device for the parser tests.
    use super::*;
    use vdisk_blockdev::Extent;

    pub(crate) struct Bytes(pub Vec<u8>);

    impl BlockDevice for Bytes {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let o = usize::try_from(offset).map_err(|_| io::Error::other("offset"))?;
            let src = self
                .0
                .get(o..o + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Err(io::ErrorKind::PermissionDenied.into())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
            Ok(vec![Extent::new(
                offset,
                len,
                vdisk_blockdev::ExtentKind::Data,
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testdev::Bytes;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blank_disk_has_no_table() {
        let t = read_partition_table(&Bytes(vec![0; 4096])).unwrap();
        assert_eq!(t.kind, TableKind::None);
        assert!(t.partitions.is_empty());
        let t = read_partition_table(&Bytes(vec![0; 10])).unwrap();
        assert_eq!(t.kind, TableKind::None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..40_000),
                                       gpt in any::<bool>(), sig in any::<bool>()) {
            // Bias towards reaching the deep paths: boot signature, protective entry, GPT magic.
            if sig && bytes.len() >= 512 {
                bytes[510] = 0x55;
                bytes[511] = 0xAA;
                for slot in 0..4 { bytes[446 + slot * 16] = 0; }
                if gpt { bytes[446 + 4] = 0xEE; }
            }
            if gpt && bytes.len() >= 1024 {
                bytes[512..520].copy_from_slice(b"EFI PART");
            }
            let _ = read_partition_table_from_bytes(&bytes);
        }
    }
}
