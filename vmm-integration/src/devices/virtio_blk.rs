//! virtio-blk over virtio-mmio (version 2, one queue), backed by a vdisk block device.
//!
//! Requests are served when the guest notifies the queue, on the vCPU thread that took the
//! MMIO exit, so none is in flight once the vCPUs are paused. A guest's bad request (a
//! descriptor loop, an address outside memory, a huge length, a write to a read-only disk)
//! gets a virtio error status; nothing the guest writes can make the VMM panic.

use crate::memory::Mem;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use vdisk_blockdev::BlockDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// Request types (virtio 1.2 §5.2.6).
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Device id string.
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;

/// Status: done.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const F_VERSION_1: u64 = 1 << 32;

/// Queue size offered.
pub const QUEUE_MAX: u16 = 256;
/// Most data bytes of one request (larger ones get an I/O error).
pub const MAX_REQUEST: u64 = 4 << 20;
/// Most segments of one discard / write-zeroes request.
const MAX_SEGMENTS: u32 = 16;
/// Most sectors of one discard / write-zeroes segment.
const MAX_ZERO_SECTORS: u32 = 1 << 21;

/// The device's registers and queue, as a VM snapshot keeps them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlkState {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub queue: QueueSnap,
}

/// virtio-queue's `QueueState`, serializable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueSnap {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// Counters of the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlkStats {
    pub requests: u64,
    pub errors: u64,
}

/// One virtio-blk device.
pub struct VirtioBlk {
    disk: Arc<dyn BlockDevice>,
    id: String,
    read_only: bool,
    st: BlkState,
    queue: Queue,
    /// Counters.
    pub stats: BlkStats,
}

impl VirtioBlk {
    /// A device over `disk`; `id` is what GET_ID returns (at most 20 bytes are sent).
    pub fn new(disk: Arc<dyn BlockDevice>, id: &str) -> VirtioBlk {
        let read_only = disk.read_only();
        VirtioBlk {
            disk,
            id: id.to_string(),
            read_only,
            st: BlkState::default(),
            queue: Queue::new(QUEUE_MAX).expect("a power-of-two queue size"),
            stats: BlkStats::default(),
        }
    }

    /// A device over `disk` in the state `s` (from a snapshot); a state the queue refuses is
    /// an error naming the field.
    pub fn from_state(
        disk: Arc<dyn BlockDevice>,
        id: &str,
        s: &BlkState,
    ) -> Result<VirtioBlk, String> {
        let mut d = VirtioBlk::new(disk, id);
        let q = &s.queue;
        if q.max_size != QUEUE_MAX {
            return Err(format!(
                "queue.max_size {} (this VMM offers {QUEUE_MAX})",
                q.max_size
            ));
        }
        let qs = virtio_queue::QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        };
        d.queue = Queue::try_from(qs).map_err(|e| format!("queue: {e}"))?;
        d.st = s.clone();
        Ok(d)
    }

    /// Registers and queue.
    pub fn state(&self) -> BlkState {
        let q = self.queue.state();
        let mut s = self.st.clone();
        s.queue = QueueSnap {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        };
        s
    }

    fn device_features(&self) -> u64 {
        let mut f = F_VERSION_1 | F_FLUSH | F_DISCARD | F_WRITE_ZEROES;
        if self.read_only {
            f |= F_RO;
        }
        f
    }

    fn config(&self) -> [u8; 64] {
        let mut c = [0u8; 64];
        c[0..8].copy_from_slice(&(self.disk.size() / 512).to_le_bytes());
        c[12..16].copy_from_slice(&1u32.to_le_bytes()); // seg_max (data segments)
        c[20..24].copy_from_slice(&512u32.to_le_bytes()); // blk_size
        c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        c[36..40].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes()); // max_discard_sectors
        c[40..44].copy_from_slice(&MAX_SEGMENTS.to_le_bytes()); // max_discard_seg
        c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard_sector_alignment
        c[48..52].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        c[52..56].copy_from_slice(&MAX_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
        c[56] = 1; // write_zeroes_may_unmap
        c
    }

    /// A guest read of the register at `offset`.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            let c = self.config();
            for (i, b) in data.iter_mut().enumerate() {
                *b = c.get((offset - CONFIG) as usize + i).copied().unwrap_or(0);
            }
            return;
        }
        let v: u32 = match offset {
            MAGIC => 0x7472_6976,
            VERSION => 2,
            DEVICE_ID => 2,
            VENDOR_ID => 0x4b53_4456, // "VDSK"
            DEVICE_FEATURES => match self.st.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => u32::from(QUEUE_MAX),
            QUEUE_READY => u32::from(self.queue.ready()),
            INTERRUPT_STATUS => self.st.interrupt_status,
            STATUS => self.st.status,
            CONFIG_GENERATION => self.st.config_generation,
            _ => 0,
        };
        let b = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&b[..n]);
    }

    /// A guest write of the register at `offset`.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], mem: &Mem) {
        if offset >= CONFIG || data.len() != 4 {
            return; // the config space is read-only; registers are 32-bit
        }
        let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
        let q = &mut self.queue;
        match offset {
            DEVICE_FEATURES_SEL => self.st.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.st.driver_features_sel = v,
            DRIVER_FEATURES => {
                let shift = match self.st.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let f = (self.st.driver_features & !mask) | (u64::from(v) << shift);
                self.st.driver_features = f & self.device_features();
            }
            QUEUE_SEL => self.st.queue_sel = v,
            QUEUE_NUM if self.st.queue_sel == 0 => q.set_size(v as u16),
            QUEUE_READY if self.st.queue_sel == 0 => q.set_ready(v == 1),
            QUEUE_DESC_LOW if self.st.queue_sel == 0 => q.set_desc_table_address(Some(v), None),
            QUEUE_DESC_HIGH if self.st.queue_sel == 0 => q.set_desc_table_address(None, Some(v)),
            QUEUE_DRIVER_LOW if self.st.queue_sel == 0 => q.set_avail_ring_address(Some(v), None),
            QUEUE_DRIVER_HIGH if self.st.queue_sel == 0 => q.set_avail_ring_address(None, Some(v)),
            QUEUE_DEVICE_LOW if self.st.queue_sel == 0 => q.set_used_ring_address(Some(v), None),
            QUEUE_DEVICE_HIGH if self.st.queue_sel == 0 => q.set_used_ring_address(None, Some(v)),
            INTERRUPT_ACK => self.st.interrupt_status &= !v,
            STATUS => {
                if v == 0 {
                    // reset
                    self.st = BlkState::default();
                    self.queue.reset();
                } else {
                    // FEATURES_OK only with VERSION_1 negotiated
                    let mut v = v;
                    if v & 8 != 0 && self.st.driver_features & F_VERSION_1 == 0 {
                        v &= !8;
                    }
                    self.st.status = v;
                }
            }
            QUEUE_NOTIFY if v == 0 => self.process(mem),
            _ => {}
        }
    }

    /// Serve every available request of the queue.
    pub fn process(&mut self, mem: &Mem) {
        if self.st.status & 4 == 0 || !self.queue.ready() || !self.queue.is_valid(mem) {
            return;
        }
        // at most a queue's worth per notify: a guest that keeps refilling cannot hold the
        // vCPU here forever
        for _ in 0..QUEUE_MAX {
            let Some(chain) = self.queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let (status_addr, used_len, status) = self.serve(chain, mem);
            self.stats.requests += 1;
            if status != S_OK {
                self.stats.errors += 1;
            }
            if let Some(a) = status_addr {
                let _ = mem.write_obj(status, a);
            }
            if self.queue.add_used(mem, head, used_len).is_err() {
                break;
            }
            self.st.interrupt_status |= 1;
        }
    }

    /// One request: returns where its status byte goes, the bytes written to the guest and
    /// the status.
    fn serve(
        &mut self,
        chain: virtio_queue::DescriptorChain<&Mem>,
        mem: &Mem,
    ) -> (Option<GuestAddress>, u32, u8) {
        let descs: Vec<_> = chain.collect();
        // the last descriptor holds the status byte: device-writable, at least 1 byte
        let Some(last) = descs.last() else {
            return (None, 0, S_IOERR);
        };
        if !last.is_write_only() || last.len() < 1 || !mem.address_in_range(last.addr()) {
            return (None, 0, S_IOERR);
        }
        let status_addr = last.addr();
        let first = descs[0];
        if descs.len() < 2 || first.is_write_only() || first.len() < 16 {
            return (Some(status_addr), 1, S_IOERR);
        }
        let mut hdr = [0u8; 16];
        if mem.read_slice(&mut hdr, first.addr()).is_err() {
            return (Some(status_addr), 1, S_IOERR);
        }
        let kind = u32::from_le_bytes(hdr[0..4].try_into().expect("4"));
        let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8"));
        let data = &descs[1..descs.len() - 1];
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        if total > MAX_REQUEST {
            return (Some(status_addr), 1, S_IOERR);
        }
        let Some(offset) = sector.checked_mul(512) else {
            return (Some(status_addr), 1, S_IOERR);
        };
        let in_disk = |len: u64| {
            offset
                .checked_add(len)
                .is_some_and(|e| e <= self.disk.size())
        };
        match kind {
            T_IN => {
                if data.iter().any(|d| !d.is_write_only()) || !in_disk(total) || !total.is_multiple_of(512) {
                    return (Some(status_addr), 1, S_IOERR);
                }
                let mut buf = vec![0u8; total as usize];
                if self.disk.read_at(&mut buf, offset).is_err() {
                    return (Some(status_addr), 1, S_IOERR);
                }
                let mut at = 0usize;
                for d in data {
                    let n = d.len() as usize;
                    if mem.write_slice(&buf[at..at + n], d.addr()).is_err() {
                        return (Some(status_addr), 1, S_IOERR);
                    }
                    at += n;
                }
                (Some(status_addr), total as u32 + 1, S_OK)
            }
            T_OUT => {
                if self.read_only {
                    return (Some(status_addr), 1, S_IOERR);
                }
                if data.iter().any(|d| d.is_write_only()) || !in_disk(total) || !total.is_multiple_of(512) {
                    return (Some(status_addr), 1, S_IOERR);
                }
                let mut buf = vec![0u8; total as usize];
                let mut at = 0usize;
                for d in data {
                    let n = d.len() as usize;
                    if mem.read_slice(&mut buf[at..at + n], d.addr()).is_err() {
                        return (Some(status_addr), 1, S_IOERR);
                    }
                    at += n;
                }
                match self.disk.write_at(&buf, offset) {
                    Ok(()) => (Some(status_addr), 1, S_OK),
                    Err(_) => (Some(status_addr), 1, S_IOERR),
                }
            }
            T_FLUSH => match self.disk.flush() {
                Ok(()) => (Some(status_addr), 1, S_OK),
                Err(_) => (Some(status_addr), 1, S_IOERR),
            },
            T_GET_ID => {
                let Some(d) = data.first() else {
                    return (Some(status_addr), 1, S_IOERR);
                };
                if !d.is_write_only() {
                    return (Some(status_addr), 1, S_IOERR);
                }
                let mut id = [0u8; 20];
                let b = self.id.as_bytes();
                let n = b.len().min(20);
                id[..n].copy_from_slice(&b[..n]);
                let n = (d.len() as usize).min(20);
                if mem.write_slice(&id[..n], d.addr()).is_err() {
                    return (Some(status_addr), 1, S_IOERR);
                }
                (Some(status_addr), n as u32 + 1, S_OK)
            }
            T_DISCARD | T_WRITE_ZEROES => {
                if self.read_only {
                    return (Some(status_addr), 1, S_IOERR);
                }
                if data.iter().any(|d| d.is_write_only())
                    || !total.is_multiple_of(16)
                    || total / 16 > u64::from(MAX_SEGMENTS)
                {
                    return (Some(status_addr), 1, S_IOERR);
                }
                let mut segs = vec![0u8; total as usize];
                let mut at = 0usize;
                for d in data {
                    let n = d.len() as usize;
                    if mem.read_slice(&mut segs[at..at + n], d.addr()).is_err() {
                        return (Some(status_addr), 1, S_IOERR);
                    }
                    at += n;
                }
                for s in segs.chunks_exact(16) {
                    let sector = u64::from_le_bytes(s[0..8].try_into().expect("8"));
                    let n = u32::from_le_bytes(s[8..12].try_into().expect("4"));
                    if n > MAX_ZERO_SECTORS {
                        return (Some(status_addr), 1, S_IOERR);
                    }
                    let (Some(off), len) = (sector.checked_mul(512), u64::from(n) * 512) else {
                        return (Some(status_addr), 1, S_IOERR);
                    };
                    if off.checked_add(len).is_none_or(|e| e > self.disk.size()) {
                        return (Some(status_addr), 1, S_IOERR);
                    }
                    let r = if kind == T_DISCARD {
                        self.disk.discard(off, len)
                    } else {
                        self.disk.write_zeroes(off, len)
                    };
                    if r.is_err() {
                        return (Some(status_addr), 1, S_IOERR);
                    }
                }
                (Some(status_addr), 1, S_OK)
            }
            _ => (Some(status_addr), 1, S_UNSUPP),
        }
    }
}
