//! A logical object (layer file, journal) striped over RADOS objects
//! (format-spec/rados.md §3).
//!
//! Writes are sent asynchronously (at most [`MAX_INFLIGHT`] at a time) and waited for by
//! `sync`, which then records the length in stripe 0: exactly the media assumptions of the
//! engine (a write may be lost until `sync`, never turned into other data). Every write
//! carries the fencing comparison of §5, so a writer another host fenced cannot change a byte.

use crate::cache;
use crate::conn::{self, AioRead, Completion, WriteOp};
use crate::ffi::CMPXATTR_GTE;
use crate::layout::{self, ObjectMeta, Striping};
use crate::store::{lock_mutex, Inner};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use vdisk_engine::store::Object;

/// Writes in flight per object before a write waits for the oldest.
pub const MAX_INFLIGHT: usize = 64;

struct Inflight {
    /// Logical range the write lies within (a bound: a piece may skip other objects' units).
    start: u64,
    end: u64,
    comp: Completion,
}

struct State {
    /// Length as this handle sees it (writes included).
    len: u64,
    /// Length recorded in stripe 0.
    durable: ObjectMeta,
    /// Stripes this session set `vdisk.fence` on, with the epoch it set.
    fenced: HashMap<u64, u64>,
    inflight: Vec<Inflight>,
    /// A write that failed after returning: every later sync reports it.
    failed: Option<(i32, String)>,
    /// Objects past this number did not exist when the handle was made.
    absent_above: u64,
}

/// One logical object of a RADOS bundle.
pub(crate) struct StripedObject {
    inner: Arc<Inner>,
    name: String,
    base: String,
    striping: Striping,
    writable: bool,
    sealed: bool,
    /// Cache key of a sealed object.
    cache_key: Option<Arc<str>>,
    st: Mutex<State>,
}

fn fence_err(inner: &Inner, what: &str) -> io::Error {
    conn::errno_err(
        libc::ECANCELED,
        format!(
            "{}: {what}: refused: another writer with a newer epoch took this bundle over \
             (this client was fenced)",
            inner.url
        ),
    )
}

impl StripedObject {
    fn stripe(&self, k: u64) -> String {
        layout::stripe_oid(&self.base, k)
    }

    fn my_epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    fn epoch_text(&self) -> String {
        layout::epoch_text(self.my_epoch())
    }

    /// Creates the object (stripe 0 exclusively, empty); `AlreadyExists` if it exists.
    pub fn create(inner: Arc<Inner>, name: &str) -> io::Result<StripedObject> {
        let base = inner.base(name);
        let meta = ObjectMeta::empty();
        let epoch = layout::epoch_text(inner.epoch.load(Ordering::SeqCst));
        let s0 = layout::stripe_oid(&base, 0);
        let r = WriteOp::new(&inner.pool)
            .create(true)
            .setxattr(layout::XATTR_OBJECT, &meta.encode())?
            .setxattr(layout::XATTR_FENCE, epoch.as_bytes())?
            .operate(&inner.pool, &s0);
        if let Err(e) = r {
            if conn::errno_of(&e) == Some(libc::EEXIST) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: object {name} exists", inner.url),
                ));
            }
            return Err(e);
        }
        let mut fenced = HashMap::new();
        fenced.insert(0, inner.epoch.load(Ordering::SeqCst));
        Ok(StripedObject {
            name: name.to_string(),
            striping: meta.striping,
            base,
            writable: true,
            sealed: false,
            cache_key: None,
            st: Mutex::new(State {
                len: 0,
                durable: meta,
                fenced,
                inflight: Vec::new(),
                failed: None,
                absent_above: 0,
            }),
            inner,
        })
    }

    fn read_meta(inner: &Inner, base: &str, name: &str) -> io::Result<ObjectMeta> {
        let s0 = layout::stripe_oid(base, 0);
        match inner.pool.getxattr(&s0, layout::XATTR_OBJECT) {
            Ok(Some(v)) => ObjectMeta::decode(&v, &s0),
            Ok(None) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{s0}: no xattr {}", layout::XATTR_OBJECT),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: object {name} does not exist", inner.url),
            )),
            Err(e) => Err(e),
        }
    }

    /// Opens an existing object. A writable open takes the object over: it re-fences its
    /// stripes after a takeover and cleans the space a crash left past the length.
    pub fn open(
        inner: Arc<Inner>,
        name: &str,
        writable: bool,
        sealed: bool,
    ) -> io::Result<StripedObject> {
        let base = inner.base(name);
        let meta = Self::read_meta(&inner, &base, name)?;
        let cache_key = (sealed && inner.opts.cache_bytes > 0).then(|| {
            Arc::<str>::from(format!(
                "{}/{}/{}/{name}",
                inner.fsid, inner.url.pool, inner.url.name
            ))
        });
        let obj = StripedObject {
            name: name.to_string(),
            striping: meta.striping,
            base,
            writable,
            sealed,
            cache_key,
            st: Mutex::new(State {
                len: meta.size,
                durable: meta,
                fenced: HashMap::new(),
                inflight: Vec::new(),
                failed: None,
                absent_above: u64::MAX,
            }),
            inner,
        };
        if writable {
            if obj.inner.took_over.load(Ordering::SeqCst) {
                obj.refence_all(meta.hwm)?;
            }
            obj.clean_past_end()?;
            let mut st = lock_mutex(&obj.st);
            st.absent_above = st.durable.hwm;
        }
        Ok(obj)
    }

    /// Sets our epoch on every stripe that may exist, so the fenced writer's later writes to
    /// any of them fail.
    fn refence_all(&self, hwm: u64) -> io::Result<()> {
        let mine = self.epoch_text();
        let mut pending = Vec::new();
        let mut st = lock_mutex(&self.st);
        for k in 0..=hwm {
            let op = WriteOp::new(&self.inner.pool)
                .cmpxattr(layout::XATTR_FENCE, CMPXATTR_GTE, mine.as_bytes())?
                .setxattr(layout::XATTR_FENCE, mine.as_bytes())?;
            pending.push((k, op.operate_async(&self.inner.pool, &self.stripe(k))?));
            if pending.len() >= MAX_INFLIGHT {
                self.wait_fences(&mut pending, &mut st)?;
            }
        }
        self.wait_fences(&mut pending, &mut st)
    }

    fn wait_fences(&self, p: &mut Vec<(u64, Completion)>, st: &mut State) -> io::Result<()> {
        for (k, c) in p.drain(..) {
            match c.wait() {
                Ok(_) => {
                    st.fenced.insert(k, self.my_epoch());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if conn::errno_of(&e) == Some(libc::ECANCELED) => {
                    return Err(fence_err(
                        &self.inner,
                        &format!("taking over {}", self.name),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes what lies past the durable length (objects of later sets, the tails of the
    /// objects of the set holding `size`), so growing the object again shows zeros there.
    fn clean_past_end(&self) -> io::Result<()> {
        let mut st = lock_mutex(&self.st);
        let (size, hwm) = (st.durable.size, st.durable.hwm);
        let new_hwm = self.cut(&mut st, size, hwm)?;
        if new_hwm != hwm {
            let meta = ObjectMeta {
                hwm: new_hwm,
                ..st.durable
            };
            self.write_meta(&mut st, meta)?;
        }
        Ok(())
    }

    /// Makes the RADOS objects hold nothing past logical length `len`: truncates the objects
    /// of the set that holds `len`, removes those after it up to `hwm`. Returns the new hwm.
    fn cut(&self, st: &mut State, len: u64, hwm: u64) -> io::Result<u64> {
        let s = self.striping;
        let first = s.set_first_object(len);
        let mine = self.epoch_text();
        let mut pending = Vec::new();
        let mut new_hwm = 0;
        for o in first..=hwm.max(first) {
            let needed = s.needed(o, len);
            let op = WriteOp::new(&self.inner.pool).cmpxattr(
                layout::XATTR_FENCE,
                CMPXATTR_GTE,
                mine.as_bytes(),
            )?;
            let op = if needed == 0 && o != 0 {
                op.remove()
            } else {
                new_hwm = new_hwm.max(o);
                op.truncate(needed)
            };
            pending.push((
                o,
                needed,
                op.operate_async(&self.inner.pool, &self.stripe(o))?,
            ));
        }
        for (o, needed, c) in pending {
            match c.wait() {
                Ok(_) => {
                    if needed == 0 && o != 0 {
                        st.fenced.remove(&o);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if conn::errno_of(&e) == Some(libc::ECANCELED) => {
                    return Err(fence_err(&self.inner, &format!("cutting {}", self.name)))
                }
                Err(e) => return Err(self.record(st, e)),
            }
        }
        Ok(new_hwm.max(first.saturating_sub(1)).min(hwm.max(first)))
    }

    /// Records `meta` in stripe 0 (fenced like any write).
    fn write_meta(&self, st: &mut State, meta: ObjectMeta) -> io::Result<()> {
        let mine = self.epoch_text();
        let r = WriteOp::new(&self.inner.pool)
            .cmpxattr(layout::XATTR_FENCE, CMPXATTR_GTE, mine.as_bytes())?
            .setxattr(layout::XATTR_FENCE, mine.as_bytes())?
            .setxattr(layout::XATTR_OBJECT, &meta.encode())?
            .operate(&self.inner.pool, &self.stripe(0));
        match r {
            Ok(()) => {
                st.durable = meta;
                st.fenced.insert(0, self.my_epoch());
                Ok(())
            }
            Err(e) if conn::errno_of(&e) == Some(libc::ECANCELED) => Err(fence_err(
                &self.inner,
                &format!("recording the length of {}", self.name),
            )),
            Err(e) => Err(conn::context(
                e,
                &format!("{}: {}", self.inner.url, self.name),
            )),
        }
    }

    fn check_failed(&self, st: &State) -> io::Result<()> {
        match &st.failed {
            Some((errno, msg)) => Err(conn::errno_err(*errno, msg.clone())),
            None => Ok(()),
        }
    }

    fn record(&self, st: &mut State, e: io::Error) -> io::Error {
        let errno = conn::errno_of(&e).unwrap_or(libc::EIO);
        let e = if errno == libc::ECANCELED {
            fence_err(&self.inner, &format!("writing {}", self.name))
        } else {
            e
        };
        if st.failed.is_none() {
            st.failed = Some((errno, e.to_string()));
        }
        e
    }

    fn drain(&self, st: &mut State) -> io::Result<()> {
        let mut first = None;
        for f in std::mem::take(&mut st.inflight) {
            if let Err(e) = f.comp.wait() {
                let e = self.record(st, e);
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => self.check_failed(st),
        }
    }

    /// Writes one piece within object `k`; `logical` bounds the bytes it covers.
    fn write_piece(
        &self,
        st: &mut State,
        k: u64,
        data: &[u8],
        off: u64,
        logical: (u64, u64),
    ) -> io::Result<()> {
        let mine_n = self.my_epoch();
        let mine = layout::epoch_text(mine_n);
        let pool = &self.inner.pool;
        if k > st.durable.hwm {
            let meta = ObjectMeta {
                hwm: k + layout::HWM_STEP,
                ..st.durable
            };
            self.write_meta(st, meta)?;
        }
        let oid = self.stripe(k);
        let known = st.fenced.get(&k) == Some(&mine_n);
        // An object past the hwm this handle started from was never created (hwm is raised
        // before an object past it is written): create it exclusively, stamped, without
        // waiting. Should a fenced writer have created it meanwhile, the create fails and
        // the failure is reported by the next sync.
        let absent = !known && k > st.absent_above && !st.fenced.contains_key(&k);
        if known || absent {
            let op = if known {
                WriteOp::new(pool).cmpxattr(layout::XATTR_FENCE, CMPXATTR_GTE, mine.as_bytes())?
            } else {
                WriteOp::new(pool)
                    .create(true)
                    .setxattr(layout::XATTR_FENCE, mine.as_bytes())?
            };
            let comp = op.write(data, off).operate_async(pool, &oid)?;
            st.fenced.insert(k, mine_n);
            st.inflight.push(Inflight {
                start: logical.0,
                end: logical.1,
                comp,
            });
            if st.inflight.len() >= MAX_INFLIGHT {
                let f = st.inflight.remove(0);
                if let Err(e) = f.comp.wait() {
                    return Err(self.record(st, e));
                }
            }
            return Ok(());
        }
        // First write of this session to the stripe: set our epoch on it (synchronously, so
        // later writes can rely on it), creating it when it does not exist.
        for _ in 0..4 {
            let r = WriteOp::new(pool)
                .cmpxattr(layout::XATTR_FENCE, CMPXATTR_GTE, mine.as_bytes())?
                .setxattr(layout::XATTR_FENCE, mine.as_bytes())?
                .write(data, off)
                .operate(pool, &oid);
            match r {
                Ok(()) => {
                    st.fenced.insert(k, mine_n);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.record(st, e)),
            }
            let r = WriteOp::new(pool)
                .create(true)
                .setxattr(layout::XATTR_FENCE, mine.as_bytes())?
                .write(data, off)
                .operate(pool, &oid);
            match r {
                Ok(()) => {
                    st.fenced.insert(k, mine_n);
                    return Ok(());
                }
                Err(e) if conn::errno_of(&e) == Some(libc::EEXIST) => {} // raced: compare again
                Err(e) => return Err(self.record(st, e)),
            }
        }
        Err(io::Error::other(format!(
            "{}: {oid}: created and removed concurrently",
            self.inner.url
        )))
    }

    /// Reads `[off, off+buf.len())` of the object (within its length) from the RADOS
    /// objects, zeros where an object or its tail is missing.
    fn read_stripes(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let pieces = self.striping.pieces(off, buf.len());
        if let [p] = pieces.as_slice() {
            if let [(pos, n)] = p.segs.as_slice() {
                let dst = &mut buf[*pos..*pos + *n];
                let got = match self.inner.pool.read(&self.stripe(p.objno), dst, p.offset) {
                    Ok(g) => g,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(e),
                };
                dst[got..].fill(0);
                return Ok(());
            }
        }
        let reads: Vec<(&layout::Piece, AioRead)> = pieces
            .iter()
            .map(|p| {
                let r =
                    self.inner
                        .pool
                        .aio_read(&self.stripe(p.objno), p.len as usize, p.offset)?;
                Ok((p, r))
            })
            .collect::<io::Result<_>>()?;
        for (p, r) in reads {
            let data = r.wait()?.unwrap_or_default();
            let mut at = 0usize;
            for &(pos, n) in &p.segs {
                let dst = &mut buf[pos..pos + n];
                let have = data.len().saturating_sub(at).min(n);
                dst[..have].copy_from_slice(&data[at..at + have]);
                dst[have..].fill(0);
                at += n;
            }
        }
        Ok(())
    }

    /// A sealed object's read through the process-wide cache.
    fn read_cached(&self, key: &Arc<str>, buf: &mut [u8], off: u64, len: u64) -> io::Result<()> {
        let first = off / cache::BLOCK;
        let last = (off + buf.len() as u64 - 1) / cache::BLOCK;
        let mut blocks: Vec<Option<Arc<[u8]>>> =
            (first..=last).map(|b| cache::get(key, b)).collect();
        // Fetch each run of missing blocks with one read.
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].is_some() {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < blocks.len() && blocks[j + 1].is_none() {
                j += 1;
            }
            let start = (first + i as u64) * cache::BLOCK;
            let end = ((first + j as u64 + 1) * cache::BLOCK).min(len);
            let mut data = vec![0u8; (end - start) as usize];
            self.read_stripes(&mut data, start)?;
            for (n, chunk) in data.chunks(cache::BLOCK as usize).enumerate() {
                let b: Arc<[u8]> = Arc::from(chunk);
                cache::put(key, first + (i + n) as u64, b.clone());
                blocks[i + n] = Some(b);
            }
            i = j + 1;
        }
        let mut pos = 0usize;
        for (n, b) in blocks.iter().enumerate() {
            let Some(b) = b else { continue };
            let bstart = (first + n as u64) * cache::BLOCK;
            let from = (off + pos as u64 - bstart) as usize;
            let take = (b.len() - from).min(buf.len() - pos);
            buf[pos..pos + take].copy_from_slice(&b[from..from + take]);
            pos += take;
        }
        if pos != buf.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }
}

impl Object for StripedObject {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let len = {
            let mut st = lock_mutex(&self.st);
            if self.writable {
                // Reads see this handle's writes: wait for any in flight over the range.
                let overlaps = st.inflight.iter().any(|f| f.start < end && offset < f.end);
                if overlaps {
                    self.drain(&mut st)?;
                }
            }
            st.len
        };
        if end > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: read {offset}+{} past the end ({len} bytes)",
                    self.name,
                    buf.len()
                ),
            ));
        }
        match &self.cache_key {
            Some(k) if buf.len() <= cache::MAX_CACHED_READ => self.read_cached(k, buf, offset, len),
            _ => self.read_stripes(buf, offset),
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: opened read-only", self.name),
            ));
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= layout::MAX_SIZE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past 2^50"))?;
        let mut st = lock_mutex(&self.st);
        self.check_failed(&st)?;
        for p in self.striping.pieces(offset, buf.len()) {
            let (lpos, lend) = p.segs.iter().fold((usize::MAX, 0), |(a, b), &(pos, n)| {
                (a.min(pos), b.max(pos + n))
            });
            let logical = (offset + lpos as u64, offset + lend as u64);
            if let [(pos, n)] = p.segs.as_slice() {
                self.write_piece(&mut st, p.objno, &buf[*pos..*pos + *n], p.offset, logical)?;
            } else {
                let mut data = Vec::with_capacity(p.len as usize);
                for &(pos, n) in &p.segs {
                    data.extend_from_slice(&buf[pos..pos + n]);
                }
                self.write_piece(&mut st, p.objno, &data, p.offset, logical)?;
            }
        }
        st.len = st.len.max(end);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        let mut st = lock_mutex(&self.st);
        self.drain(&mut st)?;
        if st.len != st.durable.size {
            let meta = ObjectMeta {
                size: st.len,
                ..st.durable
            };
            self.write_meta(&mut st, meta)?;
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        if self.writable || self.sealed {
            return Ok(lock_mutex(&self.st).len);
        }
        // A read-only handle of an object another process may be writing: ask again.
        let meta = Self::read_meta(&self.inner, &self.base, &self.name)?;
        let mut st = lock_mutex(&self.st);
        st.len = meta.size;
        st.durable = meta;
        Ok(meta.size)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: opened read-only", self.name),
            ));
        }
        if len > layout::MAX_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "length past 2^50",
            ));
        }
        let mut st = lock_mutex(&self.st);
        self.drain(&mut st)?;
        if len >= st.len && len >= st.durable.size {
            // Growing: the space past the old length holds no bytes (cleaned at open,
            // removed by every shrink), so it reads as zeros.
            st.len = len;
            return Ok(());
        }
        let hwm = st.durable.hwm;
        let new_hwm = self.cut(&mut st, len, hwm)?;
        let meta = ObjectMeta {
            size: len,
            hwm: new_hwm,
            ..st.durable
        };
        self.write_meta(&mut st, meta)?;
        st.len = len;
        Ok(())
    }
}

impl Drop for StripedObject {
    fn drop(&mut self) {
        // Writes still in flight complete (their buffers are owned by librados); their errors
        // are the business of a sync nobody will call.
        let mut st = lock_mutex(&self.st);
        for f in std::mem::take(&mut st.inflight) {
            let _ = f.comp.wait();
        }
    }
}
