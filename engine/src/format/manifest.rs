//! The manifest: envelope and JSON payload (format-spec/bundle.md §2–3).

use super::{le32, le64, Id};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Magic of the manifest envelope.
pub const MAGIC: &[u8; 8] = b"VDSKMNFT";
/// Envelope version written (format-spec/bundle.md §2).
pub const VERSION: u32 = 3;
/// Oldest envelope version read.
pub const MIN_VERSION: u32 = 1;
/// Longest object name of a layer file: it must fit an extern table entry (layer.md §6).
pub const MAX_LAYER_NAME: usize = crate::format::header::EXTERN_ENTRY;
/// Envelope header length.
pub const HEADER_LEN: usize = 64;
/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Most layers, snapshots and chain depth.
pub const MAX_LAYERS: usize = 65_536;
/// Most snapshots.
pub const MAX_SNAPSHOTS: usize = 65_536;

/// One layer of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    /// Layer id.
    pub id: Id,
    /// Parent layer, none for a base.
    pub parent: Option<Id>,
    /// Object name of the layer file.
    pub file: String,
    /// Sealed (immutable).
    pub sealed: bool,
    /// Other layer files this layer's map references.
    #[serde(default)]
    pub externs: Vec<String>,
    /// Creation time (ns since the epoch).
    pub created_ns: u64,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRecord {
    /// Snapshot id (kept across delta streams).
    pub id: Id,
    /// Unique name.
    pub name: String,
    /// Creation time (ns since the epoch).
    pub created_ns: u64,
    /// The sealed layer holding the snapshot's content (with its ancestors).
    pub layer: Id,
    /// Never merged away by the retention policy.
    #[serde(default)]
    pub pinned: bool,
    /// VM state, preserved as is (versioned by its own `version` member).
    #[serde(default)]
    pub vm_state: Option<serde_json::Value>,
    /// The disk's size when the snapshot was taken, when it differs from the bundle's
    /// `virtual_size` (set for every snapshot by the first resize; absent: the bundle's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
}

impl SnapshotRecord {
    /// The VM state record, when the snapshot has one that parses (a manifest that passed
    /// [`Manifest::validate`] has only such).
    pub fn vm(&self) -> Option<super::vmstate::VmStateRecord> {
        self.vm_state
            .as_ref()
            .and_then(|v| super::vmstate::VmStateRecord::from_value(v).ok())
    }
}

/// Retention policy applied by `maintain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Keep at least the newest N snapshots.
    pub keep_last: Option<u32>,
    /// Keep the chain of the head at most this deep.
    pub max_chain: Option<u32>,
    /// Keep one snapshot per hour for the last N hours.
    pub hourly: Option<u32>,
    /// Keep one snapshot per day for the last N days.
    pub daily: Option<u32>,
}

/// The manifest payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Generation, equal to the envelope's.
    pub generation: u64,
    /// Bundle id.
    pub bundle_id: Id,
    /// Guest-visible size.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Subcluster size in bytes.
    pub subcluster_size: u64,
    /// Bundle creation time.
    pub created_ns: u64,
    /// The layer tree.
    pub layers: Vec<LayerRecord>,
    /// The writable layer.
    pub active_layer: Id,
    /// Snapshots in creation order.
    pub snapshots: Vec<SnapshotRecord>,
    /// Retention policy.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// The head's size when a shrink made it smaller than `virtual_size` (which stays the
    /// largest size the bundle had, the geometry of its maps); absent: `virtual_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_size: Option<u64>,
}

/// Check a snapshot name against the manifest's rules.
pub fn check_snapshot_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 bytes");
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..");
    }
    if name.starts_with('-') {
        return Err("must not start with '-'");
    }
    if name.chars().any(|c| c == '/' || c.is_control()) {
        return Err("must not contain '/' or control characters");
    }
    Ok(())
}

/// Names a writer refuses for a *new* snapshot (create, rename), beyond
/// [`check_snapshot_name`]: `head` and anything starting with `@` stand for the live head
/// wherever a snapshot is named (`@head`), and a name ending in `.raw` would clash with
/// another snapshot's file in a mount (`snapshots/NAME.raw`). Bundles holding such names
/// from before still open (bundle.md §3).
pub fn check_new_snapshot_name(name: &str) -> Result<(), &'static str> {
    check_snapshot_name(name)?;
    if name == "head" || name.starts_with('@') {
        return Err("is reserved for the live head (head, @head)");
    }
    if name.ends_with(".raw") {
        return Err("must not end in .raw (a mount shows snapshots as NAME.raw)");
    }
    Ok(())
}

/// Check an object name of the manifest (`layers/…` or `state/…`).
pub fn check_object_name(name: &str) -> bool {
    let Some((dir, file)) = name.split_once('/') else {
        return false;
    };
    (dir == "layers" || dir == "state")
        && !file.is_empty()
        && file.len() <= 96
        && (dir != "layers" || name.len() <= MAX_LAYER_NAME)
        && file
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
        && file != "."
        && file != ".."
}

/// An index of a manifest's layer tree by id, built in O(layers), so walks over chains of
/// 1,000 layers cost O(depth), not O(depth × layers).
pub struct LayerIndex<'a> {
    m: &'a Manifest,
    pos: HashMap<Id, usize>,
}

impl<'a> LayerIndex<'a> {
    /// Index `m`'s layers (the first record wins for a duplicate id; validate() refuses those).
    pub fn new(m: &'a Manifest) -> Self {
        let mut pos = HashMap::with_capacity(m.layers.len());
        for (i, l) in m.layers.iter().enumerate() {
            pos.entry(l.id).or_insert(i);
        }
        LayerIndex { m, pos }
    }

    /// The layer record with `id`.
    pub fn get(&self, id: Id) -> Option<&'a LayerRecord> {
        self.pos.get(&id).map(|&i| &self.m.layers[i])
    }

    /// Ids from the base up to and including `top` (stops at a missing parent or a cycle).
    pub fn chain(&self, top: Id) -> Vec<Id> {
        let mut out = Vec::new();
        let mut cur = Some(top);
        while let Some(id) = cur {
            out.push(id);
            if out.len() > MAX_LAYERS {
                break; // validate() refuses cycles; this only guards unvalidated use
            }
            cur = self.get(id).and_then(|l| l.parent);
        }
        out.reverse();
        out
    }

    /// Depth (layers from the base, inclusive) of every layer, in O(layers) total; `None`
    /// for a layer on a cycle or above a missing parent.
    pub fn depths(&self) -> HashMap<Id, Option<usize>> {
        let mut depth: HashMap<Id, Option<usize>> = HashMap::with_capacity(self.pos.len());
        for l in &self.m.layers {
            if depth.contains_key(&l.id) {
                continue;
            }
            // Walk up to a known layer (or the base), then assign on the way back down.
            let mut path: Vec<Id> = Vec::new();
            let mut on_path: std::collections::HashSet<Id> = std::collections::HashSet::new();
            let mut cur = Some(l.id);
            let mut below: Option<usize> = Some(0);
            while let Some(id) = cur {
                if let Some(d) = depth.get(&id) {
                    below = *d;
                    break;
                }
                if !on_path.insert(id) || path.len() > MAX_LAYERS {
                    below = None; // a cycle
                    break;
                }
                let Some(rec) = self.get(id) else {
                    below = None; // a missing parent
                    break;
                };
                path.push(id);
                cur = rec.parent;
            }
            for id in path.into_iter().rev() {
                below = below.map(|d| d + 1).filter(|&d| d <= MAX_LAYERS);
                depth.insert(id, below);
            }
        }
        depth
    }

    /// Number of children of every layer that has any.
    pub fn child_counts(&self) -> HashMap<Id, usize> {
        let mut n = HashMap::new();
        for l in &self.m.layers {
            if let Some(p) = l.parent {
                *n.entry(p).or_insert(0) += 1;
            }
        }
        n
    }
}

impl Manifest {
    /// An index of the layer tree (for walks over many layers).
    pub fn index(&self) -> LayerIndex<'_> {
        LayerIndex::new(self)
    }

    /// The layer record with `id`.
    pub fn layer(&self, id: Id) -> Option<&LayerRecord> {
        self.layers.iter().find(|l| l.id == id)
    }

    /// Mutable layer record with `id`.
    pub fn layer_mut(&mut self, id: Id) -> Option<&mut LayerRecord> {
        self.layers.iter_mut().find(|l| l.id == id)
    }

    /// The snapshot named `name`.
    pub fn snapshot(&self, name: &str) -> Option<&SnapshotRecord> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// The snapshot a user means by `spec`: its name, else its id written in full or as a
    /// prefix of at least 4 hex digits that only one snapshot's id starts with.
    pub fn find_snapshot(&self, spec: &str) -> Option<&SnapshotRecord> {
        if let Some(s) = self.snapshot(spec) {
            return Some(s);
        }
        let hex =
            spec.len() >= 4 && spec.len() <= 32 && spec.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return None;
        }
        let spec = spec.to_ascii_lowercase();
        let mut found = self
            .snapshots
            .iter()
            .filter(|s| s.id.to_string().starts_with(&spec));
        match (found.next(), found.next()) {
            (Some(s), None) => Some(s),
            _ => None,
        }
    }

    /// The head's guest-visible size.
    pub fn head_size(&self) -> u64 {
        self.head_size.unwrap_or(self.virtual_size)
    }

    /// The guest-visible size of snapshot `s`.
    pub fn snapshot_size(&self, s: &SnapshotRecord) -> u64 {
        s.virtual_size.unwrap_or(self.virtual_size)
    }

    /// The snapshot named `name`, mutable.
    pub fn snapshot_mut(&mut self, name: &str) -> Result<&mut SnapshotRecord, crate::Error> {
        self.snapshots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| crate::Error::SnapshotNotFound(name.to_string()))
    }

    /// Ids from the base up to and including `top`. O(layers).
    pub fn chain(&self, top: Id) -> Vec<Id> {
        self.index().chain(top)
    }

    /// Children of `id`.
    pub fn children(&self, id: Id) -> Vec<Id> {
        self.layers
            .iter()
            .filter(|l| l.parent == Some(id))
            .map(|l| l.id)
            .collect()
    }

    /// Layers still referenced (by a snapshot, the active layer, or as ancestors of those).
    /// O(layers + snapshots): each walk stops at the first layer already kept.
    pub fn referenced_layers(&self) -> HashSet<Id> {
        let idx = self.index();
        let mut keep = HashSet::with_capacity(self.layers.len());
        let tops = self
            .snapshots
            .iter()
            .map(|s| s.layer)
            .chain(std::iter::once(self.active_layer));
        for top in tops {
            let mut cur = Some(top);
            while let Some(id) = cur {
                if !keep.insert(id) || keep.len() > MAX_LAYERS {
                    break;
                }
                cur = idx.get(id).and_then(|l| l.parent);
            }
        }
        keep
    }

    /// Object names kept alive by the layer records (files and externs).
    pub fn live_objects(&self) -> HashSet<String> {
        let mut s = HashSet::new();
        for l in &self.layers {
            s.insert(l.file.clone());
            s.insert(journal_name(&l.file));
            s.extend(l.externs.iter().cloned());
        }
        for snap in &self.snapshots {
            if let Some(r) = snap.vm() {
                s.extend(r.objects().map(str::to_string));
            }
        }
        s
    }

    /// Check every rule of bundle.md §3.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |f: &str, r: String| Err(FieldError::new(f, r));
        super::Geometry::from_sizes(self.virtual_size, self.cluster_size, self.subcluster_size)?;
        let sized = |v: u64| v >= 512 && v.is_multiple_of(512) && v <= self.virtual_size;
        if let Some(h) = self.head_size {
            if !sized(h) {
                return err(
                    "head_size",
                    format!("{h}: a multiple of 512 from 512 to virtual_size is allowed"),
                );
            }
        }
        if let Some(s) = self
            .snapshots
            .iter()
            .find(|s| s.virtual_size.is_some_and(|v| !sized(v)))
        {
            return err(
                "snapshots.virtual_size",
                format!(
                    "snapshot {:?}: {:?} is not a multiple of 512 from 512 to virtual_size",
                    s.name, s.virtual_size
                ),
            );
        }
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return err(
                "layers",
                format!("{} layers (1..=65536 allowed)", self.layers.len()),
            );
        }
        if self.snapshots.len() > MAX_SNAPSHOTS {
            return err(
                "snapshots",
                format!("{} snapshots (at most 65536)", self.snapshots.len()),
            );
        }
        let mut by_id: HashMap<Id, &LayerRecord> = HashMap::new();
        let mut files = HashSet::new();
        for l in &self.layers {
            if by_id.insert(l.id, l).is_some() {
                return err("layers.id", format!("duplicate layer id {}", l.id));
            }
            if !check_object_name(&l.file) || !l.file.starts_with("layers/") {
                return err("layers.file", format!("invalid object name {:?}", l.file));
            }
            if !files.insert(l.file.clone()) {
                return err("layers.file", format!("{:?} used twice", l.file));
            }
            if l.externs.len() > 255 {
                return err(
                    "layers.externs",
                    format!("layer {} has {} externs", l.id, l.externs.len()),
                );
            }
            for x in &l.externs {
                if !check_object_name(x) || !x.starts_with("layers/") || *x == l.file {
                    return err(
                        "layers.externs",
                        format!("invalid extern {x:?} of layer {}", l.id),
                    );
                }
            }
        }
        for l in &self.layers {
            if let Some(p) = l.parent {
                if !by_id.contains_key(&p) {
                    return err(
                        "layers.parent",
                        format!("layer {} names unknown parent {p}", l.id),
                    );
                }
            }
        }
        // cycle / depth check, O(layers) (every parent is known by now)
        let depths = self.index().depths();
        if let Some(l) = self
            .layers
            .iter()
            .find(|l| depths.get(&l.id).copied().flatten().is_none())
        {
            return err(
                "layers.parent",
                format!(
                    "layer {} is part of a cycle or deeper than {MAX_LAYERS}",
                    l.id
                ),
            );
        }
        let Some(active) = by_id.get(&self.active_layer) else {
            return err(
                "active_layer",
                format!("{} is not a layer", self.active_layer),
            );
        };
        if active.sealed {
            return err("active_layer", "names a sealed layer".into());
        }
        for l in &self.layers {
            if l.id != self.active_layer && !l.sealed {
                return err(
                    "layers.sealed",
                    format!("layer {} is unsealed but not active", l.id),
                );
            }
            if l.parent == Some(self.active_layer) {
                return err("layers.parent", "the active layer has a child".into());
            }
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for s in &self.snapshots {
            if let Err(why) = check_snapshot_name(&s.name) {
                return err("snapshots.name", format!("{:?} {why}", s.name));
            }
            if !names.insert(s.name.as_str()) {
                return err("snapshots.name", format!("duplicate name {:?}", s.name));
            }
            if !ids.insert(s.id) {
                return err("snapshots.id", format!("duplicate id {}", s.id));
            }
            match by_id.get(&s.layer) {
                Some(l) if l.sealed => {}
                Some(_) => {
                    return err(
                        "snapshots.layer",
                        format!("snapshot {:?} names the active layer", s.name),
                    )
                }
                None => {
                    return err(
                        "snapshots.layer",
                        format!("snapshot {:?} names unknown layer {}", s.name, s.layer),
                    )
                }
            }
        }
        // VM state (vmstate.md §1): a diff's base is an earlier snapshot with memory.
        let mut with_memory = HashSet::new();
        let mut objects = HashSet::new();
        for s in &self.snapshots {
            let Some(v) = &s.vm_state else { continue };
            let r = super::vmstate::VmStateRecord::from_value(v).map_err(|e| {
                FieldError::new(
                    format!("snapshots.{}", e.field),
                    format!("{:?}: {}", s.name, e.reason),
                )
            })?;
            for o in r.objects() {
                if !objects.insert(o.to_string()) {
                    return err("snapshots.vm_state", format!("object {o} named twice"));
                }
            }
            if let Some(m) = &r.memory {
                if let Some(b) = m.base {
                    if !with_memory.contains(&b) {
                        return err(
                            "snapshots.vm_state.memory.base",
                            format!(
                                "{:?}: base {b} is not an earlier snapshot with memory",
                                s.name
                            ),
                        );
                    }
                }
                with_memory.insert(s.id);
            }
        }
        Ok(())
    }

    /// Encode envelope + payload.
    pub fn encode(&self) -> Vec<u8> {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        wrap_payload(self.generation, &payload)
    }

    /// Decode and validate.
    pub fn decode(b: &[u8]) -> Result<Manifest, FieldError> {
        Self::decode_inner(b)
    }
}

/// The generation in a manifest envelope whose magic and header checksum are right, without
/// decoding the payload: what a lock-free reader polls to notice a change.
pub fn peek_generation(b: &[u8]) -> Option<u64> {
    let h = b.get(..HEADER_LEN)?;
    if &h[0..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(h[32..36].try_into().ok()?);
    if crc32fast::hash(&h[0..32]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(h[16..24].try_into().ok()?))
}

/// Put a payload into a correct envelope (tests and fuzzing reach the JSON checks with it).
pub fn wrap_payload(generation: u64, payload: &[u8]) -> Vec<u8> {
    {
        let mut b = vec![0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&generation.to_le_bytes());
        b[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[28..32].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let hcrc = crc32fast::hash(&b[0..32]);
        b[32..36].copy_from_slice(&hcrc.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }
}

impl Manifest {
    fn decode_inner(b: &[u8]) -> Result<Manifest, FieldError> {
        if b.len() < HEADER_LEN {
            return Err(FieldError::new(
                "length",
                format!("{} bytes, shorter than the 64-byte header", b.len()),
            ));
        }
        if &b[0..8] != MAGIC {
            return Err(FieldError::new("magic", "not VDSKMNFT"));
        }
        if le32(b, 32) != crc32fast::hash(&b[0..32]) {
            return Err(FieldError::checksum("header_crc32"));
        }
        let version = le32(b, 8);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(FieldError::new(
                "format_version",
                format!("{version} (this build reads {MIN_VERSION} to {VERSION})"),
            ));
        }
        if le32(b, 12) != 0 {
            return Err(FieldError::new(
                "flags",
                format!("{:#x} (unknown)", le32(b, 12)),
            ));
        }
        let generation = le64(b, 16);
        let len = le32(b, 24) as usize;
        if !(2..=MAX_PAYLOAD).contains(&len) || b.len() != HEADER_LEN + len {
            return Err(FieldError::new(
                "payload_len",
                format!(
                    "{len} does not match the file ({} bytes) or exceeds 64 MiB",
                    b.len()
                ),
            ));
        }
        let payload = &b[HEADER_LEN..];
        if le32(b, 28) != crc32fast::hash(payload) {
            return Err(FieldError::checksum("payload_crc32"));
        }
        if b[36..64].iter().any(|&x| x != 0) {
            return Err(FieldError::new("reserved", "not zero"));
        }
        let m: Manifest = serde_json::from_slice(payload)
            .map_err(|e| FieldError::new("payload", e.to_string()))?;
        if m.generation != generation {
            return Err(FieldError::new(
                "generation",
                format!("payload says {}, envelope {generation}", m.generation),
            ));
        }
        m.validate()?;
        Ok(m)
    }
}

/// The journal object of a layer file.
pub fn journal_name(layer_file: &str) -> String {
    match layer_file.strip_suffix(".layer") {
        Some(stem) => format!("{stem}.journal"),
        None => format!("{layer_file}.journal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let base = Id([1; 16]);
        let top = Id([2; 16]);
        Manifest {
            generation: 3,
            bundle_id: Id([9; 16]),
            virtual_size: 1 << 30,
            cluster_size: 65536,
            subcluster_size: 4096,
            created_ns: 5,
            layers: vec![
                LayerRecord {
                    id: base,
                    parent: None,
                    file: "layers/a-1.layer".into(),
                    sealed: true,
                    externs: vec![],
                    created_ns: 1,
                },
                LayerRecord {
                    id: top,
                    parent: Some(base),
                    file: "layers/b-1.layer".into(),
                    sealed: false,
                    externs: vec![],
                    created_ns: 2,
                },
            ],
            active_layer: top,
            snapshots: vec![SnapshotRecord {
                id: Id([3; 16]),
                name: "s1".into(),
                created_ns: 4,
                layer: base,
                pinned: false,
                vm_state: None,
                virtual_size: None,
            }],
            policy: None,
            head_size: None,
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn refuses_bad() {
        let b = sample().encode();
        let mut c = b.clone();
        c[100] ^= 1;
        assert!(Manifest::decode(&c).is_err());
        assert!(Manifest::decode(&b[..b.len() - 1]).is_err());
        let mut m = sample();
        m.layers[1].parent = Some(m.layers[1].id);
        assert!(Manifest::decode(&m.encode()).is_err(), "cycle");
        let mut m = sample();
        m.snapshots[0].layer = m.active_layer;
        assert!(
            Manifest::decode(&m.encode()).is_err(),
            "snapshot of active layer"
        );
        let mut m = sample();
        m.layers[0].file = "../evil".into();
        assert!(Manifest::decode(&m.encode()).is_err(), "escaping name");
        let mut m = sample();
        m.snapshots[0].name = "a/b".into();
        assert!(Manifest::decode(&m.encode()).is_err(), "bad name");
    }

    #[test]
    fn index_walks_deep_trees_and_finds_cycles() {
        let mut m = sample();
        let mut prev = m.active_layer;
        m.layers[1].sealed = true;
        for i in 0..3000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[15] = 0xee;
            m.layers.push(LayerRecord {
                id: Id(id),
                parent: Some(prev),
                file: format!("layers/x{i}.layer"),
                sealed: true,
                externs: vec![],
                created_ns: 1,
            });
            prev = Id(id);
        }
        m.layers.last_mut().unwrap().sealed = false;
        m.active_layer = prev;
        m.validate().unwrap();
        let d = m.index().depths();
        assert_eq!(d[&prev], Some(3002));
        assert_eq!(m.chain(prev).len(), 3002);
        assert_eq!(m.referenced_layers().len(), 3002);
        // a cycle and a missing parent
        let mut c = m.clone();
        c.layers[0].parent = Some(prev);
        assert!(c.index().depths().values().all(|d| d.is_none()));
        assert!(c.validate().is_err());
        let mut c = m.clone();
        c.layers[0].parent = Some(Id([0x55; 16]));
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_members_refused() {
        let m = sample();
        let mut v = serde_json::to_value(&m).unwrap();
        v.as_object_mut()
            .unwrap()
            .insert("surprise".into(), 1.into());
        let payload = serde_json::to_vec(&v).unwrap();
        let mut b = m.encode()[..HEADER_LEN].to_vec();
        b[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[28..32].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let h = crc32fast::hash(&b[0..32]);
        b[32..36].copy_from_slice(&h.to_le_bytes());
        b.extend(payload);
        assert!(Manifest::decode(&b).is_err());
    }
}
