//! A bundle that is not a local directory (the in-memory `MemStore`) is served over NBD and
//! mounted through FUSE by the same code the CLI runs for a local bundle (vdisk-live's
//! `HeldWriter`/`Reader`, vdisk-nbd's `VolumeExports`, vdisk-fuse's `mount`), and real peers
//! (qemu-img, the kernel's FUSE) read exactly what was written.

use std::path::Path;
use std::sync::Arc;
use vdisk_blockdev::{BlockDevice, Volume};
use vdisk_engine::{CreateOptions, Disk, MemStore, Store};
use vdisk_live::{HeldWriter, Reader};
use vdisk_nbd::{ListenAddr, Server, ServerConfig, ShutdownSignal, VolumeExports};
use vdisk_tests::{have, rnd};

const SIZE: u64 = 8 << 20;

/// A MemStore bundle with data in snapshot `s1` and different data in the head.
fn bundle() -> (Arc<MemStore>, Vec<u8>, Vec<u8>) {
    let store = Arc::new(MemStore::new());
    let disk = Disk::create(store.clone(), &CreateOptions::new(SIZE)).unwrap();
    let a = rnd(1, 1 << 20);
    disk.write_at(&a, 65536).unwrap();
    disk.snapshot_create("s1").unwrap();
    let b = rnd(2, 4096);
    disk.write_at(&b, 65536).unwrap();
    disk.close().unwrap();
    let mut snap = vec![0u8; SIZE as usize];
    snap[65536..65536 + a.len()].copy_from_slice(&a);
    let mut head = snap.clone();
    head[65536..65536 + b.len()].copy_from_slice(&b);
    (store, snap, head)
}

fn serve(
    volume: Arc<dyn Volume>,
    dir: &Path,
) -> (String, ShutdownSignal, std::thread::JoinHandle<()>) {
    let sock = dir.join("nbd.sock");
    let server = Server::bind_unix(&sock).unwrap();
    let ListenAddr::Unix(p) = server.local_addr().clone() else {
        panic!("not a unix socket")
    };
    let stop = ShutdownSignal::new();
    let s2 = stop.clone();
    let provider = Arc::new(VolumeExports::new(volume, true));
    let t = std::thread::spawn(move || server.run(provider, ServerConfig::default(), s2).unwrap());
    (format!("nbd+unix:///?socket={}", p.display()), stop, t)
}

fn qemu_read(url: &str, export: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("out-{export}.raw"));
    let url = if export.is_empty() {
        url.to_string()
    } else {
        url.replacen(":///", &format!(":///{export}"), 1)
    };
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &url])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert {url}");
    std::fs::read(out).unwrap()
}

#[test]
fn memstore_writer_served_over_nbd() {
    if !have("qemu-img") {
        eprintln!("SKIPPED: qemu-img is not installed");
        return;
    }
    let (store, snap, head) = bundle();
    let held = HeldWriter::start(store.clone() as Arc<dyn Store>, "serve").unwrap();
    let volume = Arc::clone(held.writer()) as Arc<dyn Volume>;
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, t) = serve(volume, dir.path());
    assert!(qemu_read(&url, "", dir.path()) == head, "the head over NBD");
    assert!(
        qemu_read(&url, "s1", dir.path()) == snap,
        "snapshot s1 over NBD"
    );
    // A write through NBD lands in the MemStore's head.
    let st = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 1M 4k", &url])
        .status()
        .unwrap();
    assert!(st.success());
    stop.trigger();
    t.join().unwrap();
    let mut b = vec![0u8; 4096];
    BlockDevice::read_at(held.writer().disk().as_ref(), &mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
    held.close().unwrap();
    // The lock was released: the store opens for writing again.
    Disk::open(store).unwrap().close().unwrap();
}

#[test]
fn memstore_reader_mounted_through_fuse() {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: no /dev/fuse");
        return;
    }
    let (store, snap, head) = bundle();
    let reader = Reader::open(store as Arc<dyn Store>, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let handle = vdisk_fuse::mount(reader, &mp, vdisk_fuse::MountOptions::default()).unwrap();
    let got_head = std::fs::read(mp.join("head.raw")).unwrap();
    let got_snap = std::fs::read(mp.join("snapshots/s1.raw")).unwrap();
    let info = std::fs::read_to_string(mp.join("info.json")).unwrap();
    handle.unmount().unwrap();
    assert!(got_head == head, "head.raw");
    assert!(got_snap == snap, "snapshots/s1.raw");
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["snapshots"][0]["name"], "s1");
    assert_eq!(v["virtual_size"], SIZE);
}
