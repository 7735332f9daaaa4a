//! The writer and maintenance locks: exclusive cls_locks on the head, a watch that answers
//! liveness pings, and fencing of a holder that does not answer (format-spec/rados.md §5).

use crate::conn::{Locker, WriteOp};
use crate::layout;
use crate::store::{lock_mutex, Inner};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_engine::store::StoreLock;

/// A held lock; released on drop (a lock broken by a peer that fenced us is left alone).
pub(crate) struct HeldLock {
    inner: Arc<Inner>,
    name: &'static str,
    cookie: String,
}

impl StoreLock for HeldLock {}

impl Drop for HeldLock {
    fn drop(&mut self) {
        lock_mutex(&self.inner.held).retain(|(n, c)| !(*n == self.name && *c == self.cookie));
        if let Err(e) = self
            .inner
            .pool
            .unlock(&self.inner.head, self.name, &self.cookie)
        {
            log::warn!("{}: releasing {}: {e}", self.inner.url, self.name);
        }
    }
}

fn identity() -> String {
    let mut host = [0u8; 256];
    // SAFETY: gethostname writes at most len bytes into our buffer.
    let ok = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
    let end = host.iter().position(|&b| b == 0).unwrap_or(0);
    let host = if ok {
        String::from_utf8_lossy(&host[..end]).into_owned()
    } else {
        "?".into()
    };
    format!("vdisk pid={} host={host}", std::process::id())
}

fn random_cookie() -> String {
    vdisk_engine::Id::random().to_string()
}

/// Registers this client's watch on the head (creating an empty head when the bundle is new),
/// so a holder we become is seen alive by contenders.
fn ensure_watch(inner: &Arc<Inner>) -> io::Result<()> {
    let mut w = lock_mutex(&inner.watch);
    if inner.silent.load(Ordering::SeqCst) {
        return Ok(());
    }
    if w.as_ref().is_some_and(|w| w.healthy()) {
        return Ok(());
    }
    *w = None;
    let answer = format!("{} client.{}", identity(), inner.gid).into_bytes();
    match inner.pool.watch(&inner.head, answer.clone()) {
        Ok(x) => *w = Some(x),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            WriteOp::new(&inner.pool)
                .create(false)
                .operate(&inner.pool, &inner.head)?;
            *w = Some(inner.pool.watch(&inner.head, answer)?);
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Whether `holder` answers a ping within the liveness timeout, and what it said.
fn ping(inner: &Inner, holder: &Locker) -> io::Result<Option<String>> {
    if holder.gid() == Some(inner.gid) {
        return Ok(Some("this process".into()));
    }
    let ms = u64::try_from(inner.opts.liveness_timeout.as_millis()).unwrap_or(u64::MAX);
    let reply = inner.pool.notify(&inner.head, b"vdisk ping", ms.max(1))?;
    Ok(reply
        .acks
        .into_iter()
        .find(|(gid, _, _)| Some(*gid) == holder.gid())
        .map(|(_, _, p)| String::from_utf8_lossy(&p).into_owned()))
}

/// Fences a holder that did not answer: blocklist its address, wait for the OSD map that
/// carries it, break its lock.
fn fence(inner: &Inner, name: &str, holder: &Locker) -> io::Result<()> {
    let addr = holder
        .addr
        .strip_prefix("v1:")
        .or_else(|| holder.addr.strip_prefix("v2:"))
        .unwrap_or(&holder.addr);
    log::warn!(
        "{}: {} held by {} ({addr}) did not answer within {:?}: fencing it",
        inner.url,
        name,
        holder.client,
        inner.opts.liveness_timeout
    );
    inner
        .cluster()
        .blocklist(addr, inner.opts.blocklist_expire_s)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: cannot fence {} (needs the osd blocklist capability, e.g. profile \
                     rbd): {e}",
                    inner.url, holder.client
                ),
            )
        })?;
    inner.pool.break_lock(&inner.head, name, holder)?;
    inner.took_over.store(true, Ordering::SeqCst);
    Ok(())
}

/// Takes lock `name`. The writer lock fails at once (`WouldBlock`) when a live holder has
/// it; the maintenance lock waits for it. A holder that does not answer is fenced.
pub(crate) fn acquire(inner: &Arc<Inner>, name: &'static str, wait: bool) -> io::Result<HeldLock> {
    ensure_watch(inner)?;
    let cookie = random_cookie();
    let desc = identity();
    let mut sleep = Duration::from_millis(1);
    let mut last_ping: Option<Instant> = None;
    loop {
        if inner
            .pool
            .lock_exclusive(&inner.head, name, &cookie, &desc)?
        {
            break;
        }
        let lockers = inner.pool.lockers(&inner.head, name)?;
        let Some(holder) = lockers.into_iter().next() else {
            continue; // released between our attempt and the listing
        };
        let due = last_ping.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if !wait || due {
            last_ping = Some(Instant::now());
            match ping(inner, &holder)? {
                Some(who) if !wait => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("locked by another writer ({}: {who})", holder.client),
                    ))
                }
                Some(_) => {}
                None => {
                    fence(inner, name, &holder)?;
                    continue;
                }
            }
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(50));
    }
    lock_mutex(&inner.held).push((name, cookie.clone()));
    let held = HeldLock {
        inner: inner.clone(),
        name,
        cookie,
    };
    if name == layout::LOCK_WRITER {
        bump_epoch(inner)?;
        if let Err(e) = inner.purge_trash(16) {
            log::warn!("{}: deleting removed objects: {e}", inner.url);
        }
    } else {
        let cur = layout::parse_epoch(
            inner
                .pool
                .getxattr(&inner.head, layout::XATTR_EPOCH)?
                .as_deref(),
            &format!("{} xattr {}", inner.head, layout::XATTR_EPOCH),
        )?;
        inner.epoch.fetch_max(cur, Ordering::SeqCst);
    }
    Ok(held)
}

/// Raises the bundle's epoch by one under the writer lock and makes it ours.
fn bump_epoch(inner: &Inner) -> io::Result<()> {
    loop {
        let raw = inner.pool.getxattr(&inner.head, layout::XATTR_EPOCH)?;
        let old = layout::parse_epoch(
            raw.as_deref(),
            &format!("{} xattr {}", inner.head, layout::XATTR_EPOCH),
        )?;
        let new = old + 1;
        let expect = raw.unwrap_or_default();
        let op = WriteOp::new(&inner.pool)
            .cmpxattr(layout::XATTR_EPOCH, crate::ffi::CMPXATTR_EQ, &expect)?
            .setxattr(layout::XATTR_EPOCH, layout::epoch_text(new).as_bytes())?;
        match inner.head_op(op, "raising the fencing epoch") {
            Ok(()) => {
                inner.epoch.fetch_max(new, Ordering::SeqCst);
                return Ok(());
            }
            Err(e) if crate::conn::errno_of(&e) == Some(libc::ECANCELED) => continue,
            Err(e) => return Err(e),
        }
    }
}
