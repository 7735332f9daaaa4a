//! vdisk-fuse: a disk and its snapshots as files, through FUSE.
//!
//! ```text
//! MOUNTPOINT/
//!   head.raw                 the active head (writable with MountOptions::read_write)
//!   head/partN.raw           the head's partitions (MBR incl. logical, or GPT)
//!   snapshots/NAME.raw       each snapshot, read-only, mtime = creation time
//!   snapshots/NAME/partN.raw each snapshot's partitions
//!   info.json                Volume::info_json
//! ```
//!
//! The filesystem is generic over [`vdisk_blockdev::Volume`] and
//! [`vdisk_blockdev::BlockDevice`], so it knows nothing of the engine. It serves requests on several threads, reads straight from the device into the
//! reply, answers `SEEK_DATA`/`SEEK_HOLE` from the allocation map (so `cp --sparse` and
//! `qemu-img` see holes) and refreshes `snapshots/` when [`Volume::generation`] changes.
//!
//! Mounting needs /dev/fuse; as root it uses mount(2), otherwise the `fusermount3` helper of
//! the `fuse3` package. libfuse is not linked.

mod daemon;
mod error;
mod fs;
mod mount;
pub mod partition;
mod tree;
mod unmount;
mod window;

pub use daemon::{daemonize, Daemon};
pub use error::FuseError;
pub use mount::{mount, MountHandle, MountOptions};
pub use unmount::{unmount, unmount_lazy};
pub use window::DeviceWindow;
