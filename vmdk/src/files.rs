//! The files one open of a VMDK touches: how each is opened (regular files only, never a
//! FIFO or a device), where it may lie (inside the descriptor's folder after symlinks are
//! resolved, or a folder the caller allows), and one opened copy per distinct file.

use crate::error::{Result, VmdkError};
use crate::sparse::SparseExtent;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Memory one open may spend on grain directories and table bookkeeping, summed over the
/// distinct sparse files of the whole chain. One 64 TiB extent with 8 KiB grains needs a
/// 64 MiB directory, so this admits sixteen such files; real chains (VMware snapshots of
/// disks of a few TiB) use a few MiB. It bounds what a chain of hostile headers can make us
/// allocate.
pub const MAX_OPEN_TABLE_BYTES: u64 = 1 << 30;

/// How [`crate::VmdkImage::open_with`] finds and opens the files a VMDK names.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Folders besides the opened file's own folder in which extents and parents may lie
    /// (compared after symlinks are resolved). Empty by default: a path through a symlink
    /// that leads out of the folder is refused.
    pub allowed_dirs: Vec<PathBuf>,
    /// Grain-directory memory allowed for the whole chain, in bytes.
    pub max_table_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            allowed_dirs: Vec::new(),
            max_table_bytes: MAX_OPEN_TABLE_BYTES,
        }
    }
}

/// Identity of an opened file (device, inode): two names of one file share it.
pub(crate) type FileId = (u64, u64);

/// A file opened by [`FileSet::open`].
pub(crate) struct Opened {
    pub file: Arc<File>,
    pub id: FileId,
}

/// The files of one open, shared by every descriptor line and chain member naming them.
pub(crate) struct FileSet {
    /// Canonical folders files may lie in; empty means "anywhere" (set by the first open).
    roots: Vec<PathBuf>,
    files: HashMap<FileId, Arc<File>>,
    sparse: HashMap<FileId, Arc<SparseExtent>>,
    table_bytes: u64,
    max_table_bytes: u64,
    extra_roots: Vec<PathBuf>,
}

/// Opens `path` for reading without blocking (a FIFO would block `open` for a writer), and
/// refuses anything but a regular file before reading a byte.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind_name(&meta)),
        ));
    }
    Ok(file)
}

fn kind_name(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a file"
    }
}

/// The path the kernel opened for `file` (symlinks resolved, as of the open), falling back
/// to resolving `path` where `/proc` is absent.
fn real_path(file: &File, path: &Path) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(p) if p.is_absolute() => Ok(p),
        _ => path.canonicalize(),
    }
}

impl FileSet {
    pub fn new(opts: &OpenOptions) -> FileSet {
        FileSet {
            roots: Vec::new(),
            files: HashMap::new(),
            sparse: HashMap::new(),
            table_bytes: 0,
            max_table_bytes: opts.max_table_bytes,
            extra_roots: opts.allowed_dirs.clone(),
        }
    }

    /// Opens the file the user named: anywhere, but a regular file. Its folder becomes the
    /// folder the files it names must lie in.
    pub fn open_top(&mut self, path: &Path) -> Result<Opened> {
        let name = path.display().to_string();
        let file = open_regular(path).map_err(|e| VmdkError::io(&name, "open", e))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let canon = dir
            .canonicalize()
            .map_err(|e| VmdkError::io(&name, "resolve its folder", e))?;
        self.roots = vec![canon];
        for d in std::mem::take(&mut self.extra_roots) {
            let c = d.canonicalize().map_err(|e| {
                VmdkError::io(&d.display().to_string(), "resolve an allowed folder", e)
            })?;
            self.roots.push(c);
        }
        self.remember(file)
    }

    /// Opens a file named by `naming` (an extent or a parent: `role`), which must be a
    /// regular file inside the allowed folders once every symlink is resolved.
    pub fn open_named(
        &mut self,
        path: &Path,
        naming: &str,
        role: &'static str,
        field: &str,
    ) -> Result<Opened> {
        let file = open_regular(path).map_err(|e| VmdkError::Missing {
            file: naming.to_string(),
            role,
            target: path.to_path_buf(),
            source: e,
        })?;
        let real = real_path(&file, path).map_err(|e| VmdkError::Missing {
            file: naming.to_string(),
            role,
            target: path.to_path_buf(),
            source: e,
        })?;
        if !self.roots.is_empty() && !self.roots.iter().any(|r| real.starts_with(r)) {
            return Err(VmdkError::invalid(
                naming,
                field,
                format!(
                    "{} resolves to {}, outside the descriptor's folder {} (allow its folder explicitly to read it)",
                    path.display(),
                    real.display(),
                    self.roots[0].display()
                ),
            ));
        }
        self.remember(file)
    }

    fn remember(&mut self, file: File) -> Result<Opened> {
        let meta = file
            .metadata()
            .map_err(|e| VmdkError::io("(opened file)", "stat", e))?;
        let id = (meta.dev(), meta.ino());
        let file = self
            .files
            .entry(id)
            .or_insert_with(|| Arc::new(file))
            .clone();
        Ok(Opened { file, id })
    }

    /// The sparse extent of file `id`, opened once whatever the number of lines naming it.
    pub fn sparse(&mut self, opened: &Opened, name: &str) -> Result<Arc<SparseExtent>> {
        if let Some(s) = self.sparse.get(&opened.id) {
            return Ok(s.clone());
        }
        let s = Arc::new(SparseExtent::open(opened.file.clone(), name)?);
        self.charge(name, s.table_bytes())?;
        self.sparse.insert(opened.id, s.clone());
        Ok(s)
    }

    /// Counts `bytes` of table memory against the open's budget.
    pub fn charge(&mut self, name: &str, bytes: u64) -> Result<()> {
        self.table_bytes = self.table_bytes.saturating_add(bytes);
        if self.table_bytes > self.max_table_bytes {
            return Err(VmdkError::invalid(
                name,
                "grain directory",
                format!(
                    "the chain's grain directories need {} bytes of memory, more than the limit of {} bytes",
                    self.table_bytes, self.max_table_bytes
                ),
            ));
        }
        Ok(())
    }
}
