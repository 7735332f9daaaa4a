//! `vdisk-bench`: vdisk side by side with qemu-img (qcow2) and raw files, same workload,
//! same run, reported as ratios (DESIGN.md §6).
//!
//! Every peer runs the same access pattern: qemu-img bench's (offset advances by a fixed
//! step modulo the image size), so vdisk's in-process loop and `qemu-img bench` touch the same
//! blocks in the same order. Page cache on (cache=writeback) for all peers.

mod engine_runs;
mod fuse_runs;
mod lifecycle_runs;
mod nbd_runs;
mod qemu;
mod rados_runs;
mod report;
mod servers;
mod vm_runs;
mod vmdk_runs;

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Clone)]
#[command(about = "Side-by-side benchmarks: vdisk vs qemu-img/qcow2 vs raw")]
pub struct Opts {
    /// Scratch directory (needs a few GiB).
    #[arg(long, default_value = "/tmp/vdisk-bench")]
    pub dir: PathBuf,
    /// Smaller sizes and counts (about a minute); the default takes a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Run only the groups whose name contains this (read, write, seq, snapshot, open, merge,
    /// diff, stream, vmdk, nbd, fuse, rados, vm).
    #[arg(long)]
    pub only: Option<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Opts {
    /// Size of the data image.
    pub fn image_size(&self) -> u64 {
        if self.quick {
            256 << 20
        } else {
            1 << 30
        }
    }
    /// 4 KiB random operations per measurement.
    pub fn ops(&self) -> u64 {
        if self.quick {
            50_000
        } else {
            200_000
        }
    }
    fn wants(&self, group: &str) -> bool {
        self.only.as_deref().is_none_or(|o| group.contains(o))
    }
}

/// Step of the pseudo-random pattern: 4 KiB × an odd prime, so every 4 KiB block of a
/// power-of-two image is visited once per lap, in a scattered order.
pub const STEP_4K: u64 = 4096 * 100_003;

fn main() -> Result<()> {
    let opts = Opts::parse();
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let qemu = qemu::Qemu::find()?;
    let mut rep = report::Report::new(&opts, &qemu);
    if opts.wants("rados") {
        rados_runs::rados(&opts, &mut rep)?;
        if opts.only.as_deref() == Some("rados") {
            return finish(&opts, &rep);
        }
    }
    if opts.wants("vm") {
        vm_runs::vm(&opts, &mut rep)?;
        if opts.only.as_deref() == Some("vm") {
            return finish(&opts, &rep);
        }
    }
    let fixture = engine_runs::Fixture::prepare(&opts, &qemu)?;
    if opts.wants("read") {
        engine_runs::random_reads(&opts, &qemu, &fixture, &mut rep)?;
    }
    if opts.wants("write") {
        engine_runs::random_writes(&opts, &qemu, &fixture, &mut rep)?;
    }
    if opts.wants("seq") {
        engine_runs::sequential(&opts, &qemu, &fixture, &mut rep)?;
    }
    if opts.wants("snapshot") {
        engine_runs::snapshot_create(&opts, &qemu, &mut rep)?;
    }
    if opts.wants("open") {
        engine_runs::deep_chain(&opts, &qemu, &mut rep)?;
    }
    if opts.wants("merge") {
        lifecycle_runs::merge(&opts, &qemu, &fixture, &mut rep)?;
    }
    if opts.wants("diff") {
        lifecycle_runs::diff_large(&opts, &mut rep)?;
    }
    if opts.wants("stream") {
        lifecycle_runs::streams(&opts, &qemu, &fixture, &mut rep)?;
    }
    if opts.wants("vmdk") {
        vmdk_runs::stream_export(&opts, &qemu, &fixture, &mut rep)?;
    }
    if opts.wants("nbd") {
        nbd_runs::nbd(&opts, &fixture, &mut rep)?;
    }
    if opts.wants("fuse") {
        fuse_runs::fuse(&opts, &fixture, &mut rep)?;
    }
    finish(&opts, &rep)
}

/// Print the report, and write it as JSON where asked.
fn finish(opts: &Opts, rep: &report::Report) -> Result<()> {
    rep.print();
    if let Some(p) = &opts.json {
        std::fs::write(p, serde_json::to_vec_pretty(rep)?)?;
    }
    Ok(())
}
