//! Images of any format as block devices: what `convert`, `compare` and `measure` read.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use vdisk_blockdev::BlockDevice;
use vdisk_engine::{Target, View};
use vdisk_live::RawFile;
use vdisk_vmdk::{looks_like_vmdk, VmdkImage};

/// Image formats vdisk reads and writes.
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

impl Format {
    /// The name `-f`/`-O` and JSON outputs use.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vdisk => "vdisk",
            Format::Vmdk => "vmdk",
        }
    }
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

/// An opened image.
pub enum Input {
    /// A raw file.
    Raw(RawFile),
    /// A snapshot or the head of a bundle.
    Vdisk(Box<View>),
    /// A VMDK with its chain.
    Vmdk(Box<VmdkImage>),
}

impl Input {
    /// Its bytes.
    pub fn device(&self) -> &dyn BlockDevice {
        match self {
            Input::Raw(s) => s,
            Input::Vdisk(s) => s.as_ref(),
            Input::Vmdk(s) => s.as_ref(),
        }
    }
}

/// Opens `path` read-only as `format` (guessed when `None`); `snapshot` picks a snapshot of a
/// vdisk image (`head`/`@head` or none: the head); `allow_dirs` widens where a VMDK's
/// extents and parents may lie.
pub fn open_image(
    path: &Path,
    format: Option<Format>,
    snapshot: Option<&str>,
    allow_dirs: &[PathBuf],
) -> Result<Input> {
    let format = format.unwrap_or_else(|| guess(path));
    let snapshot = crate::open::snapshot_spec(snapshot);
    if snapshot.is_some() && format != Format::Vdisk {
        bail!(
            "--snapshot needs a vdisk image, and {} is {}",
            path.display(),
            format.name()
        );
    }
    Ok(match format {
        Format::Raw => Input::Raw(
            RawFile::open(path, true).with_context(|| format!("cannot open {}", path.display()))?,
        ),
        Format::Vdisk => {
            let store = crate::open::store(path)?;
            let target = match snapshot {
                Some(s) => Target::Snapshot(crate::open::resolve_snapshot(store.as_ref(), s)?),
                None => Target::Head,
            };
            Input::Vdisk(Box::new(
                View::open_with(store.as_ref(), target, &crate::open::engine_options())
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ))
        }
        Format::Vmdk => {
            let opts = vdisk_vmdk::OpenOptions {
                allowed_dirs: allow_dirs.to_vec(),
                ..Default::default()
            };
            Input::Vmdk(Box::new(VmdkImage::open_with(path, &opts).with_context(
                || format!("cannot open {} as a VMDK", path.display()),
            )?))
        }
    })
}
