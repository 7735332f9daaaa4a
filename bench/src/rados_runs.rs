//! The `rados` group: a `rados://` bundle vs an RBD image on the same throw-away cluster
//! (mon + one memstore OSD on 127.0.0.1, started by the project's harness), same run.
//!
//! - 4 KiB random writes into a fresh bundle / a fresh image, 16 in flight (rbd bench's
//!   default `--io-threads 16`; vdisk: writes are sent asynchronously, at most 64 in flight,
//!   and the timing includes the final flush).
//! - 4 KiB random reads of data written before (vdisk: in the sealed base layer, read by 16
//!   threads through the default sealed-layer cache, and with it off; RBD: 16 threads).
//! - 1 MiB sequential write and read throughput (16 threads / 16 in flight on both sides).
//! - snapshot create latency: `vdisk snapshot create` vs `rbd snap create`, whole process
//!   each (connect included), plus vdisk's in-process latency.
//! - diff time with 1 % of the image changed: `vdisk diff --json` vs `rbd diff --from-snap`,
//!   whole process each.
//!
//! Each figure is the median of [`ROUNDS`] alternating runs; the run-to-run range is in the
//! row's label.

use crate::report::Report;
use crate::servers::{median, vdisk_bin};
use crate::{Opts, STEP_4K};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_engine::{CreateOptions, Disk, Store};
use vdisk_rados::harness::{self, ClusterConfig, TestCluster};
use vdisk_rados::{RadosOptions, RadosStore};

const ROUNDS: usize = 3;
const THREADS: usize = 16;
const MIB: u64 = 1 << 20;

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{}–{}", fmt(lo), fmt(hi))
}

fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

struct Bench<'a> {
    c: &'a TestCluster,
    size: u64,
    n: u64,
    seq: u64,
}

impl Bench<'_> {
    fn opts(&self, cache: bool) -> RadosOptions {
        let mut o = RadosOptions {
            connect: self.c.connect_options(),
            ..RadosOptions::default()
        };
        o.trash_grace = Duration::ZERO;
        if !cache {
            o.cache_bytes = 0;
        }
        o
    }

    fn store(&self, name: &str, cache: bool) -> Result<Arc<RadosStore>> {
        let url = format!("rados://{}/{name}", self.c.pool()).parse()?;
        Ok(Arc::new(RadosStore::connect(&url, &self.opts(cache))?))
    }

    fn fresh(&self, name: &str) -> Result<Disk> {
        let s = self.store(name, true)?;
        if s.exists()? {
            s.destroy()?;
        }
        Ok(Disk::create(s, &CreateOptions::new(self.size))?)
    }

    fn rbd(&self, args: &[&str]) -> Result<String> {
        Ok(self.c.tool("rbd", args)?)
    }

    fn rbd_fresh(&self, img: &str) -> Result<String> {
        let spec = format!("{}/{img}", self.c.pool());
        let _ = self.c.tool("rbd", &["snap", "purge", &spec]);
        let _ = self.c.tool("rbd", &["rm", "--no-progress", &spec]);
        self.rbd(&["create", "--size", &format!("{}M", self.size >> 20), &spec])?;
        Ok(spec)
    }

    /// `rbd bench`; returns (ops/s, bytes/s).
    fn rbd_bench(
        &self,
        spec: &str,
        io: &str,
        size: u64,
        pattern: &str,
        total: u64,
    ) -> Result<(f64, f64)> {
        let out = self.rbd(&[
            "bench",
            "--io-type",
            io,
            "--io-size",
            &size.to_string(),
            "--io-threads",
            &THREADS.to_string(),
            "--io-pattern",
            pattern,
            "--io-total",
            &total.to_string(),
            spec,
        ])?;
        // "elapsed: 3   ops: 40000   ops/sec: 12345.6   bytes/sec: 48 MiB/s"
        let line = out
            .lines()
            .find(|l| l.contains("ops/sec:"))
            .with_context(|| format!("rbd bench printed no summary: {out}"))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |key: &str| -> Result<f64> {
            let i = f
                .iter()
                .position(|w| *w == key)
                .context("rbd bench summary")?;
            Ok(f.get(i + 1).context("rbd bench summary")?.parse()?)
        };
        let ops_s = num("ops/sec:")?;
        // "bytes/sec: 48 MiB/s" (the elapsed field is whole seconds: too coarse).
        let i = f
            .iter()
            .position(|w| *w == "bytes/sec:")
            .context("rbd bench summary")?;
        let v: f64 = f.get(i + 1).context("rbd bench summary")?.parse()?;
        let unit = match *f.get(i + 2).context("rbd bench summary")? {
            "B/s" => 1.0,
            "KiB/s" => 1024.0,
            "MiB/s" => MIB as f64,
            "GiB/s" => (1u64 << 30) as f64,
            u => bail!("rbd bench: unknown unit {u}"),
        };
        Ok((ops_s, v * unit))
    }

    /// Fills a bundle with the random data of `data` and snapshots it (data in a sealed base).
    fn filled_bundle(&self, name: &str, data: &[u8]) -> Result<()> {
        let d = self.fresh(name)?;
        for (i, chunk) in data.chunks(MIB as usize).enumerate() {
            d.write_at(chunk, i as u64 * MIB)?;
        }
        d.snapshot_create("base")?;
        d.close()?;
        Ok(())
    }

    /// 16 threads of 4 KiB reads at the bench pattern; returns IOPS.
    fn vdisk_random_reads(&self, d: &Disk, n: u64) -> Result<f64> {
        let next = AtomicU64::new(0);
        let blocks = self.size / 4096;
        let t = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let mut b = vec![0u8; 4096];
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                return Ok(());
                            }
                            let off = (i * (STEP_4K / 4096) % blocks) * 4096;
                            d.read_at(&mut b, off)?;
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            }
            Ok(())
        })?;
        Ok(n as f64 / t.elapsed().as_secs_f64())
    }

    /// 16 threads reading the image in 1 MiB pieces, in order; returns bytes/s.
    fn vdisk_seq_reads(&self, d: &Disk) -> Result<f64> {
        let next = AtomicU64::new(0);
        let pieces = self.size / MIB;
        let t = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let mut b = vec![0u8; MIB as usize];
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= pieces {
                                return Ok(());
                            }
                            d.read_at(&mut b, i * MIB)?;
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            }
            Ok(())
        })?;
        Ok(self.size as f64 / t.elapsed().as_secs_f64())
    }
}

fn run_timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let o = cmd.output()?;
    let dt = t.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(dt)
}

pub fn rados(opts: &Opts, rep: &mut Report) -> Result<()> {
    if !harness::available() || !crate::servers::have("rbd") {
        eprintln!(
            "rados: Ceph is not installed (apt-get install ceph-mon ceph-osd ceph-common): \
             group skipped"
        );
        return Ok(());
    }
    let size = opts.image_size();
    let cfg = ClusterConfig {
        memstore_bytes: 8 * size + (2 << 30),
        ..ClusterConfig::default()
    };
    eprintln!(
        "rados: starting a test cluster (memstore {} MiB)",
        cfg.memstore_bytes >> 20
    );
    let c = TestCluster::start(&opts.dir, &cfg)?;
    let b = Bench {
        c: &c,
        size,
        n: opts.ops() / 5,
        seq: size / MIB,
    };
    let vbin = vdisk_bin()?;
    let conf = c.conf().to_str().context("conf path")?.to_string();
    let data = {
        let mut x = 0x1234_5678_9abc_def1u64;
        (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect::<Vec<u8>>()
    };

    // --- 4 KiB random writes into fresh storage ---
    let (mut vw, mut rw) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        let d = b.fresh("bench-w")?;
        let buf = vec![0x5au8; 4096];
        let t = Instant::now();
        for i in 0..b.n {
            d.write_at(&buf, (i * STEP_4K) % size)?;
        }
        d.flush()?;
        vw.push(b.n as f64 / t.elapsed().as_secs_f64());
        d.close()?;
        let spec = b.rbd_fresh("bench-w")?;
        rw.push(b.rbd_bench(&spec, "write", 4096, "rand", b.n * 4096)?.0);
    }
    rep.higher(
        &format!(
            "RADOS 4K random write, fresh bundle vs fresh RBD image (runs vdisk {}, rbd {})",
            range(&vw),
            range(&rw)
        ),
        "IOPS",
        median(vw),
        "rbd bench",
        Some(median(rw)),
        "≥ RBD",
        Some(1.0),
    );

    // --- data for the read groups ---
    b.filled_bundle("bench-r", &data)?;
    let raw = opts.dir.join("rados-bench.raw");
    std::fs::write(&raw, &data)?;
    let rspec = b.rbd_fresh("bench-r")?;
    b.rbd(&["rm", "--no-progress", &rspec])?;
    b.rbd(&[
        "import",
        "--no-progress",
        raw.to_str().context("raw path")?,
        &rspec,
    ])?;
    let _ = std::fs::remove_file(&raw);

    // --- 4 KiB random reads ---
    for cache in [true, false] {
        let (mut vr, mut rr) = (vec![], vec![]);
        for _ in 0..ROUNDS {
            let d = Disk::open(b.store("bench-r", cache)?)?;
            let _ = b.vdisk_random_reads(&d, b.n / 10)?; // warm-up, as for rbd below
            vr.push(b.vdisk_random_reads(&d, b.n)?);
            d.close()?;
            let _ = b.rbd_bench(&rspec, "read", 4096, "rand", b.n / 10 * 4096)?;
            rr.push(b.rbd_bench(&rspec, "read", 4096, "rand", b.n * 4096)?.0);
        }
        rep.higher(
            &format!(
                "RADOS 4K random read, 16 threads, sealed-layer cache {} (runs vdisk {}, rbd {})",
                if cache { "on (default)" } else { "off" },
                range(&vr),
                range(&rr)
            ),
            "IOPS",
            median(vr),
            "rbd bench",
            Some(median(rr)),
            "≥ RBD",
            Some(1.0),
        );
    }

    // --- 1 MiB sequential ---
    let (mut vsw, mut rsw, mut vsr, mut rsr) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let d = b.fresh("bench-s")?;
        let t = Instant::now();
        for i in 0..b.seq {
            d.write_at(&data[(i * MIB) as usize..((i + 1) * MIB) as usize], i * MIB)?;
        }
        d.flush()?;
        vsw.push(size as f64 / t.elapsed().as_secs_f64() / MIB as f64);
        d.close()?;
        b.store("bench-s", false)?.destroy()?;
        let spec = b.rbd_fresh("bench-s")?;
        rsw.push(b.rbd_bench(&spec, "write", MIB, "seq", size)?.1 / MIB as f64);
        b.rbd(&["rm", "--no-progress", &spec])?;
        let d = Disk::open(b.store("bench-r", false)?)?;
        vsr.push(b.vdisk_seq_reads(&d)? / MIB as f64);
        d.close()?;
        rsr.push(b.rbd_bench(&rspec, "read", MIB, "seq", size)?.1 / MIB as f64);
    }
    rep.higher(
        &format!(
            "RADOS 1M sequential write (runs vdisk {}, rbd {})",
            range(&vsw),
            range(&rsw)
        ),
        "MiB/s",
        median(vsw),
        "rbd bench",
        Some(median(rsw)),
        "≥ RBD",
        Some(1.0),
    );
    rep.higher(
        &format!(
            "RADOS 1M sequential read (runs vdisk {}, rbd {})",
            range(&vsr),
            range(&rsr)
        ),
        "MiB/s",
        median(vsr),
        "rbd bench",
        Some(median(rsr)),
        "≥ RBD",
        Some(1.0),
    );

    // --- snapshot create latency, whole process ---
    let vurl = format!("rados://{}/bench-r", c.pool());
    let (mut vs, mut rs, mut vin) = (vec![], vec![], vec![]);
    for i in 0..(ROUNDS * 3) {
        vs.push(
            run_timed(
                Command::new(&vbin)
                    .args(["--ceph-conf", &conf, "snapshot", "create", &vurl])
                    .arg(format!("p{i}")),
            )? * 1000.0,
        );
        rs.push(
            run_timed(
                Command::new("rbd")
                    .args(["-c", &conf, "snap", "create", "--no-progress"])
                    .arg(format!("{rspec}@p{i}")),
            )? * 1000.0,
        );
    }
    {
        let d = Disk::open(b.store("bench-r", true)?)?;
        for i in 0..(ROUNDS * 3) {
            let t = Instant::now();
            d.snapshot_create(&format!("q{i}"))?;
            vin.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        d.close()?;
    }
    rep.lower(
        &format!(
            "RADOS snapshot create, whole process (runs vdisk {}, rbd {})",
            range(&vs),
            range(&rs)
        ),
        "ms",
        median(vs),
        "rbd snap create",
        Some(median(rs.clone())),
        "≥ RBD",
        Some(1.0),
    );
    rep.lower(
        &format!("RADOS snapshot create, in process (runs {})", range(&vin)),
        "ms",
        median(vin.clone()),
        "rbd snap create (whole process)",
        Some(median(rs.clone())),
        "info",
        None,
    );

    // --- diff with 1 % changed, whole process ---
    let changed = size / 100 / 4096;
    {
        let d = Disk::open(b.store("bench-r", true)?)?;
        d.snapshot_create("d1")?;
        let buf = vec![0xa5u8; 4096];
        for i in 0..changed {
            d.write_at(&buf, (i * STEP_4K) % size)?;
        }
        d.snapshot_create("d2")?;
        d.close()?;
    }
    b.rbd(&["snap", "create", "--no-progress", &format!("{rspec}@d1")])?;
    b.rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4096",
        "--io-threads",
        "16",
        "--io-pattern",
        "rand",
        "--io-total",
        &(changed * 4096).to_string(),
        &rspec,
    ])?;
    b.rbd(&["snap", "create", "--no-progress", &format!("{rspec}@d2")])?;
    let (mut vd, mut rd) = (vec![], vec![]);
    for _ in 0..(ROUNDS * 3) {
        vd.push(
            run_timed(Command::new(&vbin).args([
                "--ceph-conf",
                &conf,
                "diff",
                &vurl,
                "d1",
                "d2",
                "--json",
            ]))? * 1000.0,
        );
        rd.push(
            run_timed(Command::new("rbd").args([
                "-c",
                &conf,
                "diff",
                "--from-snap",
                "d1",
                "--format",
                "json",
                &format!("{rspec}@d2"),
            ]))? * 1000.0,
        );
    }
    rep.lower(
        &format!(
            "RADOS diff, 1% of the image changed, whole process (runs vdisk {}, rbd {})",
            range(&vd),
            range(&rd)
        ),
        "ms",
        median(vd),
        "rbd diff",
        Some(median(rd)),
        "≥ RBD",
        Some(1.0),
    );
    let s = b.store("bench-r", false)?;
    let _ = s.list_objects("layers")?;
    drop(c);
    Ok(())
}
