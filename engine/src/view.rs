//! [`View`]: a read-only view of a snapshot or of the head, opened without the writer lock.

use crate::alloc::{self, AllocSource, Extent};
use crate::disk::{open_chain, read_manifest, snapshot_infos, OpenOptions, SnapshotInfo};
use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::{Geometry, Id};
use crate::resolve::{read_runs, Chain, Loc, Resolver};
use crate::store::{Object, Store};
use std::collections::HashMap;
use std::sync::Arc;

/// What a view shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The active head as durable on storage when the view was opened.
    Head,
    /// A snapshot by name.
    Snapshot(String),
    /// A snapshot by id.
    SnapshotId(Id),
}

/// A read-only chain. Sealed layers never change, so a snapshot view stays valid while a
/// writer works on the bundle; a head view shows the head as of its opening.
pub struct View {
    manifest: Manifest,
    chain: Chain,
    target: Target,
}

impl Resolver for Chain {
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    fn decomp_cache(&self) -> &crate::resolve::DecompCache {
        &self.decompressed
    }
    #[inline]
    fn locate(&self, c: u64, s: u32) -> Loc {
        self.map.locate(c, s)
    }
    fn object(&self, layer: u32, file: u16) -> Result<&Arc<dyn Object>> {
        Chain::object(self, layer, file)
    }
    #[inline]
    fn verify(&self, layer: u32, entry: u32) -> Result<()> {
        Chain::verify(self, layer, entry)
    }
    fn damage(&self, layer: u32, guest_offset: u64) -> Error {
        Chain::damage(self, layer, guest_offset)
    }
}

impl AllocSource for Chain {
    fn depth_of(&self, layer: u32) -> u32 {
        (self.depth() as u32).saturating_sub(layer + 1)
    }
    fn skip_empty(&self, c: u64) -> Option<u64> {
        self.map.skip_empty(c)
    }
}

/// How many times a reader re-reads the manifest when a layer vanished under it (a merge).
const OPEN_RETRIES: usize = 8;

impl View {
    /// Open a view without any lock. Sealed data is verified against its blake3 once per
    /// cluster per view (format-spec/chain.md §2).
    pub fn open(store: &dyn Store, target: Target) -> Result<View> {
        Self::open_with(store, target, &OpenOptions::default())
    }

    /// [`View::open`] with options (verification, memory budget).
    pub fn open_with(store: &dyn Store, target: Target, opts: &OpenOptions) -> Result<View> {
        let mut last = None;
        for _ in 0..OPEN_RETRIES {
            match Self::try_open(store, &target, opts) {
                Err(e @ Error::Missing { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal("open retries exhausted".into())))
    }

    fn try_open(store: &dyn Store, target: &Target, opts: &OpenOptions) -> Result<View> {
        let m = read_manifest(store)?;
        let geometry = Geometry::from_sizes(m.virtual_size, m.cluster_size, m.subcluster_size)
            .map_err(|e| e.in_object("manifest"))?;
        let top = match target {
            Target::Head => m.active_layer,
            Target::Snapshot(name) => {
                m.snapshot(name)
                    .ok_or_else(|| Error::SnapshotNotFound(name.clone()))?
                    .layer
            }
            Target::SnapshotId(id) => {
                m.snapshots
                    .iter()
                    .find(|s| s.id == *id)
                    .ok_or_else(|| Error::SnapshotNotFound(id.to_string()))?
                    .layer
            }
        };
        let label = match target {
            Target::Head => "head".to_string(),
            Target::Snapshot(n) => format!("snapshot {n}"),
            Target::SnapshotId(id) => format!("snapshot {id}"),
        };
        let chain = open_chain(
            store,
            &m,
            geometry,
            Some(top),
            &mut HashMap::new(),
            opts,
            &label,
        )?;
        Ok(View {
            manifest: m,
            chain,
            target: target.clone(),
        })
    }

    pub(crate) fn from_parts(manifest: Manifest, chain: Chain, target: Target) -> View {
        View {
            manifest,
            chain,
            target,
        }
    }

    /// What this view shows.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The manifest the view was opened from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Guest-visible size.
    pub fn virtual_size(&self) -> u64 {
        self.chain.geometry.virtual_size()
    }

    /// Geometry.
    pub fn geometry(&self) -> Geometry {
        self.chain.geometry
    }

    /// Number of layers in the chain.
    pub fn depth(&self) -> usize {
        self.chain.depth()
    }

    /// Read guest bytes.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.chain
            .geometry
            .check_range("read", offset, buf.len() as u64)?;
        read_runs(&self.chain, buf, offset)
    }

    /// Allocation extents in `[offset, offset+len)`.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.chain.geometry.check_range("map", offset, len)?;
        alloc::extents(&self.chain, offset, len)
    }

    /// Snapshots of the manifest the view was opened from.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        let m = &self.manifest;
        let bytes: HashMap<Id, u64> = self
            .chain
            .layers
            .iter()
            .map(|l| (l.id, l.allocated_bytes()))
            .collect();
        snapshot_infos(m, |s| bytes.get(&s.layer).copied())
    }

    /// Layers of the chain, base first.
    pub fn layers(&self) -> &[Arc<crate::layer::LayerData>] {
        &self.chain.layers
    }

    /// Notes from opening (journal replay of a head view, damaged copies and layers).
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.chain.layers {
            out.extend(l.journal_note.clone());
            out.extend(l.notes.iter().cloned());
            if let Some(d) = &l.damaged {
                out.push(format!(
                    "{}: damaged ({d}); what it holds cannot be read",
                    l.file_name
                ));
            }
        }
        out
    }
}
