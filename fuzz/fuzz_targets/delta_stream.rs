#![no_main]
//! Delta stream import: any bytes are applied completely or refused, leaving the disk as it
//! was.
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vdisk_engine::{CreateOptions, Disk, MemStore, Store};

fuzz_target!(|data: &[u8]| {
    let store = MemStore::new();
    let d = Disk::create(Arc::new(store.clone()), &CreateOptions::new(1 << 20)).unwrap();
    let before = store.list_objects("layers").unwrap();
    match d.import_diff(&mut &data[..]) {
        Ok(_) => assert_eq!(d.snapshots().len(), 1),
        Err(_) => {
            assert!(d.snapshots().is_empty());
            assert_eq!(store.list_objects("layers").unwrap(), before, "a refused stream left objects");
        }
    }
});
