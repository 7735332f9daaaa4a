//! Snapshot lifecycle: merge vs `qemu-img commit`, diff on a large sparse disk, delta stream
//! throughput.

use crate::engine_runs::{bundle_from_raw, Fixture};
use crate::qemu::Qemu;
use crate::report::Report;
use crate::Opts;
use anyhow::Result;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use vdisk_engine::diff::{diff, Point};
use vdisk_engine::stream::export_diff;
use vdisk_engine::{CreateOptions, Disk, LocalStore, Store};

fn bundle(path: &Path, size: u64) -> Result<Disk> {
    let _ = fs::remove_dir_all(path);
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(path)?);
    Ok(Disk::create(store, &CreateOptions::new(size))?)
}

fn cluster_pattern(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; 65536];
    for (k, b) in v.iter_mut().enumerate() {
        *b = ((k as u64).wrapping_mul(31) ^ i.wrapping_mul(0x9E37_79B9)) as u8 | 1;
    }
    v
}

/// Merge: a base holding the fixture's data, a snapshot, then `top_mib` of 64 KiB writes
/// scattered over it in the head; merging the snapshot away vs `qemu-img commit` of the same
/// overlay into its base.
pub fn merge(opts: &Opts, q: &Qemu, fx: &Fixture, rep: &mut Report) -> Result<()> {
    let top_mib: u64 = if opts.quick { 32 } else { 128 };
    let clusters = top_mib * 16;
    let stride = (fx.size / 65536 / clusters).max(1);
    // vdisk
    let b = opts.dir.join("merge.vdisk");
    let d = bundle_from_raw(&b, &fx.raw, fx.size)?;
    d.snapshot_create("base")?;
    for i in 0..clusters {
        d.write_at(&cluster_pattern(i), i * stride * 65536)?;
    }
    d.snapshot_create("top")?;
    d.close()?;
    let d = Disk::open(Arc::new(LocalStore::open(&b)?))?;
    let t = Instant::now();
    let r = d.merge_snapshot("base")?;
    let ours = t.elapsed().as_secs_f64();
    d.close()?;
    // qcow2: base.qcow2 <- top.qcow2 with the same writes, committed into base
    let base = opts.dir.join("merge-base.qcow2");
    let top = opts.dir.join("merge-top.qcow2");
    let _ = fs::remove_file(&base);
    let _ = fs::remove_file(&top);
    q.run(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        fx.raw.to_str().unwrap_or_default(),
        base.to_str().unwrap_or_default(),
    ])?;
    q.run(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap_or_default(),
        "-F",
        "qcow2",
        top.to_str().unwrap_or_default(),
    ])?;
    let script: Vec<String> = (0..clusters)
        .map(|i| format!("write -P {} {} 64k", (i % 250) + 1, i * stride * 65536))
        .collect();
    let mut args = vec!["-f".to_string(), "qcow2".into()];
    for s in &script {
        args.push("-c".into());
        args.push(s.clone());
    }
    args.push(top.to_str().unwrap_or_default().into());
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    q.time_cmd("qemu-io", &a)?;
    let theirs = q.time_cmd(
        "qemu-img",
        &["commit", "-q", top.to_str().unwrap_or_default()],
    )?;
    let mib = top_mib as f64;
    rep.higher(
        &format!("merge: delete the snapshot under {top_mib} MiB of changes (data referenced: {} MiB, copied: {} MiB)", r.bytes_referenced >> 20, r.bytes_copied >> 20),
        "MiB/s of the smaller layer",
        mib / ours,
        "qemu-img commit",
        Some(mib / theirs),
        "≥ qemu-img commit",
        Some(1.0),
    );
    Ok(())
}

/// Diff where 1 % of a 64 GiB disk changed, and the same change count on a 1 TiB disk: the time
/// must follow the change, not the virtual size.
pub fn diff_large(opts: &Opts, rep: &mut Report) -> Result<()> {
    for (size, label) in [(64u64 << 30, "64 GiB"), (1u64 << 40, "1 TiB")] {
        let changed = (64u64 << 30) / 100; // 1 % of 64 GiB, in both cases
        let n = changed / 65536;
        let b = opts.dir.join("diff.vdisk");
        let d = bundle(&b, size)?;
        d.write_at(&cluster_pattern(0), 0)?;
        d.snapshot_create("a")?;
        let stride = size / 65536 / n;
        let data = cluster_pattern(7);
        for i in 0..n {
            d.write_at(&data, i * stride * 65536)?;
        }
        d.snapshot_create("b")?;
        d.close()?;
        let store = LocalStore::open(&b)?;
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let r = diff(
                &store,
                &Point::Snapshot("a".into()),
                &Point::Snapshot("b".into()),
                false,
            )?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes = r.changed_bytes;
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let ms = times[2];
        rep.absolute(
            &format!(
                "diff, {} MiB changed of a {label} disk (in-process, median of 5)",
                bytes >> 20
            ),
            "ms",
            ms,
            "≤ 100 ms",
            ms <= 100.0,
        );
    }
    Ok(())
}

/// Delta streams: a full export of the fixture's data and its import into a fresh bundle.
pub fn streams(opts: &Opts, q: &Qemu, fx: &Fixture, rep: &mut Report) -> Result<()> {
    let b = opts.dir.join("stream-src.vdisk");
    let d = bundle_from_raw(&b, &fx.raw, fx.size)?;
    d.snapshot_create("s")?;
    d.close()?;
    let src = LocalStore::open(&b)?;
    let out = opts.dir.join("full.vdelta");
    let t = Instant::now();
    {
        let mut w = std::io::BufWriter::new(File::create(&out)?);
        export_diff(&src, None, "s", &mut w, 1)?;
    }
    let exp = t.elapsed().as_secs_f64();
    let dst = opts.dir.join("stream-dst.vdisk");
    let e = bundle(&dst, fx.size)?;
    let t = Instant::now();
    e.import_diff(&mut std::io::BufReader::new(File::open(&out)?))?;
    e.close()?;
    let imp = t.elapsed().as_secs_f64();
    // reference: qemu-img convert of the same data qcow2 -> qcow2 (a copy with no checksums)
    let qout = opts.dir.join("stream-ref.qcow2");
    let _ = fs::remove_file(&qout);
    let qt = q.time_cmd(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            fx.qcow2[0].to_str().unwrap_or_default(),
            qout.to_str().unwrap_or_default(),
        ],
    )?;
    let mib = (fx.size >> 20) as f64;
    rep.higher(
        "export-diff (full, zstd, blake3)",
        "MiB/s",
        mib / exp,
        "qemu-img convert qcow2→qcow2",
        Some(mib / qt),
        "(reference)",
        None,
    );
    rep.higher(
        "import-diff (full, verified, sealed)",
        "MiB/s",
        mib / imp,
        "qemu-img convert qcow2→qcow2",
        Some(mib / qt),
        "(reference)",
        None,
    );
    Ok(())
}
