//! `check`: verify every structure and checksum of a bundle and report problems precisely.
//!
//! Works without the writer lock and changes nothing. A state that recovery handles (a torn
//! journal tail, an interrupted snapshot, garbage objects, a manifest copy one generation
//! behind) is a note, not a problem. Damage is a problem, named by object and structure,
//! also when a good copy makes it harmless: `repair` then rebuilds it from that copy.

use crate::bundle::{read_manifest_detailed, MANIFEST_COPY};
use crate::error::{Error, Result};
use crate::format::manifest::{journal_name, LayerRecord, Manifest};
use crate::format::Geometry;
use crate::layer::data::{
    check_entry_bounds, is_fresh, read_externs, read_hash_table, read_map, replay_journal,
    source_indexes,
};
use crate::layer::{hash_entries_plain, read_header};
use crate::store::{Object, Store};
use serde::Serialize;
use std::io;
use std::sync::Arc;

/// One problem: the object, the field and what is wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// Object (file) name, bundle-relative.
    pub object: String,
    /// Field or structure.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The result of a check.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CheckReport {
    /// Bundle location.
    pub bundle: String,
    /// Problems found (empty = clean).
    pub problems: Vec<Problem>,
    /// Observations that are not problems.
    pub notes: Vec<String>,
    /// Layers examined.
    pub layers_checked: usize,
    /// Clusters whose blake3 was recomputed and matched.
    pub clusters_verified: u64,
    /// Bytes of data hashed.
    pub bytes_verified: u64,
    /// Layers `repair` would rewrite (a damaged copy, a damaged hash table, version 1).
    #[serde(skip)]
    pub(crate) rewrite: Vec<(LayerRecord, bool)>,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, object: &str, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            object: object.to_string(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn record_error(&mut self, object: &str, e: Error) {
        match e {
            Error::Format {
                object,
                field,
                reason,
            } => self.problem(&object, field, reason),
            Error::Checksum { object, field } => self.problem(&object, field, "checksum mismatch"),
            Error::Missing { object } => {
                self.problem(&object, "object", "missing (named by the manifest)")
            }
            Error::Damaged { object, reason } => self.problem(&object, "damaged", reason),
            Error::Corrupt {
                object,
                context,
                guest_offset,
            } => self.problem(
                &object,
                format!("data at guest offset {guest_offset}"),
                format!("does not match its recorded blake3 ({context})"),
            ),
            other => {
                let msg = crate::error::chain(&other);
                self.problem(object, "io", msg)
            }
        }
    }
}

/// Check a bundle.
pub fn check(store: &dyn Store) -> CheckReport {
    check_with_progress(store, &|_, _| {})
}

/// [`check`], calling `progress(layers done, layers)` as it goes (hashing every sealed
/// cluster makes it long on big disks).
pub fn check_with_progress(store: &dyn Store, progress: &dyn Fn(usize, usize)) -> CheckReport {
    let mut r = CheckReport {
        bundle: store.location(),
        ..Default::default()
    };
    let m = match read_manifest_detailed(store) {
        Ok((m, how)) => {
            if let Some(why) = how.primary_damaged {
                r.problem(
                    "manifest",
                    "manifest",
                    format!("damaged ({why}); {MANIFEST_COPY} is good and was used: `check --repair` rewrites the manifest from it"),
                );
            }
            r.notes.extend(how.copy_note);
            m
        }
        Err(e) => {
            r.record_error("manifest", e);
            return r;
        }
    };
    let geometry = match Geometry::from_sizes(m.virtual_size, m.cluster_size, m.subcluster_size) {
        Ok(g) => g,
        Err(e) => {
            r.problem("manifest", e.field, e.reason);
            return r;
        }
    };
    for (i, rec) in m.layers.iter().enumerate() {
        progress(i, m.layers.len());
        check_layer(store, &m, rec, &geometry, &mut r);
        r.layers_checked += 1;
    }
    progress(m.layers.len(), m.layers.len());
    // VM state (vmstate.md): the state object and every extent of each memory image
    for s in &m.snapshots {
        if let Some(rec) = s.vm() {
            match crate::vmstate::verify(store, &rec) {
                Ok(c) => r.bytes_verified += c.memory_bytes + c.state_bytes,
                Err(e) => r.record_error("state/", e),
            }
        }
    }
    match crate::bundle::data_objects(store) {
        Ok(names) => {
            let live = m.live_objects();
            for n in names {
                if !live.contains(&n) {
                    r.notes.push(format!("{n}: not named by the manifest (garbage from an interrupted operation; removed by the next writer)"));
                }
            }
        }
        Err(e) => r.problem("layers/", "list", crate::error::chain(&e)),
    }
    r
}

fn open(store: &dyn Store, name: &str) -> Result<Arc<dyn Object>> {
    store.open_object(name, false).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::Missing {
                object: name.to_string(),
            }
        } else {
            Error::io(name, "open", e)
        }
    })
}

fn check_layer(
    store: &dyn Store,
    m: &Manifest,
    rec: &LayerRecord,
    g: &Geometry,
    r: &mut CheckReport,
) {
    let name = rec.file.as_str();
    let obj = match open(store, name) {
        Ok(o) => o,
        Err(e) => return r.record_error(name, e),
    };
    let is_active = rec.id == m.active_layer;
    let (h, _, _, len) = match read_header(&obj) {
        Ok(x) => x,
        Err(_) if is_active && is_fresh(store, &obj, name) => {
            r.notes.push(format!(
                "{name}: a new active layer whose creation was not synced before a crash (empty; the next writer initialises it)"
            ));
            return;
        }
        Err(e) => return r.record_error(name, e),
    };
    let mut rewrite = false;
    note_slots(&obj, &h, name, r);
    if h.layer_id != rec.id {
        r.problem(
            name,
            "layer_id",
            format!("{} but the manifest says {}", h.layer_id, rec.id),
        );
    }
    // A layer keeps the size the disk had when it was written; a resize grows the bundle.
    if h.geometry.cluster_size() != g.cluster_size()
        || h.geometry.subcluster_size() != g.subcluster_size()
        || h.geometry.virtual_size() > g.virtual_size()
    {
        r.problem(
            name,
            "geometry",
            format!("{:?} differs from the manifest's {:?}", h.geometry, g),
        );
        return;
    }
    if h.version == 1 && rec.sealed {
        r.notes.push(format!(
            "{name}: written by format version 1 (one copy of each region); `check --repair` rewrites it with copies"
        ));
    }
    if rec.sealed && !h.sealed {
        r.problem(
            name,
            "state_flags",
            "the manifest says sealed but the header does not",
        );
    }
    if is_active && h.sealed {
        r.notes.push(format!(
            "{name}: sealed by an interrupted snapshot; the next writer open unseals it"
        ));
    }
    let externs = match read_externs(&obj, &h) {
        Ok(x) => x,
        Err(e) => return r.record_error(name, e),
    };
    for b in &externs.bad {
        r.problem(name, "extern table", format!("{b}; the other copy is good"));
        rewrite = true;
    }
    let externs = externs.value;
    if let Some(missing) = externs.iter().find(|n| !rec.externs.contains(n)) {
        r.problem(
            name,
            "extern table",
            format!(
                "names {missing:?}, which the manifest's externs {:?} do not keep alive",
                rec.externs
            ),
        );
        return;
    }
    let mut files = vec![obj.clone()];
    for x in &externs {
        match open(store, x) {
            Ok(o) => files.push(o),
            Err(e) => return r.record_error(name, e),
        }
    }
    let map = match read_map(&obj, &h) {
        Ok(e) => e,
        Err(e) => return r.record_error(name, e),
    };
    for b in &map.bad {
        r.problem(name, "map", format!("{b}; the other copy is good"));
        rewrite = true;
    }
    let mut entries = map.value;
    if is_active {
        match replay_journal(store, name, &h, &mut entries) {
            Ok(note) => r.notes.extend(note),
            Err(e) => r.record_error(&journal_name(name), e),
        }
    }
    let lens: Vec<u64> = files.iter().map(|f| f.len().unwrap_or(0)).collect();
    let mut bounds_ok = true;
    for e in &entries {
        if let Err(err) = check_entry_bounds(e, g, &lens, name) {
            r.record_error(name, err);
            bounds_ok = false;
        }
    }
    // Own data must not overlap the header slots, the metadata regions or other entries.
    let mut regions: Vec<(u64, u64, String)> = vec![(0, 8192, "header slots".into())];
    for (what, copies) in [
        ("map", h.map_copies()),
        ("hash table", h.hash_copies()),
        ("extern table", h.extern_copies()),
    ] {
        for (i, reg) in copies.iter().enumerate() {
            if reg.len > 0 {
                regions.push((reg.offset, reg.end(), format!("{what} copy {}", i + 1)));
            }
        }
    }
    for e in entries.iter().filter(|e| e.file_index == 0) {
        for (off, l) in e.data_ranges(g) {
            regions.push((
                off,
                off.saturating_add(l),
                format!("data of guest cluster {}", e.guest_cluster),
            ));
        }
    }
    regions.sort();
    for w in regions.windows(2) {
        if w[1].0 < w[0].1 {
            r.problem(
                name,
                "data_offset",
                format!("{} overlaps {}", w[1].2, w[0].2),
            );
        }
    }
    let _ = len;
    if !bounds_ok {
        return;
    }
    if rec.sealed && h.sealed {
        let table = match read_hash_table(&obj, &h) {
            Ok(t) => t,
            Err(e) => {
                r.problem(
                    name,
                    "hash table",
                    format!(
                        "damaged on every copy ({}): its data reads unverified; `check --repair` rebuilds the hashes from the data",
                        crate::error::chain(&e)
                    ),
                );
                r.rewrite.push((rec.clone(), true));
                return;
            }
        };
        for b in &table.bad {
            r.problem(name, "hash table", format!("{b}; the other copy is good"));
            rewrite = true;
        }
        let stored = table.value;
        match hash_entries_plain(&files, &entries, g) {
            Ok(computed) => {
                for ((e, a), b) in entries.iter().zip(&computed).zip(&stored) {
                    if a != b {
                        r.problem(
                            name,
                            format!(
                                "hash of guest cluster {} (guest offset {})",
                                e.guest_cluster,
                                e.guest_cluster * g.cluster_size()
                            ),
                            "data does not match its recorded blake3 (silent corruption)",
                        );
                    } else {
                        r.clusters_verified += 1;
                        r.bytes_verified += u64::from(e.alloc.count_ones()) * g.subcluster_size();
                    }
                }
            }
            Err(e) => r.record_error(name, e),
        }
        if rewrite || h.version == 1 {
            r.rewrite.push((rec.clone(), false));
        }
    } else if is_active {
        // The active layer has no hashes; what it references in externs is verified against
        // the externs' own hashes (chain.md §2).
        let referencing: Vec<_> = entries
            .iter()
            .filter(|e| e.file_index != 0 && e.alloc != 0)
            .copied()
            .collect();
        if !referencing.is_empty() {
            match source_indexes(&files, &referencing, g) {
                Ok(src) => {
                    let mut scratch = Vec::new();
                    for e in &referencing {
                        if let Some(s) = src.get(&e.file_index) {
                            match s.read_verified(e, &mut scratch, "check of the head") {
                                Ok(()) => r.clusters_verified += 1,
                                Err(err) => r.record_error(name, err),
                            }
                        }
                    }
                }
                Err(e) => r.record_error(name, e),
            }
        }
        if rewrite {
            r.rewrite.push((rec.clone(), false));
        }
    }
}

/// Note a header slot that is out of date while its twin is used; report a damaged one.
fn note_slots(
    obj: &Arc<dyn Object>,
    current: &crate::format::LayerHeader,
    name: &str,
    r: &mut CheckReport,
) {
    use crate::format::header::{LayerHeader, SLOT_SIZE};
    let Ok(len) = obj.len() else { return };
    for (i, label) in [(0usize, "A"), (1, "B")] {
        let mut b = vec![0u8; SLOT_SIZE];
        if obj.read_exact_at(&mut b, (i * SLOT_SIZE) as u64).is_err() || b.iter().all(|&x| x == 0) {
            continue;
        }
        match LayerHeader::decode(&b, &format!("header slot {label}"), len) {
            Ok(h) if h == *current => {}
            Ok(h) => {
                let mut a = h.clone();
                a.generation = current.generation;
                if a != *current {
                    r.notes.push(format!(
                        "{name}: header slot {label} (generation {}) is out of date; generation {} is used (an interrupted header update)",
                        h.generation, current.generation
                    ));
                }
            }
            Err(e) => r.problem(
                name,
                format!("header slot {label}"),
                format!(
                    "damaged ({}: {}); its twin is used: `check --repair` rewrites it",
                    e.field, e.reason
                ),
            ),
        }
    }
}

/// What `repair` did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RepairReport {
    /// Actions taken, one line each.
    pub actions: Vec<String>,
    /// The check after the repair.
    pub check: CheckReport,
}

/// Repair what can be repaired without losing data, then check again:
/// - open as the writer: journal replay and checkpoint, an interrupted snapshot unsealed,
///   garbage objects removed (format-spec/recovery.md §5); the active layer's map and extern
///   table rewritten with both copies;
/// - the manifest or its copy rewritten from the good one;
/// - a damaged or out-of-date header slot rewritten from its valid twin;
/// - a sealed layer with a damaged copy of a region, or written by version 1, rewritten into
///   a new file from the good copy (merge.md §5); one whose hash table is damaged on every
///   copy rewritten with hashes rebuilt from its data (said in the actions).
///
/// Damaged data (a blake3 mismatch) cannot be repaired here and stays reported.
pub fn repair(store: Arc<dyn Store>) -> Result<RepairReport> {
    use crate::format::header::{LayerHeader, SLOT_SIZE};
    let mut actions = Vec::new();
    {
        let d = crate::disk::Disk::open(store.clone())?;
        if let Some(n) = d.recovery_note() {
            actions.push(n);
        }
        d.rewrite_head_metadata()?;
        d.close()?;
        actions.push(
            "opened as the writer: journal replayed and checkpointed, garbage removed".into(),
        );
    }
    let _maint = crate::disk::lock_maintenance(store.as_ref())?;
    // The manifest and its copy: the next replace writes both.
    let (m, how) = read_manifest_detailed(store.as_ref())?;
    if how.primary_damaged.is_some() || how.copy_note.is_some() {
        let (_, ()) = crate::disk::update_manifest_locked(store.as_ref(), |_| Ok(()))?;
        actions.push("manifest and manifest.copy rewritten".into());
    }
    for rec in &m.layers {
        let obj = store
            .open_object(&rec.file, true)
            .map_err(|e| Error::io(&rec.file, "open", e))?;
        let (h, slot, other, len) = read_header(&obj)?;
        let mut other_bytes = vec![0u8; SLOT_SIZE];
        let other_slot = 1 - slot;
        let readable = obj
            .read_exact_at(&mut other_bytes, (other_slot * SLOT_SIZE) as u64)
            .is_ok();
        let twin_ok = readable
            && other.as_ref().is_some_and(|o| {
                let mut a = o.clone();
                a.generation = h.generation;
                a == h
            })
            && LayerHeader::decode(&other_bytes, "slot", len).is_ok();
        if twin_ok {
            continue;
        }
        let mut twin = h.clone();
        twin.generation += 1;
        obj.write_all_at(&twin.encode(), (other_slot * SLOT_SIZE) as u64)
            .map_err(|e| Error::io(&rec.file, "write header", e))?;
        obj.sync().map_err(|e| Error::io(&rec.file, "sync", e))?;
        actions.push(format!(
            "{}: header slot {} rewritten from its twin",
            rec.file,
            if other_slot == 0 { "A" } else { "B" }
        ));
    }
    drop(_maint);
    // Sealed layers with a damaged copy (or of version 1): rewritten from the good copy.
    let before = check(store.as_ref());
    for (rec, rehash) in &before.rewrite {
        if !rec.sealed {
            continue;
        }
        let done = crate::compact::rewrite_layer(store.as_ref(), rec.id, *rehash)?;
        actions.push(format!(
            "{}: rewritten into {} with both copies of every region{}",
            rec.file,
            done,
            if *rehash {
                " and hashes rebuilt from its data (they were lost: not verified)"
            } else {
                ""
            }
        ));
    }
    Ok(RepairReport {
        actions,
        check: check(store.as_ref()),
    })
}
