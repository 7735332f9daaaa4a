//! `blk-iops`: random 4 KiB disk I/O from the guest, for the virtio-blk bench. Arguments
//! `mode=read|write ops=N disk_mib=D seed=S`; prints `DONE ops=N cycles=C` (TSC cycles).
#![no_std]
#![no_main]

#[path = "rt.rs"]
#[macro_use]
mod rt;

use rt::{arg, mix, rdtsc, BootInfo, Blk};

#[repr(align(4096))]
struct Page([u8; 4096]);
static mut BUF: Page = Page([0; 4096]);

#[no_mangle]
pub fn guest_main(boot: &'static BootInfo, args: &'static str) -> u32 {
    let write = args.split_ascii_whitespace().any(|a| a == "mode=write");
    let ops = arg(args, "ops", 10000);
    let disk_mib = arg(args, "disk_mib", 64);
    let seed = arg(args, "seed", 1);
    let Some(mut blk) = Blk::open(boot, 0) else {
        println!("blk-iops: no disk");
        return 3;
    };
    let blocks = (disk_mib << 20).min(blk.capacity) / 4096;
    if blocks == 0 {
        println!("blk-iops: the disk is smaller than one block");
        return 3;
    }
    // SAFETY: one thread uses the buffer.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF.0) };
    let t0 = rdtsc();
    for i in 0..ops {
        let b = mix(seed ^ i) % blocks;
        let st = if write {
            buf[0..8].copy_from_slice(&i.to_le_bytes());
            blk.write(b * 4096, buf)
        } else {
            blk.read(b * 4096, buf)
        };
        if st != 0 {
            println!("blk-iops: I/O error at block {b}");
            return 4;
        }
    }
    let cycles = rdtsc() - t0;
    println!("DONE ops={ops} cycles={cycles} tsc_khz={}", boot.tsc_khz);
    0
}
