//! The backend side of the server: what an export must do, and who hands exports out.
//!
//! The server knows nothing of the storage behind an export. It checks every request against
//! the export's size and read-only flag before calling in, so an [`Export`] only ever sees
//! in-range offsets and lengths, and no write on a read-only export.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::{BitOr, BitOrAssign};
use std::sync::Arc;

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

/// One extent of a block status answer: `(length_bytes, flags)`.
pub type Extent = (u64, BlockFlags);

/// A virtual disk served over NBD.
///
/// Methods are called concurrently from several worker threads (several requests of one
/// client, and several clients), hence `Send + Sync` and `&self`. The server guarantees
/// `offset + len <= size()` for every call and never calls a writing method when
/// [`read_only`](Export::read_only) is true. Errors are mapped to NBD error codes by
/// [`std::io::Error::raw_os_error`] / [`std::io::ErrorKind`] (`ENOSPC`, `EPERM`, `EINVAL`,
/// otherwise `EIO`).
pub trait Export: Send + Sync {
    /// Virtual size in bytes; read once per connection when the client selects the export.
    fn size(&self) -> u64;

    /// True when the export refuses writes (snapshots, `--read-only`).
    fn read_only(&self) -> bool;

    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes `buf` at `offset`; when `fua` is true the data must be durable on return.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeroes. `may_trim` allows deallocating them
    /// (false when the client asked `NO_HOLE`); `fua` asks durability on return.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()>;

    /// Discard hint: the client no longer needs the content of the range, which may then
    /// read as anything (zeroes usually). Doing nothing is a valid implementation.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> io::Result<()>;

    /// Allocation status of `[offset, offset + len)`, as consecutive extents from `offset`.
    ///
    /// The extents may cover less than `len` (the client then asks again for the rest) or
    /// more (the surplus is cut off); zero-length extents are skipped. An empty answer is
    /// reported as one `DATA` extent.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>>;

    /// Human-readable description, sent as `NBD_INFO_DESCRIPTION` when non-empty.
    fn description(&self) -> String {
        String::new()
    }

    /// True when the export has no cache private to one connection, so that a flush (or FUA
    /// write) on one connection is visible and durable for all of them. Enables
    /// `NBD_FLAG_CAN_MULTI_CONN`, which lets clients such as qemu spread requests over
    /// several connections. Read-only exports always advertise it.
    fn can_multi_conn(&self) -> bool {
        false
    }

    /// True when [`write_zeroes`](Export::write_zeroes) is cheaper than writing zero data
    /// (for example because zeroes store no data). Requests with `NBD_CMD_FLAG_FAST_ZERO`
    /// fail fast with `ENOTSUP` when this is false, as the spec asks.
    fn fast_zero(&self) -> bool {
        false
    }
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
}
