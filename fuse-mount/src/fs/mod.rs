//! The FUSE filesystem: `fuser::Filesystem` over a [`Volume`].
//!
//! `VdiskFs` only forwards each request to [`FsCore`], whose methods live in `nodes.rs`
//! (names and attributes), `dir.rs` (listings) and `file.rs` (data).

mod dir;
mod file;
mod nodes;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use log::{debug, warn};

use crate::tree::{Inodes, NodeKey, Snapshots};
use vdisk_blockdev::Volume;

pub(crate) use file::OpenFile;

/// How long the kernel may cache names and attributes. Short, so a new or deleted snapshot
/// shows within a second even for cached names.
pub(crate) const TTL: Duration = Duration::from_secs(1);

/// The kernel-facing settings chosen at mount time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) read_write: bool,
    pub(crate) max_write: u32,
    pub(crate) max_readahead: u32,
}

/// Everything the request handlers share.
pub(crate) struct FsCore {
    pub(crate) source: Arc<dyn Volume>,
    pub(crate) tuning: Tuning,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    inodes: RwLock<Inodes>,
    snapshots: Snapshots,
    files: RwLock<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<dir::DirEntry>>>>,
    next_fh: AtomicU64,
    /// Last write to the head, in nanoseconds since the epoch (the head's mtime).
    head_mtime_ns: AtomicU64,
    /// `st_blocks` of head-derived files, recomputed at most once per `TTL`.
    head_blocks: Mutex<HashMap<NodeKey, (u64, Instant)>>,
}

/// Maps an I/O error from a device or source to the errno the caller sees.
pub(crate) fn errno(e: &io::Error) -> Errno {
    if let Some(code) = e.raw_os_error() {
        return Errno::from_i32(code);
    }
    match e.kind() {
        io::ErrorKind::NotFound => Errno::ENOENT,
        io::ErrorKind::PermissionDenied => Errno::EACCES,
        io::ErrorKind::InvalidInput => Errno::EINVAL,
        io::ErrorKind::Unsupported => Errno::EOPNOTSUPP,
        io::ErrorKind::OutOfMemory => Errno::ENOMEM,
        _ => Errno::EIO,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl FsCore {
    pub(crate) fn new(source: Arc<dyn Volume>, tuning: Tuning) -> Self {
        let now = SystemTime::now();
        Self {
            snapshots: Snapshots::new(Arc::clone(&source)),
            source,
            tuning,
            // SAFETY: getuid/getgid cannot fail and touch no memory.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            mounted_at: now,
            inodes: RwLock::new(Inodes::new()),
            files: RwLock::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            head_mtime_ns: AtomicU64::new(nanos(now)),
            head_blocks: Mutex::new(HashMap::new()),
        }
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn ino(&self, key: NodeKey) -> u64 {
        match self.inodes.write() {
            Ok(mut t) => t.ino(key),
            Err(p) => p.into_inner().ino(key),
        }
    }

    fn key(&self, ino: u64) -> Result<NodeKey, Errno> {
        let t = match self.inodes.read() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        t.key(ino).ok_or(Errno::ENOENT)
    }

    /// Whether `head.raw` (and the head's partitions) may be opened for writing.
    pub(crate) fn head_writable(&self) -> bool {
        self.tuning.read_write && self.source.head_writable()
    }

    /// Makes the head durable: fsync, and before unmount so no write is lost.
    pub(crate) fn flush_head(&self) -> io::Result<()> {
        match self.source.head() {
            Some(head) => head.flush(),
            None => Ok(()),
        }
    }

    fn touch_head(&self) {
        self.head_mtime_ns
            .store(nanos(SystemTime::now()), Ordering::Relaxed);
    }

    fn head_mtime(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.head_mtime_ns.load(Ordering::Relaxed))
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The `fuser::Filesystem` the session runs.
pub(crate) struct VdiskFs {
    pub(crate) core: Arc<FsCore>,
}

impl Filesystem for VdiskFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let t = self.core.tuning;
        if let Err(nearest) = config.set_max_write(t.max_write) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(t.max_readahead) {
            let _ = config.set_max_readahead(nearest);
        }
        // Enough outstanding readahead/async requests to keep every worker busy.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let wanted = InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        let supported = config.capabilities() & wanted;
        if let Err(missing) = config.add_capabilities(supported) {
            debug!("kernel lacks FUSE capabilities {missing:?}");
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.core.flush_head() {
            warn!("flushing the head at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, fuser::Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.key(ino.0).and_then(|k| self.core.attr(k)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.core.setattr(ino.0, mode, uid, gid, size) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.open(ino.0, flags) {
            Ok((fh, fopen)) => reply.opened(FileHandle(fh), fopen),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.core.read(fh.0, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() does not promise durability; fsync does.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.core.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.core.readdir(fh.0, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.core.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (blocks, files) = self.core.statfs();
        reply.statfs(blocks, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.core.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.core.lseek(fh.0, offset, whence) {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(e),
        }
    }
}
