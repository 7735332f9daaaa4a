//! Errors carry a kind: each refusal is its own variant, so callers (the control socket's
//! `code`, NBD's errno, a virtio status) map them without matching on message text.

use std::sync::Arc;
use vdisk_engine::stream::export_diff;
use vdisk_engine::{CreateOptions, Disk, Error, ErrorKind, MemStore};

fn disk() -> (MemStore, Disk) {
    let store = MemStore::new();
    let d = Disk::create(Arc::new(store.clone()), &CreateOptions::new(1 << 20)).unwrap();
    (store, d)
}

#[test]
fn refusals_are_named_variants() {
    let (_, d) = disk();
    assert!(matches!(d.commit(), Err(Error::NothingToCommit)));
    d.write_at(&[1; 4096], 0).unwrap();
    d.snapshot_create("a").unwrap();
    d.snapshot_create("b").unwrap();
    d.snapshot_create("c").unwrap();
    assert!(matches!(
        d.merge_range("c", "a"),
        Err(Error::NotAnAncestor { .. })
    ));
    assert!(matches!(
        d.merge_range("b", "c"),
        Ok(ref r) if r.removed_snapshots == ["b"]
    ));
    assert!(matches!(
        d.merge_range("c", "c"),
        Err(Error::NothingToMerge { .. })
    ));
    d.snapshot_pin("a", true).unwrap();
    d.snapshot_create("d").unwrap();
    let e = d.merge_range("a", "d").unwrap_err();
    assert!(
        matches!(e, Error::Pinned { ref name, .. } if name == "a"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Refused);
    // a branch makes the head's parent shared
    d.snapshot_revert("d").unwrap();
    d.snapshot_create("e").unwrap();
    d.snapshot_revert("d").unwrap();
    let e = d.commit().unwrap_err();
    assert!(matches!(e, Error::SharedLayer { branches: 2 }), "{e}");
    assert!(matches!(
        d.compact(&vdisk_engine::compact::CompactOptions {
            layer: Some(d.manifest().active_layer),
            compress: None
        }),
        Err(Error::LayerNotSealed(_))
    ));
}

#[test]
fn create_refusals() {
    let (store, d) = disk();
    drop(d);
    let e = Disk::create(Arc::new(store.clone()), &CreateOptions::new(1 << 20));
    assert!(matches!(e, Err(Error::BundleExists { .. })));
    let mut o = CreateOptions::new(1 << 20);
    o.cluster_size = 3000;
    let e = Disk::create(Arc::new(MemStore::new()), &o).err().unwrap();
    assert!(matches!(e, Error::InvalidGeometry { ref field, .. } if field == "cluster_size"));
    assert_eq!(e.kind(), ErrorKind::Invalid);
}

#[test]
fn a_half_failed_operation_poisons_the_handle() {
    let (store, d) = disk();
    d.write_at(&[1; 4096], 0).unwrap();
    store.fail_after_syncs(1);
    assert!(d.snapshot_create("x").is_err());
    store.crash(vdisk_engine::CrashMode::KeepAll);
    let e = d.write_at(&[2; 512], 0).unwrap_err();
    assert!(matches!(e, Error::Poisoned), "{e}");
    assert_eq!(e.kind(), ErrorKind::Poisoned);
}

#[test]
fn stream_refusals() {
    let (src, d) = disk();
    d.write_at(&[3; 8192], 0).unwrap();
    d.snapshot_create("a").unwrap();
    d.snapshot_create("b").unwrap();
    let mut inc = Vec::new();
    export_diff(&src, Some("a"), "b", &mut inc, 1).unwrap();
    let other = Disk::create(Arc::new(MemStore::new()), &CreateOptions::new(1 << 20)).unwrap();
    let e = other.import_diff(&mut inc.as_slice()).unwrap_err();
    assert!(matches!(e, Error::StreamMismatch(_)), "{e}");
    let small = Disk::create(Arc::new(MemStore::new()), &CreateOptions::new(1 << 19)).unwrap();
    let mut full = Vec::new();
    export_diff(&src, None, "a", &mut full, 1).unwrap();
    assert!(matches!(
        small.import_diff(&mut full.as_slice()),
        Err(Error::StreamMismatch(_))
    ));
}
