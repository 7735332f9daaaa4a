//! The guest ABI: where the VMM puts what the guest finds (guests/rt.rs is the other side).
//!
//! | guest physical | what |
//! |---|---|
//! | 0x1000 | GDT: null, kernel code 0x08, kernel data 0x10, user data 0x18, user code 0x20, TSS 0x28 |
//! | 0x2000 | TSS with an I/O bitmap allowing every port (ring 3 does port I/O; IOPL is not kept here) |
//! | 0x8000 | boot information (`BootInfo` of guests/rt.rs) |
//! | 0x10000 | page tables: PML4, PDPT, 4 page directories (2 MiB pages, user, writable) |
//! | 0x90000 | top of the ring-0 stack |
//! | 0x100000 | the guest image (ELF PT_LOAD segments) |
//! | 0x1000000 | virtqueues (64 KiB per disk, the guest's) |
//! | 0xd0000000 | virtio-mmio devices, 4 KiB apart |
//!
//! Ports: 0x3f8–0x3ff the 16550 serial, 0xf4 power-off (a 32-bit write: the exit code).
//! The vCPUs start in 64-bit mode at ring 0 at the ELF entry with `rdi` = boot information
//! and `rsi` = the vCPU index; the guest's stub drops vCPU 0 to ring 3 and halts the others.

/// GDT.
pub const GDT: u64 = 0x1000;
/// TSS.
pub const TSS: u64 = 0x2000;
/// Boot information.
pub const BOOT_INFO: u64 = 0x8000;
/// Magic of the boot information ("VDBOOT01").
pub const BOOT_MAGIC: u64 = 0x3130_544f_4f42_4456;
/// PML4 (then PDPT and four page directories).
pub const PML4: u64 = 0x10000;
/// Ring-0 stack top.
pub const STACK_TOP: u64 = 0x90000;
/// Lowest address of the guest image.
pub const IMAGE_BASE: u64 = 0x100000;
/// First guest address above the image area (the image must end below).
pub const IMAGE_END: u64 = 0x1000000;
/// Smallest guest memory (image, queues and a little heap).
pub const MIN_MEMORY: u64 = 34 << 20;
/// Largest guest memory: below the device window.
pub const MAX_MEMORY: u64 = 0xc000_0000;
/// First virtio-mmio device.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Space of one virtio-mmio device.
pub const MMIO_SIZE: u64 = 0x1000;
/// Most disks.
pub const MAX_DISKS: usize = 8;
/// Serial port base (COM1).
pub const COM1: u16 = 0x3f8;
/// Power-off port.
pub const EXIT_PORT: u16 = 0xf4;
/// Bytes of the argument string in the boot information.
pub const MAX_ARGS: usize = 3072;
