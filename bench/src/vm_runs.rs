//! Group `vm`: the bundled VMM through the `vdisk` binary. VM snapshots of a guest (1 GiB;
//! 256 MiB with --quick) that dirties memory at a set rate — full, and diffs at about 1, 10
//! and 100 % dirty — with their pause (bar: ≤ 20 ms at 1 %) and throughput against the
//! disk's fsync'd sequential write ceiling; restore to the vCPUs running (bar: ≤ 10 ms); and
//! virtio-blk 4 KiB random IOPS from the guest against the engine directly.
//!
//! QEMU's `migrate` to a file is the anchor for snapshots; it needs
//! qemu-system-x86_64 (bookworm-backports), measured here only when installed.

use crate::report::Report;
use crate::servers::{have, median, vdisk_bin};
use crate::Opts;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vdisk_engine::LocalStore;

fn vdisk(args: &[&str]) -> Result<String> {
    let o = Command::new(vdisk_bin()?).args(args).output()?;
    if !o.status.success() {
        bail!("vdisk {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn spawn(args: &[&str]) -> Result<Child> {
    Ok(Command::new(vdisk_bin()?)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

fn wait_line(log: &Path, needle: &str, secs: u64) -> Result<()> {
    let t = Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
    {
        if t.elapsed() > Duration::from_secs(secs) {
            bail!("{}: no {needle:?} after {secs} s", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 scratch path")
}

/// fsync'd 1 MiB sequential writes of `bytes` to a new file: MB/s.
fn fsync_ceiling(dir: &Path, bytes: u64) -> Result<f64> {
    let p = dir.join("vm-ceiling.bin");
    let mut f = std::fs::File::create(&p)?;
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for _ in 0..bytes >> 20 {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&p);
    Ok(bytes as f64 / secs / 1e6)
}

pub fn vm(opts: &Opts, rep: &mut Report) -> Result<()> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("vm: /dev/kvm missing: group skipped");
        return Ok(());
    }
    if !have("qemu-system-x86_64") {
        eprintln!("vm: qemu-system-x86_64 missing: QEMU's migrate-to-file anchor not measured");
    }
    let mib: u64 = if opts.quick { 256 } else { 1024 };
    let table = mib - 64; // the dirty guest's region (its heap starts at 32 MiB)
    let root = opts.dir.join("vm");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let ceiling = fsync_ceiling(&root, mib << 20)?;
    // snapshots: full, then diffs one second apart at ~1, 10, 100 % of memory per second
    for (pct, rate) in [(1u64, (mib / 100).max(1)), (10, mib / 10), (100, mib)] {
        let dir = root.join(format!("dirty{pct}"));
        let args = format!("mem_mib={table} mib_per_s={rate} seconds=0");
        vdisk(&[
            "vm",
            "create",
            s(&dir),
            "--guest",
            "dirty",
            "--guest-args",
            &args,
            "--memory",
            &format!("{mib}M"),
            "--disk-size",
            "64M",
        ])?;
        let log = root.join(format!("dirty{pct}.log"));
        let mut child = spawn(&["vm", "run", s(&dir), "--serial", s(&log)])?;
        let r = (|| -> Result<()> {
            wait_line(&log, "progress 2/", 120)?;
            let full: Value =
                serde_json::from_str(&vdisk(&["vm", "snapshot", s(&dir), "full", "--json"])?)?;
            if pct == 1 {
                let secs = full["total_ms"].as_f64().unwrap_or(1.0) / 1e3;
                let mbps = (mib << 20) as f64 / secs / 1e6;
                rep.higher(
                    &format!("vm snapshot full {mib} MiB (synced), MB/s"),
                    "MB/s",
                    mbps,
                    "fsync'd seq write",
                    Some(ceiling),
                    "—",
                    None,
                );
                rep.absolute(
                    &format!("vm snapshot full {mib} MiB: pause"),
                    "ms",
                    full["pause_ms"].as_f64().unwrap_or(0.0),
                    "—",
                    true,
                );
            }
            let mut pauses = Vec::new();
            let mut bytes = Vec::new();
            for i in 0..3 {
                std::thread::sleep(Duration::from_secs(1));
                let d: Value = serde_json::from_str(&vdisk(&[
                    "vm",
                    "snapshot",
                    s(&dir),
                    &format!("d{i}"),
                    "--diff",
                    "--json",
                ])?)?;
                pauses.push(d["pause_ms"].as_f64().unwrap_or(0.0));
                bytes.push(d["memory_bytes"].as_f64().unwrap_or(0.0));
            }
            let (lo, hi) = (
                pauses.iter().cloned().fold(f64::MAX, f64::min),
                pauses.iter().cloned().fold(0.0, f64::max),
            );
            let p = median(pauses);
            let dirty = median(bytes) / (mib << 20) as f64 * 100.0;
            let bar = if pct == 1 { "≤ 20 ms" } else { "—" };
            rep.absolute(
                &format!(
                    "vm diff snapshot {mib} MiB, {dirty:.1} % dirty: pause (range {lo:.1}–{hi:.1})"
                ),
                "ms",
                p,
                bar,
                pct != 1 || p <= 20.0,
            );
            Ok(())
        })();
        let _ = child.kill();
        let _ = child.wait();
        r?;
        if pct == 1 {
            // restore of the diff chain to the vCPUs running, three times
            let mut ms = Vec::new();
            for _ in 0..3 {
                let out = root.join("restore.json");
                let mut c = Command::new(vdisk_bin()?)
                    .args([
                        "vm",
                        "restore",
                        s(&dir),
                        "d2",
                        "--serial",
                        s(&root.join("r.log")),
                        "--json",
                    ])
                    .stdout(std::fs::File::create(&out)?)
                    .stderr(Stdio::null())
                    .spawn()?;
                std::thread::sleep(Duration::from_millis(800));
                // SAFETY: kill(2) of our own child; SIGTERM makes it stop cleanly and report.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                c.wait()?;
                let v: Value =
                    serde_json::from_slice(&std::fs::read(&out)?).context("restore report")?;
                ms.push(v["restore_ms"].as_f64().unwrap_or(f64::MAX));
            }
            let m = median(ms);
            rep.absolute(
                &format!("vm restore {mib} MiB (diff chain) to vCPUs running"),
                "ms",
                m,
                "≤ 10 ms",
                m <= 10.0,
            );
        }
    }
    // virtio-blk 4 KiB random IOPS from the guest vs the engine directly
    let ops = if opts.quick { 20_000u64 } else { 100_000 };
    for mode in ["read", "write"] {
        let dir = root.join(format!("iops-{mode}"));
        vdisk(&[
            "vm",
            "create",
            s(&dir),
            "--guest",
            "blk-iops",
            "--guest-args",
            &format!("mode={mode} ops={ops} disk_mib=256"),
            "--memory",
            "64M",
            "--disk-size",
            "256M",
        ])?;
        let disk = dir.join("disk0.vdisk");
        {
            // data everywhere, so reads go to stored, verified clusters
            let d = vdisk_engine::Disk::open(std::sync::Arc::new(LocalStore::open(&disk)?))?;
            let buf: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
            for m in 0..256u64 {
                d.write_at(&buf, m << 20)?;
            }
            d.snapshot_create("filled")?;
            d.close()?;
        }
        let log = root.join(format!("iops-{mode}.log"));
        vdisk(&["vm", "run", s(&dir), "--serial", s(&log)])?;
        let text = std::fs::read_to_string(&log)?;
        let line = text
            .lines()
            .find(|l| l.starts_with("DONE ops="))
            .context("no DONE line")?;
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let secs = field("cycles=") / (field("tsc_khz=") * 1e3);
        let guest_iops = ops as f64 / secs;
        let engine_iops = {
            let d = vdisk_engine::Disk::open(std::sync::Arc::new(LocalStore::open(&disk)?))?;
            let mut b = vec![7u8; 4096];
            let t = Instant::now();
            for i in 0..ops {
                let blk = (i.wrapping_mul(100_003)) % (256 * 256);
                if mode == "read" {
                    d.read_at(&mut b, blk * 4096)?;
                } else {
                    d.write_at(&b, blk * 4096)?;
                }
            }
            let r = ops as f64 / t.elapsed().as_secs_f64();
            d.close()?;
            r
        };
        rep.higher(
            &format!("virtio-blk 4K random {mode} from the guest"),
            "IOPS",
            guest_iops,
            "the engine in-process, same I/O",
            Some(engine_iops),
            "—",
            None,
        );
    }
    Ok(())
}
