//! Guest memory: one region at guest address 0, anonymous for a boot, or a memory image's
//! pages mapped `MAP_PRIVATE` for a restore (read lazily by the kernel on first touch). The
//! region's bitmap records what the VMM itself writes (device reads into guest buffers),
//! which KVM's dirty log does not see.

use crate::error::{Result, VmmError};
use std::fs::File;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

/// Guest memory with a bitmap of the VMM's own writes.
pub type Mem = GuestMemoryMmap<AtomicBitmap>;

/// Guest page size.
pub const PAGE: u64 = 4096;

fn region(r: MmapRegion<AtomicBitmap>) -> Result<Mem> {
    let g = GuestRegionMmap::new(r, GuestAddress(0))
        .ok_or_else(|| VmmError::Memory("the region does not fit the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![g]).map_err(|e| VmmError::Memory(e.to_string()))
}

/// `size` bytes of zeroed anonymous memory.
pub fn anonymous(size: u64) -> Result<Mem> {
    let r = MmapRegion::<AtomicBitmap>::build(
        None,
        size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
    )
    .map_err(|e| VmmError::Memory(format!("mmap of {size} bytes: {e}")))?;
    region(r)
}

/// `size` bytes mapped privately from `file` at `offset` (a full memory image): pages are
/// read when first touched, and guest writes stay in this process.
pub fn private_file(file: File, offset: u64, size: u64) -> Result<Mem> {
    let r = MmapRegion::<AtomicBitmap>::build(
        Some(FileOffset::new(file, offset)),
        size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    )
    .map_err(|e| VmmError::Memory(format!("mmap of a memory image ({size} bytes): {e}")))?;
    region(r)
}

/// Host address and length of the guest memory region.
pub fn host_range(mem: &Mem) -> (*mut u8, u64) {
    use vm_memory::GuestMemoryRegion;
    let r = mem.iter().next().expect("one region");
    (r.as_ptr(), r.len())
}

/// The guest bytes `[gpa, gpa + len)` (inside memory).
///
/// The slice aliases guest memory: the caller reads it while the vCPUs are paused, or
/// accepts that the guest may change it (a pre-copy pass, rewritten later if dirtied).
pub fn bytes(mem: &Mem, gpa: u64, len: u64) -> &[u8] {
    let (p, size) = host_range(mem);
    assert!(gpa + len <= size, "a range inside guest memory");
    // SAFETY: the region is mapped for its whole length for as long as `mem` lives; the
    // range was checked. Concurrent guest writes can change the bytes but not unmap them.
    unsafe { std::slice::from_raw_parts(p.add(gpa as usize), len as usize) }
}

/// Take (and clear) the bitmap of pages the VMM wrote, as one bit per page.
pub fn take_vmm_dirty(mem: &Mem) -> Vec<u64> {
    let r: &MmapRegion<AtomicBitmap> = mem.iter().next().expect("one region");
    r.bitmap().get_and_reset()
}
