//! vdisk-vmdk
