//! vdisk-ovf
