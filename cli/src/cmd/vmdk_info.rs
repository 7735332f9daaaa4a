//! `vdisk info FILE.vmdk [--json]`: subformat, capacity, extents and the CID chain of a VMDK.

use crate::size::human;
use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use vdisk_blockdev::{BlockDevice, ExtentKind};
use vdisk_vmdk::VmdkImage;

/// Whether `info` should treat `path` as a VMDK: a file (not a bundle) named `.vmdk` or with
/// VMDK content.
pub fn applies(path: &Path) -> bool {
    path.is_file()
        && (path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("vmdk"))
            || vdisk_vmdk::looks_like_vmdk(path))
}

fn cid(c: Option<u32>) -> String {
    c.map_or_else(|| "-".into(), |c| format!("{c:08x}"))
}

/// Prints the description of the VMDK at `path` (and its parents).
pub fn run(path: &Path, json: bool) -> Result<ExitCode> {
    let img = VmdkImage::open(path).context("cannot open the VMDK")?;
    let i = img.info();
    let data: u64 = img
        .extents(0, img.size())?
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.length)
        .sum();
    if json {
        // The keys vdisk bundles have for the same things, then the VMDK's own under `vmdk`.
        let actual: u64 = std::iter::once(path.to_path_buf())
            .chain(
                i.extents
                    .iter()
                    .filter_map(|e| e.file.as_ref())
                    .map(|f| path.parent().unwrap_or(Path::new(".")).join(f)),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let grain = i
            .extents
            .iter()
            .find_map(|e| e.sparse.as_ref().map(|s| s.grain_size_bytes));
        crate::json::print(
            "info",
            &[
                ("filename", json!(i.file)),
                ("format", json!("vmdk")),
                ("virtual_size", json!(i.capacity_bytes)),
                ("actual_size", json!(actual)),
                ("cluster_size", json!(grain)),
                ("chain_depth", json!(i.parents.len() + 1)),
                ("allocated_bytes", json!(data)),
                ("snapshots", json!([])),
            ],
            json!({ "vmdk": &i }),
            &[],
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("disk:            {}", i.file);
    println!("format:          vmdk ({})", i.subformat);
    println!(
        "virtual size:    {} ({} bytes)",
        human(i.capacity_bytes),
        i.capacity_bytes
    );
    println!("allocated:       {} (whole chain)", human(data));
    if let Some(a) = &i.adapter_type {
        println!("adapter type:    {a}");
    }
    if let Some(h) = &i.hw_version {
        println!("hw version:      {h}");
    }
    println!("cid:             {}", cid(i.cid));
    if let Some(h) = &i.parent_file_name_hint {
        println!("parent cid:      {}", cid(i.parent_cid));
        println!("parent hint:     {h}");
    }
    println!("extents:         {}", i.extents.len());
    for e in &i.extents {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| format!("{:?}", e.kind));
        print!(
            "  {:<8} {:>10}  {}",
            kind,
            human(e.size_bytes),
            e.file.as_deref().unwrap_or("-")
        );
        if let Some(s) = &e.sparse {
            print!(
                "  (v{}, grain {}{}{}{})",
                s.version,
                human(s.grain_size_bytes),
                if s.compressed { ", compressed" } else { "" },
                if s.markers { ", markers" } else { "" },
                if s.zeroed_grain {
                    ", zeroed grains"
                } else {
                    ""
                }
            );
        }
        println!();
    }
    if !i.parents.is_empty() {
        println!(
            "chain:           {} files (this one first)",
            i.parents.len() + 1
        );
        println!(
            "  {:<40} {:<22} {:>8} {:>8}",
            "FILE", "SUBFORMAT", "CID", "PARENT"
        );
        println!(
            "  {:<40} {:<22} {:>8} {:>8}",
            i.file,
            i.subformat,
            cid(i.cid),
            cid(i.parent_cid)
        );
        for p in &i.parents {
            println!(
                "  {:<40} {:<22} {:>8} {:>8}",
                p.file,
                p.subformat,
                cid(p.cid),
                cid(p.parent_cid)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
