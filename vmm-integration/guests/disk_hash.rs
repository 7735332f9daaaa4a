//! `disk-hash`: a deterministic workload over guest memory and one disk. Arguments
//! `seed=S rounds=N mem_mib=M disk_mib=D`. Each round writes a disk block and a memory table
//! page (content from the seed, the round and the running hash), reads back an earlier block
//! and table page, and folds what it read into the running hash. Prints `progress R/N` at
//! least every 1 % of the rounds and `DONE hash=<16 hex>` at the end, then powers off with
//! exit code 0. Any lost or stale page or block changes the hash.
#![no_std]
#![no_main]

#[path = "rt.rs"]
#[macro_use]
mod rt;

use rt::{arg, fold, mix, BootInfo, Blk, HEAP};

const BLOCK: usize = 4096;

#[repr(align(4096))]
struct Page([u8; BLOCK]);

static mut WBUF: Page = Page([0; BLOCK]);
static mut RBUF: Page = Page([0; BLOCK]);

#[no_mangle]
pub fn guest_main(boot: &'static BootInfo, args: &'static str) -> u32 {
    let seed = arg(args, "seed", 1);
    let rounds = arg(args, "rounds", 1000);
    let mem_mib = arg(args, "mem_mib", 16);
    let disk_mib = arg(args, "disk_mib", 16);
    let table_bytes = mem_mib << 20;
    if mem_mib == 0 || disk_mib == 0 || HEAP as u64 + table_bytes > boot.mem_size {
        println!(
            "disk-hash: mem_mib={mem_mib} needs {} MiB of guest memory, the guest has {} MiB",
            (HEAP as u64 + table_bytes) >> 20,
            boot.mem_size >> 20
        );
        return 2;
    }
    let Some(mut blk) = Blk::open(boot, 0) else {
        println!("disk-hash: no disk");
        return 3;
    };
    if blk.capacity < disk_mib << 20 {
        println!("disk-hash: disk_mib={disk_mib} but the disk has {} bytes", blk.capacity);
        return 3;
    }
    let nblocks = (disk_mib << 20) / BLOCK as u64;
    let npages = table_bytes / BLOCK as u64;
    let table = HEAP as *mut u64;
    // SAFETY: this guest owns its memory; the buffers are used by one thread.
    let (wbuf, rbuf) = unsafe { (&mut *core::ptr::addr_of_mut!(WBUF.0), &mut *core::ptr::addr_of_mut!(RBUF.0)) };
    let step = (rounds / 100).max(1);
    let mut h = mix(seed);
    println!("disk-hash: seed={seed} rounds={rounds} mem_mib={mem_mib} disk_mib={disk_mib}");
    for r in 0..rounds {
        // write a block
        let b = mix(h ^ r) % nblocks;
        let mut x = mix(seed ^ (r << 20) ^ h);
        for c in wbuf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        if blk.write(b * BLOCK as u64, wbuf) != 0 {
            println!("disk-hash: write of block {b} failed");
            return 4;
        }
        // update a table page
        let t = mix(h.rotate_left(17) ^ r) % npages;
        // SAFETY: t < npages: inside the table, which lies inside guest memory (checked).
        unsafe {
            let p = table.add((t * 512) as usize);
            *p.add((r % 512) as usize) ^= h;
            *p.add(((r * 7 + 3) % 512) as usize) = r ^ seed;
        }
        // read an earlier block and a table page back
        let b2 = mix(h ^ 0xabc ^ r) % nblocks;
        if blk.read(b2 * BLOCK as u64, rbuf) != 0 {
            println!("disk-hash: read of block {b2} failed");
            return 4;
        }
        h = fold(h, rbuf);
        let t2 = mix(h ^ r.wrapping_mul(3)) % npages;
        // SAFETY: as above.
        let page = unsafe { core::slice::from_raw_parts(table.add((t2 * 512) as usize) as *const u8, BLOCK) };
        h = fold(h, page);
        if (r + 1) % step == 0 || r + 1 == rounds {
            println!("progress {}/{}", r + 1, rounds);
        }
    }
    if blk.flush() != 0 {
        println!("disk-hash: flush failed");
        return 4;
    }
    println!("DONE hash={h:016x}");
    0
}
