//! `vdisk measure [-f FMT] [-O FMT] (--size SIZE | SRC) [--json]`: what converting an image
//! (or creating an empty one) would allocate, like `qemu-img measure`: the bytes the output
//! needs for the source's data (`required`) and for a fully written disk of that size
//! (`fully_allocated`).

use crate::image::{open_image, Format};
use crate::size::{human, parse_size};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_blockdev::BlockDevice;

#[derive(clap::Args)]
pub struct Args {
    /// Source format (default: guessed).
    #[arg(short = 'f', long = "source-format")]
    pub src_format: Option<Format>,
    /// Output format to measure for.
    #[arg(short = 'O', long = "output-format", default_value = "vdisk")]
    pub dst_format: Format,
    /// Measure an empty image of this virtual size instead of a source.
    #[arg(long, value_parser = parse_size, conflicts_with = "src")]
    pub size: Option<u64>,
    /// Cluster size of a vdisk output (the default's 64K).
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    pub cluster_size: u64,
    /// Measure this snapshot of a vdisk source instead of its head.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// The source image.
    pub src: Option<PathBuf>,
}

/// What `measure --json` prints (docs/json.md).
#[derive(Serialize)]
struct Measure {
    format: &'static str,
    virtual_size: u64,
    required: u64,
    fully_allocated: u64,
}

/// Bytes a vdisk layer file needs for `clusters` allocated clusters of `cluster` bytes:
/// the two header slots (or one cluster, whichever is larger), the data, and per map entry
/// 32 bytes of map and 32 of hash table, each kept twice (format-spec/layer.md), in 4 KiB
/// units; plus 4 KiB for the manifest and its copy.
fn vdisk_bytes(clusters: u64, cluster: u64) -> u64 {
    let data_start = cluster.max(8192);
    let tables = (clusters * 32 * 4).div_ceil(4096) * 4096;
    data_start + clusters * cluster + tables + 2 * 4096
}

/// Bytes of grains, grain tables and the directory of a monolithicSparse VMDK (64 KiB grains,
/// 512 entries of 4 bytes per table, redundant directory and tables).
fn vmdk_bytes(grains: u64, virtual_size: u64) -> u64 {
    let grain = 64 << 10;
    let tables = virtual_size.div_ceil(grain * 512);
    let table_bytes = tables * 512 * 4;
    let dir = (tables * 4).div_ceil(512) * 512;
    65536 + grains * grain + 2 * (table_bytes + dir)
}

/// Clusters of `unit` bytes that the data extents of `d` touch.
fn clusters_touched(d: &dyn BlockDevice, unit: u64) -> Result<u64> {
    let mut n = 0u64;
    let mut last: Option<u64> = None;
    for e in d.extents(0, d.size())? {
        if e.kind.is_hole() || e.length == 0 {
            continue;
        }
        let first = e.offset / unit;
        let end = (e.end() - 1) / unit;
        let first = match last {
            Some(l) if l >= first => l + 1,
            _ => first,
        };
        if end >= first {
            n += end - first + 1;
        }
        last = Some(end.max(last.unwrap_or(0)));
    }
    Ok(n)
}

pub fn run(a: Args) -> Result<ExitCode> {
    if !a.cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&a.cluster_size) {
        bail!(
            "--cluster-size {}: must be a power of two from 512 bytes to 2 MiB",
            a.cluster_size
        );
    }
    let unit = match a.dst_format {
        Format::Vdisk => a.cluster_size,
        Format::Vmdk => 64 << 10,
        Format::Raw => 1,
    };
    let (virtual_size, used) = match (&a.src, a.size) {
        (Some(p), None) => {
            let input = open_image(p, a.src_format, a.snapshot.as_deref(), &[])?;
            let d = input.device();
            (d.size(), clusters_touched(d, unit)?)
        }
        (None, Some(s)) => (s.div_ceil(512) * 512, 0),
        _ => bail!("give a source image or --size"),
    };
    let all = virtual_size.div_ceil(unit);
    let (required, fully_allocated) = match a.dst_format {
        Format::Vdisk => (vdisk_bytes(used, unit), vdisk_bytes(all, unit)),
        Format::Vmdk => (
            vmdk_bytes(used, virtual_size),
            vmdk_bytes(all, virtual_size),
        ),
        // A raw file is its virtual size; its holes are the file system's business.
        Format::Raw => (virtual_size, virtual_size),
    };
    let m = Measure {
        format: a.dst_format.name(),
        virtual_size,
        required,
        fully_allocated,
    };
    if a.json {
        crate::json::print("measure", &[], &m, &[])?;
    } else {
        println!("required size: {}", m.required);
        println!("fully allocated size: {}", m.fully_allocated);
        crate::say!(
            "({} output of a {} disk: {} required, {} fully allocated)",
            m.format,
            human(virtual_size),
            human(m.required),
            human(m.fully_allocated)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_blockdev::MemDevice;

    #[test]
    fn touched_clusters_count_each_once() {
        let d = MemDevice::new(1 << 20);
        d.write_at(&[1u8; 4096], 0).unwrap();
        d.write_at(&[1u8; 4096], 8192).unwrap(); // same 64K cluster
        d.write_at(&[1u8; 4096], 65536 * 3).unwrap();
        assert_eq!(clusters_touched(&d, 65536).unwrap(), 2);
        assert_eq!(clusters_touched(&d, 4096).unwrap(), 3);
        assert!(vdisk_bytes(2, 65536) > 2 * 65536);
        assert!(vmdk_bytes(0, 1 << 30) < vmdk_bytes(1, 1 << 30));
    }
}
