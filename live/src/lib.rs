//! vdisk-live: a vdisk bundle in use.
//!
//! What the CLI's long-lived commands (`serve`, `mount`), the bench and the VMM share:
//!
//! - [`Writer`] and [`Reader`] ([`bundle`]): the bundle opened by its one writer (a live,
//!   writable head) or lock-free (immutable snapshots and a head that follows manifest
//!   changes through the [`vdisk_engine::Store`]'s generation). Both are
//!   [`vdisk_blockdev::Volume`]s, which the NBD server and the FUSE mount serve.
//! - [`control`]: the writer's control socket — server, client and one typed protocol —
//!   so that `vdisk snapshot create` from another shell snapshots a disk in use.
//! - [`copy`]: the parallel, sparse-aware copy between two block devices (`convert`, OVF
//!   import) and [`import`]: a chain of images (a VMDK delta chain) as snapshots.
//! - [`RawFile`]: a raw image file as a block device.

pub mod bundle;
pub mod control;
pub mod copy;
pub mod import;
mod raw;
mod service;

pub use bundle::{BundleStatus, Reader, SnapshotStatus, Writer};
pub use raw::RawFile;
pub use service::HeldWriter;
