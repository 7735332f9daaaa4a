//! `Disk::resize`: the head grows and shrinks, snapshots keep their size and content, data a
//! shrink left behind never reappears, and a crash at any sync point of a resize leaves a
//! bundle that opens, checks clean and shows the old or the new size with every byte right.

use std::sync::Arc;
use vdisk_engine::check::check;
use vdisk_engine::resize::ResizeOptions;
use vdisk_engine::{CrashMode, CreateOptions, Disk, MemStore, Store, Target, View};

const MIB: u64 = 1 << 20;
const SHRINK: ResizeOptions = ResizeOptions { shrink: true };

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read(d: &Disk, off: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    d.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn grow_keeps_snapshots_and_reads_zeros_beyond() {
    let store = Arc::new(MemStore::new());
    let d = Disk::create(store.clone(), &CreateOptions::new(8 * MIB)).unwrap();
    d.write_at(&pattern(1, MIB as usize), 7 * MIB).unwrap();
    d.snapshot_create("small").unwrap();
    let r = d.resize(20 * MIB, &ResizeOptions::default()).unwrap();
    assert_eq!((r.old_size, r.new_size), (8 * MIB, 20 * MIB));
    assert_eq!(d.virtual_size(), 20 * MIB);
    assert_eq!(read(&d, 7 * MIB, MIB as usize), pattern(1, MIB as usize));
    assert!(read(&d, 8 * MIB, 12 * MIB as usize).iter().all(|&b| b == 0));
    d.write_at(&pattern(2, 4096), 19 * MIB).unwrap();
    let snap = d.snapshot_view("small").unwrap();
    assert_eq!(snap.virtual_size(), 8 * MIB, "a snapshot keeps its size");
    let mut b = [0u8; 1];
    assert!(snap.read_at(&mut b, 8 * MIB).is_err());
    d.snapshot_create("big").unwrap();
    d.close().unwrap();
    let d = Disk::open(store.clone()).unwrap();
    assert_eq!(d.virtual_size(), 20 * MIB);
    assert_eq!(read(&d, 19 * MIB, 4096), pattern(2, 4096));
    let big = View::open(store.as_ref(), Target::Snapshot("big".into())).unwrap();
    assert_eq!(big.virtual_size(), 20 * MIB);
    // Reverting to the small snapshot gives the head its size back.
    d.snapshot_revert("small").unwrap();
    assert_eq!(d.virtual_size(), 8 * MIB);
    assert_eq!(read(&d, 7 * MIB, MIB as usize), pattern(1, MIB as usize));
    d.close().unwrap();
    assert!(
        check(store.as_ref()).is_clean(),
        "{:?}",
        check(store.as_ref()).problems
    );
}

#[test]
fn shrink_needs_the_option_and_hidden_data_stays_hidden() {
    let store = Arc::new(MemStore::new());
    let d = Disk::create(store.clone(), &CreateOptions::new(16 * MIB)).unwrap();
    d.write_at(&pattern(3, 2 * MIB as usize), 10 * MIB).unwrap();
    d.snapshot_create("before").unwrap();
    assert!(d.resize(8 * MIB, &ResizeOptions::default()).is_err());
    assert_eq!(d.virtual_size(), 16 * MIB);
    d.resize(8 * MIB, &SHRINK).unwrap();
    assert_eq!(d.virtual_size(), 8 * MIB);
    let mut b = [0u8; 1];
    assert!(
        d.read_at(&mut b, 8 * MIB).is_err(),
        "past the new end is refused"
    );
    assert!(d.write_at(&b, 8 * MIB).is_err());
    d.snapshot_create("shrunk").unwrap();
    // Growing again reveals zeros, not what the shrink cut off.
    let r = d.resize(16 * MIB, &ResizeOptions::default()).unwrap();
    assert!(r.hidden_bytes >= 2 * MIB);
    assert!(read(&d, 8 * MIB, 8 * MIB as usize).iter().all(|&x| x == 0));
    // And past the old geometry as well.
    d.resize(32 * MIB, &ResizeOptions::default()).unwrap();
    assert!(read(&d, 8 * MIB, 24 * MIB as usize).iter().all(|&x| x == 0));
    let before = d.snapshot_view("before").unwrap();
    assert_eq!(before.virtual_size(), 16 * MIB);
    let mut v = vec![0u8; 2 * MIB as usize];
    before.read_at(&mut v, 10 * MIB).unwrap();
    assert_eq!(
        v,
        pattern(3, 2 * MIB as usize),
        "the snapshot before the shrink is intact"
    );
    assert_eq!(d.snapshot_view("shrunk").unwrap().virtual_size(), 8 * MIB);
    d.close().unwrap();
    assert!(
        check(store.as_ref()).is_clean(),
        "{:?}",
        check(store.as_ref()).problems
    );
}

/// Resize from `from` to `to` (with a snapshot and data), crashing at the k-th sync.
fn crash_run(from: u64, to: u64, k: Option<u64>, seed: u64) -> u64 {
    let store = Arc::new(MemStore::new());
    let d = Disk::create(store.clone(), &CreateOptions::new(16 * MIB)).unwrap();
    d.write_at(&pattern(5, MIB as usize), 12 * MIB).unwrap();
    d.snapshot_create("s").unwrap();
    if from != 16 * MIB {
        d.resize(from, &SHRINK).unwrap();
    }
    d.flush().unwrap();
    let syncs0 = store.sync_count();
    if let Some(k) = k {
        store.fail_after_syncs(k);
    }
    let done = d.resize(to, &SHRINK).is_ok();
    let used = store.sync_count() - syncs0;
    drop(d);
    store.crash(CrashMode::Random(seed));
    let d = Disk::open(store.clone() as Arc<dyn Store>).unwrap();
    let size = d.virtual_size();
    assert!(
        size == from || size == to,
        "size {size} is neither {from} nor {to}"
    );
    if k.is_none() {
        assert!(done);
        assert_eq!(size, to);
    }
    // The head shows the old data where it reaches, zeros beyond the old size.
    if size > 12 * MIB {
        let want = if from >= 13 * MIB {
            pattern(5, MIB as usize)
        } else {
            vec![0; MIB as usize]
        };
        assert_eq!(read(&d, 12 * MIB, MIB as usize), want, "k={k:?}");
    }
    let snap = d.snapshot_view("s").unwrap();
    let mut v = vec![0u8; MIB as usize];
    snap.read_at(&mut v, 12 * MIB).unwrap();
    assert_eq!(v, pattern(5, MIB as usize));
    d.close().unwrap();
    let r = check(store.as_ref());
    assert!(r.is_clean(), "k={k:?}: {:?}", r.problems);
    used
}

#[test]
fn a_crash_at_every_sync_point_of_a_resize() {
    for (from, to) in [
        (16 * MIB, 24 * MIB),
        (8 * MIB, 16 * MIB),
        (8 * MIB, 40 * MIB),
        (16 * MIB, 4 * MIB),
    ] {
        let syncs = crash_run(from, to, None, 1);
        for k in 0..=syncs {
            for seed in 0..3 {
                crash_run(from, to, Some(k), seed);
            }
        }
    }
}
