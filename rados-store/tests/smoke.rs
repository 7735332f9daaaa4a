use std::sync::Arc;
use vdisk_engine::{check, CreateOptions, Disk, Store, Target, View};
use vdisk_rados::{harness, RadosOptions, RadosStore};

fn store(name: &str) -> Arc<RadosStore> {
    let c = harness::shared().expect("test cluster");
    let mut o = RadosOptions::default();
    o.connect = c.connect_options();
    let url = format!("rados://{}/{name}", c.pool()).parse().unwrap();
    Arc::new(RadosStore::connect(&url, &o).unwrap())
}

#[test]
fn smoke() {
    let s = store("smoke");
    let d = Disk::create(s.clone(), &CreateOptions::new(64 << 20)).unwrap();
    d.write_at(&[1u8; 8192], 4096).unwrap();
    d.snapshot_create("a").unwrap();
    d.write_at(&[2u8; 4096], 4096).unwrap();
    d.write_at(&[3u8; 100_000], 10 << 20).unwrap();
    d.flush().unwrap();
    let v = d.snapshot_view("a").unwrap();
    let mut b = vec![0u8; 8192];
    v.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, vec![1u8; 8192]);
    d.close().unwrap();
    let s2 = store("smoke");
    let d = Disk::open(s2.clone()).unwrap();
    let mut b = vec![0u8; 4096];
    d.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, vec![2u8; 4096]);
    d.merge_snapshot("a").unwrap();
    d.close().unwrap();
    let rep = check::check(s2.as_ref());
    assert!(rep.is_clean(), "{:?}", rep.problems);
    let v = View::open(s2.as_ref(), Target::Head).unwrap();
    let mut b = vec![0u8; 100_000];
    v.read_at(&mut b, 10 << 20).unwrap();
    assert_eq!(b, vec![3u8; 100_000]);
    println!("objects {:?}", s2.list_objects("layers").unwrap());
}
