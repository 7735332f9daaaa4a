//! The two traits the filesystem is generic over: a [`Device`] (bytes at offsets plus an
//! allocation map) and a [`MountSource`] (the head and the snapshot list of one disk).
//!
//! The filesystem knows nothing of the engine: the CLI implements these traits over a vdisk
//! bundle, the tests over memory and plain files.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

/// One run of bytes of a device that is either stored data or a hole that reads as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte of the run, from the start of the device.
    pub offset: u64,
    /// Length of the run in bytes.
    pub length: u64,
    /// `true` when the run holds stored data, `false` for a hole (reads as zeroes).
    pub data: bool,
}

/// A virtual disk's bytes: what `head.raw`, `snapshots/NAME.raw` and partition files show.
///
/// Implementations must be safe to call from several threads at once: the filesystem serves
/// requests on a pool of threads.
pub trait Device: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`. The filesystem never asks past [`size`](Self::size).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`. A read-only device answers
    /// `Err(io::ErrorKind::PermissionDenied)`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every acknowledged write durable (called on `fsync` and before unmount).
    fn flush(&self) -> io::Result<()>;

    /// The allocation map of `[offset, offset + len)`, in order, clipped to that range.
    ///
    /// Runs not covered by any extent are taken as data (the safe answer for a copy tool).
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>>;

    /// Makes `[offset, offset + len)` read as zeroes (`fallocate` punch-hole / zero-range).
    ///
    /// The default writes zero buffers; an engine with zero detection or discard should
    /// override it to drop the data instead.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; usize::try_from(len.min(CHUNK)).unwrap_or(1 << 20)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK);
            let n_usize = usize::try_from(n).map_err(|_| io::Error::other("chunk size"))?;
            let at = offset
                .checked_add(done)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            self.write_at(zeroes.get(..n_usize).unwrap_or(&zeroes), at)?;
            done += n;
        }
        Ok(())
    }
}

/// One snapshot as the filesystem lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// User-visible name; the file is `snapshots/NAME.raw`.
    pub name: String,
    /// Stable identity of the snapshot: keeps its inode number across renames and refreshes.
    /// Never reused for another snapshot: the kernel keeps a snapshot file's cached pages
    /// under it.
    pub id: u64,
    /// Creation time, shown as the file's mtime.
    pub created: SystemTime,
    /// Virtual size in bytes.
    pub size: u64,
}

/// A disk with a head and snapshots, as seen by the mount.
pub trait MountSource: Send + Sync {
    /// The active head, or `None` when the disk has none (for example a snapshot-only view).
    ///
    /// Called for every request on `head.raw`, so the engine may swap the head's device
    /// (after a snapshot seals the active layer) while files are open.
    fn head(&self) -> Option<Arc<dyn Device>>;

    /// Whether the head accepts writes (the mount also needs `read_write`).
    fn head_writable(&self) -> bool;

    /// The snapshot list, in display order.
    fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>>;

    /// Opens one snapshot's bytes by name.
    fn open_snapshot(&self, name: &str) -> io::Result<Arc<dyn Device>>;

    /// A number that changes whenever the snapshot list changes; must be cheap, the
    /// filesystem checks it on every directory lookup, listing and `stat`.
    fn generation(&self) -> u64;

    /// The content of `info.json`.
    fn info_json(&self) -> String;
}
