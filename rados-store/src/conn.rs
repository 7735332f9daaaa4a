//! Safe wrappers over the librados calls vdisk makes: a connected cluster handle, a pool's
//! I/O context, compound write operations, locks, watch/notify and blocklisting.
//!
//! Every call returns `io::Result`; librados' negative errno values become `io::Error`s
//! (`ENOENT` → `NotFound`, `EBUSY`/`EEXIST` keep their raw codes so callers can tell them
//! apart, `ESHUTDOWN` — librados' `EBLOCKLISTED` — says the client was fenced).

use crate::ffi::{self, Api};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::ptr;
use std::sync::Arc;

/// librados' `EBLOCKLISTED`.
pub const EBLOCKLISTED: i32 = libc::ESHUTDOWN;

/// A failed librados call: its errno and what was being done. Reached through
/// `io::Error::get_ref`, so callers can branch on the errno ([`errno_of`]).
#[derive(Debug)]
pub struct OpError {
    /// The positive errno.
    pub errno: i32,
    /// What failed, and why in words.
    pub message: String,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OpError {}

fn kind_of(errno: i32) -> io::ErrorKind {
    match errno {
        EBLOCKLISTED => io::ErrorKind::PermissionDenied,
        _ => io::Error::from_raw_os_error(errno).kind(),
    }
}

/// An `io::Error` with `errno` and a message (keeps the errno for [`errno_of`]).
pub fn errno_err(errno: i32, message: String) -> io::Error {
    io::Error::new(kind_of(errno), OpError { errno, message })
}

/// An `io::Error` from a negative librados return code, with what was being done.
pub fn rc_err(rc: i64, what: &str) -> io::Error {
    let errno = i32::try_from(-rc).unwrap_or(libc::EIO);
    let base = io::Error::from_raw_os_error(errno);
    let message = match errno {
        EBLOCKLISTED => format!(
            "{what}: this client was fenced (blocklisted by another host that took the bundle \
             over): it may not change the bundle any more"
        ),
        libc::ETIMEDOUT => format!("{what}: the cluster did not answer in time ({base})"),
        _ => format!("{what}: {base}"),
    };
    errno_err(errno, message)
}

/// The same error with more context in front (errno and kind kept).
pub fn context(e: io::Error, what: &str) -> io::Error {
    match errno_of(&e) {
        Some(n) => errno_err(n, format!("{what}: {e}")),
        None => io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

fn check(rc: c_int, what: &str) -> io::Result<c_int> {
    if rc < 0 {
        Err(rc_err(i64::from(rc), what))
    } else {
        Ok(rc)
    }
}

/// The errno of an error made by this module, if any.
pub fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| e.get_ref()?.downcast_ref::<OpError>().map(|o| o.errno))
}

pub(crate) fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

/// How to reach a cluster: the Ceph tools' `--conf`/`CEPH_CONF` and `--id`, and timeouts.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Configuration file (`None`: `$CEPH_CONF`, then Ceph's default locations).
    pub conf: Option<std::path::PathBuf>,
    /// Client id without the `client.` prefix (`None`: `admin`, or `$CEPH_ARGS`' `--id`).
    pub id: Option<String>,
    /// Seconds to wait for the monitors at connect (`client_mount_timeout`); default 10.
    pub mount_timeout_s: Option<u32>,
    /// Seconds before an OSD or monitor operation fails instead of waiting for ever
    /// (`rados_osd_op_timeout`, `rados_mon_op_timeout`); default 30.
    pub op_timeout_s: Option<u32>,
}

/// Default of `client_mount_timeout` for vdisk (Ceph's own is 300 s).
pub const DEFAULT_MOUNT_TIMEOUT_S: u32 = 10;
/// Default of the OSD and monitor operation timeouts for vdisk (Ceph's own is "never").
pub const DEFAULT_OP_TIMEOUT_S: u32 = 30;

/// A connected cluster handle; shut down when the last reference goes.
pub struct Cluster {
    pub(crate) api: &'static Api,
    handle: ffi::rados_t,
}

// SAFETY: a connected rados_t is thread-safe (librados serialises internally).
unsafe impl Send for Cluster {}
// SAFETY: as above.
unsafe impl Sync for Cluster {}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle was created by rados_create2 and is used by nobody else now.
        unsafe { (self.api.rados_shutdown)(self.handle) };
    }
}

impl Cluster {
    /// Reads the configuration, applies the timeouts and connects.
    pub fn connect(opts: &ConnectOptions) -> io::Result<Arc<Cluster>> {
        let api = ffi::api().map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        let name = format!("client.{}", opts.id.as_deref().unwrap_or("admin"));
        let cname = cstr(&name)?;
        let cluster_name = cstr("ceph")?;
        let mut h: ffi::rados_t = ptr::null_mut();
        // SAFETY: out-pointer and two NUL-terminated strings we own.
        let rc = unsafe { (api.rados_create2)(&mut h, cluster_name.as_ptr(), cname.as_ptr(), 0) };
        check(rc, "rados_create2")?;
        let c = Cluster { api, handle: h };
        // $CEPH_ARGS first, as the Ceph tools do; explicit options below override it.
        // SAFETY: null selects CEPH_ARGS.
        unsafe { (api.rados_conf_parse_env)(h, ptr::null()) };
        let conf = match &opts.conf {
            Some(p) => Some(p.clone()),
            None => std::env::var_os("CEPH_CONF").map(Into::into),
        };
        match &conf {
            Some(p) => {
                if !p.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("Ceph configuration {}: no such file", p.display()),
                    ));
                }
                let cp = cstr(&p.to_string_lossy())?;
                // SAFETY: handle not connected yet; NUL-terminated path.
                let rc = unsafe { (api.rados_conf_read_file)(h, cp.as_ptr()) };
                check(rc, &format!("reading Ceph configuration {}", p.display()))?;
            }
            None => {
                // SAFETY: null searches Ceph's default locations.
                let rc = unsafe { (api.rados_conf_read_file)(h, ptr::null()) };
                if rc < 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no Ceph configuration found: pass --ceph-conf FILE or set CEPH_CONF \
                         (default /etc/ceph/ceph.conf)",
                    ));
                }
            }
        }
        // A command-line client needs no admin socket; with a shared `admin_socket = …$name…`
        // setting, concurrent clients would fight over one path and print errors.
        let (k, v) = (cstr("admin_socket")?, cstr("")?);
        // SAFETY: not connected yet; NUL-terminated strings.
        unsafe { (api.rados_conf_set)(h, k.as_ptr(), v.as_ptr()) };
        let mount = opts.mount_timeout_s.unwrap_or(DEFAULT_MOUNT_TIMEOUT_S);
        let op = opts.op_timeout_s.unwrap_or(DEFAULT_OP_TIMEOUT_S);
        c.set_if_default("client_mount_timeout", "300", &mount.to_string())?;
        c.set_if_default("rados_osd_op_timeout", "0", &op.to_string())?;
        c.set_if_default("rados_mon_op_timeout", "0", &op.to_string())?;
        // SAFETY: configured handle.
        let rc = unsafe { (api.rados_connect)(h) };
        check(rc, "connecting to the Ceph cluster").map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{e} (monitors from {}; is the cluster up and the key for {name} \
                         readable?)",
                    conf.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "the default configuration".into())
                ),
            )
        })?;
        Ok(Arc::new(c))
    }

    /// Sets `key` to `value` unless the configuration already changed it from Ceph's default.
    fn set_if_default(&self, key: &str, ceph_default: &str, value: &str) -> io::Result<()> {
        let k = cstr(key)?;
        let mut buf = [0 as c_char; 64];
        // SAFETY: buffer of the given length; NUL-terminated key.
        let rc = unsafe {
            (self.api.rados_conf_get)(self.handle, k.as_ptr(), buf.as_mut_ptr(), buf.len())
        };
        if rc == 0 {
            // SAFETY: rados_conf_get wrote a NUL-terminated string into buf.
            let cur = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
            let cur_num = cur.trim().parse::<f64>().ok();
            let def_num = ceph_default.parse::<f64>().ok();
            if cur_num != def_num {
                return Ok(());
            }
        }
        let v = cstr(value)?;
        // SAFETY: not connected yet; NUL-terminated strings.
        let rc = unsafe { (self.api.rados_conf_set)(self.handle, k.as_ptr(), v.as_ptr()) };
        check(rc, key)?;
        Ok(())
    }

    /// The cluster's fsid.
    pub fn fsid(&self) -> io::Result<String> {
        let mut buf = [0 as c_char; 64];
        // SAFETY: buffer of the given length.
        let rc = unsafe { (self.api.rados_cluster_fsid)(self.handle, buf.as_mut_ptr(), buf.len()) };
        check(rc, "rados_cluster_fsid")?;
        // SAFETY: NUL-terminated on success.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// This client's global id (the N of `client.N`).
    pub fn instance_id(&self) -> u64 {
        // SAFETY: connected handle.
        unsafe { (self.api.rados_get_instance_id)(self.handle) }
    }

    /// This client's address as the OSDs see it (what a blocklist entry names).
    pub fn addrs(&self) -> io::Result<String> {
        let mut p: *mut c_char = ptr::null_mut();
        // SAFETY: out-pointer; the string is freed with rados_buffer_free.
        let rc = unsafe { (self.api.rados_getaddrs)(self.handle, &mut p) };
        check(rc, "rados_getaddrs")?;
        if p.is_null() {
            return Ok(String::new());
        }
        // SAFETY: NUL-terminated string allocated by librados.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        // SAFETY: allocated by librados for us.
        unsafe { (self.api.rados_buffer_free)(p) };
        Ok(s)
    }

    /// Blocklists a client address for `expire_s` seconds (`osd blocklist add`), then waits
    /// for the OSD map that carries it, so every later operation of ours is ordered after
    /// the fence.
    pub fn blocklist(&self, addr: &str, expire_s: u32) -> io::Result<()> {
        let a = cstr(addr)?;
        // SAFETY: NUL-terminated address; librados does not keep the pointer.
        let rc =
            unsafe { (self.api.rados_blocklist_add)(self.handle, a.as_ptr().cast_mut(), expire_s) };
        check(rc, &format!("osd blocklist add {addr}"))?;
        // SAFETY: connected handle.
        let rc = unsafe { (self.api.rados_wait_for_latest_osdmap)(self.handle) };
        check(rc, "waiting for the OSD map with the blocklist entry")?;
        Ok(())
    }

    /// An I/O context on `pool` (`NotFound` with the pool's name when it does not exist).
    pub fn pool(self: &Arc<Self>, pool: &str) -> io::Result<Pool> {
        let p = cstr(pool)?;
        // SAFETY: connected handle, NUL-terminated name.
        let id = unsafe { (self.api.rados_pool_lookup)(self.handle, p.as_ptr()) };
        if id < 0 {
            if id == -i64::from(libc::ENOENT) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("pool {pool:?} does not exist in the cluster (create it with `ceph osd pool create {pool}`)"),
                ));
            }
            return Err(rc_err(id, &format!("looking up pool {pool:?}")));
        }
        let mut io: ffi::rados_ioctx_t = ptr::null_mut();
        // SAFETY: out-pointer; connected handle.
        let rc = unsafe { (self.api.rados_ioctx_create)(self.handle, p.as_ptr(), &mut io) };
        check(rc, &format!("opening pool {pool:?}"))?;
        Ok(Pool {
            cluster: self.clone(),
            api: self.api,
            io,
            name: pool.to_string(),
        })
    }

    /// Waits until every watch callback in flight has returned.
    pub fn watch_flush(&self) {
        // SAFETY: connected handle.
        unsafe { (self.api.rados_watch_flush)(self.handle) };
    }
}

/// An I/O context on one pool.
pub struct Pool {
    cluster: Arc<Cluster>,
    pub(crate) api: &'static Api,
    pub(crate) io: ffi::rados_ioctx_t,
    name: String,
}

// SAFETY: I/O calls on an ioctx are thread-safe; we never change its settings after creation.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the ioctx was created by rados_ioctx_create; completions hold Arcs of the
        // pool, so no operation is in flight any more.
        unsafe { (self.api.rados_ioctx_destroy)(self.io) };
    }
}

/// A holder of a lock, as `rados_list_lockers` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locker {
    /// `client.N`.
    pub client: String,
    /// The holder's cookie.
    pub cookie: String,
    /// The holder's address (what a blocklist entry names).
    pub addr: String,
}

impl Locker {
    /// The N of `client.N`.
    pub fn gid(&self) -> Option<u64> {
        self.client.strip_prefix("client.")?.parse().ok()
    }
}

/// What a notify found: who answered and with what, and who did not answer in time.
#[derive(Debug, Default)]
pub struct NotifyReply {
    /// (watcher gid, watch cookie, payload).
    pub acks: Vec<(u64, u64, Vec<u8>)>,
    /// (watcher gid, watch cookie).
    pub timeouts: Vec<(u64, u64)>,
}

impl Pool {
    /// The cluster this pool belongs to.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads up to `buf.len()` bytes at `off`; returns the count (short at the object's end).
    pub fn read(&self, oid: &str, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let o = cstr(oid)?;
        // SAFETY: buffer of the given length, valid for the call.
        let rc = unsafe {
            (self.api.rados_read)(self.io, o.as_ptr(), buf.as_mut_ptr().cast(), buf.len(), off)
        };
        Ok(check(rc, &format!("read {oid}"))? as usize)
    }

    /// The size of an object, or `None` when it does not exist.
    pub fn stat(&self, oid: &str) -> io::Result<Option<u64>> {
        let o = cstr(oid)?;
        let mut size = 0u64;
        let mut mtime: libc::time_t = 0;
        // SAFETY: out-pointers we own.
        let rc = unsafe { (self.api.rados_stat)(self.io, o.as_ptr(), &mut size, &mut mtime) };
        if rc == -libc::ENOENT {
            return Ok(None);
        }
        check(rc, &format!("stat {oid}"))?;
        Ok(Some(size))
    }

    /// An xattr's value; `None` when the object exists without it. `NotFound` without object.
    pub fn getxattr(&self, oid: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        let o = cstr(oid)?;
        let n = cstr(name)?;
        let mut buf = vec![0u8; 256];
        // SAFETY: buffer of the given length.
        let rc = unsafe {
            (self.api.rados_getxattr)(
                self.io,
                o.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if rc == -libc::ENODATA {
            return Ok(None);
        }
        let n = check(rc, &format!("getxattr {oid} {name}"))? as usize;
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// Removes an object; `Ok(false)` when it did not exist.
    pub fn remove(&self, oid: &str) -> io::Result<bool> {
        let o = cstr(oid)?;
        // SAFETY: NUL-terminated name.
        let rc = unsafe { (self.api.rados_remove)(self.io, o.as_ptr()) };
        if rc == -libc::ENOENT {
            return Ok(false);
        }
        check(rc, &format!("remove {oid}"))?;
        Ok(true)
    }

    /// Starts an asynchronous read of up to `len` bytes at `off`.
    pub fn aio_read(self: &Arc<Self>, oid: &str, len: usize, off: u64) -> io::Result<AioRead> {
        let o = cstr(oid)?;
        let comp = Completion::new(self.api)?;
        let mut buf = vec![0u8; len];
        // SAFETY: the buffer and the completion live in the returned AioRead, which waits for
        // the completion before either is freed.
        let rc = unsafe {
            (self.api.rados_aio_read)(
                self.io,
                o.as_ptr(),
                comp.raw,
                buf.as_mut_ptr().cast(),
                len,
                off,
            )
        };
        check(rc, &format!("read {oid}"))?;
        Ok(AioRead {
            comp,
            buf,
            oid: oid.to_string(),
            _pool: self.clone(),
        })
    }

    /// Starts an asynchronous remove.
    pub fn aio_remove(self: &Arc<Self>, oid: &str) -> io::Result<Completion> {
        let o = cstr(oid)?;
        let mut comp = Completion::new(self.api)?;
        // SAFETY: the completion outlives the operation (waited for or released after it).
        let rc = unsafe { (self.api.rados_aio_remove)(self.io, o.as_ptr(), comp.raw) };
        check(rc, &format!("remove {oid}"))?;
        comp.what = format!("remove {oid}");
        comp.pool = Some(self.clone());
        Ok(comp)
    }

    /// Reads omap pairs of `oid` after `start_after` whose keys start with `prefix`, at most
    /// `max`; returns them and whether more follow. An absent object has none.
    pub fn omap_get(
        &self,
        oid: &str,
        start_after: &str,
        prefix: &str,
        max: u64,
    ) -> io::Result<OmapPage> {
        let o = cstr(oid)?;
        let s = cstr(start_after)?;
        let empty = cstr(prefix)?;
        // SAFETY: creates an op we release below.
        let op = unsafe { (self.api.rados_create_read_op)() };
        let mut iter: ffi::rados_omap_iter_t = ptr::null_mut();
        let mut more: u8 = 0;
        let mut prval: c_int = 0;
        // SAFETY: out-pointers valid until the op is operated and the iterator ended.
        unsafe {
            (self.api.rados_read_op_omap_get_vals2)(
                op,
                s.as_ptr(),
                empty.as_ptr(),
                max,
                &mut iter,
                &mut more,
                &mut prval,
            );
        }
        // SAFETY: op built above; NUL-terminated oid.
        let rc = unsafe { (self.api.rados_read_op_operate)(op, self.io, o.as_ptr(), 0) };
        let mut out = Vec::new();
        if rc >= 0 && prval >= 0 {
            loop {
                let mut k: *mut c_char = ptr::null_mut();
                let mut v: *mut c_char = ptr::null_mut();
                let (mut kl, mut vl) = (0usize, 0usize);
                // SAFETY: the iterator is valid until rados_omap_get_end.
                let r = unsafe {
                    (self.api.rados_omap_get_next2)(iter, &mut k, &mut v, &mut kl, &mut vl)
                };
                if r < 0 || k.is_null() {
                    break;
                }
                // SAFETY: librados hands out kl / vl readable bytes valid until the next call.
                let key = unsafe { std::slice::from_raw_parts(k.cast::<u8>(), kl) };
                let val = if v.is_null() {
                    Vec::new()
                } else {
                    // SAFETY: as above.
                    unsafe { std::slice::from_raw_parts(v.cast::<u8>(), vl) }.to_vec()
                };
                out.push((String::from_utf8_lossy(key).into_owned(), val));
            }
        }
        if !iter.is_null() {
            // SAFETY: iterator from this op, ended once.
            unsafe { (self.api.rados_omap_get_end)(iter) };
        }
        // SAFETY: releases the op created above.
        unsafe { (self.api.rados_release_read_op)(op) };
        if rc == -libc::ENOENT {
            return Ok((Vec::new(), false));
        }
        check(rc, &format!("omap list {oid}"))?;
        check(prval, &format!("omap list {oid}"))?;
        Ok((out, more != 0))
    }

    /// Takes an exclusive cls_lock `name` with `cookie` on `oid` (creating the object when
    /// absent). `Ok(false)` when someone else holds it.
    pub fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        desc: &str,
    ) -> io::Result<bool> {
        let (o, n, c, d) = (cstr(oid)?, cstr(name)?, cstr(cookie)?, cstr(desc)?);
        // SAFETY: NUL-terminated strings; null duration = no expiry.
        let rc = unsafe {
            (self.api.rados_lock_exclusive)(
                self.io,
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                d.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        if rc == -libc::EBUSY || rc == -libc::EEXIST {
            return Ok(false);
        }
        check(rc, &format!("lock {name} on {oid}"))?;
        Ok(true)
    }

    /// Releases a lock we hold.
    pub fn unlock(&self, oid: &str, name: &str, cookie: &str) -> io::Result<()> {
        let (o, n, c) = (cstr(oid)?, cstr(name)?, cstr(cookie)?);
        // SAFETY: NUL-terminated strings.
        let rc = unsafe { (self.api.rados_unlock)(self.io, o.as_ptr(), n.as_ptr(), c.as_ptr()) };
        if rc == -libc::ENOENT {
            return Ok(()); // broken by a peer that fenced us
        }
        check(rc, &format!("unlock {name} on {oid}"))?;
        Ok(())
    }

    /// The holders of lock `name` on `oid`.
    pub fn lockers(&self, oid: &str, name: &str) -> io::Result<Vec<Locker>> {
        let (o, n) = (cstr(oid)?, cstr(name)?);
        let mut size = 1024usize;
        loop {
            let mut tag = vec![0 as c_char; size];
            let mut clients = vec![0 as c_char; size];
            let mut cookies = vec![0 as c_char; size];
            let mut addrs = vec![0 as c_char; size];
            let (mut tl, mut cl, mut kl, mut al) = (size, size, size, size);
            let mut excl: c_int = 0;
            // SAFETY: four buffers with their lengths, written by librados.
            let rc = unsafe {
                (self.api.rados_list_lockers)(
                    self.io,
                    o.as_ptr(),
                    n.as_ptr(),
                    &mut excl,
                    tag.as_mut_ptr(),
                    &mut tl,
                    clients.as_mut_ptr(),
                    &mut cl,
                    cookies.as_mut_ptr(),
                    &mut kl,
                    addrs.as_mut_ptr(),
                    &mut al,
                )
            };
            if rc == -(libc::ERANGE as isize) && size < (1 << 20) {
                size = [tl, cl, kl, al, size * 2]
                    .into_iter()
                    .max()
                    .unwrap_or(size * 2);
                continue;
            }
            if rc == -(libc::ENOENT as isize) {
                return Ok(Vec::new());
            }
            if rc < 0 {
                return Err(rc_err(
                    rc as i64,
                    &format!("list lockers of {name} on {oid}"),
                ));
            }
            let split = |b: &[c_char], l: usize| -> Vec<String> {
                let bytes: Vec<u8> = b[..l.min(b.len())].iter().map(|&c| c as u8).collect();
                bytes
                    .split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            let (c, k, a) = (split(&clients, cl), split(&cookies, kl), split(&addrs, al));
            return Ok(c
                .into_iter()
                .zip(k)
                .zip(a)
                .take(rc as usize)
                .map(|((client, cookie), addr)| Locker {
                    client,
                    cookie,
                    addr,
                })
                .collect());
        }
    }

    /// Breaks another client's lock.
    pub fn break_lock(&self, oid: &str, name: &str, l: &Locker) -> io::Result<()> {
        let (o, n, c, k) = (cstr(oid)?, cstr(name)?, cstr(&l.client)?, cstr(&l.cookie)?);
        // SAFETY: NUL-terminated strings.
        let rc = unsafe {
            (self.api.rados_break_lock)(self.io, o.as_ptr(), n.as_ptr(), c.as_ptr(), k.as_ptr())
        };
        if rc == -libc::ENOENT {
            return Ok(());
        }
        check(rc, &format!("break lock {name} on {oid}"))?;
        Ok(())
    }

    /// Sends a notify to the watchers of `oid` and waits up to `timeout_ms` for their acks.
    pub fn notify(&self, oid: &str, payload: &[u8], timeout_ms: u64) -> io::Result<NotifyReply> {
        let o = cstr(oid)?;
        let mut reply: *mut c_char = ptr::null_mut();
        let mut reply_len = 0usize;
        let len = c_int::try_from(payload.len()).unwrap_or(c_int::MAX);
        // SAFETY: payload readable for len bytes; out-pointers we own.
        let rc = unsafe {
            (self.api.rados_notify2)(
                self.io,
                o.as_ptr(),
                payload.as_ptr().cast(),
                len,
                timeout_ms,
                &mut reply,
                &mut reply_len,
            )
        };
        let mut out = NotifyReply::default();
        if !reply.is_null() && reply_len > 0 {
            let mut acks: *mut ffi::notify_ack_t = ptr::null_mut();
            let mut nacks = 0usize;
            let mut tos: *mut ffi::notify_timeout_t = ptr::null_mut();
            let mut ntos = 0usize;
            // SAFETY: reply buffer of reply_len bytes from rados_notify2; out-pointers ours.
            let d = unsafe {
                (self.api.rados_decode_notify_response)(
                    reply, reply_len, &mut acks, &mut nacks, &mut tos, &mut ntos,
                )
            };
            if d >= 0 {
                for i in 0..nacks {
                    // SAFETY: acks holds nacks elements.
                    let a = unsafe { &*acks.add(i) };
                    let p = if a.payload.is_null() {
                        Vec::new()
                    } else {
                        // SAFETY: payload readable for payload_len bytes.
                        unsafe {
                            std::slice::from_raw_parts(
                                a.payload.cast::<u8>(),
                                a.payload_len as usize,
                            )
                        }
                        .to_vec()
                    };
                    out.acks.push((a.notifier_id, a.cookie, p));
                }
                for i in 0..ntos {
                    // SAFETY: tos holds ntos elements.
                    let t = unsafe { &*tos.add(i) };
                    out.timeouts.push((t.notifier_id, t.cookie));
                }
                // SAFETY: arrays from rados_decode_notify_response, freed once.
                unsafe { (self.api.rados_free_notify_response)(acks, nacks, tos) };
            }
            // SAFETY: buffer allocated by librados for us.
            unsafe { (self.api.rados_buffer_free)(reply) };
        }
        if rc < 0 && rc != -libc::ETIMEDOUT {
            return Err(rc_err(i64::from(rc), &format!("notify {oid}")));
        }
        Ok(out)
    }

    /// Starts watching `oid`: `on_notify` answers each notify with its payload.
    pub fn watch(self: &Arc<Self>, oid: &str, answer: Vec<u8>) -> io::Result<Watch> {
        let ctx = Box::new(WatchCtx {
            api: self.api,
            io: self.io,
            oid: cstr(oid)?,
            answer,
            broken: std::sync::atomic::AtomicBool::new(false),
        });
        let raw = Box::into_raw(ctx);
        let mut handle = 0u64;
        // SAFETY: `raw` stays valid until the watch is removed and flushed (Watch::drop).
        let rc = unsafe {
            (self.api.rados_watch3)(
                self.io,
                (*raw).oid.as_ptr(),
                &mut handle,
                Some(watch_cb),
                Some(watch_err_cb),
                WATCH_TIMEOUT_S,
                raw.cast(),
            )
        };
        if rc < 0 {
            // SAFETY: the watch was not registered; we own the box again.
            drop(unsafe { Box::from_raw(raw) });
            return Err(rc_err(i64::from(rc), &format!("watch {oid}")));
        }
        Ok(Watch {
            pool: self.clone(),
            handle,
            ctx: raw,
        })
    }
}

/// A page of omap pairs and whether more follow.
pub type OmapPage = (Vec<(String, Vec<u8>)>, bool);

/// Seconds after which the OSD drops the watch of a client that stopped pinging it.
pub const WATCH_TIMEOUT_S: u32 = 30;

struct WatchCtx {
    api: &'static Api,
    io: ffi::rados_ioctx_t,
    oid: CString,
    answer: Vec<u8>,
    broken: std::sync::atomic::AtomicBool,
}

unsafe extern "C" fn watch_cb(
    arg: *mut c_void,
    notify_id: u64,
    handle: u64,
    _notifier: u64,
    _data: *mut c_void,
    _len: usize,
) {
    // SAFETY: `arg` is the WatchCtx registered with this watch; it outlives the watch.
    let ctx = unsafe { &*arg.cast::<WatchCtx>() };
    let len = c_int::try_from(ctx.answer.len()).unwrap_or(0);
    // SAFETY: ioctx and oid of the live watch; the answer is readable for len bytes.
    unsafe {
        (ctx.api.rados_notify_ack)(
            ctx.io,
            ctx.oid.as_ptr(),
            notify_id,
            handle,
            ctx.answer.as_ptr().cast(),
            len,
        )
    };
}

unsafe extern "C" fn watch_err_cb(arg: *mut c_void, _cookie: u64, _err: c_int) {
    // SAFETY: as in watch_cb.
    let ctx = unsafe { &*arg.cast::<WatchCtx>() };
    ctx.broken.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A registered watch; removed (and its callbacks drained) on drop.
pub struct Watch {
    pool: Arc<Pool>,
    handle: u64,
    ctx: *mut WatchCtx,
}

// SAFETY: the context is only read by librados' callback threads and freed after unwatch.
unsafe impl Send for Watch {}
// SAFETY: as above.
unsafe impl Sync for Watch {}

impl Watch {
    /// True while the OSD still has the watch (false after an error or a disconnect).
    pub fn healthy(&self) -> bool {
        // SAFETY: ctx is live until drop.
        if unsafe { &*self.ctx }
            .broken
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return false;
        }
        // SAFETY: handle from rados_watch3 on this ioctx.
        unsafe { (self.pool.api.rados_watch_check)(self.pool.io, self.handle) >= 0 }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: handle from rados_watch3; after unwatch and watch_flush no callback runs,
        // so the context can be freed.
        unsafe {
            (self.pool.api.rados_unwatch2)(self.pool.io, self.handle);
        }
        self.pool.cluster.watch_flush();
        // SAFETY: created by Box::into_raw in Pool::watch, freed once.
        drop(unsafe { Box::from_raw(self.ctx) });
    }
}

/// An asynchronous operation's completion.
pub struct Completion {
    api: &'static Api,
    raw: ffi::rados_completion_t,
    what: String,
    /// Keeps the I/O context alive while the operation is in flight.
    pool: Option<Arc<Pool>>,
    /// Keeps a write operation (and the return slots it writes) alive while in flight.
    op: Option<WriteOp>,
    waited: bool,
}

// SAFETY: completions are thread-safe handles.
unsafe impl Send for Completion {}
// SAFETY: as above.
unsafe impl Sync for Completion {}

impl Completion {
    fn new(api: &'static Api) -> io::Result<Completion> {
        let mut raw: ffi::rados_completion_t = ptr::null_mut();
        // SAFETY: out-pointer; no callback.
        let rc = unsafe { (api.rados_aio_create_completion2)(ptr::null_mut(), None, &mut raw) };
        check(rc, "rados_aio_create_completion2")?;
        Ok(Completion {
            api,
            raw,
            what: String::new(),
            pool: None,
            op: None,
            waited: false,
        })
    }

    /// Waits for the operation; returns its non-negative result.
    pub fn wait(mut self) -> io::Result<i32> {
        self.wait_ref()
    }

    fn wait_ref(&mut self) -> io::Result<i32> {
        // SAFETY: live completion.
        unsafe { (self.api.rados_aio_wait_for_complete)(self.raw) };
        self.waited = true;
        // SAFETY: live, complete completion.
        let rc = unsafe { (self.api.rados_aio_get_return_value)(self.raw) };
        if rc < 0 {
            // A failed step names itself through its return slot (cmpext, exec).
            if let Some(op) = &self.op {
                if let Some(step) = op.failed_step() {
                    return Err(rc_err(i64::from(rc), &format!("{} ({step})", self.what)));
                }
            }
            return Err(rc_err(i64::from(rc), &self.what));
        }
        Ok(rc)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.waited {
            // The buffers the operation uses must outlive it.
            // SAFETY: live completion.
            unsafe { (self.api.rados_aio_wait_for_complete)(self.raw) };
        }
        // SAFETY: created by rados_aio_create_completion2, released once.
        unsafe { (self.api.rados_aio_release)(self.raw) };
    }
}

/// An asynchronous read in flight: [`AioRead::wait`] returns the bytes read.
pub struct AioRead {
    comp: Completion,
    buf: Vec<u8>,
    oid: String,
    _pool: Arc<Pool>,
}

impl AioRead {
    /// Waits; `Ok(None)` when the object does not exist, else the bytes read (maybe short).
    pub fn wait(mut self) -> io::Result<Option<Vec<u8>>> {
        self.comp.what = format!("read {}", self.oid);
        match self.comp.wait_ref() {
            Ok(n) => {
                self.buf.truncate(n as usize);
                Ok(Some(std::mem::take(&mut self.buf)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A compound write operation: its steps apply atomically, all or none.
pub struct WriteOp {
    api: &'static Api,
    raw: ffi::rados_write_op_t,
    /// Return slots of steps that report their own result, with the step's name.
    slots: Vec<(Box<c_int>, String)>,
}

// SAFETY: a write op is a heap object only touched by its owner.
unsafe impl Send for WriteOp {}
// SAFETY: as above.
unsafe impl Sync for WriteOp {}

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op, released once.
        unsafe { (self.api.rados_release_write_op)(self.raw) };
    }
}

impl WriteOp {
    /// An empty operation.
    pub fn new(pool: &Pool) -> WriteOp {
        WriteOp {
            api: pool.api,
            // SAFETY: allocates a new op.
            raw: unsafe { (pool.api.rados_create_write_op)() },
            slots: Vec::new(),
        }
    }

    fn failed_step(&self) -> Option<&str> {
        self.slots
            .iter()
            .find(|(rv, _)| **rv < 0)
            .map(|(_, n)| n.as_str())
    }

    /// Create the object; with `exclusive`, fail (`EEXIST`) when it exists.
    pub fn create(self, exclusive: bool) -> Self {
        // SAFETY: live op; null category.
        unsafe { (self.api.rados_write_op_create)(self.raw, c_int::from(exclusive), ptr::null()) };
        self
    }
    /// Write `buf` at `off` (librados copies it).
    pub fn write(self, buf: &[u8], off: u64) -> Self {
        // SAFETY: buf readable for its length; copied into the op.
        unsafe { (self.api.rados_write_op_write)(self.raw, buf.as_ptr().cast(), buf.len(), off) };
        self
    }
    /// Replace the whole object's data with `buf`.
    pub fn write_full(self, buf: &[u8]) -> Self {
        // SAFETY: as above.
        unsafe { (self.api.rados_write_op_write_full)(self.raw, buf.as_ptr().cast(), buf.len()) };
        self
    }
    /// Truncate (or extend) the object to `len`.
    pub fn truncate(self, len: u64) -> Self {
        // SAFETY: live op.
        unsafe { (self.api.rados_write_op_truncate)(self.raw, len) };
        self
    }
    /// Remove the object.
    pub fn remove(self) -> Self {
        // SAFETY: live op.
        unsafe { (self.api.rados_write_op_remove)(self.raw) };
        self
    }
    /// Set an xattr.
    pub fn setxattr(self, name: &str, value: &[u8]) -> io::Result<Self> {
        let n = cstr(name)?;
        // SAFETY: NUL-terminated name; value copied.
        unsafe {
            (self.api.rados_write_op_setxattr)(
                self.raw,
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
            )
        };
        Ok(self)
    }
    /// Fail the whole operation (`ECANCELED`) unless `xattr OP value` holds (string order).
    pub fn cmpxattr(self, name: &str, op: u8, value: &[u8]) -> io::Result<Self> {
        let n = cstr(name)?;
        // SAFETY: as above.
        unsafe {
            (self.api.rados_write_op_cmpxattr)(
                self.raw,
                n.as_ptr(),
                op,
                value.as_ptr().cast(),
                value.len(),
            )
        };
        Ok(self)
    }
    /// Fail the whole operation unless the object's bytes at `off` equal `expect`.
    pub fn cmpext(mut self, expect: &[u8], off: u64, step: &str) -> Self {
        let mut slot = Box::new(0 as c_int);
        // SAFETY: the slot is boxed and lives in self until the op completes.
        unsafe {
            (self.api.rados_write_op_cmpext)(
                self.raw,
                expect.as_ptr().cast(),
                expect.len(),
                off,
                &mut *slot,
            )
        };
        self.slots.push((slot, step.to_string()));
        self
    }
    /// Run an object-class method (`cls.method(input)`) as a step.
    pub fn exec(mut self, cls: &str, method: &str, input: &[u8], step: &str) -> io::Result<Self> {
        let (c, m) = (cstr(cls)?, cstr(method)?);
        let mut slot = Box::new(0 as c_int);
        // SAFETY: strings NUL-terminated, input copied, slot lives in self.
        unsafe {
            (self.api.rados_write_op_exec)(
                self.raw,
                c.as_ptr(),
                m.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                &mut *slot,
            )
        };
        self.slots.push((slot, step.to_string()));
        Ok(self)
    }
    /// Set omap pairs.
    pub fn omap_set(self, pairs: &[(&str, &[u8])]) -> Self {
        let keys: Vec<*const c_char> = pairs.iter().map(|(k, _)| k.as_ptr().cast()).collect();
        let vals: Vec<*const c_char> = pairs.iter().map(|(_, v)| v.as_ptr().cast()).collect();
        let kl: Vec<usize> = pairs.iter().map(|(k, _)| k.len()).collect();
        let vl: Vec<usize> = pairs.iter().map(|(_, v)| v.len()).collect();
        // SAFETY: four arrays of pairs.len() elements, each pointer readable for its length;
        // librados copies them.
        unsafe {
            (self.api.rados_write_op_omap_set2)(
                self.raw,
                keys.as_ptr(),
                vals.as_ptr(),
                kl.as_ptr(),
                vl.as_ptr(),
                pairs.len(),
            )
        };
        self
    }
    /// Remove omap keys.
    pub fn omap_rm(self, keys: &[&str]) -> Self {
        let ks: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr().cast()).collect();
        let kl: Vec<usize> = keys.iter().map(|k| k.len()).collect();
        // SAFETY: arrays of keys.len() elements; copied.
        unsafe {
            (self.api.rados_write_op_omap_rm_keys2)(self.raw, ks.as_ptr(), kl.as_ptr(), keys.len())
        };
        self
    }

    /// Applies the operation to `oid` and waits.
    pub fn operate(self, pool: &Pool, oid: &str) -> io::Result<()> {
        let o = cstr(oid)?;
        // SAFETY: live op and ioctx; null mtime = now.
        let rc = unsafe {
            (self.api.rados_write_op_operate2)(self.raw, pool.io, o.as_ptr(), ptr::null_mut(), 0)
        };
        if rc < 0 {
            let what = match self.failed_step() {
                Some(s) => format!("write {oid} ({s})"),
                None => format!("write {oid}"),
            };
            return Err(rc_err(i64::from(rc), &what));
        }
        Ok(())
    }

    /// Starts the operation on `oid`; the returned completion owns it until done.
    pub fn operate_async(self, pool: &Arc<Pool>, oid: &str) -> io::Result<Completion> {
        let o = cstr(oid)?;
        let mut comp = Completion::new(self.api)?;
        // SAFETY: live op and ioctx; the op is moved into the completion, which waits before
        // releasing it.
        let rc = unsafe {
            (self.api.rados_aio_write_op_operate)(
                self.raw,
                pool.io,
                comp.raw,
                o.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        check(rc, &format!("write {oid}"))?;
        comp.what = format!("write {oid}");
        comp.pool = Some(pool.clone());
        comp.op = Some(self);
        Ok(comp)
    }
}
