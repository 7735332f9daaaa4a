//! vdisk-blockdev: the one block-device interface of vdisk.
//!
//! Everything that holds guest bytes — a vdisk head or snapshot, a VMDK image, a raw file, a
//! RAM disk — offers them as a [`BlockDevice`]: size, positional reads and writes, zeroing,
//! discard, flush and an allocation map of [`Extent`]s. Everything that consumes guest bytes —
//! the VMDK writers, `convert`, the NBD server, the FUSE mount, the VMM's virtio-blk — takes a
//! `BlockDevice` and nothing else, so none of them needs to know the engine.
//!
//! Two small additions sit on top:
//! - [`Export`]: the extras a network export advertises (NBD's FUA, multi-connection and
//!   fast-zero), as an extension trait with defaults, not a second interface.
//! - [`Volume`]: a disk with a live head and named snapshots, as the NBD server and the FUSE
//!   mount present it.
//!
//! This crate depends on `std` only.
//!
//! ```
//! use vdisk_blockdev::{BlockDevice, ExtentKind, MemDevice};
//! let d = MemDevice::new(1 << 20);
//! d.write_at(b"hello", 8192).unwrap();
//! let mut b = [0u8; 5];
//! d.read_at(&mut b, 8192).unwrap();
//! assert_eq!(&b, b"hello");
//! let map = d.extents(0, 1 << 20).unwrap();
//! assert_eq!(map[1].kind, ExtentKind::Data);
//! ```

mod device;
mod extent;
mod mem;
mod volume;
mod zero;

pub use device::{check_range, read_only_error, BlockDevice, Export};
pub use extent::{clip, push_extent, push_kind, Extent, ExtentKind};
pub use mem::{MemDevice, MEM_PAGE};
pub use volume::{SnapshotEntry, Volume};
pub use zero::is_zero;
