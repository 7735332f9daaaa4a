//! A cluster that is down, a pool that does not exist, a bundle that does not exist: clear
//! errors within the configured timeouts, never a hang.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_engine::{CreateOptions, Disk, Store, Target, View};
use vdisk_rados::{harness, RadosOptions, RadosStore};

fn opts(c: &harness::TestCluster) -> RadosOptions {
    let mut o = RadosOptions {
        connect: c.connect_options(),
        ..Default::default()
    };
    o.connect.mount_timeout_s = Some(3);
    o.connect.op_timeout_s = Some(3);
    o
}

#[test]
fn missing_pool_is_a_clear_error() {
    let c = harness::shared().unwrap_or_else(|e| panic!("the test cluster: {e}"));
    let t = Instant::now();
    let e = RadosStore::connect(&"rados://nosuchpool/x".parse().unwrap(), &opts(c))
        .err()
        .expect("a missing pool must not open");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(
        e.to_string().contains("pool \"nosuchpool\" does not exist"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn missing_bundle_reads_as_no_manifest() {
    let c = harness::shared().unwrap_or_else(|e| panic!("the test cluster: {e}"));
    let url = format!("rados://{}/never-created", c.pool());
    let s = RadosStore::connect(&url.parse().unwrap(), &opts(c)).unwrap();
    assert!(!s.exists().unwrap());
    let e = View::open(&s, Target::Head).err().expect("no bundle there");
    assert!(e.to_string().contains("not a vdisk bundle"), "{e}");
    // Reading did not create anything.
    assert!(s.list_objects("layers").unwrap().is_empty());
}

#[test]
fn cluster_down_fails_within_the_timeouts() {
    if !harness::available() {
        panic!("Ceph is not installed (apt-get install ceph-mon ceph-osd ceph-common)");
    }
    let base = std::env::temp_dir();
    let mut c = harness::TestCluster::start(&base, &harness::ClusterConfig::default()).unwrap();
    let url = format!("rados://{}/down", c.pool());
    let store = Arc::new(RadosStore::connect(&url.parse().unwrap(), &opts(&c)).unwrap());
    let d = Disk::create(store.clone(), &CreateOptions::new(16 << 20)).unwrap();
    d.write_at(&[7; 4096], 0).unwrap();
    d.flush().unwrap();
    c.stop_daemons();
    // An open client: its next operation fails after the OSD op timeout.
    let t = Instant::now();
    let r = d.write_at(&[8; 4096], 65536).and_then(|()| d.flush());
    let e = r.expect_err("a write to a stopped cluster must fail");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let msg = format!("{:?}", e);
    assert!(
        msg.contains("did not answer in time") || msg.contains("timed out"),
        "{msg}"
    );
    std::mem::forget(d); // its lock release would wait for the timeout too
                         // A new client: connect fails after the mount timeout.
    let t = Instant::now();
    let e = RadosStore::connect(&url.parse().unwrap(), &opts(&c))
        .err()
        .expect("connecting to a stopped cluster must fail");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "connect took {took:?}");
    assert!(
        e.to_string().contains("connecting to the Ceph cluster"),
        "{e}"
    );
}

#[test]
fn missing_configuration_is_a_clear_error() {
    let mut o = RadosOptions::default();
    o.connect.conf = Some("/nonexistent/ceph.conf".into());
    let e = RadosStore::connect(&"rados://p/x".parse().unwrap(), &o)
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("/nonexistent/ceph.conf: no such file"),
        "{e}"
    );
}
