//! `vdisk create DISK --size SIZE [--cluster-size SIZE]`

use crate::size::{human, parse_size};
use anyhow::{bail, Context, Result};
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

/// Largest virtual size (format-spec/bundle.md §3).
const MAX_SIZE: u64 = 1 << 50;

/// Checks the user's geometry options, naming the option at fault.
fn check_options(a: &Args) -> Result<()> {
    let ok = |v: u64| v.is_power_of_two() && (512..=2 << 20).contains(&v);
    if !ok(a.cluster_size) {
        bail!(
            "--cluster-size {}: must be a power of two from 512 bytes to 2 MiB",
            human(a.cluster_size)
        );
    }
    if let Some(s) = a.subcluster_size {
        if !ok(s) || s > a.cluster_size || a.cluster_size / s > 32 {
            bail!(
                "--subcluster-size {}: must be a power of two, at most --cluster-size ({}) \
                 and at least 1/32 of it",
                human(s),
                human(a.cluster_size)
            );
        }
    }
    if a.size == 0 || a.size > MAX_SIZE {
        bail!("--size {}: must be from 1 byte to 1 PiB", human(a.size));
    }
    Ok(())
}

pub fn run(a: Args) -> Result<ExitCode> {
    check_options(&a)?;
    // The disk is a whole number of 512-byte sectors, as qemu-img rounds too.
    let size = a.size.div_ceil(512) * 512;
    let opts = CreateOptions {
        virtual_size: size,
        cluster_size: a.cluster_size,
        subcluster_size: a.subcluster_size,
    };
    create(&a.disk, &opts)?
        .close()
        .context("closing the new disk")?;
    let rounded = if size != a.size {
        format!("; --size {} rounded up to whole 512-byte sectors", a.size)
    } else {
        String::new()
    };
    crate::say!(
        "Created {} ({size} bytes = {}{rounded}; {} clusters)",
        a.disk.display(),
        human(size),
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
