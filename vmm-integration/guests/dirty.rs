//! `dirty`: dirties guest memory at a set rate, for the snapshot and migration benches.
//! Arguments `mem_mib=M mib_per_s=X seconds=T` (T=0: until stopped). Writes one word per page
//! over an M MiB region, X MiB of pages a second, paced by the TSC; prints `progress S/T`
//! each second and `DONE hash=<16 hex>` at the end.
#![no_std]
#![no_main]

#[path = "rt.rs"]
#[macro_use]
mod rt;

use rt::{arg, mix, rdtsc, BootInfo, HEAP};

#[no_mangle]
pub fn guest_main(boot: &'static BootInfo, args: &'static str) -> u32 {
    let mem_mib = arg(args, "mem_mib", 64);
    let rate = arg(args, "mib_per_s", 10);
    let seconds = arg(args, "seconds", 10);
    let bytes = mem_mib << 20;
    if mem_mib == 0 || HEAP as u64 + bytes > boot.mem_size {
        println!("dirty: mem_mib={mem_mib} does not fit the guest's {} MiB", boot.mem_size >> 20);
        return 2;
    }
    let tsc_hz = boot.tsc_khz.max(1) * 1000;
    let pages = bytes / 4096;
    let region = HEAP as *mut u64;
    // touch every page once so later writes measure dirtying, not first faults
    for p in 0..pages {
        // SAFETY: p < pages: inside the region, inside guest memory (checked above).
        unsafe { *region.add((p * 512) as usize) = p };
    }
    println!("dirty: mem_mib={mem_mib} mib_per_s={rate} seconds={seconds}");
    let per_s = rate * 256;
    let start = rdtsc();
    let mut i = 0u64;
    let mut h = 0u64;
    let mut sec = 0u64;
    loop {
        let now = rdtsc().wrapping_sub(start);
        let elapsed_s = now / tsc_hz;
        if elapsed_s > sec {
            sec = elapsed_s;
            println!("progress {sec}/{seconds}");
            if seconds != 0 && sec >= seconds {
                break;
            }
        }
        // pages due by now
        let due = (now as u128 * per_s as u128 / tsc_hz as u128) as u64;
        while i < due {
            let p = mix(i) % pages;
            // SAFETY: as above.
            unsafe { *region.add((p * 512 + i % 512) as usize) = i };
            h ^= mix(i ^ p);
            i += 1;
        }
        core::hint::spin_loop();
    }
    println!("DONE hash={h:016x}");
    0
}
