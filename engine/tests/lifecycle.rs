//! Diff, delta streams, compaction and the retention policy.

use std::collections::BTreeSet;
use std::sync::Arc;
use vdisk_engine::compact::CompactOptions;
use vdisk_engine::diff::{diff, DiffKind, Point};
use vdisk_engine::format::manifest::Policy;
use vdisk_engine::stream::export_diff;
use vdisk_engine::{check, CreateOptions, Disk, MemStore, Store, Target, View};

fn pat(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed) | 1)
        .collect()
}

fn snap_bytes(store: &dyn Store, name: &str) -> Vec<u8> {
    let v = View::open(store, Target::Snapshot(name.into())).unwrap();
    let mut b = vec![0u8; v.virtual_size() as usize];
    v.read_at(&mut b, 0).unwrap();
    b
}

/// Changed subclusters (4 KiB units) between two byte images.
fn changed_units(a: &[u8], b: &[u8]) -> BTreeSet<u64> {
    a.chunks(4096)
        .zip(b.chunks(4096))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i as u64)
        .collect()
}

fn units(r: &vdisk_engine::diff::DiffReport) -> BTreeSet<u64> {
    let mut s = BTreeSet::new();
    for e in &r.extents {
        for u in e.offset / 4096..(e.offset + e.length).div_ceil(4096) {
            s.insert(u);
        }
    }
    s
}

fn sample(store: Arc<dyn Store>) -> Disk {
    let d = Disk::create(store, &CreateOptions::new(8 << 20)).unwrap();
    d.write_at(&pat(1, 1 << 20), 0).unwrap();
    d.snapshot_create("a").unwrap();
    d.write_at(&pat(2, 10_000), 300_000).unwrap();
    d.write_zeroes(600_000, 50_000).unwrap();
    d.write_at(&pat(3, 4096), 5 << 20).unwrap();
    d.snapshot_create("b").unwrap();
    d.write_at(&pat(1, 4096), 0).unwrap(); // rewrites identical bytes
    d.write_at(&pat(4, 8192), 7 << 20).unwrap();
    d.snapshot_create("c").unwrap();
    d
}

#[test]
fn diff_covers_every_change_and_little_else() {
    let store = MemStore::new();
    let d = sample(Arc::new(store.clone()));
    // a branch off a, to diff across branches
    d.snapshot_revert("a").unwrap();
    d.write_at(&pat(5, 20_000), 2 << 20).unwrap();
    d.snapshot_create("x").unwrap();
    d.close().unwrap();
    let names = ["a", "b", "c", "x"];
    for from in names {
        for to in names {
            let r = diff(
                &store,
                &Point::Snapshot(from.into()),
                &Point::Snapshot(to.into()),
                false,
            )
            .unwrap();
            let truth = changed_units(&snap_bytes(&store, from), &snap_bytes(&store, to));
            let got = units(&r);
            assert!(
                truth.is_subset(&got),
                "{from}..{to}: missed {:?}",
                truth.difference(&got).collect::<Vec<_>>()
            );
            // metadata granularity: never more than the written subclusters
            assert!(
                got.len() <= truth.len() + 20,
                "{from}..{to}: {} reported for {} changed",
                got.len(),
                truth.len()
            );
            // with --content, exactly the changed subclusters
            let rc = diff(
                &store,
                &Point::Snapshot(from.into()),
                &Point::Snapshot(to.into()),
                true,
            )
            .unwrap();
            assert_eq!(units(&rc), truth, "{from}..{to} --content");
            // kinds say what TO reads
            let tb = snap_bytes(&store, to);
            for e in &rc.extents {
                let zero = tb[e.offset as usize..(e.offset + e.length) as usize]
                    .iter()
                    .all(|&x| x == 0);
                assert_eq!(
                    e.kind == DiffKind::Zero,
                    zero,
                    "{from}..{to} kind at {}",
                    e.offset
                );
            }
        }
    }
}

#[test]
fn streams_replicate_snapshots_with_their_ids() {
    let src = MemStore::new();
    let d = sample(Arc::new(src.clone()));
    d.close().unwrap();
    let dst = MemStore::new();
    let e = Disk::create(Arc::new(dst.clone()), &CreateOptions::new(8 << 20)).unwrap();
    let mut full = Vec::new();
    export_diff(&src, None, "a", &mut full, 3).unwrap();
    let r = e.import_diff(&mut full.as_slice()).unwrap();
    assert!(r.head_moved);
    for (from, to) in [("a", "b"), ("b", "c")] {
        let mut inc = Vec::new();
        export_diff(&src, Some(from), to, &mut inc, 3).unwrap();
        e.import_diff(&mut inc.as_slice()).unwrap();
    }
    for n in ["a", "b", "c"] {
        assert!(
            snap_bytes(&src, n) == snap_bytes(&dst, n),
            "replica of {n} differs"
        );
    }
    let ids = |s: &MemStore| -> Vec<_> {
        View::open(s, Target::Head)
            .unwrap()
            .snapshots()
            .into_iter()
            .map(|x| (x.name, x.id))
            .collect()
    };
    assert_eq!(ids(&src), ids(&dst), "snapshot ids not kept");
    // head followed
    let mut h = vec![0u8; 8 << 20];
    e.read_at(&mut h, 0).unwrap();
    assert!(h == snap_bytes(&src, "c"));
    e.close().unwrap();
    assert!(check::check(&dst).is_clean());
}

#[test]
fn bad_streams_change_nothing() {
    let src = MemStore::new();
    let d = sample(Arc::new(src.clone()));
    d.close().unwrap();
    let mut full = Vec::new();
    export_diff(&src, None, "b", &mut full, 3).unwrap();
    let mut inc = Vec::new();
    export_diff(&src, Some("b"), "c", &mut inc, 3).unwrap();
    let dst = MemStore::new();
    let e = Disk::create(Arc::new(dst.clone()), &CreateOptions::new(8 << 20)).unwrap();
    // incremental before its base: refused (by id)
    assert!(e
        .import_diff(&mut inc.as_slice())
        .unwrap_err()
        .to_string()
        .contains("does not hold"));
    let before = dst.list_objects("layers").unwrap();
    // every flip and every truncation is refused and leaves no trace
    for at in (0..full.len()).step_by(full.len() / 40 + 1) {
        let mut bad = full.clone();
        bad[at] ^= 0x21;
        assert!(
            e.import_diff(&mut bad.as_slice()).is_err(),
            "flip at {at} accepted"
        );
    }
    for cut in [0, 10, full.len() / 2, full.len() - 1] {
        assert!(
            e.import_diff(&mut &full[..cut]).is_err(),
            "truncation at {cut} accepted"
        );
    }
    let mut trailing = full.clone();
    trailing.extend_from_slice(b"junk");
    assert!(
        e.import_diff(&mut trailing.as_slice()).is_err(),
        "trailing bytes accepted"
    );
    assert_eq!(
        dst.list_objects("layers").unwrap(),
        before,
        "a refused stream left objects"
    );
    assert!(e.snapshots().is_empty());
    // a wrong-size disk refuses it too
    let small = Disk::create(Arc::new(MemStore::new()), &CreateOptions::new(4 << 20)).unwrap();
    assert!(small.import_diff(&mut full.as_slice()).is_err());
    // and the good one still applies afterwards
    e.import_diff(&mut full.as_slice()).unwrap();
    assert!(
        e.import_diff(&mut full.as_slice()).is_err(),
        "the same snapshot imported twice"
    );
    e.import_diff(&mut inc.as_slice()).unwrap();
    assert!(snap_bytes(&dst, "c") == snap_bytes(&src, "c"));
}

#[test]
fn compaction_keeps_contents_and_compresses() {
    let store = MemStore::new();
    let d = sample(Arc::new(store.clone()));
    d.write_at(&vec![7u8; 300_000], 1 << 20).unwrap(); // compressible
    d.snapshot_create("d").unwrap();
    d.merge_snapshot("b").unwrap(); // leaves externs behind
    let names = ["a", "c", "d"];
    let before: Vec<Vec<u8>> = names.iter().map(|n| snap_bytes(&store, n)).collect();
    let r = d.compact(&CompactOptions::default()).unwrap();
    assert!(
        !r.layers.is_empty(),
        "nothing compacted after a merge left externs"
    );
    assert!(d
        .manifest()
        .layers
        .iter()
        .all(|l| l.externs.is_empty() || !l.sealed));
    let r = d
        .compact(&CompactOptions {
            layer: None,
            compress: Some(3),
        })
        .unwrap();
    assert!(r.layers.iter().map(|l| l.compressed_clusters).sum::<u64>() > 0);
    for (n, b) in names.iter().zip(&before) {
        assert!(snap_bytes(&store, n) == *b, "compaction changed {n}");
    }
    // reads across compressed clusters at odd offsets
    let v = View::open(&store, Target::Snapshot("d".into())).unwrap();
    let mut x = vec![0u8; 70_001];
    v.read_at(&mut x, (1 << 20) + 12_345).unwrap();
    assert_eq!(
        x[..],
        before[2][(1 << 20) + 12_345..(1 << 20) + 12_345 + 70_001]
    );
    // writes over compressed data in the head
    d.merge_snapshot("d").unwrap();
    d.write_at(&pat(9, 1000), (1 << 20) + 5).unwrap();
    let mut want = before[2].clone();
    want[(1 << 20) + 5..(1 << 20) + 1005].copy_from_slice(&pat(9, 1000));
    let mut h = vec![0u8; 8 << 20];
    d.read_at(&mut h, 0).unwrap();
    assert!(h == want);
    d.close().unwrap();
    let rep = check::check(&store);
    assert!(rep.is_clean(), "{:?}", rep.problems);
}

#[test]
fn compaction_refuses_corrupt_data() {
    let store = MemStore::new();
    let d = sample(Arc::new(store.clone()));
    d.close().unwrap();
    let m = View::open(&store, Target::Head).unwrap().manifest().clone();
    let file = m
        .layer(m.snapshot("a").unwrap().layer)
        .unwrap()
        .file
        .clone();
    let mut b = store.object_bytes(&file).unwrap();
    let probe = pat(1, 1 << 20)[1000..1064].to_vec();
    let at = b.windows(64).position(|w| w == probe.as_slice()).unwrap();
    b[at] ^= 1;
    store.set_object_bytes(&file, b);
    let d = Disk::open(Arc::new(store.clone())).unwrap();
    assert!(d
        .compact(&CompactOptions {
            layer: None,
            compress: Some(1)
        })
        .is_err());
}

#[test]
fn retention_policy() {
    let store = MemStore::new();
    let d = Disk::create(Arc::new(store.clone()), &CreateOptions::new(1 << 20)).unwrap();
    for i in 0..10u8 {
        d.write_at(&pat(i, 4096), u64::from(i) * 65536).unwrap();
        d.snapshot_create(&format!("s{i}")).unwrap();
    }
    d.snapshot_pin("s1", true).unwrap();
    let before: Vec<Vec<u8>> = (0..10)
        .map(|i| snap_bytes(&store, &format!("s{i}")))
        .collect();
    d.set_policy(Some(Policy {
        keep_last: Some(3),
        max_chain: None,
        hourly: None,
        daily: None,
    }))
    .unwrap();
    let dry = d.maintain(true).unwrap();
    assert_eq!(dry.removed, vec!["s0", "s2", "s3", "s4", "s5", "s6"]);
    assert_eq!(d.snapshots().len(), 10, "dry run changed something");
    let r = d.maintain(false).unwrap();
    assert_eq!(r.removed.len(), 6);
    let left: Vec<String> = d.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(left, vec!["s1", "s7", "s8", "s9"]);
    for n in &left {
        let i: usize = n[1..].parse().unwrap();
        assert!(snap_bytes(&store, n) == before[i], "{n} changed");
    }
    assert_eq!(r.chain_after, 5);
    d.set_policy(Some(Policy {
        keep_last: Some(10),
        max_chain: Some(3),
        hourly: None,
        daily: None,
    }))
    .unwrap();
    let r = d.maintain(false).unwrap();
    assert!(r.chain_after <= 3 || !r.notes.is_empty(), "{r:?}");
    assert!(
        d.snapshots().iter().any(|s| s.name == "s1"),
        "pinned snapshot merged"
    );
    d.close().unwrap();
    assert!(check::check(&store).is_clean());
}
