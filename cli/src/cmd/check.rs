//! `vdisk check DISK [--repair] [--json]`: the report goes to stdout. Exit status as
//! `qemu-img check`'s: 0 clean, 2 corruption found, 3 only leaked objects found (garbage a
//! crash left, which `--repair` removes), 1 the check itself could not run.

use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::check::CheckReport;

/// Exit status when corruption was found.
pub const EXIT_CORRUPT: u8 = 2;
/// Exit status when only leaked objects were found.
pub const EXIT_LEAKS: u8 = 3;

#[derive(clap::Args)]
pub struct Args {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Repair what can be repaired without losing data first (journal replay, interrupted
    /// snapshot, garbage objects, a damaged copy of a structure from its good twin); needs
    /// the disk not to be in use by another writer.
    #[arg(long)]
    pub repair: bool,
    /// Machine-readable output (docs/json.md: vdisk-check).
    #[arg(long)]
    pub json: bool,
}

/// Objects of `layers/` nobody names: a leak (exit 3) rather than damage.
fn leaks(r: &CheckReport) -> usize {
    r.notes.iter().filter(|n| n.contains("garbage")).count()
}

fn status(r: &CheckReport) -> ExitCode {
    if !r.is_clean() {
        ExitCode::from(EXIT_CORRUPT)
    } else if leaks(r) > 0 {
        ExitCode::from(EXIT_LEAKS)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let store = crate::open::store(&a.disk)?;
    let filename = json!(a.disk.display().to_string());
    let (r, actions) = if a.repair {
        let rep = vdisk_engine::check::repair(store.clone())
            .map_err(anyhow::Error::from)
            .map_err(|e| e.context(format!("cannot repair {}", a.disk.display())))?;
        (rep.check, Some(rep.actions))
    } else {
        let bar = crate::progress::items(0, "checking layers");
        let r = vdisk_engine::check::check_with_progress(store.as_ref(), &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        });
        bar.finish_and_clear();
        (r, None)
    };
    if a.json {
        let mut extra = vec![
            ("filename", filename),
            ("clean", json!(r.is_clean())),
            ("leaks", json!(leaks(&r))),
        ];
        if let Some(acts) = &actions {
            extra.push(("actions", json!(acts)));
        }
        crate::json::print("check", &extra, &r, &[("bundle", "filename")])?;
        return Ok(status(&r));
    }
    for act in actions.iter().flatten() {
        println!("repair: {act}");
    }
    for p in &r.problems {
        println!("problem: {}: {}: {}", p.object, p.field, p.message);
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    if r.is_clean() {
        println!(
            "{}: no problems found ({} layers, {} clusters verified against their blake3{})",
            a.disk.display(),
            r.layers_checked,
            r.clusters_verified,
            match leaks(&r) {
                0 => String::new(),
                n => format!("; {n} leaked object(s): `vdisk check --repair` removes them"),
            }
        );
    } else {
        println!(
            "{}: {} problem(s) found",
            a.disk.display(),
            r.problems.len()
        );
    }
    Ok(status(&r))
}
