//! Delta streams: a diff with its data, checksummed and compressed, that reproduces a
//! snapshot in another bundle (format-spec/delta-stream.md).
//!
//! Import stages the stream into a new layer that nothing names; only when the whole stream
//! has been read and its blake3 verified does one manifest switch make the snapshot exist.
//! A corrupted, truncated or mismatched stream changes nothing.

use crate::diff::{prepare, subclusters, Point, Side};
use crate::disk::{layer_file_name, now_ns, open_chain, update_manifest, Disk};
use crate::error::{Error, FieldError, Result};
use crate::format::delta::{Record, RecordReader, RecordWriter};
use crate::format::manifest::{journal_name, LayerRecord, SnapshotRecord};
use crate::format::{Geometry, Id};
use crate::layer::ActiveLayer;
use crate::store::Store;
use serde::Serialize;
use std::io::{self, Read, Write};
use std::sync::Arc;

pub use crate::format::delta::{
    StreamHeader, StreamSnapshot, MAGIC, MAX_DATA_RECORD, MAX_HEADER_JSON, VERSION,
};

/// What an export or import moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    /// Data records and their bytes.
    pub data_records: u64,
    /// Bytes of data.
    pub data_bytes: u64,
    /// Zero records.
    pub zero_records: u64,
    /// Bytes made zero.
    pub zero_bytes: u64,
    /// Stream bytes (compressed, header included).
    pub stream_bytes: u64,
    /// The head moved to the imported snapshot (import only).
    pub head_moved: bool,
    /// The head's own writes were discarded to move it (an import with `force`).
    pub head_reverted: bool,
    /// Where the head ends up: the snapshot it now stands on (`None`: the imported
    /// snapshot's layer is not below it, the head stayed where it was).
    pub head_on: Option<String>,
}

/// How [`Disk::import_diff_with`] treats a replica whose head moved on by itself.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Revert the head to the stream's FROM snapshot first when it has writes of its own or
    /// stands elsewhere (its changes are discarded), instead of refusing.
    pub force: bool,
    /// The VM state the new snapshot records (a replica of a VM snapshot). Its objects
    /// must already be in the bundle, verified: it is committed by the same manifest
    /// replace as the snapshot.
    pub vm_state: Option<crate::format::vmstate::VmStateRecord>,
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}
impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn stream_err(e: FieldError) -> Error {
    e.in_object("delta stream")
}

fn write_err(e: io::Error) -> Error {
    Error::io("delta stream", "write", e)
}

/// Write the delta stream from `from` (a snapshot, or `None` for a full stream) to snapshot
/// `to` of the bundle in `store`. Every byte shipped is verified against its blake3 first
/// (format-spec/chain.md §2): a damaged cluster stops the export with [`Error::Corrupt`].
pub fn export_diff(
    store: &dyn Store,
    from: Option<&str>,
    to: &str,
    out: &mut dyn Write,
    level: i32,
) -> Result<StreamReport> {
    let pf = from
        .map(|s| Point::Snapshot(s.to_string()))
        .unwrap_or(Point::Empty);
    let pt = Point::Snapshot(to.to_string());
    let (g, m, _a, b, cand) = prepare(store, &pf, &pt)?;
    let snap = |n: &str| -> Result<StreamSnapshot> {
        let s = m
            .snapshot(n)
            .ok_or_else(|| Error::SnapshotNotFound(n.to_string()))?;
        Ok(StreamSnapshot {
            id: s.id,
            name: s.name.clone(),
            created_ns: s.created_ns,
        })
    };
    let header = StreamHeader {
        virtual_size: m.virtual_size,
        cluster_size: m.cluster_size,
        source_bundle: m.bundle_id,
        from: from.map(snap).transpose()?,
        to: snap(to)?,
        created_ns: now_ns(),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mut cw = CountingWriter { inner: out, n: 0 };
    let mut w = RecordWriter::new(&mut cw, &header, level, threads).map_err(write_err)?;
    let mut rep = StreamReport::default();
    write_records(&g, &cand, &b, from.is_none(), &mut w, &mut rep)?;
    let (_, cw) = w.finish().map_err(write_err)?;
    cw.flush().map_err(write_err)?;
    rep.stream_bytes = cw.n;
    Ok(rep)
}

/// One run of records being built: data bytes, or a zero length.
enum Run {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

fn write_records<W: Write>(
    g: &Geometry,
    cand: &std::collections::BTreeMap<u64, u32>,
    b: &Side,
    full: bool,
    w: &mut RecordWriter<W>,
    rep: &mut StreamReport,
) -> Result<()> {
    let mut scratch = Vec::new();
    let mut buf = vec![0u8; g.subcluster_size() as usize];
    let mut run: Option<Run> = None;
    let mut flush = |run: &mut Option<Run>, w: &mut RecordWriter<W>| -> Result<()> {
        match run.take() {
            Some(Run::Data(off, d)) => {
                rep.data_records += 1;
                rep.data_bytes += d.len() as u64;
                w.data(off, &d).map_err(write_err)
            }
            Some(Run::Zero(off, len)) => {
                rep.zero_records += 1;
                rep.zero_bytes += len;
                w.zero(off, len).map_err(write_err)
            }
            None => Ok(()),
        }
    };
    for (&c, &mask) in cand {
        for (s, off, len, data) in subclusters(g, c, mask, b) {
            if data {
                b.read_sub(g, c, s, &mut buf, &mut scratch)?;
                let bytes = &buf[..len as usize];
                match &mut run {
                    Some(Run::Data(o, d))
                        if *o + d.len() as u64 == off
                            && d.len() + bytes.len() <= MAX_DATA_RECORD as usize =>
                    {
                        d.extend_from_slice(bytes)
                    }
                    _ => {
                        flush(&mut run, w)?;
                        run = Some(Run::Data(off, bytes.to_vec()));
                    }
                }
            } else if full {
                // A full stream starts from an empty disk: zeros need no record.
                flush(&mut run, w)?;
            } else {
                match &mut run {
                    Some(Run::Zero(o, z)) if *o + *z == off => *z += len,
                    _ => {
                        flush(&mut run, w)?;
                        run = Some(Run::Zero(off, len));
                    }
                }
            }
        }
    }
    flush(&mut run, w)
}

impl Disk {
    /// Apply a delta stream: verify that this disk holds the stream's FROM snapshot (by id),
    /// stage the records in a new layer on top of it, verify the whole stream, then create
    /// the TO snapshot with the same id. When the head has no changes of its own since FROM,
    /// it moves to the new snapshot. Nothing changes if anything is wrong with the stream.
    pub fn import_diff(&self, input: &mut dyn Read) -> Result<StreamReport> {
        self.import_diff_with(input, &ImportOptions::default())
    }

    /// [`Disk::import_diff`], refusing (unless `opts.force`) when the head has writes of its
    /// own or does not stand on the stream's FROM snapshot: the replica would silently stay
    /// on a branch of its own.
    pub fn import_diff_with(
        &self,
        input: &mut dyn Read,
        opts: &ImportOptions,
    ) -> Result<StreamReport> {
        let (h, head_bytes) = StreamHeader::read(input).map_err(stream_err)?;
        // A replica takes the source's names as they are (the rules for new names, such as
        // `head` being reserved, are the source's business).
        crate::format::manifest::check_snapshot_name(&h.to.name).map_err(|reason| {
            Error::InvalidName {
                name: h.to.name.clone(),
                reason,
            }
        })?;
        let mut st = self.write_state()?;
        let g = st.geometry;
        let m = st.manifest.clone();
        if h.virtual_size != g.virtual_size() {
            return Err(Error::StreamMismatch(format!(
                "the stream is for a disk of {} bytes; this disk has {}",
                h.virtual_size,
                g.virtual_size()
            )));
        }
        if let Some(s) = m.snapshots.iter().find(|s| s.id == h.to.id) {
            return Err(Error::StreamMismatch(format!(
                "snapshot {} ({:?}) is already here",
                h.to.id.short(),
                s.name
            )));
        }
        if m.snapshot(&h.to.name).is_some() {
            return Err(Error::SnapshotExists(h.to.name.clone()));
        }
        let base = match &h.from {
            Some(f) => Some(
                m.snapshots
                    .iter()
                    .find(|s| s.id == f.id)
                    .ok_or_else(|| {
                        Error::StreamMismatch(format!(
                            "the stream starts from snapshot {:?} (id {}), which this disk does not hold",
                            f.name, f.id
                        ))
                    })?
                    .layer,
            ),
            None => None,
        };
        let head_clean =
            st.active.entry_count() == 0 && m.layer(st.active.id).and_then(|l| l.parent) == base;
        if !head_clean && !opts.force {
            let from = h
                .from
                .as_ref()
                .map(|f| format!("snapshot {:?}", f.name))
                .unwrap_or_else(|| "an empty disk (a full stream)".into());
            let reason = if st.active.entry_count() != 0 {
                format!(
                    "has writes of its own since its last snapshot (the stream continues {from})"
                )
            } else {
                format!("does not stand on {from}, where the stream starts")
            };
            return Err(Error::ReplicaDiverged { reason });
        }
        let store = self.store.clone();
        let chain = open_chain(
            store.as_ref(),
            &m,
            g,
            base,
            &mut st.cache(),
            &self.opts,
            "the base of an import",
        )?;
        let id = Id::random();
        let file = layer_file_name(id, 1);
        let now = now_ns();
        let mut staging = ActiveLayer::create(&store, &file, id, g, now)?;
        let cleanup = |store: &dyn Store| {
            let _ = store.remove_object(&file);
            let _ = store.remove_object(&journal_name(&file));
        };
        let rep = match apply_body(&mut staging, &chain, &g, input, head_bytes) {
            Ok(r) => r,
            Err(e) => {
                drop(staging);
                cleanup(store.as_ref());
                return Err(e);
            }
        };
        let sealed = match staging.seal() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                cleanup(store.as_ref());
                return Err(e);
            }
        };
        let active = st.active.id;
        let snap = SnapshotRecord {
            id: h.to.id,
            name: h.to.name.clone(),
            created_ns: h.to.created_ns,
            layer: id,
            pinned: false,
            vm_state: opts.vm_state.as_ref().map(|r| r.to_value()),
            virtual_size: None,
        };
        let new_active = if head_clean || opts.force {
            let aid = Id::random();
            Some((
                aid,
                ActiveLayer::create(&store, &layer_file_name(aid, 1), aid, g, now)?,
            ))
        } else {
            None
        };
        let new_active_rec = new_active.as_ref().map(|(aid, a)| LayerRecord {
            id: *aid,
            parent: Some(id),
            file: a.file_name.clone(),
            sealed: false,
            externs: Vec::new(),
            created_ns: now,
        });
        let file2 = file.clone();
        let (m2, ()) = update_manifest(store.as_ref(), move |m| {
            if m.snapshots
                .iter()
                .any(|s| s.id == snap.id || s.name == snap.name)
            {
                return Err(Error::SnapshotExists(snap.name.clone()));
            }
            m.layers.push(LayerRecord {
                id,
                parent: base,
                file: file2,
                sealed: true,
                externs: Vec::new(),
                created_ns: now,
            });
            m.snapshots.push(snap);
            if let Some(rec) = new_active_rec {
                if m.active_layer == active {
                    m.layers.retain(|l| l.id != active);
                    m.active_layer = rec.id;
                    m.layers.push(rec);
                }
            }
            Ok(())
        })
        .inspect_err(|_| cleanup(store.as_ref()))?;
        let _ = store.remove_object(&journal_name(&file));
        st.cache().insert(file, sealed);
        let mut rep = rep;
        match new_active {
            Some((_, a)) if m2.active_layer == a.id => {
                st.active = a;
                self.refresh_chain(&mut st, m2)?;
                rep.head_moved = true;
                rep.head_reverted = !head_clean;
                rep.head_on = Some(h.to.name.clone());
            }
            _ => {
                let parent = m2.layer(m2.active_layer).and_then(|l| l.parent);
                rep.head_on = m2
                    .snapshots
                    .iter()
                    .find(|s| Some(s.layer) == parent)
                    .map(|s| s.name.clone());
                st.manifest = m2;
            }
        }
        Ok(rep)
    }
}

fn apply_body(
    staging: &mut ActiveLayer,
    below: &crate::resolve::Chain,
    g: &Geometry,
    input: &mut dyn Read,
    head: Vec<u8>,
) -> Result<StreamReport> {
    let mut rr = RecordReader::new(input, &head, g.virtual_size()).map_err(stream_err)?;
    let mut rep = StreamReport::default();
    let mut data = Vec::new();
    while let Some(r) = rr.next(&mut data).map_err(stream_err)? {
        match r {
            Record::Data { offset, len } => {
                staging.write(below, &data, offset)?;
                rep.data_records += 1;
                rep.data_bytes += u64::from(len);
            }
            Record::Zero { offset, len } => {
                staging.write_zeroes(below, offset, len)?;
                rep.zero_records += 1;
                rep.zero_bytes += len;
            }
        }
    }
    Ok(rep)
}
