//! [`RadosStore`]: a bundle in a Ceph pool (format-spec/rados.md).

use crate::conn::{self, Cluster, ConnectOptions, Pool, Watch, WriteOp};
use crate::layout::{self, ObjectMeta};
use crate::object::StripedObject;
use crate::url::RadosUrl;
use crate::{cache, lock};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vdisk_engine::format::manifest::peek_generation;
use vdisk_engine::store::{generation_mismatch, Object, Store, StoreLock};

/// Options of a RADOS store beyond the cluster connection.
#[derive(Debug, Clone)]
pub struct RadosOptions {
    /// How to reach the cluster.
    pub connect: ConnectOptions,
    /// How long a lock holder has to answer a liveness ping before it is fenced.
    pub liveness_timeout: Duration,
    /// How long removed objects stay readable for readers on other hosts.
    pub trash_grace: Duration,
    /// Expiry of the blocklist entry that fences a lock holder (0: the cluster's default).
    pub blocklist_expire_s: u32,
    /// Byte budget of the process-wide cache of sealed layers (0: no cache).
    pub cache_bytes: u64,
}

/// Default liveness timeout.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(5);
/// Default grace of removed objects.
pub const DEFAULT_TRASH_GRACE: Duration = Duration::from_secs(600);
/// Default sealed-layer cache budget.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok()?.trim().parse().ok()
}

impl Default for RadosOptions {
    /// Defaults, overridden by `VDISK_RADOS_LIVENESS_MS`, `VDISK_RADOS_TRASH_GRACE_S` and
    /// `VDISK_RADOS_CACHE_MB` when set.
    fn default() -> Self {
        RadosOptions {
            connect: ConnectOptions::default(),
            liveness_timeout: env_u64("VDISK_RADOS_LIVENESS_MS")
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_LIVENESS),
            trash_grace: env_u64("VDISK_RADOS_TRASH_GRACE_S")
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_TRASH_GRACE),
            blocklist_expire_s: 0,
            cache_bytes: env_u64("VDISK_RADOS_CACHE_MB")
                .map(|m| m << 20)
                .unwrap_or(DEFAULT_CACHE_BYTES),
        }
    }
}

/// State shared by a store and its objects and locks.
pub(crate) struct Inner {
    pub pool: Arc<Pool>,
    pub url: RadosUrl,
    pub head: String,
    pub opts: RadosOptions,
    pub fsid: String,
    pub gid: u64,
    /// Epoch this client writes with (format-spec/rados.md §5).
    pub epoch: AtomicU64,
    /// Set when this client broke a lock: objects opened for writing get re-fenced.
    pub took_over: AtomicBool,
    /// Set by [`RadosStore::stop_answering`].
    pub silent: AtomicBool,
    /// Locks held: (lock name, cookie).
    pub held: Mutex<Vec<(&'static str, String)>>,
    pub watch: Mutex<Option<Watch>>,
}

pub(crate) fn lock_mutex<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub fn cluster(&self) -> &Arc<Cluster> {
        self.pool.cluster()
    }

    /// Adds an assertion of every lock we hold to a head operation.
    pub fn guarded(&self, mut op: WriteOp) -> io::Result<WriteOp> {
        for (name, cookie) in lock_mutex(&self.held).iter() {
            op = op.exec(
                "lock",
                "assert_locked",
                &layout::assert_locked_input(name, cookie),
                &format!("assert we hold {name}"),
            )?;
        }
        Ok(op)
    }

    /// Runs a guarded head operation, explaining a failed lock assertion.
    pub fn head_op(&self, op: WriteOp, what: &str) -> io::Result<()> {
        let op = self.guarded(op)?;
        op.operate(&self.pool, &self.head).map_err(|e| {
            if e.to_string().contains("assert we hold") {
                return conn::errno_err(
                    conn::errno_of(&e).unwrap_or(libc::EPERM),
                    format!(
                        "{}: {what}: this client no longer holds the bundle's lock (another \
                         host fenced it and took the bundle over): {e}",
                        self.url
                    ),
                );
            }
            conn::context(e, &format!("{}: {what}", self.url))
        })
    }

    /// The stripe prefix of a logical object.
    pub fn base(&self, logical: &str) -> String {
        layout::stripe_base(&self.url.name, logical)
    }

    /// Deletes the stripes of a logical object (stripes hwm..1, then 0). Idempotent.
    pub fn delete_stripes(&self, logical: &str) -> io::Result<()> {
        let base = self.base(logical);
        let s0 = layout::stripe_oid(&base, 0);
        let meta = match self.pool.getxattr(&s0, layout::XATTR_OBJECT) {
            Ok(Some(v)) => ObjectMeta::decode(&v, &s0).unwrap_or(ObjectMeta {
                hwm: layout::HWM_STEP,
                ..ObjectMeta::empty()
            }),
            Ok(None) => ObjectMeta::empty(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut pending = Vec::new();
        for k in (1..=meta.hwm).rev() {
            pending.push(self.pool.aio_remove(&layout::stripe_oid(&base, k))?);
            if pending.len() >= 64 {
                wait_removes(&mut pending)?;
            }
        }
        wait_removes(&mut pending)?;
        self.pool.remove(&s0)?;
        Ok(())
    }

    /// Deletes up to `max` trash entries older than the grace.
    pub fn purge_trash(&self, max: usize) -> io::Result<()> {
        let (entries, _) =
            self.pool
                .omap_get(&self.head, layout::DIR_TRASH, layout::DIR_TRASH, max as u64)?;
        let now = now_ns();
        let grace = u64::try_from(self.opts.trash_grace.as_nanos()).unwrap_or(u64::MAX);
        for (key, val) in entries {
            let Some(logical) = key.strip_prefix(layout::DIR_TRASH) else {
                continue;
            };
            let t = layout::trash_time(&val).unwrap_or(0);
            if now.saturating_sub(t) < grace {
                continue;
            }
            self.delete_stripes(logical)?;
            self.head_op(
                WriteOp::new(&self.pool).omap_rm(&[key.as_str()]),
                "dropping a deleted object from the directory",
            )?;
        }
        Ok(())
    }
}

fn wait_removes(p: &mut Vec<conn::Completion>) -> io::Result<()> {
    for c in p.drain(..) {
        match c.wait() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A bundle in a Ceph pool: `rados://POOL/NAME`. Cheap to clone? No: one connection per
/// store; share it with `Arc`.
pub struct RadosStore {
    pub(crate) inner: Arc<Inner>,
}

impl RadosStore {
    /// Connects to the cluster and opens the pool. The bundle need not exist (a reader finds
    /// no manifest; [`vdisk_engine::Disk::create`] makes one).
    pub fn connect(url: &RadosUrl, opts: &RadosOptions) -> io::Result<RadosStore> {
        let cluster = Cluster::connect(&opts.connect)?;
        let pool = Arc::new(cluster.pool(&url.pool)?);
        let fsid = cluster.fsid()?;
        let gid = cluster.instance_id();
        cache::set_budget(opts.cache_bytes);
        Ok(RadosStore {
            inner: Arc::new(Inner {
                pool,
                url: url.clone(),
                head: layout::head_oid(&url.name),
                opts: opts.clone(),
                fsid,
                gid,
                epoch: AtomicU64::new(0),
                took_over: AtomicBool::new(false),
                silent: AtomicBool::new(false),
                held: Mutex::new(Vec::new()),
                watch: Mutex::new(None),
            }),
        })
    }

    /// The bundle's address.
    pub fn url(&self) -> &RadosUrl {
        &self.inner.url
    }

    /// This client's global id (`client.N`).
    pub fn client_id(&self) -> u64 {
        self.inner.gid
    }

    /// The epoch this client writes with (0 until it took the writer lock).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// Stops answering liveness pings, as a host that froze would (tests of fencing in one
    /// process). The store's locks stay held until a peer fences and breaks them.
    #[doc(hidden)]
    pub fn stop_answering(&self) {
        self.inner.silent.store(true, Ordering::SeqCst);
        *lock_mutex(&self.inner.watch) = None;
    }

    /// True when a manifest exists.
    pub fn exists(&self) -> io::Result<bool> {
        Ok(self.read_manifest()?.is_some())
    }

    /// Deletes every object of the bundle (manifest, layers, trash). Takes the writer lock,
    /// so a live writer elsewhere makes it fail.
    pub fn destroy(&self) -> io::Result<()> {
        let _w = self.lock_writer()?;
        let _m = self.lock_maintenance()?;
        for prefix in [layout::DIR_LIVE, layout::DIR_TRASH] {
            loop {
                let (entries, _) =
                    self.inner
                        .pool
                        .omap_get(&self.inner.head, prefix, prefix, 512)?;
                if entries.is_empty() {
                    break;
                }
                for (key, _) in &entries {
                    if let Some(l) = key.strip_prefix(prefix) {
                        self.inner.delete_stripes(l)?;
                    }
                    self.inner.head_op(
                        WriteOp::new(&self.inner.pool).omap_rm(&[key.as_str()]),
                        "destroy",
                    )?;
                }
            }
        }
        drop(_m);
        drop(_w);
        self.inner.pool.remove(&self.inner.head)?;
        Ok(())
    }

    fn runtime_dir() -> PathBuf {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if uid == 0 {
            return PathBuf::from("/run/vdisk/rados");
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("vdisk/rados"),
            _ => PathBuf::from(format!("/tmp/vdisk-{uid}/rados")),
        }
    }
}

impl Store for RadosStore {
    fn location(&self) -> String {
        self.inner.url.to_string()
    }

    fn create_object(&self, name: &str) -> io::Result<Arc<dyn Object>> {
        layout::check_logical(name)?;
        let inner = &self.inner;
        let key = format!("{}{name}", layout::DIR_LIVE);
        let entry = layout::dir_entry(layout::STRIPE_BITS, None);
        inner.head_op(
            WriteOp::new(&inner.pool).omap_set(&[(key.as_str(), &entry)]),
            &format!("registering {name}"),
        )?;
        let mut retried = false;
        loop {
            match StripedObject::create(inner.clone(), name) {
                Ok(o) => return Ok(Arc::new(o)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !retried => {
                    // A removed object of that name still waiting in the trash: delete it now.
                    let tkey = format!("{}{name}", layout::DIR_TRASH);
                    let (t, _) = inner.pool.omap_get(&inner.head, "", &tkey, 1)?;
                    if !t.iter().any(|(k, _)| *k == tkey) {
                        return Err(e);
                    }
                    inner.delete_stripes(name)?;
                    inner.head_op(
                        WriteOp::new(&inner.pool).omap_rm(&[tkey.as_str()]),
                        "dropping a deleted object from the directory",
                    )?;
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_object(&self, name: &str, writable: bool) -> io::Result<Arc<dyn Object>> {
        layout::check_logical(name)?;
        Ok(Arc::new(StripedObject::open(
            self.inner.clone(),
            name,
            writable,
            false,
        )?))
    }

    fn open_sealed_object(&self, name: &str) -> io::Result<Arc<dyn Object>> {
        layout::check_logical(name)?;
        Ok(Arc::new(StripedObject::open(
            self.inner.clone(),
            name,
            false,
            true,
        )?))
    }

    fn remove_object(&self, name: &str) -> io::Result<()> {
        layout::check_logical(name)?;
        let inner = &self.inner;
        let live = format!("{}{name}", layout::DIR_LIVE);
        if inner.opts.trash_grace.is_zero() {
            inner.delete_stripes(name)?;
            return inner.head_op(
                WriteOp::new(&inner.pool).omap_rm(&[live.as_str()]),
                &format!("removing {name}"),
            );
        }
        let trash = format!("{}{name}", layout::DIR_TRASH);
        let entry = layout::dir_entry(layout::STRIPE_BITS, Some(now_ns()));
        inner.head_op(
            WriteOp::new(&inner.pool)
                .omap_rm(&[live.as_str()])
                .omap_set(&[(trash.as_str(), &entry)]),
            &format!("removing {name}"),
        )?;
        // Deleting old trash is housekeeping: a failure leaves it for the next removal.
        if let Err(e) = inner.purge_trash(16) {
            log::warn!("{}: deleting removed objects: {e}", inner.url);
        }
        Ok(())
    }

    fn list_objects(&self, prefix: &str) -> io::Result<Vec<String>> {
        let inner = &self.inner;
        let filter = format!("{}{}/", layout::DIR_LIVE, prefix.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (entries, more) = inner.pool.omap_get(&inner.head, &after, &filter, 1000)?;
            let Some(last) = entries.last().map(|(k, _)| k.clone()) else {
                break;
            };
            for (k, _) in entries {
                if let Some(n) = k.strip_prefix(layout::DIR_LIVE) {
                    out.push(n.to_string());
                }
            }
            if !more {
                break;
            }
            after = last;
        }
        out.sort();
        Ok(out)
    }

    fn read_manifest(&self) -> io::Result<Option<Vec<u8>>> {
        let inner = &self.inner;
        let size = match inner.pool.stat(&inner.head)? {
            None | Some(0) => return Ok(None),
            Some(s) => s,
        };
        let limit = (vdisk_engine::format::manifest::HEADER_LEN
            + vdisk_engine::format::manifest::MAX_PAYLOAD) as u64;
        if size > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {size} bytes, more than a manifest may hold ({limit})",
                    inner.head
                ),
            ));
        }
        match inner.pool.getxattr(&inner.head, layout::XATTR_LAYOUT)? {
            Some(v) if v == layout::LAYOUT_VERSION => {}
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: xattr {} is {:?}, this build reads RADOS layout version 1",
                        inner.head,
                        layout::XATTR_LAYOUT,
                        other.map(|v| String::from_utf8_lossy(&v).into_owned())
                    ),
                ))
            }
        }
        let mut b = vec![0u8; size as usize];
        let mut got = 0usize;
        while got < b.len() {
            let n = inner.pool.read(&inner.head, &mut b[got..], got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        // A replace between the stat and the read shows as a length mismatch: read again.
        b.truncate(got);
        Ok(Some(b))
    }

    fn manifest_generation(&self) -> io::Result<Option<u64>> {
        let inner = &self.inner;
        let mut h = [0u8; vdisk_engine::format::manifest::HEADER_LEN];
        match inner.pool.read(&inner.head, &mut h, 0) {
            Ok(n) if n == h.len() => Ok(peek_generation(&h)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_manifest(&self, bytes: &[u8]) -> io::Result<()> {
        let inner = &self.inner;
        inner.head_op(
            WriteOp::new(&inner.pool)
                .write_full(bytes)
                .setxattr(layout::XATTR_LAYOUT, layout::LAYOUT_VERSION)?,
            "replacing the manifest",
        )
    }

    fn replace_manifest(&self, bytes: &[u8], expected: u64) -> io::Result<()> {
        let inner = &self.inner;
        let op = WriteOp::new(&inner.pool)
            .cmpext(&expected.to_le_bytes(), 16, "manifest generation")
            .write_full(bytes)
            .setxattr(layout::XATTR_LAYOUT, layout::LAYOUT_VERSION)?;
        match inner.head_op(op, "replacing the manifest") {
            Ok(()) => Ok(()),
            Err(e) => {
                // Tell a lost race (the generation moved) from other failures.
                let found = match self.read_manifest() {
                    Ok(None) => Some(0),
                    Ok(Some(b)) => peek_generation(&b),
                    Err(_) => None,
                };
                match found {
                    Some(g) if g != expected => Err(generation_mismatch(expected, Some(g))),
                    _ => Err(e),
                }
            }
        }
    }

    fn lock_writer(&self) -> io::Result<Box<dyn StoreLock>> {
        Ok(Box::new(lock::acquire(
            &self.inner,
            layout::LOCK_WRITER,
            false,
        )?))
    }

    fn lock_maintenance(&self) -> io::Result<Box<dyn StoreLock>> {
        Ok(Box::new(lock::acquire(
            &self.inner,
            layout::LOCK_MAINT,
            true,
        )?))
    }

    fn control_socket_path(&self) -> Option<PathBuf> {
        let key = format!(
            "{}/{}/{}",
            self.inner.fsid, self.inner.url.pool, self.inner.url.name
        );
        let h = blake3::hash(key.as_bytes()).to_hex();
        let dir = Self::runtime_dir();
        if std::fs::create_dir_all(&dir).is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        Some(dir.join(format!("{}.sock", &h[..32])))
    }
}
