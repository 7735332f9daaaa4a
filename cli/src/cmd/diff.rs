//! `vdisk diff`, `vdisk export-diff`, `vdisk import-diff`: comparing snapshots and shipping
//! the difference. Snapshots are named by name or id; `head`/`@head` is the live head.

use crate::size::human;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk_engine::diff::{diff as engine_diff, DiffKind, Point};
use vdisk_engine::stream::{export_diff, ImportOptions, StreamReport};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vdisk diff web.vdisk before-upgrade              # snapshot .. head\n  vdisk diff web.vdisk s1 s2 --stat --json\n  vdisk diff web.vdisk s1 --exit-code && echo unchanged"
)]
pub struct DiffArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// The older snapshot (name or id).
    pub from: String,
    /// The newer snapshot (name or id; default `@head`, the head).
    pub to: Option<String>,
    /// Drop extents whose bytes are equal on both sides (written but unchanged).
    #[arg(long)]
    pub content: bool,
    /// Only a summary.
    #[arg(long)]
    pub stat: bool,
    /// Exit 1 when anything changed, 0 when nothing did (like `git diff --exit-code`).
    #[arg(long)]
    pub exit_code: bool,
    /// Machine-readable output (docs/json.md: vdisk-diff).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vdisk export-diff web.vdisk --to s1 -o s1.vdelta            # full\n  vdisk export-diff web.vdisk --from s1 --to s2 -o - | ssh b vdisk import-diff r.vdisk -"
)]
pub struct ExportArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// The snapshot the receiver already has (name or id; omit for a full stream).
    #[arg(long)]
    pub from: Option<String>,
    /// The snapshot to reproduce (name or id).
    #[arg(long)]
    pub to: String,
    /// Output file, `-` for stdout (refused when stdout is a terminal).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Machine-readable summary on stdout (not with `-o -`; docs/json.md: vdisk-stream).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vdisk import-diff replica.vdisk s1-s2.vdelta\n  vdisk import-diff replica.vdisk - --force < s1-s2.vdelta   # discard the replica head's own writes"
)]
pub struct ImportArgs {
    /// The disk bundle to apply the stream to.
    pub disk: PathBuf,
    /// The stream file, `-` for stdin.
    pub input: PathBuf,
    /// Apply even when the replica's head has writes of its own or stands elsewhere than the
    /// stream's FROM snapshot: the head is reverted first and its changes are discarded
    /// (like `zfs recv -F`). Without it such an import is refused.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable summary (docs/json.md: vdisk-stream).
    #[arg(long)]
    pub json: bool,
}

/// A diff endpoint from the user's words.
fn point(store: &dyn vdisk_engine::Store, spec: &str) -> Result<Point> {
    if crate::open::is_head(spec) {
        return Ok(Point::Head);
    }
    Ok(Point::Snapshot(crate::open::resolve_snapshot(store, spec)?))
}

pub fn diff(a: DiffArgs) -> Result<ExitCode> {
    let store = crate::open::store(&a.disk)?;
    let from = point(store.as_ref(), &a.from)?;
    let to = match &a.to {
        Some(t) => point(store.as_ref(), t)?,
        None => Point::Head,
    };
    let r = engine_diff(store.as_ref(), &from, &to, a.content)
        .with_context(|| format!("cannot diff {}", a.disk.display()))?;
    let data: u64 = r
        .extents
        .iter()
        .filter(|e| e.kind == DiffKind::Data)
        .map(|e| e.length)
        .sum();
    let changed = r.changed_bytes > 0;
    if a.json {
        let mut extra = vec![
            ("filename", json!(a.disk.display().to_string())),
            ("from", json!(r.from)),
            ("to", json!(r.to)),
            ("extent_count", json!(r.extents.len())),
            ("changed_bytes", json!(r.changed_bytes)),
            ("data_bytes", json!(data)),
            ("zero_bytes", json!(r.changed_bytes - data)),
            ("clusters_examined", json!(r.clusters_examined)),
        ];
        if !a.stat {
            extra.push(("extents", json!(r.extents)));
        }
        crate::json::print("diff", &extra, json!({}), &[])?;
    } else {
        if !a.stat {
            println!("{:<20} {:<14} KIND", "OFFSET", "LENGTH");
            for e in &r.extents {
                let k = if e.kind == DiffKind::Data {
                    "data"
                } else {
                    "zero"
                };
                println!("{:<#20x} {:<14} {k}", e.offset, e.length);
            }
        }
        println!(
            "{} .. {}: {} extents, {} changed ({} data, {} zeros)",
            r.from,
            r.to,
            r.extents.len(),
            human(r.changed_bytes),
            human(data),
            human(r.changed_bytes - data)
        );
    }
    Ok(if a.exit_code && changed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_stream(what: &str, disk: &Path, r: &StreamReport) -> Result<()> {
    crate::json::print(
        "stream",
        &[
            ("filename", json!(disk.display().to_string())),
            ("operation", json!(what)),
        ],
        r,
        &[],
    )
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    let store = crate::open::store(&a.disk)?;
    let to_stdout = a.output.as_os_str() == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        bail!(
            "-o -: refusing to write a binary stream to a terminal (redirect it, or name a file)"
        );
    }
    if to_stdout && a.json {
        bail!("--json prints to stdout, where `-o -` writes the stream; name a file with -o");
    }
    let from = match &a.from {
        Some(f) => Some(crate::open::resolve_snapshot(store.as_ref(), f)?),
        None => None,
    };
    let to = crate::open::resolve_snapshot(store.as_ref(), &a.to)?;
    let out: Box<dyn Write> = if to_stdout {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&a.output)
            .with_context(|| format!("cannot create {}", a.output.display()))?;
        Box::new(BufWriter::new(f))
    };
    let bar = crate::progress::counter("exporting");
    let mut out = crate::progress::ProgressWriter {
        inner: out,
        bar: bar.clone(),
    };
    let r = export_diff(store.as_ref(), from.as_deref(), &to, &mut out, a.level);
    bar.finish_and_clear();
    let r = match r.map_err(anyhow::Error::from).and_then(|r| {
        out.flush()?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            drop(out);
            if !to_stdout {
                let _ = std::fs::remove_file(&a.output);
            }
            return Err(e).context("cannot export the stream");
        }
    };
    drop(out);
    if a.json {
        print_stream("export", &a.disk, &r)?;
    } else if !to_stdout && !crate::progress::quiet() {
        eprintln!(
            "{}: {} data in {} records, {} zeroed; {} stream",
            a.output.display(),
            human(r.data_bytes),
            r.data_records,
            human(r.zero_bytes),
            human(r.stream_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(a: ImportArgs) -> Result<ExitCode> {
    let d = crate::open::disk(&a.disk)?;
    let (input, bar): (Box<dyn std::io::Read>, _) = if a.input.as_os_str() == "-" {
        (
            Box::new(std::io::stdin().lock()),
            crate::progress::counter("importing"),
        )
    } else {
        let f =
            File::open(&a.input).with_context(|| format!("cannot open {}", a.input.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(f), crate::progress::bytes(len, "importing"))
    };
    let mut reader = BufReader::new(crate::progress::ProgressReader {
        inner: input,
        bar: bar.clone(),
    });
    let opts = ImportOptions {
        force: a.force,
        ..Default::default()
    };
    let r = d.import_diff_with(&mut reader, &opts);
    bar.finish_and_clear();
    let r = r.with_context(|| {
        format!(
            "cannot import {} into {}",
            a.input.display(),
            a.disk.display()
        )
    })?;
    d.close()?;
    if a.json {
        print_stream("import", &a.disk, &r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.head_reverted {
        eprintln!("vdisk: warning: --force: the head's own changes were discarded to move it");
    }
    crate::say!(
        "imported {} data, {} zeroed; the head {}",
        human(r.data_bytes),
        human(r.zero_bytes),
        match (&r.head_on, r.head_moved) {
            (Some(s), true) => format!("moved to snapshot {s}"),
            (Some(s), false) => format!("stays on snapshot {s}"),
            (None, _) => "stays where it was".into(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
