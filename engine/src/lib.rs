//! vdisk-engine
