//! vdisk-engine: the layered copy-on-write disk format, its snapshots and their lifecycle.
//!
//! A bundle is a chain (a tree) of layers: sealed layers are immutable and hold snapshots,
//! the one active layer takes the writes. Everything reaches storage through a [`Store`].
//! The on-disk format is specified in `format-spec/`.
//!
//! ```
//! use std::sync::Arc;
//! use vdisk_engine::{CreateOptions, Disk, MemStore, Target, View};
//! let store = Arc::new(MemStore::new());
//! let disk = Disk::create(store.clone(), &CreateOptions::new(1 << 20)).unwrap();
//! disk.write_at(b"hello", 4096).unwrap();
//! disk.snapshot_create("first").unwrap();
//! disk.write_at(b"world", 4096).unwrap();
//! let snap = disk.snapshot_view("first").unwrap();
//! let mut buf = [0u8; 5];
//! snap.read_at(&mut buf, 4096).unwrap();
//! assert_eq!(&buf, b"hello");
//! ```

pub mod alloc;
pub mod bundle;
pub mod check;
pub mod compact;
pub mod device;
pub mod diff;
pub mod disk;
pub mod error;
pub mod format;
pub mod info;
pub mod layer;
pub mod limits;
pub mod maintain;
pub mod merge;
pub mod resize;
mod resolve;
mod sparse;
pub mod store;
pub mod stream;
pub mod view;
pub mod vmstate;

pub use alloc::{Extent, ExtentKind};
pub use device::io_error;
pub use disk::{CreateOptions, Disk, OpenOptions, SnapshotInfo};
pub use error::{Error, ErrorKind, Result};
pub use format::{Geometry, Id};
pub use store::{CrashMode, LocalStore, MemStore, Object, Store};
pub use vdisk_blockdev::{is_zero, BlockDevice, Export};
pub use view::{Target, View};
