//! `vdisk convert [-f FMT] [-O FMT] [-o OPTS] [--snapshot NAME] SRC DST`: raw, vdisk and
//! VMDK in every direction, sparse-aware (holes, unallocated and zero ranges are never
//! copied). A VMDK delta chain imported into a bundle becomes one snapshot per VMDK file.

use crate::blockio::{RawSource, Source, VdiskSource};
use crate::size::parse_size;
use crate::transfer::{default_threads, nonzero_runs, par_copy, split, CHUNK};
use crate::vmdk_io::{looks_like_vmdk, SourceBlocks, ViewBlocks, VmdkSource};
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk_engine::{CreateOptions, Target, View};
use vdisk_vmdk::{write_vmdk, BlockSource, Subformat, VmdkImage, WriteOptions};

/// Image formats `convert` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A plain image file.
    Raw,
    /// A vdisk bundle.
    Vdisk,
    /// A VMDK (any common subformat to read; monolithicSparse, streamOptimized or
    /// monolithicFlat to write).
    Vmdk,
}

#[derive(clap::Args)]
pub struct Args {
    /// Source format (default: from the path, then from the content).
    #[arg(short = 'f', long = "source-format")]
    pub src_format: Option<Format>,
    /// Output format (default: from the path's extension: .vdisk, .vmdk, else raw).
    #[arg(short = 'O', long = "output-format")]
    pub dst_format: Option<Format>,
    /// Output options as qemu-img's `-o key=value,...` (repeatable). VMDK output:
    /// subformat=monolithicSparse|streamOptimized|monolithicFlat, adapter_type=ide|lsilogic|
    /// buslogic|legacyESX, hwversion=N, compat6=on, toolsversion=V, zeroed_grain=on,
    /// compression_level=0-9 (streamOptimized, default 1), threads=N (0: one per core).
    #[arg(short = 'o', long = "options", value_name = "KEY=VAL,...")]
    pub options: Vec<String>,
    /// Convert this snapshot of a vdisk source instead of its head.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Cluster size of a vdisk output.
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    pub cluster_size: u64,
    /// Source image (a VMDK's parents are found through its parentFileNameHint).
    pub src: PathBuf,
    /// Destination image (must not exist).
    pub dst: PathBuf,
}

/// Guess a source format: a bundle directory or `.vdisk` is vdisk, `.vmdk` or VMDK content
/// (`KDMV` magic, a text descriptor) is vmdk, anything else raw.
pub fn guess(path: &Path) -> Format {
    if crate::open::is_rados(path) || path.join("manifest").is_file() || has_ext(path, "vdisk") {
        Format::Vdisk
    } else if has_ext(path, "vmdk") || looks_like_vmdk(path) {
        Format::Vmdk
    } else {
        Format::Raw
    }
}

/// Guess an output format from its extension alone (the file does not exist yet).
pub fn guess_output(path: &Path) -> Format {
    if crate::open::is_rados(path) || has_ext(path, "vdisk") {
        Format::Vdisk
    } else if has_ext(path, "vmdk") {
        Format::Vmdk
    } else {
        Format::Raw
    }
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// An opened source.
enum Input {
    Raw(RawSource),
    Vdisk(Box<VdiskSource>),
    Vmdk(Box<VmdkSource>),
}

impl Input {
    fn source(&self) -> &dyn Source {
        match self {
            Input::Raw(s) => s,
            Input::Vdisk(s) => s.as_ref(),
            Input::Vmdk(s) => s.as_ref(),
        }
    }
}

fn open_input(a: &Args, fmt: Format) -> Result<Input> {
    if a.snapshot.is_some() && fmt != Format::Vdisk {
        bail!("--snapshot needs a vdisk source");
    }
    Ok(match fmt {
        Format::Raw => Input::Raw(RawSource::open(&a.src)?),
        Format::Vdisk => {
            let store = crate::open::store(&a.src)?;
            let target = match &a.snapshot {
                Some(s) => Target::Snapshot(s.clone()),
                None => Target::Head,
            };
            Input::Vdisk(Box::new(VdiskSource(
                View::open(store.as_ref(), target)
                    .with_context(|| format!("cannot open {}", a.src.display()))?,
            )))
        }
        Format::Vmdk => Input::Vmdk(Box::new(VmdkSource(
            VmdkImage::open(&a.src).context("cannot open the VMDK source")?,
        ))),
    })
}

/// VMDK writer options from `-o` lists (subformat monolithicSparse unless given).
pub fn vmdk_options<'a>(lists: &[String]) -> Result<WriteOptions<'a>> {
    let mut o = WriteOptions::default();
    for l in lists {
        o.apply_options(l)
            .map_err(|e| anyhow::anyhow!("-o {l}: {e}"))?;
    }
    Ok(o)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let sf = a.src_format.unwrap_or_else(|| guess(&a.src));
    let df = a.dst_format.unwrap_or_else(|| guess_output(&a.dst));
    if a.dst.exists() {
        bail!("{}: exists; refusing to overwrite", a.dst.display());
    }
    if !a.options.is_empty() && df != Format::Vmdk {
        bail!("-o options apply to a vmdk output only");
    }
    let wopts = vmdk_options(&a.options)?;
    let flat = (df == Format::Vmdk && wopts.subformat == Subformat::MonolithicFlat)
        .then(|| flat_path(&a.dst));
    if let Some(f) = &flat {
        if f.exists() {
            bail!("{}: exists; refusing to overwrite", f.display());
        }
    }
    let input = open_input(&a, sf)?;
    let result = match df {
        Format::Raw => to_raw(input.source(), &a.dst),
        Format::Vdisk => to_vdisk(&input, &a.dst, a.cluster_size),
        Format::Vmdk => to_vmdk(&input, &a.dst, wopts),
    };
    if result.is_err() {
        // Leave nothing half-written behind.
        if df == Format::Vdisk && crate::open::is_rados(&a.dst) {
            crate::open::discard_created(&a.dst);
        } else if a.dst.is_dir() {
            let _ = std::fs::remove_dir_all(&a.dst);
        } else {
            let _ = std::fs::remove_file(&a.dst);
        }
        if let Some(f) = &flat {
            let _ = std::fs::remove_file(f);
        }
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// `STEM-flat.vmdk` beside a monolithicFlat descriptor (the vmdk writer's naming).
fn flat_path(dst: &Path) -> PathBuf {
    let stem = dst
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    dst.with_file_name(format!("{stem}-flat.vmdk"))
}

fn data_total(src: &dyn Source) -> Result<(Vec<(u64, u64)>, u64)> {
    let ranges = src.data_ranges()?;
    let total = ranges.iter().map(|r| r.1).sum();
    Ok((ranges, total))
}

/// Copies `src` into a new sparse raw file: only non-zero chunks of its data ranges are
/// written.
fn to_raw(src: &dyn Source, dst: &Path) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    f.set_len(src.size())?;
    let (ranges, total) = data_total(src)?;
    let pb = crate::progress::bytes(total, "converting");
    par_copy(
        &split(&ranges, CHUNK),
        default_threads(),
        &|b, off| src.read_at(b, off),
        |b, off| {
            nonzero_runs(b, off, |b, off| {
                f.write_all_at(b, off)
                    .with_context(|| format!("writing {} at {off}", dst.display()))
            })
        },
        |n| pb.inc(n),
    )?;
    f.sync_all()?;
    pb.finish_and_clear();
    Ok(())
}

/// Copies `input` into a new bundle; a VMDK chain becomes one snapshot per file.
fn to_vdisk(input: &Input, dst: &Path, cluster_size: u64) -> Result<()> {
    let src = input.source();
    let opts = CreateOptions {
        virtual_size: src.size(),
        cluster_size,
        subcluster_size: None,
    };
    let disk = super::create::create(dst, &opts)?;
    if let Input::Vmdk(v) = input {
        let pb = crate::progress::bytes(crate::vmdk_import::data_bytes(&v.0)?, "importing");
        let r = crate::vmdk_import::import(&v.0, &disk, &pb)?;
        disk.flush()?;
        disk.close()?;
        pb.finish_and_clear();
        if !r.snapshots.is_empty() {
            eprintln!(
                "imported a chain of {} VMDK files as snapshots: {}",
                r.snapshots.len(),
                r.snapshots.join(", ")
            );
        }
        return Ok(());
    }
    let (ranges, total) = data_total(src)?;
    let pb = crate::progress::bytes(total, "converting");
    par_copy(
        &split(&ranges, CHUNK),
        default_threads(),
        &|b, off| src.read_at(b, off),
        |b, off| nonzero_runs(b, off, |b, off| Ok(disk.write_at(b, off)?)),
        |n| pb.inc(n),
    )?;
    disk.flush()?;
    disk.close()?;
    pb.finish_and_clear();
    Ok(())
}

/// Writes `input` as a VMDK with the vmdk crate's writers (streamOptimized compresses on
/// every core).
fn to_vmdk(input: &Input, dst: &Path, opts: WriteOptions) -> Result<()> {
    let raw_blocks;
    let view_blocks;
    let blocks: &dyn BlockSource = match input {
        Input::Raw(r) => {
            raw_blocks = SourceBlocks::new(r)?;
            &raw_blocks
        }
        Input::Vdisk(v) => {
            view_blocks = ViewBlocks(&v.0);
            &view_blocks
        }
        Input::Vmdk(v) => &v.0,
    };
    let pb = crate::progress::bytes(blocks.size(), "exporting");
    let progress = |done: u64, _total: u64| pb.set_position(done);
    // Rebinding shortens the options' lifetime to this function's (they are covariant).
    let mut opts: WriteOptions<'_> = opts;
    opts.progress = Some(&progress);
    write_vmdk(blocks, dst, &opts).with_context(|| format!("writing {}", dst.display()))?;
    pb.finish_and_clear();
    Ok(())
}
