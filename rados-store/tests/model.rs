//! The engine's model test on RADOS (fewer cases than on MemStore): random operation
//! sequences against a plain in-memory model of every snapshot's bytes, with clean reopens
//! from another client, drops without close (a crash of the process: writes sent survive,
//! unflushed map changes do not) and takeovers of a writer that stopped answering.

use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vdisk_engine::{check, CreateOptions, Disk, MemStore, Store, Target, View};
use vdisk_rados::{harness, RadosOptions, RadosStore};

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
    Flush,
    Snapshot(u8),
    Delete(u8),
    Revert(u8),
    Reopen,
    Merge(u8),
    Commit,
    Compact(bool),
    Replicate(u8, u8),
    /// The process dies: the disk is dropped without close, a new client opens the bundle.
    Drop,
    /// The writer stops answering: a new client fences it and takes over; the old one's
    /// writes must fail from then on.
    Takeover,
}

const SIZE: u64 = 512 * 1024;

fn op() -> impl Strategy<Value = Op> {
    let off = 0..SIZE;
    prop_oneof![
        8 => (off.clone(), 1usize..40_000, any::<u8>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        2 => (off, 1u64..200_000).prop_map(|(off, len)| Op::Zeroes { off, len }),
        2 => Just(Op::Flush),
        3 => (0u8..4).prop_map(Op::Snapshot),
        1 => (0u8..4).prop_map(Op::Delete),
        1 => (0u8..4).prop_map(Op::Revert),
        1 => Just(Op::Reopen),
        2 => (0u8..4).prop_map(Op::Merge),
        1 => Just(Op::Commit),
        1 => any::<bool>().prop_map(Op::Compact),
        1 => (0u8..4, 0u8..4).prop_map(|(a, b)| Op::Replicate(a, b)),
        1 => Just(Op::Drop),
        1 => Just(Op::Takeover),
    ]
}

fn pattern(seed: u8, len: usize, off: u64) -> Vec<u8> {
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

struct Model {
    head: Vec<u8>,
    pending: HashMap<usize, Vec<u8>>,
    durable: Vec<u8>,
    snaps: BTreeMap<String, Vec<u8>>,
}

impl Model {
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
    /// After a crash: each byte is the durable one or one written since.
    fn recovered(&mut self, got: Vec<u8>) {
        for (i, (&g, &dur)) in got.iter().zip(&self.durable).enumerate() {
            if g != dur {
                let ok = self.pending.get(&i).is_some_and(|c| c.contains(&g));
                assert!(
                    ok,
                    "byte {i} after a crash is {g:#x}: neither durable {dur:#x} nor written since"
                );
            }
        }
        self.head = got;
        self.flushed();
    }
}

fn name(i: u8) -> String {
    format!("snap{i}")
}

fn read_all(d: &Disk) -> Vec<u8> {
    let mut b = vec![0u8; SIZE as usize];
    d.read_at(&mut b, 0).expect("read head");
    b
}

fn view_all(store: &dyn Store, t: Target) -> Vec<u8> {
    let v = View::open(store, t).expect("open view");
    let mut b = vec![0u8; SIZE as usize];
    v.read_at(&mut b, 0).expect("read view");
    b
}

fn connect(url: &str) -> Arc<RadosStore> {
    let c = harness::shared().unwrap_or_else(|e| panic!("the test cluster: {e}"));
    let mut o = RadosOptions {
        connect: c.connect_options(),
        ..Default::default()
    };
    o.liveness_timeout = Duration::from_millis(300);
    o.trash_grace = Duration::ZERO;
    Arc::new(RadosStore::connect(&url.parse().unwrap(), &o).expect("connect"))
}

fn verify(d: &Disk, store: &dyn Store, m: &Model) {
    assert!(read_all(d) == m.head, "head differs from the model");
    let mut got: Vec<String> = d.snapshots().into_iter().map(|s| s.name).collect();
    got.sort();
    let want: Vec<String> = m.snaps.keys().cloned().collect();
    assert_eq!(got, want, "snapshot names");
    for (n, bytes) in &m.snaps {
        assert!(
            view_all(store, Target::Snapshot(n.clone())) == *bytes,
            "snapshot {n} (lock-free reader) differs from the model"
        );
    }
}

fn run(ops: Vec<Op>) {
    static CASE: AtomicU32 = AtomicU32::new(0);
    let c = harness::shared().unwrap_or_else(|e| panic!("the test cluster: {e}"));
    let url = format!(
        "rados://{}/model-{}-{}",
        c.pool(),
        std::process::id(),
        CASE.fetch_add(1, Ordering::SeqCst)
    );
    let mut store = connect(&url);
    let opts = CreateOptions::new(SIZE);
    let mut disk = Some(Disk::create(store.clone(), &opts).unwrap());
    let mut fenced: Vec<(Disk, Arc<RadosStore>)> = Vec::new();
    let mut m = Model {
        head: vec![0; SIZE as usize],
        pending: HashMap::new(),
        durable: vec![0; SIZE as usize],
        snaps: BTreeMap::new(),
    };
    for op in ops {
        let d = disk.as_ref().unwrap();
        match op.clone() {
            Op::Write { off, len, seed } => {
                let len = len.min((SIZE - off) as usize);
                let data = pattern(seed, len, off);
                d.write_at(&data, off).unwrap();
                m.write(off as usize, &data);
            }
            Op::Zeroes { off, len } => {
                let len = len.min(SIZE - off);
                d.write_zeroes(off, len).unwrap();
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
            Op::Commit => {
                if let Ok(rep) = d.commit() {
                    for n in &rep.removed_snapshots {
                        assert!(m.snaps.remove(n).is_some(), "commit removed unknown {n}");
                    }
                    m.flushed();
                }
            }
            Op::Compact(z) => {
                let o = vdisk_engine::compact::CompactOptions {
                    layer: None,
                    compress: z.then_some(1),
                };
                d.compact(&o).unwrap();
                m.flushed();
            }
            Op::Replicate(a, b) => {
                let (a, b) = (name(a), name(b));
                if m.snaps.contains_key(&a) && m.snaps.contains_key(&b) && a != b {
                    // A stream out of RADOS into memory reproduces both snapshots.
                    let dst = MemStore::new();
                    let e = Disk::create(Arc::new(dst.clone()), &opts).unwrap();
                    let mut full = Vec::new();
                    vdisk_engine::stream::export_diff(store.as_ref(), None, &a, &mut full, 1)
                        .unwrap();
                    e.import_diff(&mut full.as_slice()).unwrap();
                    let mut inc = Vec::new();
                    vdisk_engine::stream::export_diff(store.as_ref(), Some(&a), &b, &mut inc, 1)
                        .unwrap();
                    e.import_diff(&mut inc.as_slice()).unwrap();
                    for n in [&a, &b] {
                        assert!(
                            view_all(&dst, Target::Snapshot(n.clone())) == m.snaps[n],
                            "replica of {n}"
                        );
                    }
                }
            }
            Op::Reopen => {
                disk.take().unwrap().close().unwrap();
                m.flushed();
                store = connect(&url);
                disk = Some(Disk::open(store.clone()).unwrap());
            }
            Op::Drop => {
                drop(disk.take());
                store = connect(&url);
                let d2 = Disk::open(store.clone()).expect("open after a drop");
                let rep = check::check(store.as_ref());
                assert!(rep.is_clean(), "check after a drop: {:?}", rep.problems);
                m.recovered(read_all(&d2));
                disk = Some(d2);
            }
            Op::Takeover => {
                let old = disk.take().unwrap();
                store.stop_answering();
                let old_store = std::mem::replace(&mut store, connect(&url));
                let d2 =
                    Disk::open(store.clone()).expect("take over a writer that stopped answering");
                m.recovered(read_all(&d2));
                // The fenced writer can change nothing.
                let w = old.write_at(&[0xEE; 4096], 0).and_then(|()| old.flush());
                assert!(w.is_err(), "a fenced writer flushed a write");
                assert!(read_all(&d2) == m.head, "a fenced writer changed the head");
                fenced.push((old, old_store));
                disk = Some(d2);
            }
        }
        verify(disk.as_ref().unwrap(), store.as_ref(), &m);
    }
    disk.take().unwrap().close().unwrap();
    let rep = check::check(store.as_ref());
    assert!(rep.is_clean(), "final check: {:?}", rep.problems);
    drop(fenced);
    store.destroy().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_on_rados(ops in proptest::collection::vec(op(), 1..24)) {
        run(ops);
    }
}
