//! The guests' runtime (guest ABI: vmm-integration/src/layout.rs): a ring-0 entry stub in
//! assembly that drops to ring 3, the serial console, power-off, a polling virtio-blk
//! driver over virtio-mmio, and the few memory functions the compiler calls.
//!
//! Ring-0 code is emulated one instruction at a time on this machine's KVM, and SSE at ring
//! 0 stops the VM, so the stub is a handful of instructions and everything else runs at
//! ring 3 (IOPL 3: port I/O allowed; every page mapped user by the VMM).

#![allow(dead_code)]

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// Where the VMM puts [`BootInfo`].
pub const BOOT_INFO: usize = 0x8000;
/// Magic of [`BootInfo`].
pub const BOOT_MAGIC: u64 = 0x3130_544f_4f42_4456; // "VDBOOT01"
/// Serial port (COM1).
pub const COM1: u16 = 0x3f8;
/// Power-off port: a 32-bit write stops the VM with that exit code.
pub const EXIT_PORT: u16 = 0xf4;
/// First byte of guest memory the guests may use freely (below: image, stacks, tables).
pub const HEAP: usize = 0x0200_0000;
/// Where the virtqueues live (one 64 KiB area per device).
pub const QUEUES: usize = 0x0100_0000;

/// What the VMM tells the guest (guest address [`BOOT_INFO`]).
#[repr(C)]
pub struct BootInfo {
    pub magic: u64,
    pub mem_size: u64,
    pub tsc_khz: u64,
    pub vcpus: u32,
    pub disks: u32,
    pub mmio: [u64; 8],
    pub args_len: u32,
    pub _pad: u32,
    pub args: [u8; 3072],
}

global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    test esi, esi
    jnz 3f
    push 0x1b
    lea rax, [rip + __stack_top]
    sub rax, 8
    push rax
    push 0x3002
    push 0x23
    lea rax, [rip + guest_entry]
    push rax
    iretq
3:
    hlt
    jmp 3b

    .section .bss.stack, "aw", @nobits
    .balign 4096
__stack_bottom:
    .skip 1048576
__stack_top:
"#
);

extern "Rust" {
    fn guest_main(boot: &'static BootInfo, args: &'static str) -> u32;
}

#[no_mangle]
extern "C" fn guest_entry(boot: *const BootInfo) -> ! {
    // SAFETY: the VMM wrote the boot information at this address before the first
    // instruction and never changes it; it is identity-mapped.
    let boot: &'static BootInfo = unsafe { &*boot };
    if boot.magic != BOOT_MAGIC {
        println!("guest: bad boot information magic");
        power_off(120);
    }
    let n = (boot.args_len as usize).min(boot.args.len());
    let args = core::str::from_utf8(&boot.args[..n]).unwrap_or("");
    // SAFETY: the guest program defines guest_main.
    let code = unsafe { guest_main(boot, args) };
    power_off(code)
}

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O at IOPL 3; the VMM handles the exit.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags)) }
}

/// Stop the VM with `code` as the guest's exit code.
pub fn power_off(code: u32) -> ! {
    outl(EXIT_PORT, code);
    loop {
        core::hint::spin_loop();
    }
}

/// Time stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc is allowed at ring 3 (CR4.TSD clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (hi as u64) << 32 | lo as u64
}

pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(COM1, b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($t:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::rt::Serial, format_args!($($t)*));
        $crate::rt::outb($crate::rt::COM1, b'\n');
    }};
}
pub use println;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("guest panic: {}", info.message());
    power_off(101)
}

/// `key=value` from the argument string, parsed as a number (decimal or 0x hex).
pub fn arg(args: &str, key: &str, default: u64) -> u64 {
    for kv in args.split_ascii_whitespace() {
        if let Some((k, v)) = kv.split_once('=') {
            if k == key {
                let r = match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => v.parse(),
                };
                match r {
                    Ok(n) => return n,
                    Err(_) => {
                        println!("guest: argument {key}={v} is not a number");
                        power_off(2)
                    }
                }
            }
        }
    }
    default
}

/// A 64-bit mixer (splitmix64's finaliser).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fold bytes into a running hash.
pub fn fold(mut h: u64, data: &[u8]) -> u64 {
    for c in data.chunks_exact(8) {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(5);
    }
    h
}

// ---- virtio-blk over virtio-mmio (version 2), polled ----

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const STATUS: usize = 0x070;
const QUEUE_DESC_LOW: usize = 0x080;
const QUEUE_DESC_HIGH: usize = 0x084;
const QUEUE_DRIVER_LOW: usize = 0x090;
const QUEUE_DRIVER_HIGH: usize = 0x094;
const QUEUE_DEVICE_LOW: usize = 0x0a0;
const QUEUE_DEVICE_HIGH: usize = 0x0a4;
const CONFIG: usize = 0x100;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct ReqHdr {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// One virtio-blk device, driven by polling its used ring.
pub struct Blk {
    base: usize,
    area: usize,
    avail_idx: u16,
    last_used: u16,
    /// Capacity in bytes.
    pub capacity: u64,
}

fn r32(a: usize) -> u32 {
    // SAFETY: a device register (MMIO, identity-mapped user page): the VMM handles the exit.
    unsafe { read_volatile(a as *const u32) }
}

fn w32(a: usize, v: u32) {
    // SAFETY: as r32.
    unsafe { write_volatile(a as *mut u32, v) }
}

impl Blk {
    /// Set up device `i` of the boot information; `None` when there is no such disk.
    pub fn open(boot: &BootInfo, i: usize) -> Option<Blk> {
        if i >= boot.disks as usize || i >= 8 {
            return None;
        }
        let base = boot.mmio[i] as usize;
        if r32(base + MAGIC) != 0x7472_6976 || r32(base + VERSION) != 2 || r32(base + DEVICE_ID) != 2 {
            println!("guest: disk {i}: not a virtio-mmio v2 block device");
            return None;
        }
        w32(base + STATUS, 0);
        w32(base + STATUS, 1);
        w32(base + STATUS, 3);
        w32(base + DEVICE_FEATURES_SEL, 1);
        if r32(base + DEVICE_FEATURES) & 1 == 0 {
            println!("guest: disk {i}: no VIRTIO_F_VERSION_1");
            return None;
        }
        w32(base + DEVICE_FEATURES_SEL, 0);
        let lo = r32(base + DEVICE_FEATURES);
        w32(base + DRIVER_FEATURES_SEL, 0);
        w32(base + DRIVER_FEATURES, lo & ((1 << 9) | (1 << 13) | (1 << 14)));
        w32(base + DRIVER_FEATURES_SEL, 1);
        w32(base + DRIVER_FEATURES, 1);
        w32(base + STATUS, 11);
        if r32(base + STATUS) & 8 == 0 {
            println!("guest: disk {i}: features refused");
            return None;
        }
        let area = QUEUES + i * 0x10000;
        // SAFETY: the queue area belongs to this driver (guest ABI); zero it.
        unsafe { core::ptr::write_bytes(area as *mut u8, 0, 0x4000) };
        w32(base + QUEUE_SEL, 0);
        let max = r32(base + QUEUE_NUM_MAX);
        if max < QSIZE as u32 {
            println!("guest: disk {i}: queue too small ({max})");
            return None;
        }
        w32(base + QUEUE_NUM, QSIZE as u32);
        w32(base + QUEUE_DESC_LOW, area as u32);
        w32(base + QUEUE_DESC_HIGH, 0);
        w32(base + QUEUE_DRIVER_LOW, (area + 0x1000) as u32);
        w32(base + QUEUE_DRIVER_HIGH, 0);
        w32(base + QUEUE_DEVICE_LOW, (area + 0x2000) as u32);
        w32(base + QUEUE_DEVICE_HIGH, 0);
        w32(base + QUEUE_READY, 1);
        w32(base + STATUS, 15);
        let capacity = (r32(base + CONFIG) as u64 | (r32(base + CONFIG + 4) as u64) << 32) * 512;
        Some(Blk {
            base,
            area,
            avail_idx: 0,
            last_used: 0,
            capacity,
        })
    }

    /// Submit one request (`buf` may be empty) and wait for it; returns the status byte.
    pub fn request(&mut self, kind: u32, sector: u64, buf: *mut u8, len: usize, device_writes: bool) -> u8 {
        let desc = self.area as *mut Desc;
        let avail = (self.area + 0x1000) as *mut u16;
        let used = (self.area + 0x2000) as *const u16;
        let hdr = (self.area + 0x3000) as *mut ReqHdr;
        let status = (self.area + 0x3100) as *mut u8;
        // SAFETY: the queue area is this driver's; the device reads it only after the notify
        // below and is done with it when the used index moves.
        unsafe {
            write_volatile(hdr, ReqHdr { kind, reserved: 0, sector });
            write_volatile(status, 0xff);
            let mut n = 0u16;
            write_volatile(desc, Desc { addr: hdr as u64, len: 16, flags: F_NEXT, next: 1 });
            n += 1;
            if len > 0 {
                let f = F_NEXT | if device_writes { F_WRITE } else { 0 };
                write_volatile(desc.add(1), Desc { addr: buf as u64, len: len as u32, flags: f, next: 2 });
                n += 1;
            } else {
                (*desc).next = 1;
            }
            write_volatile(desc.add(n as usize), Desc { addr: status as u64, len: 1, flags: F_WRITE, next: 0 });
            write_volatile(avail.add(2 + (self.avail_idx % QSIZE) as usize), 0);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            write_volatile(avail.add(1), self.avail_idx);
            fence(Ordering::SeqCst);
            w32(self.base + QUEUE_NOTIFY, 0);
            while read_volatile(used.add(1)) == self.last_used {
                core::hint::spin_loop();
            }
            fence(Ordering::SeqCst);
            self.last_used = self.last_used.wrapping_add(1);
            read_volatile(status)
        }
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> u8 {
        self.request(T_IN, offset / 512, buf.as_mut_ptr(), buf.len(), true)
    }

    pub fn write(&mut self, offset: u64, buf: &[u8]) -> u8 {
        self.request(T_OUT, offset / 512, buf.as_ptr() as *mut u8, buf.len(), false)
    }

    pub fn flush(&mut self) -> u8 {
        self.request(T_FLUSH, 0, core::ptr::null_mut(), 0, false)
    }
}

// ---- what the compiler calls ----

/// # Safety
/// As C's memcpy.
#[no_mangle]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _, options(nostack, preserves_flags));
    }
    d
}

/// # Safety
/// As C's memmove.
#[no_mangle]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) <= (s as usize) || (d as usize) >= (s as usize) + n {
        // SAFETY: forward copy is correct when d does not start inside [s, s+n).
        return unsafe { memcpy(d, s, n) };
    }
    // SAFETY: backward copy of overlapping ranges, the direction flag restored.
    unsafe {
        asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") d.add(n - 1) => _, inout("rsi") s.add(n - 1) => _, options(nostack));
    }
    d
}

/// # Safety
/// As C's memset.
#[no_mangle]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") d => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    d
}

/// # Safety
/// As C's memcmp.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller's contract; volatile keeps this loop from becoming a memcmp call.
        let (x, y) = unsafe { (read_volatile(a.add(i)), read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C's bcmp.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled core library names an unwinding personality; with panic=abort nothing
/// unwinds, so it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
