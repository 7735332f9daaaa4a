//! `info`: what a bundle holds, read without the writer lock.

use crate::disk::{read_manifest, rfc3339, snapshot_infos, SnapshotInfo};
use crate::error::Result;
use crate::format::manifest::Policy;
use crate::format::{Geometry, Id};
use crate::layer::LayerData;
use crate::store::Store;
use serde::Serialize;
use std::collections::HashMap;

/// One layer as `info` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// Layer id.
    pub id: Id,
    /// Parent layer.
    pub parent: Option<Id>,
    /// Object name.
    pub file: String,
    /// Sealed (immutable).
    pub sealed: bool,
    /// The active layer.
    pub active: bool,
    /// Snapshot names held by this layer.
    pub snapshots: Vec<String>,
    /// Clusters in its map.
    pub map_entries: usize,
    /// Bytes of data it holds.
    pub allocated_bytes: u64,
    /// Size of its file.
    pub file_bytes: u64,
    /// Other layer files it references.
    pub externs: Vec<String>,
}

/// What `vdisk info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BundleInfo {
    /// Bundle location.
    pub path: String,
    /// Always "vdisk".
    pub format: &'static str,
    /// On-disk format version.
    pub format_version: u32,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Subcluster size in bytes.
    pub subcluster_size: u64,
    /// Layers from the base to the active head.
    pub chain_depth: usize,
    /// Bytes of data stored across all layers.
    pub allocated_bytes: u64,
    /// Bytes of data in the active layer.
    pub head_allocated_bytes: u64,
    /// Sum of the layer files' sizes.
    pub file_bytes: u64,
    /// Manifest generation.
    pub generation: u64,
    /// Bundle id.
    pub bundle_id: Id,
    /// Creation time.
    pub created: String,
    /// The active layer.
    pub active_layer: Id,
    /// Every layer.
    pub layers: Vec<LayerInfo>,
    /// Every snapshot.
    pub snapshots: Vec<SnapshotInfo>,
    /// Retention policy.
    pub policy: Option<Policy>,
    /// Recovery notes (e.g. a journal tail that the next writer will discard).
    pub notes: Vec<String>,
}

/// Gather the information of a bundle. Fails if any layer cannot be opened.
pub fn info(store: &dyn Store) -> Result<BundleInfo> {
    let m = read_manifest(store)?;
    let g = Geometry::from_sizes(m.virtual_size, m.cluster_size, m.subcluster_size)
        .map_err(|e| e.in_object("manifest"))?;
    let mut layers = Vec::new();
    let mut bytes: HashMap<Id, u64> = HashMap::new();
    let mut notes = Vec::new();
    let mut total = 0;
    let mut file_total = 0;
    for rec in &m.layers {
        let d = LayerData::open(store, rec, &g)?;
        if let Some(n) = &d.journal_note {
            notes.push(n.clone());
        }
        let a = d.allocated_bytes();
        let fb = d.files[0].len().unwrap_or(0);
        total += a;
        file_total += fb;
        bytes.insert(rec.id, a);
        layers.push(LayerInfo {
            id: rec.id,
            parent: rec.parent,
            file: rec.file.clone(),
            sealed: rec.sealed,
            active: rec.id == m.active_layer,
            snapshots: m
                .snapshots
                .iter()
                .filter(|s| s.layer == rec.id)
                .map(|s| s.name.clone())
                .collect(),
            map_entries: d.entries.len(),
            allocated_bytes: a,
            file_bytes: fb,
            externs: rec.externs.clone(),
        });
    }
    let snapshots = snapshot_infos(&m, |s| bytes.get(&s.layer).copied());
    Ok(BundleInfo {
        path: store.location(),
        format: "vdisk",
        format_version: crate::format::header::VERSION,
        virtual_size: m.virtual_size,
        cluster_size: m.cluster_size,
        subcluster_size: m.subcluster_size,
        chain_depth: m.chain(m.active_layer).len(),
        allocated_bytes: total,
        head_allocated_bytes: bytes.get(&m.active_layer).copied().unwrap_or(0),
        file_bytes: file_total,
        generation: m.generation,
        bundle_id: m.bundle_id,
        created: rfc3339(m.created_ns),
        active_layer: m.active_layer,
        layers,
        snapshots,
        policy: m.policy.clone(),
        notes,
    })
}
