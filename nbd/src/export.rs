//! The backend side of the server: who hands exports out, and how their allocation maps
//! become block status.
//!
//! An export is any [`vdisk_blockdev::Export`] (a block device with NBD's extras). The
//! server knows nothing of the storage behind it. It checks every request against the
//! export's size and read-only flag before calling in, so an export only ever sees in-range
//! offsets and lengths, and no write on a read-only export. Errors are mapped to NBD error
//! codes by [`std::io::Error::raw_os_error`] / [`std::io::ErrorKind`] (`ENOSPC`, `EPERM`,
//! `EINVAL`, otherwise `EIO`).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::sync::Arc;
use vdisk_blockdev::{Export, Extent, Volume};

/// Allocation status of an extent, as reported in the `base:allocation` metadata context.
///
/// The empty set ([`BlockFlags::DATA`]) means "allocated, content unknown": always a safe
/// answer. `HOLE` says no storage backs the extent; `ZERO` says it reads as zeroes. The server
/// answers reads of `ZERO` extents with hole chunks instead of data, so `ZERO` must only be set
/// where a read really returns zeroes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlockFlags(u32);

impl BlockFlags {
    /// Allocated data (no flag set).
    pub const DATA: BlockFlags = BlockFlags(0);
    /// Not allocated in the backend (`NBD_STATE_HOLE`).
    pub const HOLE: BlockFlags = BlockFlags(crate::proto::STATE_HOLE);
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub const ZERO: BlockFlags = BlockFlags(crate::proto::STATE_ZERO);

    /// The raw `base:allocation` status bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Keeps only the bits `base:allocation` defines.
    pub const fn from_bits_truncate(bits: u32) -> BlockFlags {
        BlockFlags(bits & (crate::proto::STATE_HOLE | crate::proto::STATE_ZERO))
    }

    /// True when every flag of `other` is set in `self`.
    pub const fn contains(self, other: BlockFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for BlockFlags {
    type Output = BlockFlags;
    fn bitor(self, rhs: BlockFlags) -> BlockFlags {
        BlockFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for BlockFlags {
    fn bitor_assign(&mut self, rhs: BlockFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for BlockFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.contains(Self::HOLE), self.contains(Self::ZERO)) {
            (false, false) => f.write_str("DATA"),
            (true, false) => f.write_str("HOLE"),
            (false, true) => f.write_str("ZERO"),
            (true, true) => f.write_str("HOLE|ZERO"),
        }
    }
}

/// One run of a block status answer: `(length_bytes, flags)`.
pub type Status = (u64, BlockFlags);

/// A device's allocation map as `base:allocation` runs, neighbours with the same flags
/// merged. Data is `DATA`; zero and unallocated extents read as zeros and hold no data:
/// `HOLE|ZERO`.
pub fn block_status(extents: &[Extent]) -> Vec<Status> {
    let mut out: Vec<Status> = Vec::with_capacity(extents.len());
    for e in extents {
        let flags = if e.kind.is_hole() {
            BlockFlags::HOLE | BlockFlags::ZERO
        } else {
            BlockFlags::DATA
        };
        match out.last_mut() {
            Some((len, f)) if *f == flags => *len += e.length,
            _ => out.push((e.length, flags)),
        }
    }
    out
}

/// Hands exports out to clients during negotiation.
///
/// The server calls the provider afresh for every option of every client, so exports that
/// appear or disappear while serving (a snapshot taken by another process) are seen by the
/// next client without a restart. Clients already in transmission keep the export they
/// opened.
pub trait ExportProvider: Send + Sync {
    /// The export selected by the empty name (`nbd://host:port` without a path).
    fn default_export(&self) -> Option<Arc<dyn Export>>;

    /// Names listed by `NBD_OPT_LIST` (for example the snapshots). Include `""` to list the
    /// default export too.
    fn list(&self) -> Vec<String>;

    /// The export called `name` (never called with the empty name).
    fn open(&self, name: &str) -> Option<Arc<dyn Export>>;
}

/// A fixed set of exports: an optional default one and named ones.
#[derive(Default, Clone)]
pub struct StaticExports {
    default: Option<Arc<dyn Export>>,
    named: BTreeMap<String, Arc<dyn Export>>,
}

impl StaticExports {
    /// A provider serving `export` as the default export.
    pub fn with_default(export: Arc<dyn Export>) -> StaticExports {
        StaticExports {
            default: Some(export),
            named: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the export called `name`.
    pub fn add(mut self, name: impl Into<String>, export: Arc<dyn Export>) -> StaticExports {
        self.named.insert(name.into(), export);
        self
    }
}

impl ExportProvider for StaticExports {
    fn default_export(&self) -> Option<Arc<dyn Export>> {
        self.default.clone()
    }

    fn list(&self) -> Vec<String> {
        self.named.keys().cloned().collect()
    }

    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.named.get(name).cloned()
    }
}

/// Longest range one block-status answer describes; the client asks again for the rest.
pub const MAX_STATUS_SPAN: u64 = 1 << 30;

/// A [`Volume`] served over NBD: its head is the default export and, when asked, every
/// snapshot is a read-only export named after it, listed afresh for every client.
pub struct VolumeExports {
    volume: Arc<dyn Volume>,
    export_snapshots: bool,
}

impl VolumeExports {
    /// Serves `volume`'s head and, with `export_snapshots`, its snapshots by name.
    pub fn new(volume: Arc<dyn Volume>, export_snapshots: bool) -> VolumeExports {
        VolumeExports {
            volume,
            export_snapshots,
        }
    }
}

/// An export with a description of its own (the device's, or the volume's words).
struct Described {
    inner: Arc<dyn Export>,
    description: String,
}

impl vdisk_blockdev::BlockDevice for Described {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn extents(&self, offset: u64, len: u64) -> std::io::Result<Vec<Extent>> {
        self.inner.extents(offset, len.min(MAX_STATUS_SPAN))
    }
}

impl Export for Described {
    fn write_at_fua(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at_fua(buf, offset)
    }
    fn write_zeroes_fua(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.write_zeroes_fua(offset, len)
    }
    fn can_multi_conn(&self) -> bool {
        self.inner.can_multi_conn()
    }
    fn fast_zero(&self) -> bool {
        self.inner.fast_zero()
    }
    fn description(&self) -> String {
        self.description.clone()
    }
}

impl ExportProvider for VolumeExports {
    fn default_export(&self) -> Option<Arc<dyn Export>> {
        let head = self.volume.head()?;
        let what = if head.read_only() {
            "read-only head"
        } else {
            "head"
        };
        let description = format!("vdisk {what} of {}", self.volume.location());
        Some(Arc::new(Described {
            inner: head,
            description,
        }))
    }

    fn list(&self) -> Vec<String> {
        let mut names = vec![String::new()];
        if self.export_snapshots {
            match self.volume.snapshots() {
                Ok(list) => names.extend(list.into_iter().map(|s| s.name)),
                Err(e) => log::warn!("listing snapshots of {}: {e}", self.volume.location()),
            }
        }
        names
    }

    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        if !self.export_snapshots {
            return None;
        }
        match self.volume.open_snapshot(name) {
            Ok(inner) => Some(Arc::new(Described {
                inner,
                description: format!("vdisk snapshot {name} of {}", self.volume.location()),
            })),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("opening snapshot {name:?}: {e}");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_flags_bits_and_debug() {
        assert_eq!((BlockFlags::HOLE | BlockFlags::ZERO).bits(), 3);
        assert!((BlockFlags::HOLE | BlockFlags::ZERO).contains(BlockFlags::ZERO));
        assert!(!BlockFlags::HOLE.contains(BlockFlags::ZERO));
        assert!(BlockFlags::HOLE.contains(BlockFlags::DATA));
        assert_eq!(BlockFlags::from_bits_truncate(0xff).bits(), 3);
        assert_eq!(
            format!("{:?}", BlockFlags::HOLE | BlockFlags::ZERO),
            "HOLE|ZERO"
        );
        assert_eq!(format!("{:?}", BlockFlags::DATA), "DATA");
    }

    #[test]
    fn extents_become_block_status() {
        use vdisk_blockdev::ExtentKind::*;
        let ext = [
            Extent::new(0, 4096, Data),
            Extent::new(4096, 4096, Zero),
            Extent::new(8192, 8192, Unallocated),
            Extent {
                depth: Some(2),
                ..Extent::new(16384, 4096, Data)
            },
        ];
        assert_eq!(
            block_status(&ext),
            [
                (4096, BlockFlags::DATA),
                (12288, BlockFlags::HOLE | BlockFlags::ZERO),
                (4096, BlockFlags::DATA)
            ]
        );
    }
}
