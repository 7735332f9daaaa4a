//! Property tests: random operation sequences against a plain in-memory model of every
//! snapshot's bytes, with clean reopens and simulated power loss at every sync point.

use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use vdisk_engine::{check, CrashMode, CreateOptions, Disk, MemStore, Store, Target, View};

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: usize,
        seed: u8,
    },
    Zeroes {
        off: u64,
        len: u64,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Flush,
    Snapshot(u8),
    Delete(u8),
    Revert(u8),
    Rename(u8, u8),
    Reopen,
    Merge(u8),
    MergeRange(u8, u8),
    Commit,
    Compact(bool),
    Replicate(u8, u8),
    /// Power loss after `n` more syncs (or at once when the next op has fewer), with a seed
    /// choosing which unsynced writes survive.
    Crash {
        after_syncs: u8,
        seed: u64,
    },
}

fn op(size: u64) -> impl Strategy<Value = Op> {
    let off = 0..size;
    prop_oneof![
        8 => (off.clone(), 1usize..40_000, any::<u8>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        2 => (off.clone(), 1u64..200_000).prop_map(|(off, len)| Op::Zeroes { off, len }),
        1 => (off.clone(), 1u64..200_000).prop_map(|(off, len)| Op::Discard { off, len }),
        2 => Just(Op::Flush),
        2 => (0u8..6).prop_map(Op::Snapshot),
        1 => (0u8..6).prop_map(Op::Delete),
        1 => (0u8..6).prop_map(Op::Revert),
        1 => (0u8..6, 0u8..6).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => Just(Op::Reopen),
        2 => (0u8..6).prop_map(Op::Merge),
        1 => (0u8..6, 0u8..6).prop_map(|(a, b)| Op::MergeRange(a, b)),
        1 => Just(Op::Commit),
        1 => any::<bool>().prop_map(Op::Compact),
        1 => (0u8..6, 0u8..6).prop_map(|(a, b)| Op::Replicate(a, b)),
        2 => (0u8..6, any::<u64>()).prop_map(|(after_syncs, seed)| Op::Crash { after_syncs, seed }),
    ]
}

fn pattern(seed: u8, len: usize, off: u64) -> Vec<u8> {
    // Mostly non-zero bytes, with a zero run now and then (zero detection paths).
    (0..len)
        .map(|i| {
            let x = (off as usize + i) as u64;
            if seed.is_multiple_of(5) && (x / 4096).is_multiple_of(3) {
                0
            } else {
                (x.wrapping_mul(31).wrapping_add(u64::from(seed) * 7) % 251 + 1) as u8
            }
        })
        .collect()
}

/// The model: the head, what of it is durable, and every snapshot's bytes.
struct Model {
    head: Vec<u8>,
    /// Bytes written since the last flush: the values each byte may hold after a crash.
    pending: HashMap<usize, Vec<u8>>,
    durable: Vec<u8>,
    snaps: BTreeMap<String, Vec<u8>>,
}

impl Model {
    fn new(size: usize) -> Self {
        Model {
            head: vec![0; size],
            pending: HashMap::new(),
            durable: vec![0; size],
            snaps: BTreeMap::new(),
        }
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.head[off + i] = b;
            self.pending.entry(off + i).or_default().push(b);
        }
    }
    fn flushed(&mut self) {
        self.durable = self.head.clone();
        self.pending.clear();
    }
}

fn name(i: u8) -> String {
    format!("snap{i}")
}

fn read_all(d: &Disk, size: u64) -> Vec<u8> {
    let mut b = vec![0u8; size as usize];
    d.read_at(&mut b, 0).expect("read head");
    b
}

fn view_all(store: &dyn Store, t: Target, size: u64) -> Vec<u8> {
    let v = View::open(store, t).expect("open view");
    let mut b = vec![0u8; size as usize];
    v.read_at(&mut b, 0).expect("read view");
    b
}

fn verify(d: &Disk, store: &MemStore, m: &Model, size: u64) {
    // Merges leave no anonymous layer with a single child behind.
    let man = d.manifest();
    for l in &man.layers {
        if l.sealed && !man.snapshots.iter().any(|s| s.layer == l.id) {
            assert_ne!(
                man.children(l.id).len(),
                1,
                "anonymous single-child layer {} left",
                l.id
            );
        }
    }
    assert_eq!(read_all(d, size), m.head, "head differs from the model");
    let names: Vec<String> = d.snapshots().into_iter().map(|s| s.name).collect();
    let want: Vec<&String> = m.snaps.keys().collect();
    let mut got: Vec<&String> = names.iter().collect();
    got.sort();
    assert_eq!(got, want, "snapshot names");
    for (n, bytes) in &m.snaps {
        let v = d.snapshot_view(n).expect("snapshot view");
        let mut b = vec![0u8; size as usize];
        v.read_at(&mut b, 0).unwrap();
        assert!(b == *bytes, "snapshot {n} differs from the model");
        // and lock-free readers agree
        assert!(
            view_all(store, Target::Snapshot(n.clone()), size) == *bytes,
            "view of {n}"
        );
    }
}

fn run(ops: Vec<Op>, cluster: u64, sub: u64) {
    let size: u64 = 512 * 1024;
    let store = MemStore::new();
    let s: Arc<dyn Store> = Arc::new(store.clone());
    let opts = CreateOptions {
        virtual_size: size,
        cluster_size: cluster,
        subcluster_size: Some(sub),
    };
    let mut disk = Some(Disk::create(s.clone(), &opts).unwrap());
    let mut m = Model::new(size as usize);
    for op in ops {
        let d = disk.as_ref().unwrap();
        match op.clone() {
            Op::Write { off, len, seed } => {
                let len = len.min((size - off) as usize);
                let data = pattern(seed, len, off);
                d.write_at(&data, off).unwrap();
                m.write(off as usize, &data);
            }
            Op::Zeroes { off, len } | Op::Discard { off, len } => {
                let len = len.min(size - off);
                if matches!(op, Op::Zeroes { .. }) {
                    d.write_zeroes(off, len).unwrap();
                } else {
                    d.discard(off, len).unwrap();
                }
                m.write(off as usize, &vec![0; len as usize]);
            }
            Op::Flush => {
                d.flush().unwrap();
                m.flushed();
            }
            Op::Snapshot(i) => match d.snapshot_create(&name(i)) {
                Ok(_) => {
                    m.flushed();
                    m.snaps.insert(name(i), m.head.clone());
                }
                Err(vdisk_engine::Error::SnapshotExists(_)) => {
                    assert!(m.snaps.contains_key(&name(i)))
                }
                Err(e) => panic!("snapshot: {e}"),
            },
            Op::Delete(i) => match d.snapshot_delete(&name(i)) {
                Ok(()) => {
                    m.snaps.remove(&name(i));
                }
                Err(vdisk_engine::Error::SnapshotNotFound(_)) => {
                    assert!(!m.snaps.contains_key(&name(i)))
                }
                Err(e) => panic!("delete: {e}"),
            },
            Op::Revert(i) => match d.snapshot_revert(&name(i)) {
                Ok(()) => {
                    m.head = m.snaps[&name(i)].clone();
                    m.flushed();
                }
                Err(vdisk_engine::Error::SnapshotNotFound(_)) => {
                    assert!(!m.snaps.contains_key(&name(i)))
                }
                Err(e) => panic!("revert: {e}"),
            },
            Op::Rename(a, b) => {
                let r = d.snapshot_rename(&name(a), &name(b));
                if m.snaps.contains_key(&name(a)) && !m.snaps.contains_key(&name(b)) {
                    r.unwrap();
                    let v = m.snaps.remove(&name(a)).unwrap();
                    m.snaps.insert(name(b), v);
                } else {
                    assert!(r.is_err());
                }
            }
            Op::Merge(i) => match d.merge_snapshot(&name(i)) {
                Ok(_) => {
                    m.snaps.remove(&name(i));
                    m.flushed();
                }
                Err(vdisk_engine::Error::SnapshotNotFound(_)) => {
                    assert!(!m.snaps.contains_key(&name(i)))
                }
                Err(e) => panic!("merge: {e}"),
            },
            Op::MergeRange(a, b) => {
                if let Ok(rep) = d.merge_range(&name(a), &name(b)) {
                    for n in &rep.removed_snapshots {
                        assert!(
                            m.snaps.remove(n).is_some(),
                            "range merge removed unknown {n}"
                        );
                    }
                    assert!(!rep.removed_snapshots.contains(&name(b)));
                    m.flushed();
                }
            }
            Op::Commit => {
                if let Ok(rep) = d.commit() {
                    for n in &rep.removed_snapshots {
                        assert!(m.snaps.remove(n).is_some(), "commit removed unknown {n}");
                    }
                    m.flushed();
                }
            }
            Op::Compact(z) => {
                let opts = vdisk_engine::compact::CompactOptions {
                    layer: None,
                    compress: z.then_some(1),
                };
                d.compact(&opts).unwrap();
                m.flushed();
            }
            Op::Replicate(a, b) => {
                // full stream of a, then a..b, into a fresh bundle: same bytes
                let (a, b) = (name(a), name(b));
                if m.snaps.contains_key(&a) && m.snaps.contains_key(&b) && a != b {
                    let dst = MemStore::new();
                    let e = Disk::create(Arc::new(dst.clone()), &opts).unwrap();
                    let mut full = Vec::new();
                    vdisk_engine::stream::export_diff(&store, None, &a, &mut full, 1).unwrap();
                    e.import_diff(&mut full.as_slice()).unwrap();
                    let mut inc = Vec::new();
                    vdisk_engine::stream::export_diff(&store, Some(&a), &b, &mut inc, 1).unwrap();
                    e.import_diff(&mut inc.as_slice()).unwrap();
                    for n in [&a, &b] {
                        assert!(
                            view_all(&dst, Target::Snapshot(n.clone()), size) == m.snaps[n],
                            "replica of {n}"
                        );
                    }
                }
            }
            Op::Reopen => {
                disk.take().unwrap().close().unwrap();
                m.flushed();
                disk = Some(Disk::open(s.clone()).unwrap());
            }
            Op::Crash { after_syncs, seed } => {
                // Power fails after a few more syncs: run a snapshot, a flush, and writes
                // into it so the crash lands inside real operations.
                store.fail_after_syncs(u64::from(after_syncs));
                let snap = format!("c{seed}");
                let data = pattern(seed as u8, 70_000, seed % (size - 70_000));
                let off = seed % (size - 70_000);
                let r1 = d.write_at(&data, off);
                if r1.is_ok() {
                    m.write(off as usize, &data);
                }
                let r2 = d.snapshot_create(&snap);
                let victim = m.snaps.keys().next().cloned();
                let r3 = match (&r2, &victim) {
                    (Ok(_), Some(v)) => d.merge_snapshot(v).map(|_| ()),
                    (Ok(_), None) => d.flush(),
                    _ => Err(vdisk_engine::Error::ReadOnly("skipped")),
                };
                let r4 = match r3 {
                    Ok(()) => d
                        .compact(&vdisk_engine::compact::CompactOptions {
                            layer: None,
                            compress: Some(1),
                        })
                        .map(|_| ()),
                    e => e,
                };
                let _ = r4;
                std::mem::forget(disk.take());
                store.crash(CrashMode::Random(seed));
                let d2 = Disk::open(s.clone()).expect("open after crash");
                let rep = check::check(&store);
                assert!(rep.is_clean(), "check after crash: {:?}", rep.problems);
                // The snapshot exists iff its manifest switch happened; if it does, it holds
                // the head as of its creation (all writes before were flushed by it).
                let names: Vec<String> = d2.snapshots().into_iter().map(|s| s.name).collect();
                if let Some(v) = &victim {
                    if !names.contains(v) {
                        m.snaps.remove(v); // the merge happened
                    }
                }
                if names.contains(&snap) {
                    m.flushed();
                    m.snaps.insert(snap.clone(), m.head.clone());
                }
                let got = read_all(&d2, size);
                for (i, (&g, &dur)) in got.iter().zip(&m.durable).enumerate() {
                    if g != dur {
                        let ok = m.pending.get(&i).is_some_and(|c| c.contains(&g));
                        assert!(ok, "byte {i} after crash is {g:#x}: neither durable {dur:#x} nor a value written since ({:?})", m.pending.get(&i));
                    }
                }
                m.head = got;
                m.flushed();
                disk = Some(d2);
            }
        }
        verify(disk.as_ref().unwrap(), &store, &m, size);
    }
    let d = disk.take().unwrap();
    d.close().unwrap();
    let rep = check::check(&store);
    assert!(rep.is_clean(), "final check: {:?}", rep.problems);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn model_64k_clusters(ops in proptest::collection::vec(op(512 * 1024), 1..40)) {
        run(ops, 65536, 4096);
    }

    #[test]
    fn model_small_clusters(ops in proptest::collection::vec(op(512 * 1024), 1..40)) {
        run(ops, 4096, 4096);
    }

    #[test]
    fn model_32_subclusters(ops in proptest::collection::vec(op(512 * 1024), 1..30)) {
        run(ops, 16384, 512);
    }
}
