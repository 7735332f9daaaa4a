//! Merges: every surviving snapshot and the head read exactly as before, in every shape of
//! the layer tree (sealed child, active child, branches, ranges, commit, offline merge while
//! another handle writes).

use std::collections::BTreeMap;
use std::sync::Arc;
use vdisk_engine::merge::merge_offline;
use vdisk_engine::{check, CreateOptions, Disk, LocalStore, MemStore, Store, Target, View};

const SIZE: u64 = 1 << 20;

fn pat(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed) | 1)
        .collect()
}

fn all(v: &View) -> Vec<u8> {
    let mut b = vec![0u8; v.virtual_size() as usize];
    v.read_at(&mut b, 0).unwrap();
    b
}

fn head(d: &Disk) -> Vec<u8> {
    let mut b = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

fn contents(d: &Disk) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for s in d.snapshots() {
        m.insert(s.name.clone(), all(&d.snapshot_view(&s.name).unwrap()));
    }
    m.insert("<head>".into(), head(d));
    m
}

/// Build a chain whose layers overlap in every way: data over data, zeros over data, data
/// over zeros, partial subclusters, clusters shared by three layers.
fn layered(store: Arc<dyn Store>, cluster: u64) -> Disk {
    let d = Disk::create(
        store,
        &CreateOptions {
            virtual_size: SIZE,
            cluster_size: cluster,
            subcluster_size: None,
        },
    )
    .unwrap();
    d.write_at(&pat(1, 300_000), 0).unwrap();
    d.snapshot_create("a").unwrap();
    d.write_zeroes(4096, 70_000).unwrap();
    d.write_at(&pat(2, 5000), 100_000).unwrap();
    d.write_at(&pat(3, 100), 200_003).unwrap();
    d.snapshot_create("b").unwrap();
    d.write_at(&pat(4, 8192), 8192).unwrap();
    d.write_zeroes(150_000, 20_000).unwrap();
    d.write_at(&pat(5, 30_000), 500_000).unwrap();
    d.snapshot_create("c").unwrap();
    d.write_at(&pat(6, 4096), 102_400).unwrap();
    d.write_at(&pat(7, 3000), 600_001).unwrap();
    d
}

fn expect_after_removing(
    before: &BTreeMap<String, Vec<u8>>,
    removed: &[&str],
) -> BTreeMap<String, Vec<u8>> {
    let mut m = before.clone();
    for r in removed {
        m.remove(*r);
    }
    m
}

#[test]
fn every_single_merge_keeps_the_survivors() {
    for cluster in [65536u64, 4096, 16384] {
        for victim in ["a", "b", "c"] {
            let store = MemStore::new();
            let d = layered(Arc::new(store.clone()), cluster);
            let before = contents(&d);
            let layers_before = d.manifest().layers.len();
            let rep = d.merge_snapshot(victim).unwrap();
            assert_eq!(rep.removed_snapshots, vec![victim.to_string()]);
            assert_eq!(
                contents(&d),
                expect_after_removing(&before, &[victim]),
                "cluster {cluster}, merge {victim}"
            );
            assert_eq!(
                d.manifest().layers.len(),
                layers_before - 1,
                "merge of {victim} folded no layer"
            );
            // durable and clean
            d.close().unwrap();
            let r = check::check(&store);
            assert!(r.is_clean(), "{victim}: {:?}", r.problems);
            let d = Disk::open(Arc::new(store.clone())).unwrap();
            assert_eq!(
                contents(&d),
                expect_after_removing(&before, &[victim]),
                "after reopen"
            );
        }
    }
}

#[test]
fn merges_in_sequence_down_to_one_layer() {
    let store = MemStore::new();
    let d = layered(Arc::new(store.clone()), 65536);
    let before = contents(&d);
    d.merge_snapshot("b").unwrap();
    d.merge_snapshot("a").unwrap();
    d.merge_snapshot("c").unwrap();
    assert_eq!(
        contents(&d),
        expect_after_removing(&before, &["a", "b", "c"])
    );
    assert_eq!(
        d.manifest().layers.len(),
        1,
        "all folded into the active layer"
    );
    d.write_at(&pat(9, 70_000), 60_000).unwrap(); // writes over referenced/extern data
    let mut want = before["<head>"].clone();
    want[60_000..130_000].copy_from_slice(&pat(9, 70_000));
    assert_eq!(head(&d), want);
    d.snapshot_create("z").unwrap();
    d.close().unwrap();
    assert!(check::check(&store).is_clean());
}

#[test]
fn range_merge_and_commit() {
    let store = MemStore::new();
    let d = layered(Arc::new(store.clone()), 65536);
    let before = contents(&d);
    let rep = d.merge_range("a", "c").unwrap();
    assert_eq!(
        rep.removed_snapshots,
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(contents(&d), expect_after_removing(&before, &["a", "b"]));
    let rep = d.commit().unwrap();
    assert_eq!(rep.removed_snapshots, vec!["c".to_string()]);
    assert_eq!(head(&d), before["<head>"]);
    assert_eq!(d.manifest().layers.len(), 1);
    d.close().unwrap();
    assert!(check::check(&store).is_clean());
}

#[test]
fn pinned_snapshots_refuse_range_merge() {
    let d = layered(Arc::new(MemStore::new()), 65536);
    d.snapshot_pin("b", true).unwrap();
    assert!(d.merge_range("a", "c").is_err());
}

#[test]
fn branches_keep_a_shared_layer() {
    let store = MemStore::new();
    let d = layered(Arc::new(store.clone()), 65536);
    d.snapshot_revert("a").unwrap();
    d.write_at(&pat(8, 10_000), 0).unwrap();
    d.snapshot_create("other-branch").unwrap();
    let before = contents(&d);
    // a's layer has two children now (b's layer and other-branch's layer)
    let rep = d.merge_snapshot("a").unwrap();
    assert!(!rep.notes.is_empty(), "kept shared layer not reported");
    assert_eq!(contents(&d), expect_after_removing(&before, &["a"]));
    // deleting one branch lets the shared layer fold into the other
    d.merge_snapshot("other-branch").unwrap();
    assert_eq!(
        contents(&d),
        expect_after_removing(&before, &["a", "other-branch"])
    );
    d.close().unwrap();
    assert!(check::check(&store).is_clean());
}

#[test]
fn offline_merge_while_a_writer_writes_and_a_reader_reads() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d.vdisk");
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(&dir).unwrap());
    let d = Arc::new(layered(store.clone(), 65536));
    d.snapshot_create("d").unwrap();
    let before = contents(&d);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // writer: keeps writing the head
    let w = {
        let d = d.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                d.write_at(&pat(i as u8, 4096), 700_000 + (i % 50) * 4096)
                    .unwrap();
                if i.is_multiple_of(7) {
                    d.flush().unwrap();
                }
                i += 1;
            }
            i
        })
    };
    // reader: keeps reading snapshot c through its own lock-free view
    let r = {
        let dir = dir.clone();
        let want = before["c"].clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let store = LocalStore::open(&dir).unwrap();
            let v = View::open(&store, Target::Snapshot("c".into())).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(all(&v) == want, "snapshot c changed under a reader");
                n += 1;
            }
            n
        })
    };
    // the merge runs from another "process": its own store handle, no writer lock
    let other = LocalStore::open(&dir).unwrap();
    let rep = merge_offline(&other, &["b".to_string(), "a".to_string()]).unwrap();
    assert!(rep.layers_folded >= 1);
    // a fresh reader sees the survivors unchanged
    for s in ["c", "d"] {
        let v = View::open(&other, Target::Snapshot(s.into())).unwrap();
        assert!(all(&v) == before[s], "{s} changed by the online merge");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(w.join().unwrap() > 0);
    assert!(r.join().unwrap() > 0);
    // the writer's later manifest updates keep the merge's result
    d.snapshot_create("e").unwrap();
    let names: Vec<String> = d.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["c", "d", "e"]);
    drop(d);
    let r = check::check(&other);
    assert!(r.is_clean(), "{:?}", r.problems);
    // merging the newest snapshot (the active layer's parent) needs the writer
    let err = merge_offline(&other, &["e".to_string()]).unwrap_err();
    assert!(err.to_string().contains("open for writing"), "{err}");
}
