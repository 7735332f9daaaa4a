//! `check`: verify every structure and checksum of a bundle and report problems precisely.
//!
//! Works without the writer lock and changes nothing. A state that recovery handles (a torn
//! journal tail, an interrupted snapshot, garbage objects) is a note, not a problem.

use crate::disk::read_manifest;
use crate::error::{Error, Result};
use crate::format::manifest::{journal_name, LayerRecord, Manifest};
use crate::format::Geometry;
use crate::layer::data::{check_entry_bounds, read_externs, read_map, replay_journal};
use crate::layer::{hash_entries, read_header};
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
            Error::Limit { .. } => self.problem(object, "limit", e.to_string()),
            other => {
                let mut msg = other.to_string();
                let mut src = std::error::Error::source(&other);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
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
    let m = match read_manifest(store) {
        Ok(m) => m,
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
    match store.list_objects("layers") {
        Ok(names) => {
            let live = m.live_objects();
            for n in names {
                if !live.contains(&n) {
                    r.notes.push(format!("{n}: not named by the manifest (garbage from an interrupted operation; removed by the next writer)"));
                }
            }
        }
        Err(e) => r.problem("layers/", "list", e.to_string()),
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
    let (h, _, _, len) = match read_header(&obj) {
        Ok(x) => x,
        Err(e) => return r.record_error(name, e),
    };
    note_slots(&obj, &h, name, r);
    if h.layer_id != rec.id {
        r.problem(
            name,
            "layer_id",
            format!("{} but the manifest says {}", h.layer_id, rec.id),
        );
    }
    if h.geometry != *g {
        r.problem(
            name,
            "geometry",
            format!("{:?} differs from the manifest's {:?}", h.geometry, g),
        );
        return;
    }
    let is_active = rec.id == m.active_layer;
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
    let mut entries = match read_map(&obj, &h) {
        Ok(e) => e,
        Err(e) => return r.record_error(name, e),
    };
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
    for (what, reg) in [
        ("map", h.map_region()),
        ("hash table", h.hash_region()),
        ("extern table", h.extern_region()),
    ] {
        if reg.len > 0 {
            regions.push((reg.offset, reg.end(), what.into()));
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
    if rec.sealed && h.sealed && bounds_ok {
        let layer = crate::layer::LayerData {
            id: rec.id,
            file_name: name.to_string(),
            header: h.clone(),
            files: files.clone(),
            entries: entries.clone(),
            journal_note: None,
        };
        let stored = match layer.read_hashes() {
            Ok(x) => x,
            Err(e) => return r.record_error(name, e),
        };
        match hash_entries(&files, &entries, g) {
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
    }
}

/// Note a header slot that is damaged or out of date while its twin is used.
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
            Err(e) => r.notes.push(format!(
                "{name}: header slot {label} is damaged ({}: {}); its twin is used",
                e.field, e.reason
            )),
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
///   garbage objects removed (format-spec/recovery.md §5);
/// - a damaged or out-of-date header slot rewritten from its valid twin (same header, next
///   generation), so the layer survives a later damage of the other slot.
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
        d.close()?;
        actions.push(
            "opened as the writer: journal replayed and checkpointed, garbage removed".into(),
        );
    }
    let _maint = crate::disk::lock_maintenance(store.as_ref())?;
    let m = read_manifest(store.as_ref())?;
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
    Ok(RepairReport {
        actions,
        check: check(store.as_ref()),
    })
}
