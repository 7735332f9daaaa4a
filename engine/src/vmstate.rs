//! VM state objects in a bundle (format-spec/vmstate.md): writing memory images and state
//! objects, reading them verified, resolving and folding diff chains.

use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::vmstate::{
    decode_extents, decode_state, encode_extents, encode_state, hex, MemExtent, MemHeader,
    MemoryKind, MemoryRef, StateRef, VmStateRecord, MAX_EXTENT, PAGE,
};
use crate::format::Id;
use crate::store::{Object, Store};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

fn io<'a>(obj: &'a dyn Object, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(obj.name(), op, e)
}

/// Builds a memory image: extents are put (and put again) while the guest runs, then the
/// table and header are written and the object synced.
pub struct MemImageWriter {
    obj: Arc<dyn Object>,
    kind: MemoryKind,
    base: Option<Id>,
    guest_size: u64,
    extents: BTreeMap<u64, MemExtent>,
    next_offset: u64,
}

impl MemImageWriter {
    /// Create the object `name` (under `state/`) for an image of `guest_size` bytes.
    pub fn create(
        store: &dyn Store,
        name: &str,
        kind: MemoryKind,
        base: Option<Id>,
        guest_size: u64,
    ) -> Result<MemImageWriter> {
        crate::format::vmstate::check_guest_size(guest_size)
            .map_err(|r| Error::format(name, "guest_size", r))?;
        let obj = store
            .create_object(name)
            .map_err(|e| Error::io(name, "create", e))?;
        Ok(MemImageWriter {
            obj,
            kind,
            base,
            guest_size,
            extents: BTreeMap::new(),
            next_offset: match kind {
                MemoryKind::Full => PAGE + guest_size,
                MemoryKind::Diff => PAGE,
            },
        })
    }

    /// Kind of image.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// The extent holding page `gpa`, as `(gpa, len)`.
    pub fn extent_containing(&self, gpa: u64) -> Option<(u64, u64)> {
        let (_, e) = self.extents.range(..=gpa).next_back()?;
        (gpa < e.gpa + e.len).then_some((e.gpa, e.len))
    }

    /// Write the guest pages `[gpa, gpa + data.len())` as one extent. Putting an extent again
    /// with the same `gpa` and length overwrites it; otherwise it must not overlap another.
    pub fn put(&mut self, gpa: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let name = self.obj.name().to_string();
        if !gpa.is_multiple_of(PAGE)
            || !len.is_multiple_of(PAGE)
            || len == 0
            || len > MAX_EXTENT
            || gpa + len > self.guest_size
        {
            return Err(Error::format(
                name,
                "extent",
                format!("{gpa}+{len}: not whole pages of at most 2 MiB inside the guest"),
            ));
        }
        let offset = match self.extents.get(&gpa) {
            Some(e) if e.len == len => e.file_offset,
            _ => {
                let before = self.extents.range(..gpa).next_back();
                let after = self.extents.range(gpa..).next();
                if before.is_some_and(|(_, e)| e.gpa + e.len > gpa)
                    || after.is_some_and(|(_, e)| e.gpa < gpa + len)
                {
                    return Err(Error::format(
                        name,
                        "extent",
                        format!("{gpa}+{len} overlaps another extent"),
                    ));
                }
                match self.kind {
                    MemoryKind::Full => PAGE + gpa,
                    MemoryKind::Diff => {
                        let o = self.next_offset;
                        self.next_offset += len;
                        o
                    }
                }
            }
        };
        // A full image's never-written extent of zeros stays a hole (it reads as zeros).
        let hole = self.kind == MemoryKind::Full
            && !self.extents.contains_key(&gpa)
            && vdisk_blockdev::is_zero(data);
        if !hole {
            self.obj
                .write_all_at(data, offset)
                .map_err(io(self.obj.as_ref(), "write"))?;
        }
        self.extents.insert(
            gpa,
            MemExtent {
                gpa,
                len,
                file_offset: offset,
                blake3: *blake3::hash(data).as_bytes(),
            },
        );
        Ok(())
    }

    /// Make what was put so far durable (before the guest pauses, so that the final sync
    /// has little to do).
    pub fn sync(&self) -> Result<()> {
        self.obj.sync().map_err(io(self.obj.as_ref(), "sync"))
    }

    /// Data bytes put so far.
    pub fn data_bytes(&self) -> u64 {
        self.extents.values().map(|e| e.len).sum()
    }

    /// Write the extent table and the header, sync, and return the manifest's reference.
    pub fn finish(&mut self) -> Result<MemoryRef> {
        let name = self.obj.name().to_string();
        let extents: Vec<MemExtent> = self.extents.values().copied().collect();
        if self.kind == MemoryKind::Full {
            let covered: u64 = extents.iter().map(|e| e.len).sum();
            if covered != self.guest_size {
                return Err(Error::format(
                    name,
                    "extent table",
                    "a full image must cover the whole guest",
                ));
            }
        }
        let table = encode_extents(&extents);
        let table_offset = crate::format::align_up(self.next_offset, PAGE);
        self.obj
            .write_all_at(&table, table_offset)
            .map_err(io(self.obj.as_ref(), "write"))?;
        let table_blake3 = *blake3::hash(&table).as_bytes();
        let header = MemHeader {
            kind: self.kind,
            guest_size: self.guest_size,
            extent_count: extents.len() as u64,
            table_offset,
            table_blake3,
        };
        self.obj
            .write_all_at(&header.encode(), 0)
            .map_err(io(self.obj.as_ref(), "write"))?;
        self.sync()?;
        Ok(MemoryRef {
            object: name,
            kind: self.kind,
            base: self.base,
            guest_size: self.guest_size,
            data_bytes: extents.iter().map(|e| e.len).sum(),
            table_blake3: hex(&table_blake3),
        })
    }
}

/// An opened memory image whose header and table were checked against the manifest.
pub struct MemImage {
    obj: Arc<dyn Object>,
    /// Its header.
    pub header: MemHeader,
    /// Its extents, sorted by guest address.
    pub extents: Vec<MemExtent>,
}

impl MemImage {
    /// Open the image a manifest record names.
    pub fn open(store: &dyn Store, r: &MemoryRef) -> Result<MemImage> {
        let obj = match store.open_object(&r.object, false) {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing {
                    object: r.object.clone(),
                })
            }
            Err(e) => return Err(Error::io(&r.object, "open", e)),
        };
        let len = obj.len().map_err(io(obj.as_ref(), "stat"))?;
        let mut hb = vec![0u8; PAGE.min(len) as usize];
        obj.read_exact_at(&mut hb, 0)
            .map_err(io(obj.as_ref(), "read"))?;
        let header = MemHeader::decode(&hb, len).map_err(|e| e.in_object(&r.object))?;
        if header.kind != r.kind || header.guest_size != r.guest_size {
            return Err(Error::format(
                &r.object,
                "kind",
                "the image does not match the manifest's record",
            ));
        }
        if hex(&header.table_blake3) != r.table_blake3 {
            return Err(Error::Checksum {
                object: r.object.clone(),
                field: "table_blake3 (against the manifest)".into(),
            });
        }
        let mut table = vec![0u8; header.table_len() as usize];
        obj.read_exact_at(&mut table, header.table_offset)
            .map_err(io(obj.as_ref(), "read"))?;
        let extents = decode_extents(&header, &table, len).map_err(|e| e.in_object(&r.object))?;
        Ok(MemImage {
            obj,
            header,
            extents,
        })
    }

    /// Object name.
    pub fn name(&self) -> &str {
        self.obj.name()
    }

    /// Read extent `i` into `buf` (its length), verified against its blake3.
    pub fn read_extent(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        let e = &self.extents[i];
        self.obj
            .read_exact_at(buf, e.file_offset)
            .map_err(io(self.obj.as_ref(), "read"))?;
        if *blake3::hash(buf).as_bytes() != e.blake3 {
            return Err(Error::Checksum {
                object: self.obj.name().to_string(),
                field: format!("extent {i} (guest {:#x}+{:#x})", e.gpa, e.len),
            });
        }
        Ok(())
    }

    /// Verify every extent; returns the data bytes read.
    pub fn verify(&self) -> Result<u64> {
        let mut buf = vec![0u8; MAX_EXTENT as usize];
        let mut n = 0;
        for (i, e) in self.extents.iter().enumerate() {
            self.read_extent(i, &mut buf[..e.len as usize])?;
            n += e.len;
        }
        Ok(n)
    }
}

/// Write the VM-state object `name` holding `payload` (synced); returns its reference.
pub fn write_state(store: &dyn Store, name: &str, payload: &[u8]) -> Result<StateRef> {
    let obj = store
        .create_object(name)
        .map_err(|e| Error::io(name, "create", e))?;
    obj.write_all_at(&encode_state(payload), 0)
        .map_err(io(obj.as_ref(), "write"))?;
    obj.sync().map_err(io(obj.as_ref(), "sync"))?;
    Ok(StateRef {
        object: name.to_string(),
        blake3: blake3::hash(payload).to_hex().to_string(),
    })
}

/// Read and verify the VM-state object `r` names; returns the payload.
pub fn read_state(store: &dyn Store, r: &StateRef) -> Result<Vec<u8>> {
    let obj = match store.open_object(&r.object, false) {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Missing {
                object: r.object.clone(),
            })
        }
        Err(e) => return Err(Error::io(&r.object, "open", e)),
    };
    let len = obj.len().map_err(io(obj.as_ref(), "stat"))?;
    let max =
        crate::format::vmstate::STATE_HEADER as u64 + crate::format::vmstate::MAX_STATE_PAYLOAD;
    if len > max {
        return Err(Error::format(
            &r.object,
            "length",
            format!("{len} bytes, more than a state object may hold ({max})"),
        ));
    }
    let mut b = vec![0u8; len as usize];
    obj.read_exact_at(&mut b, 0)
        .map_err(io(obj.as_ref(), "read"))?;
    let p = decode_state(&b, &r.blake3).map_err(|e| e.in_object(&r.object))?;
    Ok(p.to_vec())
}

/// The memory image record of the snapshot with id `id`, if it has one.
fn memory_of(m: &Manifest, id: Id) -> Option<MemoryRef> {
    m.snapshots
        .iter()
        .find(|s| s.id == id)
        .and_then(|s| s.vm())
        .and_then(|r| r.memory)
}

/// The memory images a snapshot's memory is built from, oldest (a full image) first.
pub fn memory_chain(m: &Manifest, snapshot: &str) -> Result<Vec<MemoryRef>> {
    let s = m
        .snapshot(snapshot)
        .ok_or_else(|| Error::SnapshotNotFound(snapshot.into()))?;
    let mut out = Vec::new();
    let mut cur = s
        .vm()
        .and_then(|r| r.memory)
        .ok_or_else(|| Error::NoVmState {
            snapshot: snapshot.into(),
        })?;
    let mut seen = HashSet::new();
    loop {
        let base = cur.base;
        out.push(cur);
        let Some(b) = base else { break };
        if !seen.insert(b) {
            return Err(Error::format("manifest", "vm_state.memory.base", "a cycle"));
        }
        cur = memory_of(m, b).ok_or_else(|| {
            Error::format(
                "manifest",
                "vm_state.memory.base",
                format!("{snapshot:?}: base {b} has no memory"),
            )
        })?;
    }
    out.reverse();
    Ok(out)
}

/// Compose `images` (oldest first; the newest image holding a page wins) into a new image
/// `name`: full when the oldest is full, else a diff on `base`.
pub fn compose(
    store: &dyn Store,
    images: &[MemImage],
    name: &str,
    base: Option<Id>,
) -> Result<MemoryRef> {
    let first = images
        .first()
        .ok_or_else(|| Error::format(name, "images", "nothing to compose"))?;
    let guest_size = first.header.guest_size;
    let kind = first.header.kind;
    // page → (image, extent) of the newest holder
    let mut owner: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for (ii, img) in images.iter().enumerate() {
        if img.header.guest_size != guest_size {
            return Err(Error::format(
                img.name(),
                "guest_size",
                "differs along the chain",
            ));
        }
        for (ei, e) in img.extents.iter().enumerate() {
            for p in (e.gpa..e.gpa + e.len).step_by(PAGE as usize) {
                owner.insert(p, (ii, ei));
            }
        }
    }
    let mut w = MemImageWriter::create(store, name, kind, base, guest_size)?;
    let mut cache: Option<((usize, usize), Vec<u8>)> = None;
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u64;
    let mut last: Option<u64> = None;
    for (&p, &(ii, ei)) in &owner {
        let contiguous = last == Some(p.wrapping_sub(PAGE))
            && (p - run_start) < MAX_EXTENT
            && !(kind == MemoryKind::Full && p.is_multiple_of(MAX_EXTENT));
        if !contiguous && !run.is_empty() {
            w.put(run_start, &run)?;
            run.clear();
        }
        if run.is_empty() {
            run_start = p;
        }
        if cache.as_ref().map(|c| c.0) != Some((ii, ei)) {
            let e = images[ii].extents[ei];
            let mut b = vec![0u8; e.len as usize];
            images[ii].read_extent(ei, &mut b)?;
            cache = Some(((ii, ei), b));
        }
        let (_, b) = cache.as_ref().expect("filled above");
        let off = (p - images[ii].extents[ei].gpa) as usize;
        run.extend_from_slice(&b[off..off + PAGE as usize]);
        last = Some(p);
    }
    if !run.is_empty() {
        w.put(run_start, &run)?;
    }
    w.finish()
}

/// Before the snapshots `removed` leave the manifest: each remaining snapshot whose memory
/// diff is based on one of them gets a new image folding the removed ones in (merge.md §6).
/// Returns the new references to switch in with the removal.
pub fn fold_for_removal(
    store: &dyn Store,
    m: &Manifest,
    removed: &[String],
) -> Result<Vec<(Id, MemoryRef)>> {
    let gone: HashSet<Id> = m
        .snapshots
        .iter()
        .filter(|s| removed.contains(&s.name))
        .map(|s| s.id)
        .collect();
    let mut out = Vec::new();
    for s in m.snapshots.iter().filter(|s| !gone.contains(&s.id)) {
        let Some(mem) = s.vm().and_then(|r| r.memory) else {
            continue;
        };
        let Some(b) = mem.base else { continue };
        if !gone.contains(&b) {
            continue;
        }
        // this image and its removed ancestors up to a kept one (or a full image)
        let mut refs = vec![mem.clone()];
        let mut cur = b;
        let new_base = loop {
            let r = memory_of(m, cur)
                .ok_or_else(|| Error::format("manifest", "vm_state.memory.base", "dangling"))?;
            let next = r.base;
            refs.push(r);
            match next {
                None => break None,
                Some(n) if gone.contains(&n) => cur = n,
                Some(n) => break Some(n),
            }
        };
        refs.reverse();
        let images = refs
            .iter()
            .map(|r| MemImage::open(store, r))
            .collect::<Result<Vec<_>>>()?;
        let name = format!("state/{}-{}.mem", s.id, Id::random().short());
        out.push((s.id, compose(store, &images, &name, new_base)?));
    }
    Ok(out)
}

/// Switch the folded references of [`fold_for_removal`] into `m`.
pub fn apply_folds(m: &mut Manifest, folds: &[(Id, MemoryRef)]) {
    for (id, r) in folds {
        if let Some(s) = m.snapshots.iter_mut().find(|s| s.id == *id) {
            if let Some(mut rec) = s.vm() {
                rec.memory = Some(r.clone());
                s.vm_state = Some(rec.to_value());
            }
        }
    }
}

/// What `check` reports of one snapshot's VM state.
#[derive(Debug, Clone, Default)]
pub struct VmCheck {
    /// Memory data bytes verified.
    pub memory_bytes: u64,
    /// State payload bytes verified.
    pub state_bytes: u64,
}

/// Verify a snapshot's VM state: the state object and every extent of its memory image.
pub fn verify(store: &dyn Store, r: &VmStateRecord) -> Result<VmCheck> {
    let mut c = VmCheck::default();
    if let Some(s) = &r.state {
        c.state_bytes = read_state(store, s)?.len() as u64;
    }
    if let Some(m) = &r.memory {
        c.memory_bytes = MemImage::open(store, m)?.verify()?;
    }
    Ok(c)
}
