//! `qemu-img bench` over NBD: `vdisk serve` vs `qemu-nbd` serving the qcow2 chain with the
//! same data (DESIGN.md §6: "the same through vdisk serve ≥ qemu-nbd, same client").
//!
//! Both servers serve the head read-write, as a VMM would use them, from the fixture of the
//! engine groups (random data in the base, empty layers above it). Runs alternate between
//! the two servers; the median of three is reported.

use crate::engine_runs::Fixture;
use crate::report::Report;
use crate::servers::{have, median, qemu_bench_nbd, qemu_nbd, vdisk_serve};
use crate::{Opts, STEP_4K};
use anyhow::Result;

/// Requests in flight from qemu-img bench for 4K random and 1M sequential reads.
const QUEUE_4K: u32 = 16;
const QUEUE_1M: u32 = 4;
const ROUNDS: usize = 3;
/// Passes over the image per sequential measurement (one is over in a tenth of a second).
const SEQ_LAPS: u64 = 4;

/// Chain depths measured (indices into the fixture's depths 1, 16, 64).
const CHAINS: [(usize, usize); 2] = [(0, 1), (1, 16)];

pub fn nbd(opts: &Opts, fx: &Fixture, rep: &mut Report) -> Result<()> {
    if !have("qemu-nbd") {
        eprintln!("nbd: qemu-nbd missing (apt-get install qemu-utils): group skipped");
        return Ok(());
    }
    let n = opts.ops();
    let mib = 1u64 << 20;
    let seq_count = SEQ_LAPS * fx.size / mib;
    for (i, depth) in CHAINS {
        let (mut v4, mut q4, mut v1, mut q1) = (vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            {
                let s = vdisk_serve(&fx.vdisk[i], &[])?;
                let _ = qemu_bench_nbd(&s.target, n / 10, 4096, STEP_4K, QUEUE_4K)?;
                v4.push(n as f64 / qemu_bench_nbd(&s.target, n, 4096, STEP_4K, QUEUE_4K)?);
                v1.push(
                    seq_count as f64 / qemu_bench_nbd(&s.target, seq_count, mib, mib, QUEUE_1M)?,
                );
            }
            {
                let s = qemu_nbd(&fx.qcow2[i], "qcow2")?;
                let _ = qemu_bench_nbd(&s.target, n / 10, 4096, STEP_4K, QUEUE_4K)?;
                q4.push(n as f64 / qemu_bench_nbd(&s.target, n, 4096, STEP_4K, QUEUE_4K)?);
                q1.push(
                    seq_count as f64 / qemu_bench_nbd(&s.target, seq_count, mib, mib, QUEUE_1M)?,
                );
            }
        }
        rep.higher(
            &format!("NBD 4K random read (qemu-img bench -d {QUEUE_4K}), chain depth {depth}"),
            "IOPS",
            median(v4),
            "qemu-nbd qcow2",
            Some(median(q4)),
            "≥ qemu-nbd",
            Some(1.0),
        );
        rep.higher(
            &format!("NBD 1M sequential read (qemu-img bench -d {QUEUE_1M}), chain depth {depth}"),
            "MiB/s",
            median(v1),
            "qemu-nbd qcow2",
            Some(median(q1)),
            "≥ qemu-nbd",
            Some(1.0),
        );
    }
    Ok(())
}
