//! The extents a disk is made of (flat, zero, sparse), behind one interface.

use crate::descriptor::{Access, ExtentType};
use crate::error::{Result, VmdkError};
use crate::source::ReadAt;
use crate::sparse::SparseExtent;
use std::sync::Arc;
use vdisk_blockdev::ExtentKind;

/// A raw byte range of a file.
pub struct FlatExtent {
    name: String,
    file: Arc<dyn ReadAt>,
    start: u64,
}

/// How one extent of a disk is stored.
pub enum ExtentData {
    /// Raw bytes (FLAT, VMFS).
    Flat(FlatExtent),
    /// Reads as zeros (ZERO).
    Zero,
    /// Hosted sparse (SPARSE, streamOptimized).
    Sparse(Arc<SparseExtent>),
}

/// One extent of a disk, placed in the disk's virtual address space.
pub struct DiskExtent {
    /// Virtual byte offset of the extent's first byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type as the descriptor names it.
    pub kind: ExtentType,
    /// Access mode.
    pub access: Access,
    /// File name as written in the descriptor (the file itself for monolithic files).
    pub file: Option<String>,
    /// The reader.
    pub data: ExtentData,
}

impl FlatExtent {
    /// A flat extent of `size` bytes at byte `start` of `file`, checked against its length.
    pub fn open(file: Arc<dyn ReadAt>, name: &str, start: u64, size: u64) -> Result<Self> {
        let len = file
            .len()
            .map_err(|e| VmdkError::io(name, "get file length", e))?;
        let end = start.saturating_add(size);
        if end > len {
            return Err(VmdkError::invalid(
                name,
                "flat extent size",
                format!("the descriptor needs bytes {start}..{end} but the file has {len}"),
            ));
        }
        Ok(FlatExtent {
            name: name.to_string(),
            file,
            start,
        })
    }
}

impl DiskExtent {
    /// Classifies extent-relative `[offset, offset + max_len)`: kind at `offset` and the
    /// length sharing it.
    pub fn probe(&self, offset: u64, max_len: u64) -> Result<(ExtentKind, u64)> {
        let max_len = max_len.min(self.size.saturating_sub(offset)).max(1);
        match &self.data {
            ExtentData::Flat(_) => Ok((ExtentKind::Data, max_len)),
            ExtentData::Zero => Ok((ExtentKind::Zero, max_len)),
            ExtentData::Sparse(s) => s.probe(offset, max_len),
        }
    }

    /// Reads extent-relative bytes (holes read as zeros).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.data {
            ExtentData::Flat(f) => {
                let at = f.start + offset;
                f.file
                    .read_at(buf, at)
                    .map_err(|e| VmdkError::io(&f.name, format!("read at byte {at}"), e))
            }
            ExtentData::Zero => {
                buf.fill(0);
                Ok(())
            }
            ExtentData::Sparse(s) => s.read(buf, offset),
        }
    }
}
