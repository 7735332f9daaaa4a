//! [`VmdkImage`]: a VMDK file with its parent chain, as a [`BlockDevice`].

use crate::disk::{resolve_inside, Disk};
use crate::error::{Result, VmdkError};
use crate::files::{FileSet, OpenOptions};
use crate::source::ReadAt;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk_blockdev::{push_kind, BlockDevice, Extent, ExtentKind};

/// Longest parent chain followed (a loop or a runaway chain is refused past it).
pub const MAX_CHAIN_DEPTH: usize = 1024;

/// A readable VMDK: the opened file plus its parents (through `parentFileNameHint`).
///
/// Reads fall through unallocated grains to the parent; below the base they read zeros.
#[derive(Clone)]
pub struct VmdkImage {
    /// Top first, base last.
    pub(crate) disks: Vec<Arc<Disk>>,
}

/// One VMDK file of a chain, as [`VmdkImage::chain_layers`] gives it.
pub struct ChainLayer {
    /// The file (descriptor or monolithic file).
    pub file: String,
    /// Its CID, if it has a descriptor.
    pub cid: Option<u32>,
    /// The disk as of this layer: this file over its parents.
    pub content: VmdkImage,
}

impl ChainLayer {
    /// The ranges this file itself stores (`Data`, or `Zero` for zeroed grains and ZERO
    /// extents that hide the parent), ordered; unallocated ranges are left out.
    pub fn allocation(&self) -> io::Result<Vec<Extent>> {
        let disk = &self.content.disks[0];
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < disk.size {
            let (kind, n) = disk.probe(pos, disk.size - pos)?;
            if kind != ExtentKind::Unallocated {
                push_kind(&mut out, Extent::new(pos, n, kind));
            }
            pos += n;
        }
        Ok(out)
    }
}

impl VmdkImage {
    /// Opens a descriptor or monolithic file and its parent chain with default
    /// [`OpenOptions`]: extents and parents must lie in the file's folder.
    pub fn open(path: &Path) -> Result<VmdkImage> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Opens a descriptor or monolithic file and its parent chain. Extents and parents
    /// are looked up in the file's folder (relative paths leaving it are refused; an
    /// absolute parent hint is looked up by its file name in that folder) and, once every
    /// symlink is resolved, must lie in that folder or one of `opts.allowed_dirs`. Only
    /// regular files are opened (a FIFO or a device is refused before any read), each
    /// distinct file once however many lines name it. Each parent's CID must match its
    /// child's `parentCID`.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<VmdkImage> {
        let mut files = FileSet::new(opts);
        let mut disks: Vec<Arc<Disk>> = Vec::new();
        let mut seen = HashSet::new();
        let mut cur: PathBuf = path.to_path_buf();
        loop {
            let opened = match disks.last() {
                None => files.open_top(&cur)?,
                Some(child) => {
                    if disks.len() >= MAX_CHAIN_DEPTH {
                        return Err(VmdkError::invalid(
                            &child.name,
                            "parentFileNameHint",
                            format!("chain deeper than {MAX_CHAIN_DEPTH} files"),
                        ));
                    }
                    files.open_named(&cur, &child.name, "parent", "parentFileNameHint")?
                }
            };
            if !seen.insert(opened.id) {
                let child = disks.last().map_or("", |d| d.name.as_str());
                return Err(VmdkError::invalid(
                    child,
                    "parentFileNameHint",
                    format!("{} is already in the chain (loop)", cur.display()),
                ));
            }
            let disk = Disk::open_path(&cur, &opened, &mut files)?;
            if let Some(child) = disks.last() {
                let expected = child
                    .descriptor
                    .as_ref()
                    .and_then(|d| d.expected_parent_cid());
                if let Some(exp) = expected {
                    if disk.cid() != Some(exp) {
                        return Err(VmdkError::invalid(
                            &child.name,
                            "parentCID",
                            format!(
                                "{exp:08x}, but the parent {} has CID {}",
                                disk.name,
                                disk.cid()
                                    .map_or("(none)".to_string(), |c| format!("{c:08x}"))
                            ),
                        ));
                    }
                }
            }
            let hint = disk
                .descriptor
                .as_ref()
                .and_then(|d| d.parent_file_name_hint.clone());
            let dir = cur.parent().unwrap_or(Path::new(".")).to_path_buf();
            let name = disk.name.clone();
            disks.push(Arc::new(disk));
            let Some(hint) = hint else { break };
            let hint_path = Path::new(&hint);
            cur = if hint_path.is_absolute() {
                let base = hint_path.file_name().ok_or_else(|| {
                    VmdkError::invalid(
                        &name,
                        "parentFileNameHint",
                        format!("{hint:?} names no file"),
                    )
                })?;
                dir.join(base)
            } else {
                resolve_inside(&dir, &hint, &name, "parentFileNameHint")?
            };
        }
        Ok(VmdkImage { disks })
    }

    /// Opens a self-contained monolithicSparse or streamOptimized file from any reader
    /// (an OVA member, a buffer). A delta disk (with a parent) is refused.
    pub fn open_single(source: Arc<dyn ReadAt>, name: &str) -> Result<VmdkImage> {
        let disk = Disk::open_single(source, name)?;
        if let Some(h) = disk
            .descriptor
            .as_ref()
            .and_then(|d| d.parent_file_name_hint.as_ref())
        {
            return Err(VmdkError::unsupported(
                name,
                format!("delta disk (parentFileNameHint {h:?}) without its parent"),
            ));
        }
        Ok(VmdkImage {
            disks: vec![Arc::new(disk)],
        })
    }

    /// Number of files in the chain (1 without parents).
    pub fn depth(&self) -> usize {
        self.disks.len()
    }

    /// The chain, base first: one layer per VMDK file, each with the content as of it.
    pub fn chain_layers(&self) -> Vec<ChainLayer> {
        (0..self.disks.len())
            .rev()
            .map(|i| ChainLayer {
                file: self.disks[i].name.clone(),
                cid: self.disks[i].cid(),
                content: VmdkImage {
                    disks: self.disks[i..].to_vec(),
                },
            })
            .collect()
    }

    /// Finds who answers for `offset`: the index of the disk holding data (or `None`),
    /// the kind and the length (≤ `max_len`) over which this holds for the whole chain.
    fn resolve(&self, offset: u64, mut max_len: u64) -> Result<(Option<usize>, ExtentKind, u64)> {
        for (i, d) in self.disks.iter().enumerate() {
            let (kind, n) = d.probe(offset, max_len)?;
            max_len = n;
            match kind {
                ExtentKind::Data => return Ok((Some(i), kind, max_len)),
                ExtentKind::Zero => return Ok((None, kind, max_len)),
                ExtentKind::Unallocated => {}
            }
        }
        Ok((None, ExtentKind::Unallocated, max_len))
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: range {offset}+{len} lies past the virtual size {}",
                    self.disks[0].name,
                    self.size()
                ),
            )),
        }
    }
}

impl BlockDevice for VmdkImage {
    fn size(&self) -> u64 {
        self.disks[0].size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (who, _, n) = self.resolve(pos, (buf.len() - done) as u64)?;
            let n = n as usize;
            let out = &mut buf[done..done + n];
            match who {
                Some(i) => self.disks[i].read(out, pos)?,
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        self.check_range(offset, length)?;
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + length;
        while pos < end {
            let (_, kind, n) = self.resolve(pos, end - pos)?;
            push_kind(&mut out, Extent::new(pos, n, kind));
            pos += n;
        }
        Ok(out)
    }
}
