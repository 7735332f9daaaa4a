//! `vdisk check DISK [--repair] [--json]`: exit 0 when clean, 2 when problems were found.

use super::print_json;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Repair what can be repaired without losing data first (journal replay, interrupted
    /// snapshot, garbage objects, a damaged header slot from its twin); needs the disk not to
    /// be in use by another writer.
    #[arg(long)]
    pub repair: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let store = crate::open::store(&a.disk)?;
    let r = if a.repair {
        let rep = vdisk_engine::check::repair(store.clone())
            .map_err(anyhow::Error::from)
            .map_err(|e| e.context(format!("cannot repair {}", a.disk.display())))?;
        if a.json {
            print_json(&rep)?;
            return Ok(if rep.check.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        for act in &rep.actions {
            println!("repair: {act}");
        }
        rep.check
    } else {
        let bar = crate::progress::items(0, "checking layers");
        let r = vdisk_engine::check::check_with_progress(store.as_ref(), &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        });
        bar.finish_and_clear();
        r
    };
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
