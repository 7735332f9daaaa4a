//! `vdisk resize DISK SIZE [--shrink]`: change the head's virtual size, like `qemu-img
//! resize`. Growing is always allowed (the new space reads as zeros); shrinking needs
//! `--shrink`. Snapshots keep the size they were taken at, so their content never changes.

use crate::size::{human, parse_size};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::resize::ResizeOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The disk bundle.
    pub disk: PathBuf,
    /// The new size (K/M/G/T suffixes), or +SIZE / -SIZE relative to the current one.
    #[arg(allow_hyphen_values = true)]
    pub size: String,
    /// Allow a smaller size: what lies past it is no longer reachable from the head
    /// (snapshots keep theirs).
    #[arg(long)]
    pub shrink: bool,
    /// Machine-readable output (docs/json.md: vdisk-resize).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let disk = crate::open::disk(&a.disk)?;
    let current = disk.virtual_size();
    let (sign, num) = match a.size.as_bytes().first() {
        Some(b'+') => (1i8, &a.size[1..]),
        Some(b'-') => (-1, &a.size[1..]),
        _ => (0, a.size.as_str()),
    };
    let n = parse_size(num).map_err(|e| anyhow::anyhow!("SIZE {:?}: {e}", a.size))?;
    let target = match sign {
        1 => current.checked_add(n),
        -1 => current.checked_sub(n).filter(|v| *v > 0),
        _ => Some(n),
    }
    .ok_or_else(|| anyhow::anyhow!("SIZE {:?}: out of range for a {current}-byte disk", a.size))?;
    let r = disk
        .resize(target, &ResizeOptions { shrink: a.shrink })
        .map_err(|e| match e {
            vdisk_engine::Error::WouldShrink { .. } => anyhow::anyhow!(
                "{}: {} is smaller than the disk ({}); pass --shrink to discard what lies past it",
                a.disk.display(),
                human(target),
                human(current)
            ),
            e => anyhow::Error::new(e).context(format!("cannot resize {}", a.disk.display())),
        })?;
    disk.close().context("closing the disk")?;
    if a.json {
        crate::json::print(
            "resize",
            &[("filename", json!(a.disk.display().to_string()))],
            &r,
            &[],
        )?;
    } else {
        crate::say!(
            "Resized {} from {} to {} ({} bytes)",
            a.disk.display(),
            human(r.old_size),
            human(r.new_size),
            r.new_size
        );
    }
    Ok(ExitCode::SUCCESS)
}
