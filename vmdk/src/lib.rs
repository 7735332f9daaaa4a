//! VMDK reading and writing for vdisk, independent of the vdisk engine.
//!
//! Reading ([`VmdkImage`]): monolithicSparse, streamOptimized (footer or GD-first
//! variants, and marker scanning when the directory is missing), monolithicFlat,
//! twoGbMaxExtentSparse/Flat, vmfs/vmfsThin flat extents, ZERO extents, and delta chains
//! through `parentFileNameHint`/`parentCID`. Every value read from a file is checked before
//! it is used for a seek or an allocation.
//!
//! Writing ([`write_vmdk`], [`write_stream_optimized`]): monolithicSparse, streamOptimized
//! (parallel deflate, no seeking needed) and monolithicFlat, from any [`BlockDevice`].
//!
//! Format reference: VMware "Virtual Disk Format 1.1"; behaviour matched against qemu-img.

pub mod descriptor;
mod disk;
mod error;
mod extent;
mod files;
mod image;
mod info;
mod sniff;
mod source;
pub mod sparse;
mod write;

pub use descriptor::{Access, Descriptor, ExtentLine, ExtentType};
pub use error::{Result, VmdkError};
pub use files::{open_regular, OpenOptions, MAX_OPEN_TABLE_BYTES};
pub use image::{ChainLayer, VmdkImage, MAX_CHAIN_DEPTH};
pub use info::{ExtentInfo, LayerInfo, SparseInfo, VmdkInfo};
pub use sniff::looks_like_vmdk;
pub use source::{FileSlice, RawSource, ReadAt};
pub use vdisk_blockdev::{is_zero, BlockDevice, Extent, ExtentKind};
pub use write::{
    write_stream_optimized, write_vmdk, AdapterType, Subformat, WriteOptions, WriteReport,
    GRAIN_BYTES,
};
