//! An in-memory store that can simulate power loss.
//!
//! Each object keeps its durable bytes and the list of operations since the last `sync`.
//! [`MemStore::crash`] builds the post-crash state: for every object, the durable bytes plus a
//! chosen subset of the unsynced operations, each write possibly torn per 512-byte sector.
//! Handles opened before the crash stop working (their operations fail), so a `Disk` left over
//! from before the crash cannot touch the new state.

use super::{Object, Store, StoreLock};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What happens to writes that were not synced when the crash hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced operation is lost.
    DropAll,
    /// Every unsynced operation survives (as if the crash came just after the last write).
    KeepAll,
    /// A pseudo-random subset survives, writes torn per sector; seeded for reproduction.
    Random(u64),
}

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Default, Clone)]
struct ObjState {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Op>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Arc<Mutex<ObjState>>>,
    manifest: Option<Vec<u8>>,
}

/// In-memory bundle storage with crash simulation. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    epoch: Arc<AtomicU64>,
    writer_locked: Arc<AtomicBool>,
    maint: Arc<(Mutex<bool>, Condvar)>,
    /// Counts syncs, so a test can crash at the Nth one.
    syncs: Arc<AtomicU64>,
    /// When set, the store "loses power" at this sync count: that sync and everything after
    /// it fail until `crash` is called.
    fail_at_sync: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }
}

fn apply_write(buf: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if buf.len() < off + data.len() {
        buf.resize(off + data.len(), 0);
    }
    buf[off..off + data.len()].copy_from_slice(data);
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        let s = MemStore::default();
        s.fail_at_sync.store(u64::MAX, Ordering::SeqCst);
        s
    }

    /// Number of object syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Make the `n`th sync (counting from the current count + 1) and everything after it fail
    /// with an I/O error, as if power were lost just before it.
    pub fn fail_after_syncs(&self, n: u64) {
        let at = self.syncs.load(Ordering::SeqCst) + n;
        self.fail_at_sync.store(at, Ordering::SeqCst);
    }

    fn dead(&self) -> bool {
        self.syncs.load(Ordering::SeqCst) >= self.fail_at_sync.load(Ordering::SeqCst)
    }

    /// Simulate power loss: rebuild every object from its durable bytes plus the surviving
    /// unsynced operations, release the locks and invalidate every open handle.
    pub fn crash(&self, mode: CrashMode) {
        let inner = lock(&self.inner);
        let mut rng = Rng(match mode {
            CrashMode::Random(s) => s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            _ => 1,
        });
        for obj in inner.objects.values() {
            let mut o = lock(obj);
            let mut state = o.durable.clone();
            let pending = std::mem::take(&mut o.pending);
            for op in pending {
                match (&op, mode) {
                    (_, CrashMode::DropAll) => continue,
                    (Op::SetLen(l), _) => {
                        if mode == CrashMode::KeepAll || rng.chance(1, 2) {
                            state.resize(*l as usize, 0);
                        }
                    }
                    (Op::Write(off, data), CrashMode::KeepAll) => {
                        apply_write(&mut state, *off, data)
                    }
                    (Op::Write(off, data), _) => {
                        match rng.next() % 4 {
                            0 => {} // lost
                            1 => apply_write(&mut state, *off, data),
                            _ => {
                                // torn: each 512-byte sector of the object independently
                                let mut pos = 0usize;
                                while pos < data.len() {
                                    let at = off + pos as u64;
                                    let n = ((512 - at % 512) as usize).min(data.len() - pos);
                                    if rng.chance(1, 2) {
                                        apply_write(&mut state, at, &data[pos..pos + n]);
                                    }
                                    pos += n;
                                }
                            }
                        }
                    }
                }
            }
            o.durable = state.clone();
            o.current = state;
        }
        drop(inner);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.writer_locked.store(false, Ordering::SeqCst);
        self.fail_at_sync.store(u64::MAX, Ordering::SeqCst);
    }

    /// A copy of an object's current bytes (for tests that corrupt objects).
    pub fn object_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let inner = lock(&self.inner);
        inner.objects.get(name).map(|o| lock(o).current.clone())
    }

    /// Replace an object's bytes durably (for tests that corrupt objects).
    pub fn set_object_bytes(&self, name: &str, bytes: Vec<u8>) {
        let mut inner = lock(&self.inner);
        let st = ObjState {
            durable: bytes.clone(),
            current: bytes,
            pending: Vec::new(),
        };
        inner
            .objects
            .insert(name.to_string(), Arc::new(Mutex::new(st)));
    }
}

struct MemObject {
    name: String,
    state: Arc<Mutex<ObjState>>,
    store: MemStore,
    epoch: u64,
    writable: bool,
}

impl MemObject {
    fn check(&self) -> io::Result<()> {
        if self.store.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(io::Error::other("handle from before a simulated crash"));
        }
        Ok(())
    }
    fn check_write(&self) -> io::Result<()> {
        self.check()?;
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "object opened read-only",
            ));
        }
        if self.store.dead() {
            return Err(io::Error::other("simulated power loss"));
        }
        Ok(())
    }
}

impl Object for MemObject {
    fn name(&self) -> &str {
        &self.name
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check()?;
        let st = lock(&self.state);
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if end > st.current.len() as u64 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&st.current[offset as usize..end as usize]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_write()?;
        let mut st = lock(&self.state);
        apply_write(&mut st.current, offset, buf);
        st.pending.push(Op::Write(offset, buf.to_vec()));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.check_write()?;
        self.store.syncs.fetch_add(1, Ordering::SeqCst);
        if self.store.dead() {
            return Err(io::Error::other("simulated power loss"));
        }
        let mut st = lock(&self.state);
        st.durable = st.current.clone();
        st.pending.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.check()?;
        Ok(lock(&self.state).current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_write()?;
        let mut st = lock(&self.state);
        st.current.resize(len as usize, 0);
        st.pending.push(Op::SetLen(len));
        Ok(())
    }
}

struct MemLock {
    flag: Arc<AtomicBool>,
}
impl StoreLock for MemLock {}
impl Drop for MemLock {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::SeqCst);
    }
}

struct MaintHold {
    gate: Arc<(Mutex<bool>, Condvar)>,
}
impl StoreLock for MaintHold {}
impl Drop for MaintHold {
    fn drop(&mut self) {
        let (m, cv) = &*self.gate;
        *lock(m) = false;
        cv.notify_one();
    }
}

impl Store for MemStore {
    fn location(&self) -> String {
        "mem:".to_string()
    }
    fn create_object(&self, name: &str) -> io::Result<Arc<dyn Object>> {
        if self.dead() {
            return Err(io::Error::other("simulated power loss"));
        }
        let mut inner = lock(&self.inner);
        if inner.objects.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let state = Arc::new(Mutex::new(ObjState::default()));
        inner.objects.insert(name.to_string(), state.clone());
        Ok(Arc::new(MemObject {
            name: name.to_string(),
            state,
            store: self.clone(),
            epoch: self.epoch.load(Ordering::SeqCst),
            writable: true,
        }))
    }
    fn open_object(&self, name: &str, writable: bool) -> io::Result<Arc<dyn Object>> {
        let inner = lock(&self.inner);
        let state = inner
            .objects
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Arc::new(MemObject {
            name: name.to_string(),
            state,
            store: self.clone(),
            epoch: self.epoch.load(Ordering::SeqCst),
            writable,
        }))
    }
    fn remove_object(&self, name: &str) -> io::Result<()> {
        if self.dead() {
            return Err(io::Error::other("simulated power loss"));
        }
        lock(&self.inner).objects.remove(name);
        Ok(())
    }
    fn list_objects(&self, prefix: &str) -> io::Result<Vec<String>> {
        let p = format!("{}/", prefix.trim_end_matches('/'));
        Ok(lock(&self.inner)
            .objects
            .keys()
            .filter(|k| k.starts_with(&p))
            .cloned()
            .collect())
    }
    fn read_manifest(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(lock(&self.inner).manifest.clone())
    }
    fn write_manifest(&self, bytes: &[u8]) -> io::Result<()> {
        if self.dead() {
            return Err(io::Error::other("simulated power loss"));
        }
        // The rename is a sync point too: count it, so crash tests also stop before it.
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.dead() {
            return Err(io::Error::other("simulated power loss"));
        }
        lock(&self.inner).manifest = Some(bytes.to_vec());
        Ok(())
    }
    fn lock_writer(&self) -> io::Result<Box<dyn StoreLock>> {
        if self
            .writer_locked
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "locked by another writer",
            ));
        }
        Ok(Box::new(MemLock {
            flag: self.writer_locked.clone(),
        }))
    }
    fn lock_maintenance(&self) -> io::Result<Box<dyn StoreLock>> {
        let (m, cv) = &*self.maint;
        let mut held = lock(m);
        while *held {
            held = cv.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held = true;
        Ok(Box::new(MaintHold {
            gate: self.maint.clone(),
        }))
    }
}
