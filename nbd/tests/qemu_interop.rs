//! Interop with QEMU's own NBD client: qemu-img, qemu-io and qemu-nbd (10.x).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vdisk_blockdev::BlockDevice;

use common::{run, try_run, TestServer};
use vdisk_nbd::{Export, ExportProvider, MemDevice, StaticExports};

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn qemu_img_info_reports_the_size() {
    let disk = Arc::new(MemDevice::new(128 * MIB));
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk)));
    let out = run("qemu-img", &["info", "--output=json", &srv.url("")]);
    assert!(out.contains("\"virtual-size\": 134217728"), "{out}");
}

#[test]
fn qemu_io_write_flush_read_back() {
    let disk = Arc::new(MemDevice::new(128 * MIB));
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk.clone())));
    let url = srv.url("");
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "flush", &url],
    );
    assert!(
        disk.flush_count() >= 1,
        "the client's flush reached the export"
    );
    let out = run("qemu-io", &["-f", "raw", "-c", "read -P 0xab 0 1M", &url]);
    assert!(out.contains("read 1048576/1048576"), "{out}");
    // A wrong pattern must be detected (the check can fail).
    let (ok, out) = try_run("qemu-io", &["-f", "raw", "-c", "read -P 0xac 0 1M", &url]);
    assert!(!ok || out.contains("Pattern verification failed"), "{out}");
    let mut buf = vec![0u8; MIB as usize];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab));
}

#[test]
fn qemu_img_map_shows_holes_and_data() {
    let disk = Arc::new(MemDevice::new(64 * MIB));
    disk.fill(&pattern(MIB as usize, 1), 8 * MIB).unwrap();
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk)));
    let out = run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &srv.url("")],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("\"start\": 0, \"length\": 8388608")
            && lines[0].contains("\"data\": false")
            && lines[0].contains("\"zero\": true"),
        "{out}"
    );
    assert!(
        lines[1].contains("\"start\": 8388608, \"length\": 1048576")
            && lines[1].contains("\"data\": true"),
        "{out}"
    );
    assert!(
        lines[2].contains("\"start\": 9437184") && lines[2].contains("\"data\": false"),
        "{out}"
    );
}

#[test]
fn qemu_img_compare_matches_a_raw_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let content = {
        let mut c = vec![0u8; 16 * MIB as usize];
        c[MIB as usize..3 * MIB as usize].copy_from_slice(&pattern(2 * MIB as usize, 7));
        c
    };
    std::fs::write(&raw, &content).unwrap();
    let disk = Arc::new(MemDevice::new(16 * MIB));
    disk.fill(&content[MIB as usize..3 * MIB as usize], MIB)
        .unwrap();
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk.clone())));
    let raw_s = raw.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            raw_s,
            &srv.url(""),
        ],
    );
    // One flipped byte makes compare fail.
    disk.fill(&[0x5a], 2 * MIB + 17).unwrap();
    let (ok, _) = try_run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            raw_s,
            &srv.url(""),
        ],
    );
    assert!(!ok, "compare must notice the changed byte");
}

#[test]
fn qemu_img_convert_to_qcow2_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = Arc::new(MemDevice::new(32 * MIB));
    src.fill(&pattern(3 * MIB as usize, 3), 5 * MIB).unwrap();
    src.fill(&pattern(4096, 9), 20 * MIB).unwrap();
    let dst = Arc::new(MemDevice::new(32 * MIB));
    let provider = StaticExports::default()
        .add("src", src.clone())
        .add("dst", dst.clone());
    let srv = TestServer::start(Arc::new(provider));
    let qcow = dir.path().join("copy.qcow2");
    let qcow_s = qcow.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &srv.url("src"),
            qcow_s,
        ],
    );
    // Holes stayed holes: only the written 3 MiB + 4 KiB (cluster-rounded) were allocated.
    let map = run("qemu-img", &["map", "--output=json", qcow_s]);
    let data_entries = map.lines().filter(|l| l.contains("\"data\": true")).count();
    assert_eq!(data_entries, 2, "{map}");
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            qcow_s,
            &srv.url("src"),
        ],
    );
    // Back into a blank NBD export (-n: the target exists).
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "qcow2",
            "-O",
            "raw",
            qcow_s,
            &srv.url("dst"),
        ],
    );
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            &srv.url("src"),
            &srv.url("dst"),
        ],
    );
    let mut a = vec![0u8; 32 * MIB as usize];
    let mut b = vec![0u8; 32 * MIB as usize];
    src.read_at(&mut a, 0).unwrap();
    dst.read_at(&mut b, 0).unwrap();
    assert!(a == b);
    // Zero areas were not written as data into the target.
    assert!(
        dst.allocated_pages() < 32 * 256,
        "{}",
        dst.allocated_pages()
    );
}

#[test]
fn read_only_export_refuses_writes() {
    let disk = Arc::new(MemDevice::new(8 * MIB));
    disk.fill(&[0x11; 4096], 0).unwrap();
    let snap = Arc::new(MemDevice::new(8 * MIB).read_only(true));
    snap.fill(&[0x22; 4096], 0).unwrap();
    let provider = StaticExports::with_default(disk).add("s1", snap.clone());
    let srv = TestServer::start(Arc::new(provider));
    let (ok, out) = try_run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x33 0 4k", &srv.url("s1")],
    );
    assert!(!ok || out.contains("failed"), "write accepted: {out}");
    let out = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x22 0 4k", &srv.url("s1")],
    );
    assert!(out.contains("read 4096/4096"), "{out}");
    let info = run("qemu-img", &["info", "--output=json", &srv.url("s1")]);
    assert!(info.contains("8388608"), "{info}");
}

#[test]
fn concurrent_clients_write_their_own_regions() {
    let disk = Arc::new(MemDevice::new(64 * MIB));
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk.clone())));
    let url = srv.url("");
    let children: Vec<_> = (0..6u64)
        .map(|i| {
            let cmd = format!("write -P {} {}M 4M", 0x40 + i, i * 8);
            std::process::Command::new("qemu-io")
                .args(["-f", "raw", "-c", &cmd, "-c", "flush", &url])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn qemu-io")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    for i in 0..6u64 {
        let cmd = format!("read -P {} {}M 4M", 0x40 + i, i * 8);
        let out = run("qemu-io", &["-f", "raw", "-c", &cmd, &url]);
        assert!(out.contains("read 4194304/4194304"), "{out}");
    }
}

#[test]
fn qemu_io_zeroes_and_discard_become_holes() {
    let disk = Arc::new(MemDevice::new(16 * MIB));
    disk.fill(&pattern(8 * MIB as usize, 5), 0).unwrap();
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk.clone())));
    let url = srv.url("");
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -z -u 1M 1M",
            "-c",
            "discard 4M 1M",
            &url,
        ],
    );
    let out = run("qemu-io", &["-f", "raw", "-c", "read -P 0 1M 1M", &url]);
    assert!(out.contains("read 1048576/1048576"), "{out}");
    let map = run("qemu-img", &["map", "--output=json", "-f", "raw", &url]);
    assert!(
        map.contains("\"start\": 1048576, \"length\": 1048576"),
        "{map}"
    );
    assert!(
        map.contains("\"start\": 4194304, \"length\": 1048576"),
        "{map}"
    );
    assert_eq!(disk.allocated_pages(), 6 * 256);
}

#[test]
fn qemu_nbd_lists_exports_with_meta_context() {
    let disk = Arc::new(MemDevice::new(4 * MIB).with_description("active head"));
    let snap = Arc::new(MemDevice::new(4 * MIB).read_only(true));
    let provider = StaticExports::with_default(disk.clone())
        .add("head", disk)
        .add("snap-1", snap);
    let srv = TestServer::start(Arc::new(provider));
    let port = srv.addr.port().to_string();
    let out = run("qemu-nbd", &["-L", "-b", "127.0.0.1", "-p", &port]);
    assert!(out.contains("exports available: 2"), "{out}");
    assert!(
        out.contains("export: 'head'") && out.contains("export: 'snap-1'"),
        "{out}"
    );
    assert!(out.contains("description: active head"), "{out}");
    assert!(out.contains("base:allocation"), "{out}");
    assert!(out.contains("readonly"), "{out}");
}

/// A provider whose exports can be added while the server runs (snapshots taken live).
#[derive(Default)]
struct Dynamic {
    exports: Mutex<BTreeMap<String, Arc<dyn Export>>>,
}

impl ExportProvider for Dynamic {
    fn default_export(&self) -> Option<Arc<dyn Export>> {
        self.open("head")
    }
    fn list(&self) -> Vec<String> {
        self.exports.lock().unwrap().keys().cloned().collect()
    }
    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.exports.lock().unwrap().get(name).cloned()
    }
}

#[test]
fn exports_added_while_serving_are_seen_by_new_clients() {
    let provider = Arc::new(Dynamic::default());
    let head: Arc<dyn Export> = Arc::new(MemDevice::new(2 * MIB));
    provider.exports.lock().unwrap().insert("head".into(), head);
    let srv = TestServer::start(provider.clone());
    let (ok, _) = try_run("qemu-img", &["info", &srv.url("later")]);
    assert!(!ok, "export does not exist yet");
    let later = Arc::new(MemDevice::new(3 * MIB).read_only(true));
    provider
        .exports
        .lock()
        .unwrap()
        .insert("later".into(), later);
    let out = run("qemu-img", &["info", "--output=json", &srv.url("later")]);
    assert!(out.contains("3145728"), "{out}");
}

#[test]
fn shutdown_flushes_unflushed_writes() {
    let disk = Arc::new(MemDevice::new(4 * MIB));
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk.clone())));
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x7 0 64k", &srv.url("")],
    );
    let before = disk.flush_count();
    srv.stop().expect("clean shutdown");
    assert!(
        disk.flush_count() > before,
        "shutdown must flush the writable export"
    );
}

#[test]
fn unix_socket_transport() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let disk = Arc::new(MemDevice::new(4 * MIB));
    let server = vdisk_nbd::Server::bind_unix(&sock).unwrap();
    let shutdown = vdisk_nbd::ShutdownSignal::new();
    let sd = shutdown.clone();
    let provider = Arc::new(StaticExports::with_default(disk));
    let handle = std::thread::spawn(move || server.run(provider, Default::default(), sd));
    let url = format!("nbd+unix:///?socket={}", sock.display());
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x5 0 8k", &url]);
    let out = run("qemu-io", &["-f", "raw", "-c", "read -P 0x5 0 8k", &url]);
    assert!(out.contains("read 8192/8192"), "{out}");
    shutdown.trigger();
    handle.join().unwrap().unwrap();
    assert!(!sock.exists(), "socket file removed at shutdown");
}

#[test]
fn file_export_serves_holes_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(32 * MIB).unwrap();
    drop(f);
    let disk = Arc::new(vdisk_live::RawFile::open(&path, false).unwrap());
    let srv = TestServer::start(Arc::new(StaticExports::with_default(disk)));
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x9 4M 1M",
            "-c",
            "flush",
            &srv.url(""),
        ],
    );
    let map = run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &srv.url("")],
    );
    assert!(
        map.contains("\"start\": 0, \"length\": 4194304") && map.contains("\"data\": false"),
        "{map}"
    );
    run(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "raw",
            path.to_str().unwrap(),
            &srv.url(""),
        ],
    );
}
