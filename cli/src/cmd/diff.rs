//! `vdisk diff`, `vdisk export-diff`, `vdisk import-diff`: comparing snapshots and shipping
//! the difference.

use super::print_json;
use crate::size::human;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use vdisk_engine::diff::{diff as engine_diff, DiffKind, Point};
use vdisk_engine::stream::export_diff;

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// The older snapshot.
    pub from: String,
    /// The newer snapshot (default: the head).
    pub to: Option<String>,
    /// Drop extents whose bytes are equal on both sides (written but unchanged).
    #[arg(long)]
    pub content: bool,
    /// Only a summary.
    #[arg(long)]
    pub stat: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// The snapshot the receiver already has (omit for a full stream).
    #[arg(long)]
    pub from: Option<String>,
    /// The snapshot to reproduce.
    #[arg(long)]
    pub to: String,
    /// Output file, `-` for stdout.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The disk bundle to apply the stream to.
    pub disk: PathBuf,
    /// The stream file, `-` for stdin.
    pub input: PathBuf,
}

pub fn diff(a: DiffArgs) -> Result<ExitCode> {
    let store = crate::open::store(&a.disk)?;
    let to = a.to.clone().map(Point::Snapshot).unwrap_or(Point::Head);
    let r = engine_diff(
        store.as_ref(),
        &Point::Snapshot(a.from.clone()),
        &to,
        a.content,
    )
    .with_context(|| format!("cannot diff {}", a.disk.display()))?;
    let data: u64 = r
        .extents
        .iter()
        .filter(|e| e.kind == DiffKind::Data)
        .map(|e| e.length)
        .sum();
    if a.json {
        if a.stat {
            print_json(&serde_json::json!({
                "from": r.from, "to": r.to, "extents": r.extents.len(),
                "changed_bytes": r.changed_bytes, "data_bytes": data,
                "zero_bytes": r.changed_bytes - data,
            }))?;
        } else {
            print_json(&r)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
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
    Ok(ExitCode::SUCCESS)
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    let store = crate::open::store(&a.disk)?;
    let to_stdout = a.output.as_os_str() == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        if a.output.exists() {
            anyhow::bail!("{}: exists; refusing to overwrite", a.output.display());
        }
        Box::new(BufWriter::new(File::create(&a.output).with_context(
            || format!("cannot create {}", a.output.display()),
        )?))
    };
    let bar = crate::progress::counter("exporting");
    let mut out = crate::progress::ProgressWriter {
        inner: out,
        bar: bar.clone(),
    };
    let r = export_diff(store.as_ref(), a.from.as_deref(), &a.to, &mut out, a.level);
    bar.finish_and_clear();
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            drop(out);
            if !to_stdout {
                let _ = std::fs::remove_file(&a.output);
            }
            return Err(e).context("cannot export the stream");
        }
    };
    out.flush()?;
    drop(out);
    if !to_stdout {
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
    let bar = crate::progress::counter("importing");
    let input: Box<dyn std::io::Read> = if a.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            File::open(&a.input).with_context(|| format!("cannot open {}", a.input.display()))?,
        )
    };
    let mut reader = BufReader::new(crate::progress::ProgressReader {
        inner: input,
        bar: bar.clone(),
    });
    let r = d.import_diff(&mut reader).with_context(|| {
        format!(
            "cannot import {} into {}",
            a.input.display(),
            a.disk.display()
        )
    })?;
    bar.finish_and_clear();
    d.close()?;
    println!(
        "imported {} data, {} zeroed{}",
        human(r.data_bytes),
        human(r.zero_bytes),
        if r.head_moved {
            "; the head moved to the new snapshot"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
