//! vdisk-fuse
