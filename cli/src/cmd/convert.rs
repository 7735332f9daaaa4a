//! `vdisk convert [-f FMT] [-O FMT] SRC DST`: raw and vdisk, sparse-aware.

use crate::blockio::{copy_data, RawSource, Source, VdiskSource};
use crate::size::parse_size;
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk_engine::{CreateOptions, Target, View};

/// Image formats `convert` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A plain image file.
    Raw,
    /// A vdisk bundle.
    Vdisk,
}

#[derive(clap::Args)]
pub struct Args {
    /// Source format (default: from the path).
    #[arg(short = 'f', long = "source-format")]
    pub src_format: Option<Format>,
    /// Output format (default: from the path).
    #[arg(short = 'O', long = "output-format")]
    pub dst_format: Option<Format>,
    /// Convert this snapshot of a vdisk source instead of its head.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Cluster size of a vdisk output.
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    pub cluster_size: u64,
    /// Source image.
    pub src: PathBuf,
    /// Destination image (must not exist).
    pub dst: PathBuf,
}

/// Guess a format from a path: a bundle directory or `.vdisk` is vdisk, else raw.
pub fn guess(path: &Path) -> Format {
    if path.join("manifest").is_file() || path.extension().is_some_and(|e| e == "vdisk") {
        Format::Vdisk
    } else {
        Format::Raw
    }
}

const CHUNK: usize = 4 << 20;

pub fn run(a: Args) -> Result<ExitCode> {
    let sf = a.src_format.unwrap_or_else(|| guess(&a.src));
    let df = a.dst_format.unwrap_or_else(|| guess(&a.dst));
    if a.dst.exists() {
        bail!("{}: exists; refusing to overwrite", a.dst.display());
    }
    let src: Box<dyn Source> = match sf {
        Format::Raw => {
            if a.snapshot.is_some() {
                bail!("--snapshot needs a vdisk source");
            }
            Box::new(RawSource::open(&a.src)?)
        }
        Format::Vdisk => {
            let store = crate::open::store(&a.src)?;
            let target = match &a.snapshot {
                Some(s) => Target::Snapshot(s.clone()),
                None => Target::Head,
            };
            Box::new(VdiskSource(
                View::open(store.as_ref(), target)
                    .with_context(|| format!("cannot open {}", a.src.display()))?,
            ))
        }
    };
    let pb = crate::progress::bytes(src.data_ranges()?.iter().map(|r| r.1).sum(), "converting");
    match df {
        Format::Raw => {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&a.dst)
                .with_context(|| format!("cannot create {}", a.dst.display()))?;
            f.set_len(src.size())?;
            copy_data(
                src.as_ref(),
                CHUNK,
                |b, off| Ok(f.write_all_at(b, off)?),
                |n| pb.inc(n),
            )?;
            f.sync_all()?;
        }
        Format::Vdisk => {
            let opts = CreateOptions {
                virtual_size: src.size(),
                cluster_size: a.cluster_size,
                subcluster_size: None,
            };
            let disk = super::create::create(&a.dst, &opts)?;
            copy_data(
                src.as_ref(),
                CHUNK,
                |b, off| Ok(disk.write_at(b, off)?),
                |n| pb.inc(n),
            )?;
            disk.flush()?;
            disk.close()?;
        }
    }
    pb.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}
