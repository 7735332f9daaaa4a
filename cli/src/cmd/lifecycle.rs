//! `vdisk merge`, `vdisk commit`, `vdisk compact`, `vdisk policy`, `vdisk maintain`:
//! keeping chains short and files small.

use crate::open::on_writer;
use crate::size::human;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::compact::{CompactOptions, CompactReport};
use vdisk_engine::format::manifest::Policy;
use vdisk_engine::merge::MergeReport;
use vdisk_engine::Id;
use vdisk_live::control::Request;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vdisk merge web.vdisk before-upgrade\n  vdisk merge web.vdisk --range s1..s5          # s1..s4 go, s5 stays"
)]
pub struct MergeArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// The snapshot to delete by folding its layer into its neighbour.
    pub snapshot: Option<String>,
    /// Collapse a run of snapshots: OLDER..NEWER removes OLDER and every snapshot up to (not
    /// including) NEWER, folding their layers into NEWER's in one pass.
    #[arg(long, conflicts_with = "snapshot")]
    pub range: Option<String>,
    /// Merge pinned snapshots too, and fold the head's parent even while clients of the
    /// disk (serve, mount --read-write, vm run) are attached.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output (docs/json.md: vdisk-merge).
    #[arg(long)]
    pub json: bool,
}

/// `commit`'s long help: what it removes.
const COMMIT_HELP: &str = "Folds the layer below the head into the head, shortening the \
chain as `qemu-img commit` does. The snapshot that held that layer is REMOVED (its content \
would no longer exist apart from the head); a pinned one makes the commit fail. Refused \
while clients of the disk are attached unless --force.";

#[derive(clap::Args)]
#[command(after_long_help = COMMIT_HELP)]
pub struct CommitArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Commit even while clients of the disk (serve, mount --read-write, vm run) are attached.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output (docs/json.md: vdisk-merge).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CompactArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Only this layer (id from `vdisk info --json`).
    #[arg(long)]
    pub layer: Option<String>,
    /// Store clusters zstd-compressed (optional level, default 3).
    #[arg(long, num_args = 0..=1, default_missing_value = "3", value_name = "LEVEL")]
    pub compress: Option<i32>,
    /// Machine-readable output (docs/json.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Store a retention policy in the disk (applied by `vdisk maintain`).
    Set {
        /// The disk bundle.
        disk: PathBuf,
        /// Keep the newest N snapshots.
        #[arg(long)]
        keep_last: Option<u32>,
        /// Keep the head's chain at most L layers deep.
        #[arg(long)]
        max_chain: Option<u32>,
        /// Keep the newest snapshot of each of the last H hours.
        #[arg(long)]
        hourly: Option<u32>,
        /// Keep the newest snapshot of each of the last D days.
        #[arg(long)]
        daily: Option<u32>,
    },
    /// Show the policy.
    Show {
        /// The disk bundle.
        disk: PathBuf,
        /// Machine-readable output (docs/json.md: vdisk-policy).
        #[arg(long)]
        json: bool,
    },
    /// Remove the policy.
    Clear {
        /// The disk bundle.
        disk: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct MaintainArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Only show what would be merged.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output (docs/json.md).
    #[arg(long)]
    pub json: bool,
}

fn print_merge(disk: &std::path::Path, r: &MergeReport, json: bool) -> Result<()> {
    if json {
        return crate::json::print(
            "merge",
            &[("filename", json!(disk.display().to_string()))],
            r,
            &[],
        );
    }
    for n in &r.removed_snapshots {
        println!("merged away snapshot {n}");
    }
    println!(
        "{} layer(s) folded; {} copied, {} taken over by reference",
        r.layers_folded,
        human(r.bytes_copied),
        human(r.bytes_referenced)
    );
    for n in &r.notes {
        println!("note: {n}");
    }
    Ok(())
}

pub fn merge(a: MergeArgs) -> Result<ExitCode> {
    let report = match (&a.snapshot, &a.range) {
        (Some(s), None) => {
            let names = vec![crate::open::snapshot_name(&a.disk, s)?];
            let opts = vdisk_engine::merge::MergeOptions { force: a.force };
            on_writer(
                &a.disk,
                Request::Merge {
                    names: Some(names.clone()),
                    name: None,
                    force: Some(a.force),
                },
                &format!("cannot merge {s:?}"),
                |d| d.merge_snapshots_with(&names, &opts),
            )?
        }
        (None, Some(range)) => {
            let Some((older, newer)) = range.split_once("..") else {
                bail!("--range {range:?}: takes OLDER..NEWER (snapshot names or ids)");
            };
            let older = crate::open::snapshot_name(&a.disk, older)?;
            let newer = crate::open::snapshot_name(&a.disk, newer)?;
            let req = Request::MergeRange {
                older: older.clone(),
                newer: newer.clone(),
                force: Some(a.force),
            };
            on_writer(&a.disk, req, &format!("cannot merge {range}"), |d| {
                d.merge_range(&older, &newer)
            })?
        }
        _ => bail!("name a snapshot, or --range OLDER..NEWER"),
    };
    print_merge(&a.disk, &report, a.json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn commit(a: CommitArgs) -> Result<ExitCode> {
    let req = Request::Commit {
        force: Some(a.force),
    };
    let r = on_writer(&a.disk, req, "cannot commit", |d| d.commit())?;
    print_merge(&a.disk, &r, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_compact(disk: &std::path::Path, r: &CompactReport, json: bool) -> Result<()> {
    if json {
        return crate::json::print(
            "compact",
            &[("filename", json!(disk.display().to_string()))],
            r,
            &[],
        );
    }
    for l in &r.layers {
        println!(
            "layer {}: {} -> {} ({} clusters compressed)",
            l.id.short(),
            human(l.old_bytes),
            human(l.new_bytes),
            l.compressed_clusters
        );
    }
    if r.layers.is_empty() {
        println!("nothing to compact");
    }
    let reclaimed = r.bytes_reclaimed;
    if reclaimed >= 0 {
        println!("reclaimed {}", human(reclaimed as u64));
    } else {
        println!("grew by {}", human(reclaimed.unsigned_abs()));
    }
    Ok(())
}

pub fn compact(a: CompactArgs) -> Result<ExitCode> {
    let layer = a
        .layer
        .as_deref()
        .map(|s| {
            s.parse::<Id>()
                .map_err(|e| anyhow::anyhow!("--layer {s:?}: {e}"))
        })
        .transpose()?;
    let opts = CompactOptions {
        layer,
        compress: a.compress,
    };
    let req = Request::Compact {
        layer: a.layer.clone(),
        compress: a.compress,
    };
    let r = on_writer(&a.disk, req, "cannot compact", |d| d.compact(&opts))?;
    print_compact(&a.disk, &r, a.json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn policy(c: PolicyCommand) -> Result<ExitCode> {
    match c {
        PolicyCommand::Set {
            disk,
            keep_last,
            max_chain,
            hourly,
            daily,
        } => {
            if keep_last.is_none() && max_chain.is_none() && hourly.is_none() && daily.is_none() {
                bail!("give at least one of --keep-last, --max-chain, --hourly, --daily");
            }
            if max_chain == Some(0) {
                bail!("--max-chain must be at least 1 (the head's own layer)");
            }
            let p = Policy {
                keep_last,
                max_chain,
                hourly,
                daily,
            };
            let req = Request::PolicySet {
                policy: Some(p.clone()),
            };
            on_writer(&disk, req, "cannot set the policy", |d| {
                d.set_policy(Some(p))
            })?;
        }
        PolicyCommand::Clear { disk } => {
            on_writer(
                &disk,
                Request::PolicySet { policy: None },
                "cannot clear the policy",
                |d| d.set_policy(None),
            )?;
        }
        PolicyCommand::Show { disk, json } => {
            let v = crate::open::view(&disk, None)?;
            let p = v.manifest().policy.clone();
            if json {
                crate::json::print(
                    "policy",
                    &[("filename", json!(disk.display().to_string()))],
                    json!({ "policy": p }),
                    &[],
                )?;
            } else if let Some(p) = p {
                let f = |x: Option<u32>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "keep-last {}  max-chain {}  hourly {}  daily {}",
                    f(p.keep_last),
                    f(p.max_chain),
                    f(p.hourly),
                    f(p.daily)
                );
            } else {
                println!("no retention policy");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn maintain(a: MaintainArgs) -> Result<ExitCode> {
    let req = Request::Maintain {
        dry_run: Some(a.dry_run),
    };
    let r = on_writer(&a.disk, req, "cannot apply the retention policy", |d| {
        d.maintain(a.dry_run)
    })?;
    if a.json {
        crate::json::print(
            "maintain",
            &[
                ("filename", json!(a.disk.display().to_string())),
                ("dry_run", json!(a.dry_run)),
            ],
            &r,
            &[],
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    for k in &r.kept {
        let (n, why) = (&k.name, &k.why);
        println!("keep   {n:<24} {why}");
    }
    for n in &r.removed {
        println!("{} {n}", if a.dry_run { "would merge" } else { "merged" });
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    println!("chain depth {} -> {}", r.chain_before, r.chain_after);
    Ok(ExitCode::SUCCESS)
}
