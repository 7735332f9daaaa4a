//! `vdisk check DISK [--json]`: exit 0 when clean, 2 when problems were found.

use super::print_json;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let store = crate::open::store(&a.disk)?;
    let r = vdisk_engine::check::check(store.as_ref());
    if a.json {
        print_json(&r)?;
    } else {
        for p in &r.problems {
            eprintln!("problem: {}: {}: {}", p.object, p.field, p.message);
        }
        for n in &r.notes {
            println!("note: {n}");
        }
        if r.is_clean() {
            println!(
                "{}: no problems found ({} layers, {} clusters verified against their blake3)",
                a.disk.display(),
                r.layers_checked,
                r.clusters_verified
            );
        } else {
            eprintln!(
                "{}: {} problem(s) found",
                a.disk.display(),
                r.problems.len()
            );
        }
    }
    Ok(if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
