//! vdisk-nbd
