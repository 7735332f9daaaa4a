//! The first flush of a new active layer (after a snapshot) crashed at each sync point: the
//! layer reopens (empty, or with the flushed write), never refused.
use std::sync::Arc;
use vdisk_engine::{CrashMode, CreateOptions, Disk, MemStore, Store};
#[test]
fn first_flush_after_snapshot_crash() {
    for k in 0..4 {
        let store = Arc::new(MemStore::new());
        let d = Disk::create(store.clone(), &CreateOptions::new(1 << 20)).unwrap();
        d.write_at(&[1u8; 4096], 0).unwrap();
        d.snapshot_create("s").unwrap();
        d.write_at(&[2u8; 4096], 0).unwrap();
        store.fail_after_syncs(k);
        let _ = d.flush();
        drop(d);
        store.crash(CrashMode::Random(k));
        let d =
            Disk::open(store.clone() as Arc<dyn Store>).unwrap_or_else(|e| panic!("k={k}: {e}"));
        let mut b = [0u8; 4096];
        d.read_at(&mut b, 0).unwrap();
        for sector in b.chunks(512) {
            assert!(
                sector.iter().all(|&x| x == 1) || sector.iter().all(|&x| x == 2),
                "k={k}: an unflushed write reads as old or new data per sector"
            );
        }
        let snap = d.snapshot_view("s").unwrap();
        snap.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1u8; 4096], "k={k}: the snapshot is intact");
        assert!(
            vdisk_engine::check::check(store.as_ref()).is_clean(),
            "k={k}"
        );
    }
}
