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
                if data.iter().any(|d| !d.is_write_only())
                    || !in_disk(total)
                    || !total.is_multiple_of(512)
                {
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
                if data.iter().any(|d| d.is_write_only())
                    || !in_disk(total)
                    || !total.is_multiple_of(512)
                {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vdisk_blockdev::MemDevice;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const HDR: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    const STATUS_AT: u64 = 0x8000;
    const QN: u16 = 16;

    fn reg(d: &mut VirtioBlk, mem: &Mem, off: u64, v: u32) {
        d.mmio_write(off, &v.to_le_bytes(), mem);
    }

    /// A device set up the way the guests' driver does it.
    fn device(read_only: bool) -> (VirtioBlk, Mem, Arc<MemDevice>) {
        let mem = crate::memory::anonymous(1 << 20).unwrap();
        let disk = Arc::new(MemDevice::new(1 << 20).read_only(read_only));
        let mut d = VirtioBlk::new(disk.clone(), "t");
        for (off, v) in [
            (STATUS, 1),
            (STATUS, 3),
            (DRIVER_FEATURES_SEL, 1),
            (DRIVER_FEATURES, 1),
            (STATUS, 11),
            (QUEUE_SEL, 0),
            (QUEUE_NUM, u32::from(QN)),
            (QUEUE_DESC_LOW, DESC as u32),
            (QUEUE_DRIVER_LOW, AVAIL as u32),
            (QUEUE_DEVICE_LOW, USED as u32),
            (QUEUE_READY, 1),
            (STATUS, 15),
        ] {
            reg(&mut d, &mem, off, v);
        }
        assert_eq!(d.st.status, 15);
        (d, mem, disk)
    }

    fn desc(mem: &Mem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&b, GuestAddress(DESC + u64::from(i) * 16))
            .unwrap();
    }

    fn submit(d: &mut VirtioBlk, mem: &Mem, heads: &[u16]) {
        let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        let mut idx = idx;
        for &h in heads {
            mem.write_obj(h, GuestAddress(AVAIL + 4 + u64::from(idx % QN) * 2))
                .unwrap();
            idx = idx.wrapping_add(1);
        }
        mem.write_obj(idx, GuestAddress(AVAIL + 2)).unwrap();
        reg(d, mem, QUEUE_NOTIFY, 0);
    }

    fn request(mem: &Mem, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS_AT)).unwrap();
    }

    fn status(mem: &Mem) -> u8 {
        mem.read_obj(GuestAddress(STATUS_AT)).unwrap()
    }

    fn used_idx(mem: &Mem) -> u16 {
        mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    #[test]
    fn write_then_read_round_trips() {
        let (mut d, mem, disk) = device(false);
        mem.write_slice(&[7u8; 4096], GuestAddress(DATA)).unwrap();
        request(&mem, T_OUT, 8);
        desc(&mem, 0, HDR, 16, 1, 1);
        desc(&mem, 1, DATA, 4096, 1, 2);
        desc(&mem, 2, STATUS_AT, 1, 2, 0);
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_OK);
        let mut b = [0u8; 4096];
        disk.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [7u8; 4096]);
        mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
        request(&mem, T_IN, 8);
        desc(&mem, 1, DATA, 4096, 3, 2);
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_OK);
        let mut g = [0u8; 4096];
        mem.read_slice(&mut g, GuestAddress(DATA)).unwrap();
        assert_eq!(g, [7u8; 4096]);
        assert_eq!(used_idx(&mem), 2);
    }

    #[test]
    fn hostile_requests_get_an_error_status() {
        let (mut d, mem, _) = device(false);
        // data outside guest memory
        request(&mem, T_IN, 0);
        desc(&mem, 0, HDR, 16, 1, 1);
        desc(&mem, 1, 0xffff_0000, 4096, 3, 2);
        desc(&mem, 2, STATUS_AT, 1, 2, 0);
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_IOERR);
        // a huge length
        request(&mem, T_OUT, 0);
        desc(&mem, 1, DATA, u32::MAX, 1, 2);
        let before = used_idx(&mem);
        submit(&mut d, &mem, &[0]);
        // refused: an error status, or (a chain virtio-queue cuts short) completed unwritten
        assert!(matches!(status(&mem), S_IOERR | 0xff));
        assert_eq!(used_idx(&mem), before.wrapping_add(1));
        // past the end of the disk
        request(&mem, T_IN, (1 << 20) / 512);
        desc(&mem, 1, DATA, 4096, 3, 2);
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_IOERR);
        // a sector that overflows
        request(&mem, T_IN, u64::MAX / 256);
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_IOERR);
        // an unknown type
        request(&mem, 99, 0);
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_UNSUPP);
        // a descriptor loop: the chain is cut, the device carries on
        desc(&mem, 3, HDR, 16, 1, 4);
        desc(&mem, 4, DATA, 512, 1, 3);
        submit(&mut d, &mem, &[3]);
        // a head index outside the queue
        submit(&mut d, &mem, &[200]);
        // and the device still works
        request(&mem, T_FLUSH, 0);
        desc(&mem, 0, HDR, 16, 1, 1);
        desc(&mem, 1, STATUS_AT, 1, 2, 0);
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_OK);
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let (mut d, mem, disk) = device(true);
        assert_ne!(d.device_features() & F_RO, 0);
        request(&mem, T_OUT, 0);
        desc(&mem, 0, HDR, 16, 1, 1);
        desc(&mem, 1, DATA, 512, 1, 2);
        desc(&mem, 2, STATUS_AT, 1, 2, 0);
        mem.write_slice(&[9u8; 512], GuestAddress(DATA)).unwrap();
        submit(&mut d, &mem, &[0]);
        assert_eq!(status(&mem), S_IOERR);
        let mut b = [1u8; 512];
        disk.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0u8; 512]);
    }

    #[test]
    fn state_round_trips_and_hostile_state_is_refused() {
        let (d, _mem, disk) = device(false);
        let s = d.state();
        let d2 = VirtioBlk::from_state(disk.clone(), "t", &s).unwrap();
        assert_eq!(d2.state().queue.desc_table, DESC);
        let mut bad = s.clone();
        bad.queue.max_size = 7;
        assert!(VirtioBlk::from_state(disk.clone(), "t", &bad).is_err());
        let mut bad = s;
        bad.queue.size = 1000;
        assert!(VirtioBlk::from_state(disk, "t", &bad).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever the guest puts in the descriptor table and the available ring, the device
        /// neither panics nor completes more requests than were offered.
        #[test]
        fn any_descriptor_table_is_survived(
            descs in proptest::collection::vec((0u64..0x20_0000, 0u32..0x2_0000, 0u16..8, 0u16..20), 16),
            heads in proptest::collection::vec(0u16..20, 1..20),
            kind in prop_oneof![Just(T_IN), Just(T_OUT), Just(T_FLUSH), Just(T_GET_ID), Just(T_DISCARD), Just(T_WRITE_ZEROES), 0u32..20],
        ) {
            let (mut d, mem, _) = device(false);
            request(&mem, kind, 1);
            for (i, (a, l, f, n)) in descs.iter().enumerate() {
                desc(&mem, i as u16, *a, *l, *f, *n);
            }
            let before = used_idx(&mem);
            submit(&mut d, &mem, &heads);
            let done = used_idx(&mem).wrapping_sub(before);
            prop_assert!(done as usize <= heads.len());
        }
    }
}
