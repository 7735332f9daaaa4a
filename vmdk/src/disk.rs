//! One VMDK file of a chain: a text descriptor with its extents, or a monolithic sparse
//! file with an embedded descriptor.

use crate::descriptor::{
    Access, Descriptor, ExtentType, MAX_CAPACITY_SECTORS, MAX_DESCRIPTOR_BYTES,
};
use crate::error::{Result, VmdkError};
use crate::extent::{DiskExtent, ExtentData, FlatExtent};
use crate::files::{FileSet, Opened};
use crate::source::ReadAt;
use crate::sparse::{SparseExtent, SparseHeader, SECTOR};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use vdisk_blockdev::ExtentKind;

/// One VMDK file (one layer of a chain).
pub struct Disk {
    /// Path of the file, when opened from the filesystem.
    pub path: Option<PathBuf>,
    /// Name used in errors and reports.
    pub name: String,
    /// The descriptor (text file or embedded), if any.
    pub descriptor: Option<Descriptor>,
    /// Extents in disk order.
    pub extents: Vec<DiskExtent>,
    /// Virtual size in bytes.
    pub size: u64,
}

/// Joins `rel` to `dir`, refusing absolute paths and paths that climb out of `dir`.
pub fn resolve_inside(dir: &Path, rel: &str, file: &str, field: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    let escape = || {
        VmdkError::invalid(
            file,
            field,
            format!("path {rel:?} leaves the descriptor's folder"),
        )
    };
    let mut depth = 0usize;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(escape)?,
            Component::RootDir | Component::Prefix(_) => return Err(escape()),
        }
    }
    if depth == 0 {
        return Err(VmdkError::invalid(
            file,
            field,
            format!("path {rel:?} names no file"),
        ));
    }
    Ok(dir.join(p))
}

impl Disk {
    /// Opens a descriptor file or a monolithic sparse file (already opened as `opened`),
    /// with all its extents, through the open's file set.
    pub fn open_path(path: &Path, opened: &Opened, files: &mut FileSet) -> Result<Disk> {
        let name = path.display().to_string();
        let file = &*opened.file;
        let len = ReadAt::len(file).map_err(|e| VmdkError::io(&name, "get file length", e))?;
        let mut magic = [0u8; 4];
        if len >= 4 {
            ReadAt::read_at(file, &mut magic, 0)
                .map_err(|e| VmdkError::io(&name, "read magic", e))?;
        }
        if SparseHeader::has_magic(&magic) {
            let sparse = files.sparse(opened, &name)?;
            let mut d = Disk::from_sparse(sparse, &name)?;
            d.path = Some(path.to_path_buf());
            return Ok(d);
        }
        if &magic == b"COWD" {
            return Err(VmdkError::unsupported(&name, "COWD (vmfsSparse) extent"));
        }
        let mut head = vec![0u8; len.min(512) as usize];
        ReadAt::read_at(file, &mut head, 0).map_err(|e| VmdkError::io(&name, "read", e))?;
        let binary = |b: &u8| *b < 0x09 || (0x0e..0x20).contains(b) || *b == 0x0b || *b == 0x0c;
        if let Some(&b) = head.iter().find(|b| **b == b'\n' || binary(b)) {
            if b != b'\n' {
                return Err(VmdkError::invalid(
                    &name,
                    "magic",
                    format!("{magic:02x?}: neither a sparse extent (KDMV) nor a text descriptor"),
                ));
            }
        }
        if len > MAX_DESCRIPTOR_BYTES {
            return Err(VmdkError::invalid(
                &name,
                "descriptor",
                format!(
                    "file is {len} bytes: neither a sparse VMDK nor a descriptor (at most 1 MiB)"
                ),
            ));
        }
        let mut text = vec![0u8; len as usize];
        ReadAt::read_at(file, &mut text, 0)
            .map_err(|e| VmdkError::io(&name, "read descriptor", e))?;
        let descriptor = Descriptor::parse(&text, &name)?;
        if descriptor.create_type.is_none() {
            return Err(VmdkError::invalid(
                &name,
                "descriptor createType",
                "missing: not a VMDK descriptor",
            ));
        }
        if descriptor.extents.is_empty() {
            return Err(VmdkError::invalid(
                &name,
                "descriptor extents",
                "none listed",
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut extents = Vec::with_capacity(descriptor.extents.len());
        let mut start = 0u64;
        for (i, line) in descriptor.extents.iter().enumerate() {
            let field = format!("extent {}", i + 1);
            let size = line.sectors * SECTOR;
            let data = open_extent_data(dir, &name, &field, line, files)?;
            if let ExtentData::Sparse(s) = &data {
                if s.capacity_bytes() < size {
                    return Err(VmdkError::invalid(
                        s.name(),
                        "sparse header capacity",
                        format!(
                            "{} sectors, but the descriptor {name} gives the extent {} sectors",
                            s.capacity_bytes() / SECTOR,
                            line.sectors
                        ),
                    ));
                }
            }
            extents.push(DiskExtent {
                start,
                size,
                kind: line.kind,
                access: line.access,
                file: line.file.clone(),
                data,
            });
            start = start
                .checked_add(size)
                .filter(|&s| s <= MAX_CAPACITY_SECTORS * SECTOR)
                .ok_or_else(|| {
                    VmdkError::invalid(&name, "descriptor extents", "total size exceeds 64 TiB")
                })?;
        }
        Ok(Disk {
            path: Some(path.to_path_buf()),
            name,
            descriptor: Some(descriptor),
            extents,
            size: start,
        })
    }

    /// Opens a self-contained monolithicSparse or streamOptimized file from any [`ReadAt`].
    /// Extent lines of the embedded descriptor are informative only: the file itself is
    /// the one extent (its name in the descriptor may differ or be empty).
    pub fn open_single(source: Arc<dyn ReadAt>, name: &str) -> Result<Disk> {
        Disk::from_sparse(Arc::new(SparseExtent::open(source, name)?), name)
    }

    /// A disk made of one sparse file that carries its own descriptor. A file without one,
    /// or with one holding no descriptor line, is refused as qemu refuses it: it is an
    /// extent of a split disk (or damaged), not a disk, and its size would be a guess.
    fn from_sparse(sparse: Arc<SparseExtent>, name: &str) -> Result<Disk> {
        let descriptor = match &sparse.embedded_descriptor {
            Some(bytes) => Descriptor::parse(bytes, name)?,
            None => {
                return Err(VmdkError::invalid(
                    name,
                    "embedded descriptor",
                    "none (descriptorSize is 0): an extent of a split disk is opened through its descriptor",
                ))
            }
        };
        if descriptor.is_empty() {
            return Err(VmdkError::invalid(
                name,
                "embedded descriptor",
                "empty: no descriptor line in it",
            ));
        }
        let descriptor = Some(descriptor);
        let size = sparse.capacity_bytes();
        let first = descriptor.as_ref().and_then(|d| d.extents.first());
        let access = first.map_or(Access::ReadWrite, |e| e.access);
        let file = first.and_then(|e| e.file.clone()).filter(|f| !f.is_empty());
        Ok(Disk {
            path: None,
            name: name.to_string(),
            descriptor,
            extents: vec![DiskExtent {
                start: 0,
                size,
                kind: ExtentType::Sparse,
                access,
                file,
                data: ExtentData::Sparse(sparse),
            }],
            size,
        })
    }

    /// This file's CID.
    pub fn cid(&self) -> Option<u32> {
        self.descriptor.as_ref().and_then(|d| d.cid)
    }

    fn extent_at(&self, offset: u64) -> Option<&DiskExtent> {
        let i = self.extents.partition_point(|e| e.start + e.size <= offset);
        self.extents.get(i).filter(|e| e.start <= offset)
    }

    /// Kind at virtual `offset` and the length sharing it (≤ `max_len`); past the end of
    /// this file everything is unallocated.
    pub fn probe(&self, offset: u64, max_len: u64) -> Result<(ExtentKind, u64)> {
        match self.extent_at(offset) {
            None => Ok((ExtentKind::Unallocated, max_len)),
            Some(e) => {
                let (k, n) = e.probe(offset - e.start, max_len)?;
                Ok((k, n.min(max_len)))
            }
        }
    }

    /// Reads virtual bytes of this file alone (holes as zeros).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let Some(e) = self.extent_at(pos) else {
                buf[done..].fill(0);
                return Ok(());
            };
            let n = ((e.start + e.size - pos) as usize).min(buf.len() - done);
            e.read(&mut buf[done..done + n], pos - e.start)?;
            done += n;
        }
        Ok(())
    }
}

fn open_extent_data(
    dir: &Path,
    desc_name: &str,
    field: &str,
    line: &crate::descriptor::ExtentLine,
    files: &mut FileSet,
) -> Result<ExtentData> {
    if line.kind == ExtentType::Zero {
        return Ok(ExtentData::Zero);
    }
    let rel = line.file.as_deref().unwrap_or_default();
    if rel.is_empty() {
        return Err(VmdkError::invalid(
            desc_name,
            field,
            "empty extent file name",
        ));
    }
    let path = resolve_inside(dir, rel, desc_name, field)?;
    let ename = path.display().to_string();
    if line.access == Access::NoAccess {
        return Err(VmdkError::unsupported(
            desc_name,
            format!("{field}: NOACCESS extent"),
        ));
    }
    if !matches!(
        line.kind,
        ExtentType::Flat | ExtentType::Vmfs | ExtentType::Sparse
    ) {
        return Err(VmdkError::unsupported(
            desc_name,
            format!("{field}: {} extent", line.kind.as_str()),
        ));
    }
    let opened = files.open_named(&path, desc_name, "extent", field)?;
    let size = line.sectors * SECTOR;
    match line.kind {
        ExtentType::Flat | ExtentType::Vmfs => Ok(ExtentData::Flat(FlatExtent::open(
            opened.file.clone(),
            &ename,
            line.offset_sectors * SECTOR,
            size,
        )?)),
        ExtentType::Sparse => Ok(ExtentData::Sparse(files.sparse(&opened, &ename)?)),
        other => Err(VmdkError::unsupported(
            desc_name,
            format!("{field}: {} extent", other.as_str()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_escapes_are_refused() {
        let d = Path::new("/data/vm");
        assert_eq!(
            resolve_inside(d, "a-flat.vmdk", "x", "e").unwrap(),
            PathBuf::from("/data/vm/a-flat.vmdk")
        );
        assert!(resolve_inside(d, "sub/../a.vmdk", "x", "e").is_ok());
        for bad in ["../a.vmdk", "/etc/passwd", "sub/../../a", "", "."] {
            assert!(resolve_inside(d, bad, "x", "e").is_err(), "{bad}");
        }
    }
}
