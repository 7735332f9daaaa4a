//! Export: a VM config and its disks (any [`BlockDevice`]) → an OVA or an unpacked folder.
//!
//! # Streaming without a temporary copy
//!
//! An OVA must start with the descriptor and the manifest, yet both depend on the disks: the
//! descriptor states each VMDK's size, the manifest each file's digest. Compressing every disk
//! twice (a first pass only to learn sizes and digests) would double the dominant cost, and a
//! temporary copy of the package doubles disk space. Instead the OVA is written once, to a
//! seekable temporary file beside the destination:
//!
//! 1. space is reserved at the start for the descriptor (its length with every size at 20
//!    digits, the most a `u64` needs) and the manifest (its length is exact in advance: fixed
//!    names, SHA-256 digests);
//! 2. each disk is streamed as streamOptimized VMDK straight into its tar member, hashed and
//!    counted on the way, and its tar header is written afterwards at the reserved block;
//! 3. the real descriptor is padded with trailing whitespace (legal after the root element) to
//!    the reserved length, hashed, and written with the manifest into the reserved space;
//! 4. the file is synced and renamed over the destination, so a failed export leaves nothing.
//!
//! The folder form writes each `.vmdk` (hashing as it goes), then the descriptor and manifest.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vdisk_blockdev::{BlockDevice, ExtentKind};
use vdisk_vmconfig::VmConfig;
use vdisk_vmdk::{write_stream_optimized, WriteOptions};

use crate::error::{OvfError, Result};
use crate::generate::{generate, DiskFacts, OvfVersion};
use crate::href::check_relative;
use crate::manifest::{render_manifest, to_hex, DigestAlgorithm, ManifestEntry};
use crate::tar;

/// One disk to export, in `VmConfig::disks` order.
pub struct ExportDisk<'a> {
    /// Human name of the disk (bundle name), for progress and errors.
    pub name: String,
    /// Its content.
    pub source: &'a dyn BlockDevice,
    /// Virtual capacity in bytes; must equal `source.size()`.
    pub capacity: u64,
}

/// Progress of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportProgress {
    /// 0-based index of the disk being written.
    pub disk_index: usize,
    /// Number of disks.
    pub disk_count: usize,
    /// Its name.
    pub disk_name: String,
    /// Virtual bytes of this disk processed.
    pub bytes_done: u64,
    /// Virtual size of this disk.
    pub bytes_total: u64,
}

/// Options of [`export`].
#[derive(Default)]
pub struct ExportOptions<'a> {
    /// OVF version of the descriptor.
    pub format: OvfVersion,
    /// VM name in the package (default: the config's name).
    pub name: Option<String>,
    /// Called as disks are written.
    pub progress: Option<&'a (dyn Fn(&ExportProgress) + Sync)>,
}

/// One file written into the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    /// Name inside the package.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The OVA, or the descriptor of the folder form.
    pub path: PathBuf,
    /// Files of the package: descriptor, then disks (the manifest covers these).
    pub files: Vec<ExportedFile>,
}

/// Counts and hashes bytes on their way to `inner`.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(&[]);
        self.hash.update(done);
        self.bytes += u64::try_from(n).unwrap_or(0);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn populated(src: &dyn BlockDevice) -> Option<u64> {
    let ext = src.extents(0, src.size()).ok()?;
    Some(
        ext.iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| e.length)
            .sum(),
    )
}

/// A file-name-safe stem: `[A-Za-z0-9._-]`, others replaced by `_`, never empty.
fn safe_stem(out: &Path) -> Result<String> {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem.is_empty() {
        return Err(OvfError::Unsupported {
            file: out.display().to_string(),
            what: "output path without a file name".into(),
        });
    }
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.trim_start_matches('.').to_owned();
    Ok(if clean.is_empty() {
        "vm".to_owned()
    } else {
        clean
    })
}

/// Streams one disk as streamOptimized VMDK into `out`; returns (bytes, sha256).
fn write_disk<W: Write>(
    disk: &ExportDisk,
    index: usize,
    count: usize,
    file_name: &str,
    out: W,
    opts: &ExportOptions,
    label: &str,
) -> Result<(u64, String)> {
    let report = |done: u64, total: u64| {
        if let Some(p) = opts.progress {
            p(&ExportProgress {
                disk_index: index,
                disk_count: count,
                disk_name: disk.name.clone(),
                bytes_done: done,
                bytes_total: total,
            });
        }
    };
    let wopts = WriteOptions {
        extent_name: Some(file_name.to_owned()),
        progress: Some(&report),
        ..WriteOptions::default()
    };
    let mut h = Hashing {
        inner: out,
        hash: Sha256::new(),
        bytes: 0,
    };
    write_stream_optimized(disk.source, &mut h, &wopts).map_err(|e| OvfError::Vmdk {
        file: label.to_owned(),
        member: file_name.to_owned(),
        source: Box::new(e),
    })?;
    h.flush()
        .map_err(|e| OvfError::io(label, format!("write {file_name}"), e))?;
    Ok((h.bytes, to_hex(&h.hash.finalize())))
}

/// Exports `config` with its disks to `out`: an OVA when `out` ends in `.ova`, else the folder
/// form (`out` is the descriptor path; disks and manifest go beside it).
pub fn export(
    sources: &[ExportDisk],
    config: &VmConfig,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let label = out.display().to_string();
    if sources.len() != config.disks.len() {
        return Err(OvfError::Unmappable {
            file: label,
            detail: format!(
                "{} disks given for a VM config with {} disks",
                sources.len(),
                config.disks.len()
            ),
        });
    }
    for d in sources {
        if d.capacity.checked_next_multiple_of(512).is_none() {
            return Err(OvfError::Unmappable {
                file: label,
                detail: format!("disk {}: capacity {} is out of range", d.name, d.capacity),
            });
        }
        if d.capacity != d.source.size() {
            return Err(OvfError::Unmappable {
                file: label,
                detail: format!(
                    "disk {}: capacity {} differs from its size {}",
                    d.name,
                    d.capacity,
                    d.source.size()
                ),
            });
        }
    }
    let mut cfg = config.clone();
    if let Some(n) = &opts.name {
        cfg.name = n.clone();
    }
    let stem = safe_stem(out)?;
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let is_ova = match ext.as_str() {
        "ova" => true,
        "ovf" => false,
        _ => {
            return Err(OvfError::Unsupported {
                file: label,
                what: "output must end in .ova (archive) or .ovf (folder form)".into(),
            })
        }
    };
    let file_names: Vec<String> = (1..=sources.len())
        .map(|i| format!("{stem}-disk{i}.vmdk"))
        .collect();
    let facts = |sizes: &[Option<u64>]| -> Vec<DiskFacts> {
        sources
            .iter()
            .zip(&file_names)
            .zip(sizes)
            .map(|((d, name), size)| DiskFacts {
                file_name: name.clone(),
                file_size: *size,
                // The VMDK's virtual size is the source's rounded up to a sector.
                capacity: d
                    .capacity
                    .checked_next_multiple_of(512)
                    .unwrap_or(d.capacity),
                populated_size: populated(d.source),
            })
            .collect()
    };
    // Fails early (before any file is created) if the config is invalid.
    let placeholder = generate(
        &cfg,
        &facts(&vec![Some(u64::MAX); sources.len()]),
        opts.format,
    )?;
    if is_ova {
        export_ova(
            sources,
            &cfg,
            out,
            opts,
            &stem,
            &file_names,
            placeholder.len(),
            &facts,
        )
    } else {
        export_folder(sources, &cfg, out, opts, &stem, &file_names, &facts)
    }
}

fn descriptor_name(stem: &str) -> String {
    format!("{stem}.ovf")
}

fn manifest_for(files: &[ExportedFile]) -> String {
    let entries: Vec<ManifestEntry> = files
        .iter()
        .map(|f| ManifestEntry {
            algorithm: DigestAlgorithm::Sha256,
            name: f.name.clone(),
            digest: f.sha256.clone(),
        })
        .collect();
    render_manifest(&entries)
}

fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a partial output on drop unless disarmed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn export_ova(
    sources: &[ExportDisk],
    cfg: &VmConfig,
    out: &Path,
    opts: &ExportOptions,
    stem: &str,
    file_names: &[String],
    reserved_descriptor: usize,
    facts: &dyn Fn(&[Option<u64>]) -> Vec<DiskFacts>,
) -> Result<ExportReport> {
    let label = out.display().to_string();
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let ioerr = |op: &str| {
        let op = op.to_owned();
        let label = label.clone();
        move |e: io::Error| OvfError::io(&label, op, e)
    };
    let mut guard = Cleanup(vec![tmp.clone()]);
    let mut file = File::create(&tmp).map_err(ioerr("create temporary file"))?;
    let desc_name = descriptor_name(stem);
    let mf_name = format!("{stem}.mf");
    // The manifest's length is known now: fixed names and 64-digit digests.
    let placeholder_files: Vec<ExportedFile> = std::iter::once(&desc_name)
        .chain(file_names)
        .map(|n| ExportedFile {
            name: n.clone(),
            size: 0,
            sha256: "0".repeat(64),
        })
        .collect();
    let mf_len = manifest_for(&placeholder_files).len();
    let desc_len = u64::try_from(reserved_descriptor).unwrap_or(u64::MAX);
    let mf_len64 = u64::try_from(mf_len).unwrap_or(u64::MAX);
    let disks_start = tar::BLOCK
        + desc_len
        + tar::padding(desc_len)
        + tar::BLOCK
        + mf_len64
        + tar::padding(mf_len64);
    let mtime = now();

    let mut pos = disks_start;
    let mut sizes = Vec::new();
    let mut digests = Vec::new();
    for (i, (disk, name)) in sources.iter().zip(file_names).enumerate() {
        let header_at = pos;
        file.seek(SeekFrom::Start(header_at + tar::BLOCK))
            .map_err(ioerr("seek"))?;
        let (size, digest) = {
            let buf = BufWriter::with_capacity(1 << 20, &mut file);
            write_disk(disk, i, sources.len(), name, buf, opts, &label)?
        };
        let pad = tar::padding(size);
        file.write_all(&vec![0u8; usize::try_from(pad).unwrap_or(0)])
            .map_err(ioerr("write padding"))?;
        file.seek(SeekFrom::Start(header_at))
            .map_err(ioerr("seek"))?;
        file.write_all(&tar::header(name, size, mtime)?)
            .map_err(ioerr("write tar header"))?;
        pos = header_at + tar::BLOCK + size + pad;
        sizes.push(Some(size));
        digests.push(digest);
    }
    // End-of-archive marker.
    file.seek(SeekFrom::Start(pos)).map_err(ioerr("seek"))?;
    file.write_all(&[0u8; 1024])
        .map_err(ioerr("write end of archive"))?;

    let mut descriptor = generate(cfg, &facts(&sizes), opts.format)?.into_bytes();
    if descriptor.len() > reserved_descriptor {
        return Err(OvfError::Unsupported {
            file: label,
            what: "descriptor outgrew its reserved space (internal error)".into(),
        });
    }
    descriptor.resize(reserved_descriptor, b' ');
    if let Some(last) = descriptor.last_mut() {
        *last = b'\n';
    }
    let mut files = vec![ExportedFile {
        name: desc_name.clone(),
        size: desc_len,
        sha256: sha256_hex(&descriptor),
    }];
    for ((name, size), digest) in file_names.iter().zip(&sizes).zip(digests) {
        files.push(ExportedFile {
            name: name.clone(),
            size: size.unwrap_or(0),
            sha256: digest,
        });
    }
    let manifest = manifest_for(&files);
    if manifest.len() != mf_len {
        return Err(OvfError::Unsupported {
            file: label,
            what: "manifest length changed (internal error)".into(),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(ioerr("seek"))?;
    let mut head = Vec::new();
    head.extend_from_slice(&tar::header(&desc_name, desc_len, mtime)?);
    head.extend_from_slice(&descriptor);
    head.resize(
        head.len() + usize::try_from(tar::padding(desc_len)).unwrap_or(0),
        0,
    );
    head.extend_from_slice(&tar::header(&mf_name, mf_len64, mtime)?);
    head.extend_from_slice(manifest.as_bytes());
    head.resize(
        head.len() + usize::try_from(tar::padding(mf_len64)).unwrap_or(0),
        0,
    );
    file.write_all(&head)
        .map_err(ioerr("write descriptor and manifest"))?;
    file.sync_all().map_err(ioerr("fsync"))?;
    drop(file);
    fs::rename(&tmp, out).map_err(ioerr("rename into place"))?;
    guard.0.clear();
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(ExportReport {
        path: out.to_path_buf(),
        files,
    })
}

fn export_folder(
    sources: &[ExportDisk],
    cfg: &VmConfig,
    out: &Path,
    opts: &ExportOptions,
    stem: &str,
    file_names: &[String],
    facts: &dyn Fn(&[Option<u64>]) -> Vec<DiskFacts>,
) -> Result<ExportReport> {
    let label = out.display().to_string();
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)
        .map_err(|e| OvfError::io(dir.display().to_string(), "create folder", e))?;
    let mut guard = Cleanup(Vec::new());
    let mut sizes = Vec::new();
    let mut disk_files = Vec::new();
    for (i, (disk, name)) in sources.iter().zip(file_names).enumerate() {
        let path = dir.join(name);
        let f = File::create(&path)
            .map_err(|e| OvfError::io(path.display().to_string(), "create", e))?;
        guard.0.push(path.clone());
        let (size, digest) = write_disk(
            disk,
            i,
            sources.len(),
            name,
            BufWriter::with_capacity(1 << 20, &f),
            opts,
            &label,
        )?;
        f.sync_all()
            .map_err(|e| OvfError::io(path.display().to_string(), "fsync", e))?;
        sizes.push(Some(size));
        disk_files.push(ExportedFile {
            name: name.clone(),
            size,
            sha256: digest,
        });
    }
    // The descriptor keeps the name asked for; the manifest takes its stem.
    let desc_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| descriptor_name(stem));
    check_relative(&desc_name).map_err(|reason| OvfError::UnsafeHref {
        file: label.clone(),
        href: desc_name.clone(),
        reason,
    })?;
    let mf_name = format!(
        "{}.mf",
        desc_name
            .get(..desc_name.len().saturating_sub(4))
            .unwrap_or(stem)
    );
    let descriptor = generate(cfg, &facts(&sizes), opts.format)?;
    let mut files = vec![ExportedFile {
        name: desc_name.clone(),
        size: u64::try_from(descriptor.len()).unwrap_or(u64::MAX),
        sha256: sha256_hex(descriptor.as_bytes()),
    }];
    files.extend(disk_files);
    let desc_path = dir.join(&desc_name);
    let mf_path = dir.join(&mf_name);
    for (path, data) in [
        (&desc_path, descriptor.as_bytes()),
        (&mf_path, manifest_for(&files).as_bytes()),
    ] {
        guard.0.push(path.clone());
        let mut f = File::create(path)
            .map_err(|e| OvfError::io(path.display().to_string(), "create", e))?;
        f.write_all(data)
            .map_err(|e| OvfError::io(path.display().to_string(), "write", e))?;
        f.sync_all()
            .map_err(|e| OvfError::io(path.display().to_string(), "fsync", e))?;
    }
    guard.0.clear();
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(ExportReport {
        path: desc_path,
        files,
    })
}
