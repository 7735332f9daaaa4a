//! `vdisk convert [-f FMT] [-O FMT] [-o OPTS] [--snapshot NAME] SRC DST`: raw, vdisk and
//! VMDK in every direction, sparse-aware (holes, unallocated and zero ranges are never
//! copied). A VMDK delta chain imported into a bundle becomes one snapshot per VMDK file.

use crate::image::{guess_output, open_image, Format, Input};
use crate::size::parse_size;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdisk_blockdev::BlockDevice;
use vdisk_engine::CreateOptions;
use vdisk_live::copy::{copy, data_bytes, CopyOptions};
use vdisk_live::import::{chain_data_bytes, import_chain, ChainLayer};
use vdisk_live::RawFile;
use vdisk_vmdk::{write_vmdk, Subformat, WriteOptions};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vdisk convert disk.raw web.vdisk\n  vdisk convert -O vmdk -o subformat=streamOptimized web.vdisk web.vmdk\n  vdisk convert --snapshot before-upgrade web.vdisk old.raw\n  vdisk convert vm-000002.vmdk vm.vdisk          # a VMDK chain becomes snapshots"
)]
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
    /// A VMDK source may read extents and parents from this folder too (repeatable). By
    /// default only files inside the VMDK's own folder are read, symlinks resolved.
    #[arg(long = "allow-dir", value_name = "DIR")]
    pub allow_dirs: Vec<PathBuf>,
    /// Source image (a VMDK's parents are found through its parentFileNameHint).
    pub src: PathBuf,
    /// Destination image (must not exist).
    pub dst: PathBuf,
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
    let input = open_image(&a.src, a.src_format, a.snapshot.as_deref(), &a.allow_dirs)?;
    if df == Format::Vdisk && crate::open::is_rados(&a.dst) {
        // A RADOS bundle is created in place (its manifest appears last); a failed one is
        // removed.
        let result = to_vdisk(&input, &a.dst, a.cluster_size);
        if result.is_err() {
            crate::open::discard_created(&a.dst);
        }
        return result.map(|()| ExitCode::SUCCESS);
    }
    // Everything is built under a private folder beside the destination and renamed into
    // place only when complete, never over something that appeared meanwhile: a convert
    // killed half-way leaves no output that looks whole, and two converts to one
    // destination never delete each other's.
    let stage = Staging::new(&a.dst)?;
    let out = stage.path(&a.dst);
    let result = match df {
        Format::Raw => to_raw(input.device(), &out),
        Format::Vdisk => to_vdisk(&input, &out, a.cluster_size),
        Format::Vmdk => to_vmdk(&input, &out, wopts),
    };
    result?;
    // The flat extent first: the descriptor that names it appears last.
    if let Some(f) = &flat {
        stage.publish(f)?;
    }
    if let Err(e) = stage.publish(&a.dst) {
        if let Some(f) = &flat {
            let _ = std::fs::remove_file(f);
        }
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}

/// A private folder beside a destination where an output is built (removed, with whatever
/// is left in it, when dropped).
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(dst: &Path) -> Result<Staging> {
        let parent = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let mut rnd = [0u8; 8];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut rnd)
        });
        let tag: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let dir = parent.join(format!(".{name}.partial-{}-{tag}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the staging folder {}", dir.display()))?;
        Ok(Staging { dir })
    }

    /// Where `final_path` is built.
    fn path(&self, final_path: &Path) -> PathBuf {
        self.dir.join(final_path.file_name().unwrap_or_default())
    }

    /// Moves the built `final_path` into place; fails if something is there already.
    fn publish(&self, final_path: &Path) -> Result<()> {
        let from = self.path(final_path);
        rename_noreplace(&from, final_path).with_context(|| {
            format!(
                "{}: cannot move the finished output into place",
                final_path.display()
            )
        })?;
        // The rename is durable once the folder holding it is synced.
        let parent = match final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", parent.display()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `rename(2)` that refuses to replace an existing destination (`RENAME_NOREPLACE`).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings we own; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `STEM-flat.vmdk` beside a monolithicFlat descriptor (the vmdk writer's naming).
fn flat_path(dst: &Path) -> PathBuf {
    let stem = dst
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    dst.with_file_name(format!("{stem}-flat.vmdk"))
}

/// Copies `src` into a new sparse raw file: only non-zero blocks of its data are written.
fn to_raw(src: &dyn BlockDevice, dst: &Path) -> Result<()> {
    let f = RawFile::create(dst, src.size())
        .with_context(|| format!("cannot create {}", dst.display()))?;
    let pb = crate::progress::bytes(data_bytes(src)?, "converting");
    let progress = |n| pb.inc(n);
    let opts = CopyOptions {
        progress: Some(&progress),
        ..CopyOptions::default()
    };
    copy(src, &f, &opts).with_context(|| format!("converting into {}", dst.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", dst.display()))?;
    pb.finish_and_clear();
    Ok(())
}

/// Copies `input` into a new bundle; a VMDK chain becomes one snapshot per file.
fn to_vdisk(input: &Input, dst: &Path, cluster_size: u64) -> Result<()> {
    let src = input.device();
    let opts = CreateOptions {
        virtual_size: src.size(),
        cluster_size,
        subcluster_size: None,
    };
    let disk = super::create::create(dst, &opts)?;
    let mut snapshots = Vec::new();
    match input {
        Input::Vmdk(v) if v.depth() > 1 => {
            let chain = v.chain_layers();
            let layers = chain
                .iter()
                .map(|l| {
                    Ok(ChainLayer {
                        file: l.file.clone(),
                        content: &l.content,
                        own: l
                            .allocation()
                            .with_context(|| format!("reading the allocation of {}", l.file))?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let pb = crate::progress::bytes(chain_data_bytes(&layers), "importing");
            let progress = |n| pb.inc(n);
            let opts = CopyOptions {
                progress: Some(&progress),
                ..CopyOptions::default()
            };
            snapshots = import_chain(&layers, &disk, &opts)?.snapshots;
            pb.finish_and_clear();
        }
        _ => {
            let pb = crate::progress::bytes(data_bytes(src)?, "converting");
            let progress = |n| pb.inc(n);
            let opts = CopyOptions {
                progress: Some(&progress),
                ..CopyOptions::default()
            };
            copy(src, &disk, &opts)
                .with_context(|| format!("converting into {}", dst.display()))?;
            pb.finish_and_clear();
        }
    }
    disk.flush()?;
    disk.close()?;
    if !snapshots.is_empty() {
        eprintln!(
            "imported a chain of {} VMDK files as snapshots: {}",
            snapshots.len(),
            snapshots.join(", ")
        );
    }
    Ok(())
}

/// Writes `input` as a VMDK with the vmdk crate's writers (streamOptimized compresses on
/// every core).
fn to_vmdk(input: &Input, dst: &Path, opts: WriteOptions) -> Result<()> {
    let blocks = input.device();
    let pb = crate::progress::bytes(blocks.size(), "exporting");
    let progress = |done: u64, _total: u64| pb.set_position(done);
    // Rebinding shortens the options' lifetime to this function's (they are covariant).
    let mut opts: WriteOptions<'_> = opts;
    opts.progress = Some(&progress);
    write_vmdk(blocks, dst, &opts).with_context(|| format!("writing {}", dst.display()))?;
    pb.finish_and_clear();
    Ok(())
}
