//! `vdisk map DISK [--snapshot NAME] [--json]`

use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::ExtentKind;

#[derive(clap::Args)]
pub struct Args {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Map a snapshot (name or id) instead of the head.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Machine-readable output (docs/json.md: vdisk-map; qemu-img map's fields).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    offset: u64,
    length: u64,
    kind: &'static str,
    data: bool,
    zero: bool,
    present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    depth: Option<u32>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let v = crate::open::view(&a.disk, a.snapshot.as_deref())?;
    let ext = v.allocation(0, v.virtual_size())?;
    let rows: Vec<Row> = ext
        .iter()
        .map(|e| Row {
            offset: e.offset,
            length: e.length,
            kind: e.kind.as_str(),
            data: e.kind == ExtentKind::Data,
            zero: e.kind != ExtentKind::Data,
            present: e.kind != ExtentKind::Unallocated,
            depth: e.depth,
        })
        .collect();
    if a.json {
        crate::json::print(
            "map",
            &[
                ("filename", serde_json::json!(a.disk.display().to_string())),
                ("snapshot", serde_json::json!(a.snapshot)),
            ],
            serde_json::json!({ "extents": rows }),
            &[],
        )?;
    } else {
        println!("{:<20} {:<20} {:<12} DEPTH", "OFFSET", "LENGTH", "KIND");
        for r in &rows {
            let kind = r.kind;
            println!(
                "{:<#20x} {:<#20x} {:<12} {}",
                r.offset,
                r.length,
                kind,
                r.depth.map(|d| d.to_string()).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
