//! `vdisk info DISK [--json]`

use crate::size::human;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The disk bundle, or a VMDK file.
    pub disk: PathBuf,
    /// Machine-readable output (docs/json.md: vdisk-info).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if super::vmdk_info::applies(&a.disk) {
        return super::vmdk_info::run(&a.disk, a.json);
    }
    let store = crate::open::store(&a.disk)?;
    let i = vdisk_engine::info::info(store.as_ref())
        .with_context(|| format!("cannot read {}", a.disk.display()))?;
    if a.json {
        crate::json::print(
            "info",
            &[],
            &i,
            &[("path", "filename"), ("file_bytes", "actual_size")],
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("disk:            {}", i.path);
    println!(
        "format:          vdisk (format version {})",
        i.format_version
    );
    println!(
        "virtual size:    {} ({} bytes)",
        human(i.virtual_size),
        i.virtual_size
    );
    println!(
        "cluster size:    {} (subclusters of {})",
        human(i.cluster_size),
        human(i.subcluster_size)
    );
    println!("chain depth:     {}", i.chain_depth);
    println!(
        "allocated:       {} in {} layers ({} in the head)",
        human(i.allocated_bytes),
        i.layers.len(),
        human(i.head_allocated_bytes)
    );
    println!("files:           {}", human(i.file_bytes));
    println!("snapshots:       {}", i.snapshots.len());
    if !i.snapshots.is_empty() {
        println!(
            "  {:<24} {:<20} {:>10} {:>6}",
            "NAME", "CREATED", "DATA", "DEPTH"
        );
        for s in &i.snapshots {
            println!(
                "  {:<24} {:<20} {:>10} {:>6}{}",
                s.name,
                s.created,
                s.layer_bytes.map(human).unwrap_or_default(),
                s.depth,
                if s.pinned { "  pinned" } else { "" }
            );
        }
    }
    for n in &i.notes {
        println!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
