//! The measured workloads: vdisk in-process next to qemu-img bench on qcow2 and raw files.

use crate::qemu::Qemu;
use crate::report::Report;
use crate::{Opts, STEP_4K};
use anyhow::Result;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use vdisk_engine::{CreateOptions, Disk, LocalStore, Store, Target, View};

/// The shared data: a raw image of random bytes, the same as a vdisk bundle and as qcow2,
/// plus chains of empty snapshots on top at depth 16 and 64.
pub struct Fixture {
    pub raw: PathBuf,
    pub size: u64,
    pub vdisk: [PathBuf; 3],
    pub qcow2: [PathBuf; 3],
}

const DEPTHS: [usize; 3] = [1, 16, 64];

fn fill_random(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A new bundle at `path` holding the first `size` bytes of the raw image `raw`.
pub fn bundle_from_raw(path: &Path, raw: &Path, size: u64) -> Result<Disk> {
    let d = fresh_bundle(path, size)?;
    fill_from_raw(&d, raw, size)?;
    Ok(d)
}

/// Write the first `size` bytes of `raw` into `d`, 4 MiB at a time.
fn fill_from_raw(d: &Disk, raw: &Path, size: u64) -> Result<()> {
    let f = File::open(raw)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        d.write_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

fn local(path: &Path) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(LocalStore::open(path)?))
}

fn fresh_bundle(path: &Path, size: u64) -> Result<Disk> {
    let _ = fs::remove_dir_all(path);
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(path)?);
    Ok(Disk::create(store, &CreateOptions::new(size))?)
}

fn secs<F: FnOnce() -> Result<()>>(f: F) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl Fixture {
    pub fn prepare(opts: &Opts, q: &Qemu) -> Result<Fixture> {
        let size = opts.image_size();
        let raw = opts.dir.join("data.raw");
        eprintln!(
            "preparing {} MiB of random data as raw, vdisk and qcow2 ...",
            size >> 20
        );
        {
            let f = File::create(&raw)?;
            let mut buf = vec![0u8; 4 << 20];
            let mut seed = 0x5eed_u64;
            let mut off = 0;
            while off < size {
                fill_random(&mut buf, &mut seed);
                f.write_all_at(&buf, off)?;
                off += buf.len() as u64;
            }
            f.sync_all()?;
        }
        let mut vdisk = Vec::new();
        let mut qcow2 = Vec::new();
        for depth in DEPTHS {
            let b = opts.dir.join(format!("depth{depth}.vdisk"));
            let d = fresh_bundle(&b, size)?;
            fill_from_raw(&d, &raw, size)?;
            for i in 1..depth {
                d.snapshot_create(&format!("s{i}"))?;
            }
            d.close()?;
            vdisk.push(b);
            let base = opts.dir.join(format!("depth{depth}-0.qcow2"));
            let _ = fs::remove_file(&base);
            q.run(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                raw.to_str().unwrap_or_default(),
                base.to_str().unwrap_or_default(),
            ])?;
            let top = q.overlay_chain(&base, &opts.dir, &format!("depth{depth}"), depth, size)?;
            qcow2.push(top);
        }
        let arr = |v: Vec<PathBuf>| -> Result<[PathBuf; 3]> {
            v.try_into().map_err(|_| anyhow::anyhow!("three depths"))
        };
        Ok(Fixture {
            raw,
            size,
            vdisk: arr(vdisk)?,
            qcow2: arr(qcow2)?,
        })
    }
}

/// The offsets qemu-img bench visits: start 0, advance by `step` modulo `size`.
fn pattern(count: u64, step: u64, size: u64) -> impl Iterator<Item = u64> {
    let mut off = 0u64;
    (0..count).map(move |_| {
        let o = off;
        off = (off + step) % size;
        o
    })
}

/// In-process 4 KiB reads through a closure; returns IOPS.
fn read_loop(
    count: u64,
    block: usize,
    step: u64,
    size: u64,
    mut read: impl FnMut(&mut [u8], u64) -> Result<()>,
) -> Result<f64> {
    // Warm-up (untimed): one sequential pass over the whole image through the same path, so
    // every side starts with its data in the page cache (this machine's DAMON pageout scheme
    // evicts cold page-cache pages between measurements), then a lap of the pattern.
    let mut big = vec![0u8; block.max(1 << 20).min(size as usize)];
    let mut off = 0;
    while off + big.len() as u64 <= size {
        read(&mut big, off)?;
        off += big.len() as u64;
    }
    let mut buf = vec![0u8; block];
    for off in pattern(count / 10, step, size) {
        read(&mut buf, off)?;
    }
    let t = Instant::now();
    for off in pattern(count, step, size) {
        read(&mut buf, off)?;
    }
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

/// Measure `a` and `b` alternately `rounds` times; the median of each. Alternating keeps a
/// passing disturbance (another process, page-cache work) from favouring one side.
fn paired(
    rounds: usize,
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(f64, f64)> {
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        xa.push(a()?);
        xb.push(b()?);
    }
    Ok((median(xa), median(xb)))
}

pub fn random_reads(opts: &Opts, q: &Qemu, fx: &Fixture, rep: &mut Report) -> Result<()> {
    let n = opts.ops();
    let raw_file = File::open(&fx.raw)?;
    let raw_loop = || {
        read_loop(n, 4096, STEP_4K, fx.size, |b, o| {
            Ok(raw_file.read_exact_at(b, o)?)
        })
    };
    let _ = q.bench("raw", &fx.raw, n / 10, 4096, STEP_4K, false)?;
    let raw_qemu = n as f64 / q.bench("raw", &fx.raw, n, 4096, STEP_4K, false)?;
    rep.higher(
        "4K random read, raw file",
        "IOPS",
        raw_loop()?,
        "qemu-img bench raw",
        Some(raw_qemu),
        "(reference)",
        None,
    );
    let mut depth1 = 0.0;
    for (i, depth) in DEPTHS.iter().enumerate() {
        let d = Disk::open(local(&fx.vdisk[i])?)?;
        let (ours, raw_ours) = paired(
            3,
            || read_loop(n, 4096, STEP_4K, fx.size, |b, o| Ok(d.read_at(b, o)?)),
            &raw_loop,
        )?;
        let _ = q.bench("qcow2", &fx.qcow2[i], n / 10, 4096, STEP_4K, false)?;
        let qc = n as f64 / q.bench("qcow2", &fx.qcow2[i], n, 4096, STEP_4K, false)?;
        rep.higher(
            &format!("4K random read, depth {depth}"),
            "IOPS",
            ours,
            "qcow2",
            Some(qc),
            "≥ qcow2",
            Some(1.0),
        );
        rep.higher(
            &format!("4K random read, depth {depth}, vs raw (same loop)"),
            "IOPS",
            ours,
            "raw",
            Some(raw_ours),
            "≥ 90 % of raw",
            Some(0.9),
        );
        if *depth == 1 {
            depth1 = ours;
        } else {
            rep.higher(
                &format!("4K random read, depth {depth} vs depth 1"),
                "IOPS",
                ours,
                "vdisk depth 1",
                Some(depth1),
                "≥ 90 %",
                Some(0.9),
            );
        }
    }
    Ok(())
}

pub fn random_writes(opts: &Opts, q: &Qemu, fx: &Fixture, rep: &mut Report) -> Result<()> {
    let n = opts.ops() / 4;
    let block = vec![0xa5u8; 4096];
    // vdisk: a fresh snapshot layer over the base data.
    let b = opts.dir.join("write.vdisk");
    let _ = fs::remove_dir_all(&b);
    copy_dir(&fx.vdisk[0], &b)?;
    let d = Disk::open(local(&b)?)?;
    d.snapshot_create("before")?;
    let ours = {
        let t = Instant::now();
        for off in pattern(n, STEP_4K, fx.size) {
            d.write_at(&block, off)?;
        }
        d.flush()?;
        n as f64 / t.elapsed().as_secs_f64()
    };
    d.close()?;
    let base = &fx.qcow2[0];
    let qemu_run = |opts_str: &str| -> Result<f64> {
        let ov = opts_bench_path(base, opts_str);
        let _ = fs::remove_file(&ov);
        let mut args = vec![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap_or_default(),
            "-F",
            "qcow2",
        ];
        if !opts_str.is_empty() {
            args.extend(["-o", opts_str]);
        }
        args.push(ov.to_str().unwrap_or_default());
        q.run(&args)?;
        Ok(n as f64 / q.bench("qcow2", &ov, n, 4096, STEP_4K, true)?)
    };
    let qc = qemu_run("")?;
    let qx = qemu_run("extended_l2=on")?;
    rep.higher(
        "4K random write into a fresh snapshot",
        "IOPS",
        ours,
        "qcow2 (default)",
        Some(qc),
        "≥ 1.5 × qcow2",
        Some(1.5),
    );
    rep.higher(
        "4K random write into a fresh snapshot",
        "IOPS",
        ours,
        "qcow2 extended_l2=on",
        Some(qx),
        "≥ qcow2 extended_l2",
        Some(1.0),
    );
    Ok(())
}

fn opts_bench_path(base: &Path, o: &str) -> PathBuf {
    base.with_file_name(if o.is_empty() {
        "overlay-default.qcow2"
    } else {
        "overlay-xl2.qcow2"
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let p = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &p)?;
        } else {
            fs::copy(e.path(), p)?;
        }
    }
    Ok(())
}

pub fn sequential(opts: &Opts, q: &Qemu, fx: &Fixture, rep: &mut Report) -> Result<()> {
    let mib = 1u64 << 20;
    let count = fx.size / mib;
    let raw_file = File::open(&fx.raw)?;
    let d = Disk::open(local(&fx.vdisk[0])?)?;
    let (ours, raw_ours) = paired(
        3,
        || {
            read_loop(count, mib as usize, mib, fx.size, |b, o| {
                Ok(d.read_at(b, o)?)
            })
        },
        || {
            read_loop(count, mib as usize, mib, fx.size, |b, o| {
                Ok(raw_file.read_exact_at(b, o)?)
            })
        },
    )?;
    drop(d);
    let qc = count as f64 / q.bench("qcow2", &fx.qcow2[0], count, mib, mib, false)?;
    rep.higher(
        "1 MiB sequential read",
        "MiB/s",
        ours,
        "raw (same loop)",
        Some(raw_ours),
        "≥ 90 % of raw",
        Some(0.9),
    );
    rep.higher(
        "1 MiB sequential read",
        "MiB/s",
        ours,
        "qcow2",
        Some(qc),
        "(reference)",
        None,
    );
    // writes: a fresh bundle vs a fresh raw file, same loop, then a flush/fsync
    let data = {
        let mut v = vec![0u8; mib as usize];
        let mut s = 7u64;
        fill_random(&mut v, &mut s);
        v
    };
    let wcount = count.min(if opts.quick { 128 } else { 512 });
    let rawp = opts.dir.join("seqw.raw");
    let _ = fs::remove_file(&rawp);
    let f = File::create(&rawp)?;
    f.set_len(fx.size)?;
    let raw_w = wcount as f64
        / secs(|| {
            for i in 0..wcount {
                f.write_all_at(&data, i * mib)?;
            }
            f.sync_data()?;
            Ok(())
        })?;
    let d = fresh_bundle(&opts.dir.join("seqw.vdisk"), fx.size)?;
    let ours_w = wcount as f64
        / secs(|| {
            for i in 0..wcount {
                d.write_at(&data, i * mib)?;
            }
            d.flush()?;
            Ok(())
        })?;
    d.close()?;
    let qw_img = opts.dir.join("seqw.qcow2");
    let _ = fs::remove_file(&qw_img);
    q.run(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        qw_img.to_str().unwrap_or_default(),
        &fx.size.to_string(),
    ])?;
    let qw = wcount as f64 / q.bench("qcow2", &qw_img, wcount, mib, mib, true)?;
    rep.higher(
        "1 MiB sequential write (+flush)",
        "MiB/s",
        ours_w,
        "raw (same loop)",
        Some(raw_w),
        "≥ 90 % of raw",
        Some(0.9),
    );
    rep.higher(
        "1 MiB sequential write",
        "MiB/s",
        ours_w,
        "qcow2",
        Some(qw),
        "(reference)",
        None,
    );
    Ok(())
}

pub fn snapshot_create(opts: &Opts, q: &Qemu, rep: &mut Report) -> Result<()> {
    for (size, label) in [(1u64 << 30, "1 GiB"), (64 << 30, "64 GiB")] {
        for depth in [1usize, 64] {
            let b = opts.dir.join("snap.vdisk");
            let d = fresh_bundle(&b, size)?;
            d.write_at(&[1u8; 65536], 0)?;
            for i in 1..depth {
                d.snapshot_create(&format!("pre{i}"))?;
            }
            let mut times = Vec::new();
            for i in 0..21 {
                d.write_at(&[2u8; 4096], (i as u64 * 7919 * 65536) % size)?;
                let t = Instant::now();
                d.snapshot_create(&format!("x{i}"))?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            d.close()?;
            let m = median(times);
            rep.absolute(
                &format!("snapshot create, {label}, depth {depth} (in-process)"),
                "ms",
                m,
                "≤ 5 ms median",
                m <= 5.0,
            );
        }
    }
    // whole-process, next to qemu-img's internal snapshot on the same size
    let b = opts.dir.join("snap.vdisk");
    let d = fresh_bundle(&b, 64 << 30)?;
    d.close()?;
    let exe = std::env::current_exe()?;
    let vdisk = exe.with_file_name("vdisk");
    let qimg = opts.dir.join("snap.qcow2");
    let _ = fs::remove_file(&qimg);
    q.run(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        qimg.to_str().unwrap_or_default(),
        "64G",
    ])?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    if vdisk.exists() {
        for i in 0..11 {
            ours.push(
                q.time_cmd(
                    vdisk.to_str().unwrap_or_default(),
                    &[
                        "snapshot",
                        "create",
                        b.to_str().unwrap_or_default(),
                        &format!("p{i}"),
                    ],
                )? * 1000.0,
            );
            theirs.push(
                q.time_cmd(
                    "qemu-img",
                    &[
                        "snapshot",
                        "-c",
                        &format!("p{i}"),
                        qimg.to_str().unwrap_or_default(),
                    ],
                )? * 1000.0,
            );
        }
        rep.lower(
            "snapshot create, 64 GiB, whole process",
            "ms",
            median(ours),
            "qemu-img snapshot -c (qcow2 internal)",
            Some(median(theirs)),
            "(reference)",
            None,
        );
    }
    Ok(())
}

pub fn deep_chain(opts: &Opts, q: &Qemu, rep: &mut Report) -> Result<()> {
    let depth = 1000usize;
    let size = 64u64 << 30;
    let base_data: u64 = if opts.quick { 64 << 20 } else { 256 << 20 };
    let b = opts.dir.join("deep.vdisk");
    let shallow = opts.dir.join("shallow.vdisk");
    eprintln!("building a {depth}-deep chain of a 64 GiB disk ...");
    let mut buf = vec![0u8; 4 << 20];
    let seed = 99u64;
    for (path, snaps) in [(&b, depth - 1), (&shallow, 0)] {
        let d = fresh_bundle(path, size)?;
        let mut off = 0;
        let mut s = seed;
        while off < base_data {
            fill_random(&mut buf, &mut s);
            d.write_at(&buf, off)?;
            off += buf.len() as u64;
        }
        for i in 0..snaps {
            // each layer changes one 64 KiB cluster somewhere in the 64 GiB
            d.write_at(
                &buf[..65536],
                ((i as u64 * 104_729) % (size / 65536)) * 65536,
            )?;
            d.snapshot_create(&format!("s{i}"))?;
        }
        d.close()?;
    }
    let store = LocalStore::open(&b)?;
    let mut opens = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let v = View::open(&store, Target::Head)?;
        let mut x = [0u8; 4096];
        v.read_at(&mut x, 0)?;
        opens.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let open_ms = median(opens);
    rep.absolute(
        "open + first read, 64 GiB, depth 1000 (read-only view)",
        "ms",
        open_ms,
        "≤ 100 ms",
        open_ms <= 100.0,
    );
    let mut wopens = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let d = Disk::open(local(&b)?)?;
        let mut x = [0u8; 4096];
        d.read_at(&mut x, 0)?;
        wopens.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(d);
    }
    let wopen = median(wopens);
    rep.absolute(
        "open + first read, 64 GiB, depth 1000 (writer)",
        "ms",
        wopen,
        "≤ 100 ms",
        wopen <= 100.0,
    );
    let n = opts.ops();
    let step = STEP_4K;
    let deep = View::open(&store, Target::Head)?;
    let flat_store = LocalStore::open(&shallow)?;
    let flat = View::open(&flat_store, Target::Head)?;
    let r_deep = read_loop(n, 4096, step, base_data, |x, o| Ok(deep.read_at(x, o)?))?;
    let r_flat = read_loop(n, 4096, step, base_data, |x, o| Ok(flat.read_at(x, o)?))?;
    rep.higher(
        "4K random read at depth 1000 vs depth 1",
        "IOPS",
        r_deep,
        "depth 1",
        Some(r_flat),
        "within 10 %",
        Some(0.9),
    );
    // qcow2 anchor: open of a 1000-deep overlay chain, first read, whole process
    if !opts.quick {
        let qbase = opts.dir.join("deepq-0.qcow2");
        let _ = fs::remove_file(&qbase);
        q.run(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            qbase.to_str().unwrap_or_default(),
            "64G",
        ])?;
        let top = q.overlay_chain(&qbase, &opts.dir, "deepq", depth, size)?;
        // qemu-io 10 crashes (SIGSEGV) opening a chain this deep (seen from ~900 layers on this
        // machine): then the anchor is the deepest of 800 that it opens.
        let qemu_read = |path: &Path| -> Result<f64> {
            q.time_cmd(
                "qemu-io",
                &[
                    "-r",
                    "-f",
                    "qcow2",
                    "-c",
                    "read 0 4k",
                    path.to_str().unwrap_or_default(),
                ],
            )
        };
        let (t_q, anchor) = match qemu_read(&top) {
            Ok(t) => (t * 1000.0, "qemu-io on a 1000-deep qcow2 chain".to_string()),
            Err(e) => {
                eprintln!("  qemu-io on the 1000-deep chain failed ({e}); measuring depth 800");
                let t = qemu_read(&opts.dir.join("deepq-799.qcow2"))?;
                (
                    t * 1000.0,
                    "qemu-io on an 800-deep qcow2 chain (1000 deep: SIGSEGV)".to_string(),
                )
            }
        };
        let exe = std::env::current_exe()?.with_file_name("vdisk");
        if exe.exists() {
            let t_v = q.time_cmd(
                exe.to_str().unwrap_or_default(),
                &[
                    "read",
                    b.to_str().unwrap_or_default(),
                    "--offset",
                    "0",
                    "--length",
                    "4096",
                    "--output",
                    "/dev/null",
                ],
            )? * 1000.0;
            rep.lower(
                "open + first read, depth 1000, whole process",
                "ms",
                t_v,
                &anchor,
                Some(t_q),
                "(reference)",
                None,
            );
        }
        for i in 0..depth {
            let _ = fs::remove_file(opts.dir.join(format!("deepq-{i}.qcow2")));
        }
    }
    Ok(())
}
