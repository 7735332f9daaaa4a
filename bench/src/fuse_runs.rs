//! Reads through the FUSE mount: `vdisk mount`'s head.raw vs qemu-storage-daemon's FUSE
//! export of the qcow2 chain with the same data, vs the engine directly (DESIGN.md §6: "the
//! same through the FUSE mount ≥ qemu-storage-daemon's FUSE export, same client").
//!
//! One reader loop for every peer (pread of 4 KiB at qemu-img bench's scattered offsets, and
//! 1 MiB sequential), on a freshly opened file whose cached pages are dropped first, so each
//! pass goes through the FUSE server. Runs alternate; the median of three is reported.

use crate::engine_runs::Fixture;
use crate::report::Report;
use crate::servers::{have, median, qsd_fuse, read_file_loop, read_loop, vdisk_mount};
use crate::{Opts, STEP_4K};
use anyhow::Result;
use std::path::Path;
use vdisk_engine::{LocalStore, Target, View};

const ROUNDS: usize = 3;
const CHAINS: [(usize, usize); 2] = [(0, 1), (1, 16)];

pub fn fuse(opts: &Opts, fx: &Fixture, rep: &mut Report) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("fuse: /dev/fuse missing: group skipped");
        return Ok(());
    }
    let qsd = have("qemu-storage-daemon");
    if !qsd {
        eprintln!("fuse: qemu-storage-daemon missing: measuring vdisk only");
    }
    // 4K reads: fewer than the in-process groups (each is a FUSE round trip).
    let n = opts.ops() / 2;
    let mib = 1u64 << 20;
    let seq = fx.size / mib;
    let size = fx.size;
    for (i, depth) in CHAINS {
        let mp = opts.dir.join(format!("fuse-mnt-{depth}"));
        let qfile = opts.dir.join(format!("qsd-{depth}.raw"));
        let (mut v4, mut q4, mut e4, mut v1, mut q1, mut e1) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            {
                let m = vdisk_mount(&fx.vdisk[i], &mp)?;
                let head = Path::new(&m.target);
                let _ = read_file_loop(head, n / 10, 4096, STEP_4K, size)?;
                v4.push(read_file_loop(head, n, 4096, STEP_4K, size)?);
                v1.push(read_file_loop(head, seq, mib as usize, mib, size)?);
            }
            if qsd {
                let q = qsd_fuse(&fx.qcow2[i], &qfile, size)?;
                let f = Path::new(&q.target);
                let _ = read_file_loop(f, n / 10, 4096, STEP_4K, size)?;
                q4.push(read_file_loop(f, n, 4096, STEP_4K, size)?);
                q1.push(read_file_loop(f, seq, mib as usize, mib, size)?);
            }
            {
                let v = View::open(&LocalStore::open(&fx.vdisk[i])?, Target::Head)?;
                let _ = read_loop(n / 10, 4096, STEP_4K, size, |b, o| Ok(v.read_at(b, o)?))?;
                e4.push(read_loop(n, 4096, STEP_4K, size, |b, o| {
                    Ok(v.read_at(b, o)?)
                })?);
                e1.push(read_loop(seq, mib as usize, mib, size, |b, o| {
                    Ok(v.read_at(b, o)?)
                })?);
            }
        }
        let (v4, v1) = (median(v4), median(v1));
        let anchor = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
        rep.higher(
            &format!("FUSE 4K random read, chain depth {depth}"),
            "IOPS",
            v4,
            "qemu-storage-daemon FUSE",
            anchor(q4),
            "≥ qemu-storage-daemon FUSE",
            Some(1.0),
        );
        rep.higher(
            &format!("FUSE 1M sequential read, chain depth {depth}"),
            "MiB/s",
            v1,
            "qemu-storage-daemon FUSE",
            anchor(q1),
            "≥ qemu-storage-daemon FUSE",
            Some(1.0),
        );
        rep.higher(
            &format!("FUSE 4K random read vs the engine directly, chain depth {depth}"),
            "IOPS",
            v4,
            "engine (same loop)",
            anchor(e4),
            "(reference)",
            None,
        );
        rep.higher(
            &format!("FUSE 1M sequential read vs the engine directly, chain depth {depth}"),
            "MiB/s",
            v1,
            "engine (same loop)",
            anchor(e1),
            "(reference)",
            None,
        );
    }
    Ok(())
}
