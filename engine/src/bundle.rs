//! The bundle's manifest on a store: reading it (falling back to its copy), replacing it
//! under the maintenance lock, and the garbage that replaces leave (format-spec/bundle.md).

use crate::error::{Error, Result};
use crate::format::manifest::{journal_name, LayerRecord, Manifest};
use crate::store::{Store, StoreLock};
use std::io;

/// Object name of the manifest's copy (format-spec/bundle.md §2.1).
pub const MANIFEST_COPY: &str = "manifest.copy";
/// Object name of a manifest being written by the local store (removed by a writer's open).
pub const MANIFEST_TMP: &str = "manifest.tmp";

/// Which copy of the manifest a read used, and what was wrong with the other.
#[derive(Debug, Clone, Default)]
pub struct ManifestRead {
    /// The primary (`manifest`) was missing or refused (why); the copy was used.
    pub primary_damaged: Option<String>,
    /// The copy is missing, refused or older than the primary (why); only a note.
    pub copy_note: Option<String>,
}

fn decode(store: &dyn Store, bytes: &[u8], name: &str) -> Result<Manifest> {
    Manifest::decode(bytes).map_err(|e| e.in_object(&format!("{}/{name}", store.location())))
}

fn read_copy(store: &dyn Store) -> Result<Option<Vec<u8>>> {
    let obj = match store.open_object(MANIFEST_COPY, false) {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(MANIFEST_COPY, "open", e)),
    };
    let len = obj.len().map_err(|e| Error::io(MANIFEST_COPY, "stat", e))?;
    let limit = (crate::format::manifest::HEADER_LEN + crate::format::manifest::MAX_PAYLOAD) as u64;
    if len > limit {
        return Err(Error::format(
            MANIFEST_COPY,
            "length",
            format!("{len} bytes, more than a manifest may hold ({limit})"),
        ));
    }
    let mut b = vec![0u8; len as usize];
    obj.read_exact_at(&mut b, 0)
        .map_err(|e| Error::io(MANIFEST_COPY, "read", e))?;
    Ok(Some(b))
}

/// Read and decode the manifest of a store, using `manifest.copy` when the primary is
/// missing or refused; the second value says which was used and what was wrong.
pub fn read_manifest_detailed(store: &dyn Store) -> Result<(Manifest, ManifestRead)> {
    let loc = store.location();
    let primary = store
        .read_manifest()
        .map_err(|e| Error::io(format!("{loc}/manifest"), "read", e));
    let primary = match primary {
        Ok(Some(b)) => decode(store, &b, "manifest"),
        Ok(None) => Err(Error::NotABundle {
            path: loc.clone(),
            reason: "no manifest".into(),
        }),
        Err(e) => Err(e),
    };
    let copy = read_copy(store).and_then(|c| match c {
        Some(b) => decode(store, &b, MANIFEST_COPY).map(Some),
        None => Ok(None),
    });
    match (primary, copy) {
        (Ok(m), copy) => {
            let copy_note = match copy {
                Ok(Some(c)) if c.generation == m.generation => None,
                Ok(Some(c)) => Some(format!(
                    "{MANIFEST_COPY} is of generation {} (the manifest: {}); the next update rewrites it",
                    c.generation, m.generation
                )),
                Ok(None) => Some(format!("{MANIFEST_COPY} is missing (a version-1 bundle, or a crash before its first copy)")),
                Err(e) => Some(format!(
                    "{MANIFEST_COPY} is refused ({}); the next update rewrites it",
                    crate::error::chain(&e)
                )),
            };
            Ok((
                m,
                ManifestRead {
                    primary_damaged: None,
                    copy_note,
                },
            ))
        }
        (Err(pe), Ok(Some(c))) => {
            if matches!(pe, Error::NotABundle { .. }) && !store_has_layers(store) {
                return Err(pe);
            }
            Ok((
                c,
                ManifestRead {
                    primary_damaged: Some(crate::error::chain(&pe)),
                    copy_note: None,
                },
            ))
        }
        (Err(pe), _) => Err(pe),
    }
}

fn store_has_layers(store: &dyn Store) -> bool {
    store.list_objects("layers").is_ok_and(|l| !l.is_empty())
}

/// Read and decode the manifest of a store (its copy when the primary is damaged).
pub fn read_manifest(store: &dyn Store) -> Result<Manifest> {
    read_manifest_detailed(store).map(|(m, _)| m)
}

/// Write `bytes` into the manifest's copy (bundle.md §2.1): best effort — the primary is
/// already durable, and a copy that fails to write is noted by `check` and rewritten by the
/// next update.
pub(crate) fn write_copy(store: &dyn Store, bytes: &[u8]) -> Result<()> {
    let obj = match store.open_object(MANIFEST_COPY, true) {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => store
            .create_object(MANIFEST_COPY)
            .map_err(|e| Error::io(MANIFEST_COPY, "create", e))?,
        Err(e) => return Err(Error::io(MANIFEST_COPY, "open", e)),
    };
    obj.write_all_at(bytes, 0)
        .map_err(|e| Error::io(MANIFEST_COPY, "write", e))?;
    obj.set_len(bytes.len() as u64)
        .map_err(|e| Error::io(MANIFEST_COPY, "truncate", e))?;
    obj.sync().map_err(|e| Error::io(MANIFEST_COPY, "sync", e))
}

/// Replace the manifest (atomically, only if it is still at the generation before `m`'s:
/// none for a first manifest) and then its copy. A lost race is an [`Error::Conflict`].
pub(crate) fn write_manifest(store: &dyn Store, m: &Manifest) -> Result<()> {
    let bytes = m.encode();
    store
        .replace_manifest(&bytes, m.generation.saturating_sub(1))
        .map_err(|e| manifest_replace_err(&store.location(), e))?;
    let _ = write_copy(store, &bytes);
    Ok(())
}

/// The error of a failed conditional manifest replace: a [`Error::Conflict`] when another
/// process changed the manifest first.
fn manifest_replace_err(loc: &str, e: io::Error) -> Error {
    match crate::store::as_generation_mismatch(&e) {
        Some(g) => Error::Conflict {
            path: loc.to_string(),
            expected: g.expected,
            found: g.found.unwrap_or(0),
        },
        None => Error::io(format!("{loc}/manifest"), "replace", e),
    }
}

/// Layers of `m` no longer referenced: removed from `m`; returns the objects to delete.
pub(crate) fn collect_garbage(m: &mut Manifest) -> Vec<String> {
    let keep = m.referenced_layers();
    let (kept, dropped): (Vec<LayerRecord>, Vec<LayerRecord>) = std::mem::take(&mut m.layers)
        .into_iter()
        .partition(|l| keep.contains(&l.id));
    m.layers = kept;
    let live = m.live_objects();
    let mut out = Vec::new();
    for l in dropped {
        for name in [l.file.clone(), journal_name(&l.file)] {
            if !live.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Under the maintenance lock: read the manifest, apply `f`, drop unreferenced layers, write
/// it with the next generation and delete the objects no longer referenced.
pub(crate) fn update_manifest<T>(
    store: &dyn Store,
    f: impl FnOnce(&mut Manifest) -> Result<T>,
) -> Result<(Manifest, T)> {
    let _maint = lock_maintenance(store)?;
    update_manifest_locked(store, f)
}

/// Take the maintenance lock of a store.
pub(crate) fn lock_maintenance(store: &dyn Store) -> Result<Box<dyn StoreLock>> {
    store
        .lock_maintenance()
        .map_err(|e| Error::io(format!("{}/maint.lock", store.location()), "lock", e))
}

/// [`update_manifest`] for a caller that holds the maintenance lock.
pub(crate) fn update_manifest_locked<T>(
    store: &dyn Store,
    f: impl FnOnce(&mut Manifest) -> Result<T>,
) -> Result<(Manifest, T)> {
    let loc = store.location();
    let mut m = read_manifest(store)?;
    let before = m.live_objects();
    let t = f(&mut m)?;
    collect_garbage(&mut m);
    let after = m.live_objects();
    let garbage: Vec<&String> = before.difference(&after).collect();
    m.generation += 1;
    m.validate()
        .map_err(|e| e.in_object(&format!("{loc}/manifest (new)")))?;
    write_manifest(store, &m)?;
    for g in garbage {
        // Best effort: a leftover is garbage that the next writer open removes.
        let _ = store.remove_object(g);
    }
    Ok((m, t))
}

/// Every object of `layers/` and `state/` (the directories whose objects a manifest names),
/// for garbage scans.
pub(crate) fn data_objects(store: &dyn Store) -> Result<Vec<String>> {
    let loc = store.location();
    let mut names = Vec::new();
    for dir in ["layers", "state"] {
        match store.list_objects(dir) {
            Ok(l) => names.extend(l),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("{loc}/{dir}"), "list", e)),
        }
    }
    Ok(names)
}

/// Remove `manifest.tmp` and the objects of `layers/` and `state/` the manifest does not name (left by
/// crashes), under the maintenance lock (recovery.md §5).
pub(crate) fn remove_orphans(store: &dyn Store) -> Result<Vec<String>> {
    let _maint = lock_maintenance(store)?;
    let m = read_manifest(store)?;
    let live = m.live_objects();
    let mut removed = Vec::new();
    match store.remove_object(MANIFEST_TMP) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
        Err(e) => return Err(Error::io(MANIFEST_TMP, "remove", e)),
    }
    for name in data_objects(store)? {
        if !live.contains(&name) {
            store
                .remove_object(&name)
                .map_err(|e| Error::io(&name, "remove", e))?;
            removed.push(name);
        }
    }
    Ok(removed)
}
