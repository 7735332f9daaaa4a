//! `vdisk create DISK --size SIZE [--cluster-size SIZE]`

use crate::size::{human, parse_size};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::{CreateOptions, Disk};

#[derive(clap::Args)]
pub struct Args {
    /// The new bundle: a directory (by convention NAME.vdisk) or rados://POOL/NAME.
    pub disk: PathBuf,
    /// Virtual size (K/M/G/T suffixes, powers of 1024).
    #[arg(long, short = 's', value_parser = parse_size)]
    pub size: u64,
    /// Cluster size (power of two, 512 to 2M).
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    pub cluster_size: u64,
    /// Subcluster size (default: cluster/32, at least 4K).
    #[arg(long, value_parser = parse_size)]
    pub subcluster_size: Option<u64>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let opts = CreateOptions {
        virtual_size: a.size,
        cluster_size: a.cluster_size,
        subcluster_size: a.subcluster_size,
    };
    create(&a.disk, &opts)?
        .close()
        .context("closing the new disk")?;
    println!(
        "Created {} ({}, {} clusters)",
        a.disk.display(),
        human(a.size),
        human(a.cluster_size)
    );
    Ok(ExitCode::SUCCESS)
}

/// Create a bundle directory and open it for writing.
pub fn create(path: &std::path::Path, opts: &CreateOptions) -> Result<Disk> {
    let store = crate::open::create_store(path)?;
    match Disk::create(store, opts) {
        Ok(d) => Ok(d),
        Err(e) => {
            crate::open::discard_created(path);
            Err(e).with_context(|| format!("cannot create {}", path.display()))
        }
    }
}
