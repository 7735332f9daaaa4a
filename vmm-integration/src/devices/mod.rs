//! The VM's devices: the 16550 serial console and virtio-blk over virtio-mmio.

pub mod serial;
pub mod virtio_blk;
