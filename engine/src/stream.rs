//! Delta streams: a diff with its data, checksummed and compressed, that reproduces a
//! snapshot in another bundle (format-spec/delta-stream.md).
//!
//! Import stages the stream into a new layer that nothing names; only when the whole stream
//! has been read and its blake3 verified does one manifest switch make the snapshot exist.
//! A corrupted, truncated or mismatched stream changes nothing.

use crate::diff::{prepare, Decider, Point, Side};
use crate::disk::{layer_file_name, now_ns, open_chain, update_manifest, Disk};
use crate::error::{Error, Result};
use crate::format::manifest::{journal_name, LayerRecord, SnapshotRecord};
use crate::format::{le32, Geometry, Id};
use crate::layer::ActiveLayer;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// Stream magic.
pub const MAGIC: &[u8; 8] = b"VDSKDLTA";
/// Stream format version.
pub const VERSION: u32 = 1;
/// Largest data record.
pub const MAX_DATA_RECORD: u32 = 4 << 20;
/// Largest header JSON.
pub const MAX_HEADER_JSON: u32 = 1 << 20;

const REC_DATA: u8 = b'D';
const REC_ZERO: u8 = b'Z';
const REC_END: u8 = b'E';

/// A snapshot's identity as a stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSnapshot {
    /// Snapshot id (kept by the importer).
    pub id: Id,
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_ns: u64,
}

/// The stream header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    /// Guest size of the disk.
    pub virtual_size: u64,
    /// Cluster size of the source (informational: any geometry can import it).
    pub cluster_size: u64,
    /// The bundle the stream was made from.
    pub source_bundle: Id,
    /// The snapshot the stream starts from (null: a full stream).
    pub from: Option<StreamSnapshot>,
    /// The snapshot the stream reproduces.
    pub to: StreamSnapshot,
    /// When the stream was made.
    pub created_ns: u64,
}

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

/// Body writer: hashes the uncompressed bytes.
struct Body<W: Write> {
    z: zstd::Encoder<'static, W>,
    hash: blake3::Hasher,
}
impl<W: Write> Body<W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.hash.update(b);
        self.z
            .write_all(b)
            .map_err(|e| Error::io("delta stream", "write", e))
    }
}

/// Write the delta stream from `from` (a snapshot, or `None` for a full stream) to snapshot
/// `to` of the bundle in `store`.
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
    let json = serde_json::to_vec(&header)
        .map_err(|e| Error::Internal(format!("stream header JSON: {e}")))?;
    let mut head = Vec::with_capacity(24 + json.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&json);
    let crc = crc32fast::hash(&head);
    head.extend_from_slice(&crc.to_le_bytes());
    let mut cw = CountingWriter { inner: out, n: 0 };
    cw.write_all(&head)
        .map_err(|e| Error::io("delta stream", "write", e))?;
    let mut z =
        zstd::Encoder::new(&mut cw, level).map_err(|e| Error::io("delta stream", "zstd", e))?;
    z.include_checksum(true)
        .map_err(|e| Error::io("delta stream", "zstd", e))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    if threads > 1 {
        let _ = z.multithread(threads);
    }
    let mut rep = StreamReport::default();
    let mut hash = blake3::Hasher::new();
    hash.update(&head);
    // The encoder borrows `cw`; keep it in a scope so the counter can be read afterwards.
    {
        let mut body = Body { z, hash };
        write_records(&g, &cand, &b, from.is_none(), &mut body, &mut rep)?;
        // The digest covers everything before the end record's fields, its type byte included.
        body.hash.update(&[REC_END]);
        let digest = body.hash.finalize();
        let mut end = vec![REC_END];
        for v in [
            rep.data_records + rep.zero_records,
            rep.data_bytes,
            rep.zero_bytes,
        ] {
            end.extend_from_slice(&v.to_le_bytes());
        }
        end.extend_from_slice(digest.as_bytes());
        body.z
            .write_all(&end)
            .map_err(|e| Error::io("delta stream", "write", e))?;
        body.z
            .finish()
            .map_err(|e| Error::io("delta stream", "finish", e))?;
    }
    cw.flush()
        .map_err(|e| Error::io("delta stream", "flush", e))?;
    rep.stream_bytes = cw.n;
    Ok(rep)
}

fn write_records<W: Write>(
    g: &Geometry,
    cand: &std::collections::BTreeMap<u64, u32>,
    b: &Side,
    full: bool,
    body: &mut Body<W>,
    rep: &mut StreamReport,
) -> Result<()> {
    let sub = g.subcluster_size();
    let mut scratch = Vec::new();
    let mut run: Option<(u8, u64, Vec<u8>, u64)> = None; // kind, offset, data, zero length
    let mut buf = vec![0u8; sub as usize];
    let flush_run = |run: &mut Option<(u8, u64, Vec<u8>, u64)>,
                     body: &mut Body<W>,
                     rep: &mut StreamReport|
     -> Result<()> {
        if let Some((kind, off, data, zlen)) = run.take() {
            if kind == REC_DATA {
                let mut r = vec![REC_DATA];
                r.extend_from_slice(&off.to_le_bytes());
                r.extend_from_slice(&(data.len() as u32).to_le_bytes());
                body.put(&r)?;
                body.put(&data)?;
                rep.data_records += 1;
                rep.data_bytes += data.len() as u64;
            } else {
                let mut r = vec![REC_ZERO];
                r.extend_from_slice(&off.to_le_bytes());
                r.extend_from_slice(&zlen.to_le_bytes());
                body.put(&r)?;
                rep.zero_records += 1;
                rep.zero_bytes += zlen;
            }
        }
        Ok(())
    };
    for (&c, &mask) in cand {
        for s in 0..g.subclusters() {
            if mask & (1 << s) == 0 {
                continue;
            }
            let off = c * g.cluster_size() + u64::from(s) * sub;
            if off >= g.virtual_size() {
                break;
            }
            let len = sub.min(g.virtual_size() - off);
            let is_data =
                matches!(b.decider(c, s), Decider::Entry(_, e) if e.alloc & (1 << s) != 0);
            if is_data {
                b.read_sub(g, c, s, &mut buf, &mut scratch)?;
                let bytes = &buf[..len as usize];
                let extend = matches!(&run, Some((REC_DATA, o, d, _)) if o + d.len() as u64 == off && d.len() + bytes.len() <= MAX_DATA_RECORD as usize);
                if extend {
                    if let Some((_, _, d, _)) = run.as_mut() {
                        d.extend_from_slice(bytes);
                    }
                } else {
                    flush_run(&mut run, body, rep)?;
                    run = Some((REC_DATA, off, bytes.to_vec(), 0));
                }
            } else {
                if full {
                    // A full stream starts from an empty disk: zeros need no record.
                    flush_run(&mut run, body, rep)?;
                    continue;
                }
                let extend = matches!(&run, Some((REC_ZERO, o, _, z)) if o + z == off);
                if extend {
                    if let Some((_, _, _, z)) = run.as_mut() {
                        *z += len;
                    }
                } else {
                    flush_run(&mut run, body, rep)?;
                    run = Some((REC_ZERO, off, Vec::new(), len));
                }
            }
        }
    }
    flush_run(&mut run, body, rep)
}

/// Read and check a stream header.
fn read_header(r: &mut dyn Read) -> Result<(StreamHeader, Vec<u8>)> {
    let bad = |field: &str, why: String| Error::format("delta stream", field, why);
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed)
        .map_err(|e| Error::io("delta stream", "read header", e))?;
    if &fixed[0..8] != MAGIC {
        return Err(bad("magic", "not a vdisk delta stream (VDSKDLTA)".into()));
    }
    let version = le32(&fixed, 8);
    if version != VERSION {
        return Err(bad("version", format!("{version} (this build reads 1)")));
    }
    let jlen = le32(&fixed, 12);
    if jlen == 0 || jlen > MAX_HEADER_JSON {
        return Err(bad("header length", format!("{jlen} bytes")));
    }
    let mut rest = vec![0u8; jlen as usize + 4];
    r.read_exact(&mut rest)
        .map_err(|e| Error::io("delta stream", "read header", e))?;
    let mut head = fixed.to_vec();
    head.extend_from_slice(&rest[..jlen as usize]);
    if le32(&rest, jlen as usize) != crc32fast::hash(&head) {
        return Err(Error::Checksum {
            object: "delta stream".into(),
            field: "header crc32".into(),
        });
    }
    let h: StreamHeader =
        serde_json::from_slice(&head[16..]).map_err(|e| bad("header", e.to_string()))?;
    head.extend_from_slice(&rest[jlen as usize..]);
    Ok((h, head))
}

/// Read exactly `buf.len()` bytes of the body, hashing them.
fn body_read(
    z: &mut dyn Read,
    hash: &mut blake3::Hasher,
    buf: &mut [u8],
    what: &str,
) -> Result<()> {
    z.read_exact(buf).map_err(|e| {
        Error::format(
            "delta stream",
            what,
            format!("body ends early or is damaged ({e})"),
        )
    })?;
    hash.update(buf);
    Ok(())
}

impl Disk {
    /// Apply a delta stream: verify that this disk holds the stream's FROM snapshot (by id),
    /// stage the records in a new layer on top of it, verify the whole stream, then create
    /// the TO snapshot with the same id. When the head has no changes of its own since FROM,
    /// it moves to the new snapshot. Nothing changes if anything is wrong with the stream.
    pub fn import_diff(&self, input: &mut dyn Read) -> Result<StreamReport> {
        let (h, head_bytes) = read_header(input)?;
        crate::disk::valid_snapshot_name(&h.to.name)?;
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
        let store = self.store.clone();
        let chain = open_chain(store.as_ref(), &m, g, base, &mut st.cache)?;
        let id = Id::random();
        let file = layer_file_name(id, 1);
        let now = now_ns();
        let mut staging = ActiveLayer::create(store.as_ref(), &file, id, g, now)?;
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
        let head_clean =
            st.active.entry_count() == 0 && m.layer(active).and_then(|l| l.parent) == base;
        let snap = SnapshotRecord {
            id: h.to.id,
            name: h.to.name.clone(),
            created_ns: h.to.created_ns,
            layer: id,
            pinned: false,
            vm_state: None,
        };
        let new_active = if head_clean {
            let aid = Id::random();
            Some((
                aid,
                ActiveLayer::create(store.as_ref(), &layer_file_name(aid, 1), aid, g, now)?,
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
        st.cache.insert(file, sealed);
        let mut rep = rep;
        match new_active {
            Some((_, a)) if m2.active_layer == a.id => {
                st.active = a;
                self.refresh_chain(&mut st, m2)?;
                rep.head_moved = true;
            }
            _ => st.manifest = m2,
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
    let mut hash = blake3::Hasher::new();
    hash.update(&head);
    let mut z = zstd::Decoder::new(input).map_err(|e| Error::io("delta stream", "zstd", e))?;
    let mut rep = StreamReport {
        stream_bytes: 0,
        ..Default::default()
    };
    let mut data = Vec::new();
    loop {
        let mut t = [0u8; 1];
        body_read(&mut z, &mut hash, &mut t, "record type")?;
        match t[0] {
            REC_DATA => {
                let mut f = [0u8; 12];
                body_read(&mut z, &mut hash, &mut f, "data record")?;
                let off = u64::from_le_bytes(f[0..8].try_into().unwrap_or_default());
                let len = le32(&f, 8);
                if len == 0 || len > MAX_DATA_RECORD {
                    return Err(Error::format(
                        "delta stream",
                        "data record length",
                        format!("{len}"),
                    ));
                }
                g.check_range("delta stream data record", off, u64::from(len))?;
                data.resize(len as usize, 0);
                body_read(&mut z, &mut hash, &mut data, "data record bytes")?;
                staging.write(below, &data, off)?;
                rep.data_records += 1;
                rep.data_bytes += u64::from(len);
            }
            REC_ZERO => {
                let mut f = [0u8; 16];
                body_read(&mut z, &mut hash, &mut f, "zero record")?;
                let off = u64::from_le_bytes(f[0..8].try_into().unwrap_or_default());
                let len = u64::from_le_bytes(f[8..16].try_into().unwrap_or_default());
                g.check_range("delta stream zero record", off, len)?;
                staging.write_zeroes(below, off, len)?;
                rep.zero_records += 1;
                rep.zero_bytes += len;
            }
            REC_END => {
                let digest = hash.finalize();
                let mut f = [0u8; 56];
                z.read_exact(&mut f).map_err(|e| {
                    Error::format("delta stream", "end record", format!("truncated ({e})"))
                })?;
                let n = u64::from_le_bytes(f[0..8].try_into().unwrap_or_default());
                let db = u64::from_le_bytes(f[8..16].try_into().unwrap_or_default());
                let zb = u64::from_le_bytes(f[16..24].try_into().unwrap_or_default());
                if &f[24..56] != digest.as_bytes() {
                    return Err(Error::Checksum {
                        object: "delta stream".into(),
                        field: "blake3".into(),
                    });
                }
                if n != rep.data_records + rep.zero_records
                    || db != rep.data_bytes
                    || zb != rep.zero_bytes
                {
                    return Err(Error::format(
                        "delta stream",
                        "end record",
                        "counts do not match the records",
                    ));
                }
                // Nothing may follow the end record.
                let mut extra = [0u8; 1];
                match z.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => {
                        return Err(Error::format(
                            "delta stream",
                            "body",
                            "data after the end record",
                        ))
                    }
                    Err(e) => {
                        return Err(Error::format(
                            "delta stream",
                            "body",
                            format!("damaged after the end record ({e})"),
                        ))
                    }
                }
                let mut inner = z.finish();
                let mut tail = [0u8; 1];
                match inner.read(&mut tail) {
                    Ok(0) => {}
                    Ok(_) => {
                        return Err(Error::format(
                            "delta stream",
                            "trailer",
                            "bytes after the compressed body",
                        ))
                    }
                    Err(e) => return Err(Error::io("delta stream", "read", e)),
                }
                return Ok(rep);
            }
            other => {
                return Err(Error::format(
                    "delta stream",
                    "record type",
                    format!("unknown type {other:#x}"),
                ));
            }
        }
    }
}
