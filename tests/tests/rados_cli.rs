//! The CLI on `rados://POOL/NAME` disks in a real throw-away cluster (the project's harness):
//! the snapshot lifecycle, diff, merge, delta streams, conversion both ways, serving over NBD
//! and mounting with the control socket in the runtime directory, kill -9 of a writer, and
//! the errors of a missing pool or a missing librados.

mod peers;

use peers::{read_range, require, run_ok, wait_until, write_at, Mounted, Served};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use vdisk_rados::harness;
use vdisk_tests::{rnd, vdisk, vdisk_bin, vdisk_err, vdisk_ok};

const MIB: u64 = 1 << 20;

/// The shared cluster, with `CEPH_CONF` pointing at it for every `vdisk` this test runs.
fn cluster() -> &'static harness::TestCluster {
    static SET: OnceLock<()> = OnceLock::new();
    let c = harness::shared().unwrap_or_else(|e| panic!("the test cluster: {e}"));
    SET.get_or_init(|| {
        // Before any test spawns a process (every test comes through here first).
        std::env::set_var("CEPH_CONF", c.conf());
        std::env::set_var("VDISK_RADOS_LIVENESS_MS", "1000");
    });
    c
}

fn disk(name: &str) -> PathBuf {
    let c = cluster();
    PathBuf::from(format!("rados://{}/{name}", c.pool()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn snapshot_lifecycle_diff_merge_streams_and_conversion() {
    let c = cluster();
    let t = tmp();
    let d = disk("cli-flow");
    let ds = s(&d);
    vdisk_ok(&["create", ds, "--size", "1G"]);
    vdisk_err(&["create", ds, "--size", "1G"]); // exists
    let a = rnd(1, MIB as usize);
    let b = rnd(2, 65536);
    write_at(&d, t.path(), 0, &a);
    vdisk_ok(&["snapshot", "create", ds, "s1"]);
    write_at(&d, t.path(), 512 * MIB, &b);
    vdisk_ok(&["snapshot", "create", ds, "s2"]);
    assert!(read_range(&d, Some("s1"), 0, MIB) == a);
    let list: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["snapshot", "list", ds, "--json"])).unwrap();
    assert_eq!(
        list["snapshots"].as_array().map(|l| l.len()),
        Some(2),
        "{list}"
    );
    let diff: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["diff", ds, "s1", "s2", "--json"])).unwrap();
    assert_eq!(diff["changed_bytes"], 65536, "{diff}");
    // A full stream of s2 and an incremental one, into a local bundle and another RADOS one.
    let full = t.path().join("full.vdelta");
    let inc = t.path().join("inc.vdelta");
    vdisk_ok(&["export-diff", ds, "--to", "s1", "-o", s(&full)]);
    vdisk_ok(&[
        "export-diff",
        ds,
        "--from",
        "s1",
        "--to",
        "s2",
        "-o",
        s(&inc),
    ]);
    let local = t.path().join("replica.vdisk");
    let remote = disk("cli-replica");
    for r in [local.clone(), remote.clone()] {
        let _ = vdisk(&["create", s(&r), "--size", "1G"]);
        vdisk_ok(&["import-diff", s(&r), s(&full)]);
        vdisk_ok(&["import-diff", s(&r), s(&inc)]);
        assert!(read_range(&r, Some("s2"), 512 * MIB, 65536) == b);
        assert!(read_range(&r, Some("s1"), 0, MIB) == a);
    }
    // Merge s1 away: s2 keeps everything.
    vdisk_ok(&["merge", ds, "s1"]);
    assert!(read_range(&d, Some("s2"), 0, MIB) == a);
    vdisk_ok(&["compact", ds]);
    assert!(read_range(&d, Some("s2"), 512 * MIB, 65536) == b);
    vdisk_ok(&["check", ds]);
    let info: serde_json::Value = serde_json::from_str(&vdisk_ok(&["info", ds, "--json"])).unwrap();
    assert_eq!(info["virtual_size"], 1u64 << 30, "{info}");
    // Conversion both ways.
    let out = t.path().join("copy.vdisk");
    vdisk_ok(&["convert", ds, s(&out)]);
    assert!(read_range(&out, None, 0, MIB) == a);
    let raw = t.path().join("disk.raw");
    std::fs::write(&raw, &a).unwrap();
    let back = disk("cli-from-raw");
    vdisk_ok(&["convert", s(&raw), s(&back)]);
    assert!(read_range(&back, None, 0, MIB) == a);
    vdisk_ok(&["check", s(&back)]);
    // Everything is in the pool.
    let ls = c.tool("rados", &["-p", c.pool(), "ls"]).unwrap();
    assert!(ls.contains("cli-flow.vdisk/manifest"), "{ls}");
    assert!(ls.contains("cli-flow.vdisk/layers/"), "{ls}");
}

#[test]
fn serve_over_nbd_with_snapshots_through_the_control_socket() {
    if !require(
        "serve_over_nbd_with_snapshots_through_the_control_socket",
        false,
        false,
        &["qemu-io"],
    ) {
        return;
    }
    let d = disk("cli-serve");
    let ds = s(&d);
    vdisk_ok(&["create", ds, "--size", "64M"]);
    let srv = Served::start(&d, &["--export-snapshots"]);
    let io = |url: &str, cmds: &[&str]| {
        let ro = cmds.iter().all(|c| c.starts_with("read"));
        let mut args = if ro {
            vec!["-r", "-f", "raw"]
        } else {
            vec!["-f", "raw"]
        };
        for c in cmds {
            args.extend(["-c", c]);
        }
        args.push(url);
        run_ok("qemu-io", &args)
    };
    io(&srv.url, &["write -P 0xab 0 1M", "flush"]);
    // The served disk is locked: the snapshot goes through the control socket, which for a
    // RADOS bundle lives in this host's runtime directory.
    let o = vdisk_ok(&["snapshot", "create", ds, "after"]);
    assert!(o.starts_with("Created snapshot after"), "{o}");
    io(&srv.url, &["write -P 0xcd 0 64k", "flush"]);
    let out = io(&srv.export("after"), &["read -P 0xab 0 1M"]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(
        read_range(&d, Some("after"), 0, MIB),
        vec![0xab; MIB as usize]
    );
    drop(srv);
    assert_eq!(read_range(&d, None, 0, 65536), vec![0xcd; 65536]);
    vdisk_ok(&["check", ds]);
}

#[test]
fn mount_read_write_and_snapshot_through_the_control_socket() {
    if !require(
        "mount_read_write_and_snapshot_through_the_control_socket",
        true,
        true,
        &[],
    ) {
        return;
    }
    let t = tmp();
    let d = disk("cli-mount");
    let ds = s(&d);
    vdisk_ok(&["create", ds, "--size", "16M"]);
    let m = Mounted::start(&d, &t.path().join("m"), &["--read-write"]);
    let data = rnd(9, 2 * MIB as usize);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path("head.raw"))
            .unwrap();
        f.write_all_at(&data, 0).unwrap();
        f.sync_all().unwrap();
    }
    vdisk_ok(&["snapshot", "create", ds, "one"]);
    assert!(wait_until(Duration::from_secs(5), || m
        .path("snapshots/one.raw")
        .exists()));
    assert!(std::fs::read(m.path("snapshots/one.raw")).unwrap()[..data.len()] == data[..]);
    drop(m);
    assert!(read_range(&d, Some("one"), 0, 2 * MIB) == data);
}

#[test]
fn kill_9_of_a_writer_then_check_and_take_over() {
    let c = cluster();
    let t = tmp();
    let d = disk("cli-kill");
    let ds = s(&d);
    vdisk_ok(&["create", ds, "--size", "256M"]);
    let first = rnd(3, MIB as usize);
    write_at(&d, t.path(), 0, &first);
    let big = t.path().join("big");
    std::fs::write(&big, rnd(4, 48 * MIB as usize)).unwrap();
    let mut w = Command::new(vdisk_bin())
        .args(["write", ds, "--offset", "100000000", "--input", s(&big)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while it holds the writer lock.
    let head = "cli-kill.vdisk/manifest";
    assert!(wait_until(Duration::from_secs(20), || c
        .tool(
            "rados",
            &["-p", c.pool(), "lock", "info", head, "vdisk.writer"]
        )
        .is_ok_and(|o| o.contains("\"lockers\":[{"))));
    w.kill().unwrap();
    let _ = w.wait();
    // Another process (another cwd) finds a clean bundle and every flushed byte.
    let o = Command::new(vdisk_bin())
        .current_dir("/")
        .args(["check", ds])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "check after kill -9: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(read_range(&d, None, 0, MIB) == first);
    // A new writer fences the dead one (it does not answer) and writes.
    write_at(&d, t.path(), 0, &rnd(5, 4096));
    assert!(read_range(&d, None, 0, 4096) == rnd(5, 4096));
    vdisk_ok(&["check", ds]);
}

#[test]
fn missing_pool_and_missing_librados_are_clear_errors() {
    cluster();
    let e = vdisk_err(&["info", "rados://nosuchpool/x"]);
    assert!(e.contains("pool \"nosuchpool\" does not exist"), "{e}");
    let e = vdisk_err(&["info", "rados://bad/a/b"]);
    assert!(e.contains("invalid address"), "{e}");
    let d = disk("never-made");
    let e = vdisk_err(&["info", s(&d)]);
    assert!(e.contains("not a vdisk bundle"), "{e}");
    let o = Command::new(vdisk_bin())
        .args(["info", "rados://test/x"])
        .env("VDISK_LIBRADOS", "/nonexistent/librados.so.2")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("apt-get install librados2"), "{e}");
    let e = vdisk_err(&["--ceph-conf", "/nonexistent.conf", "info", "rados://test/x"]);
    assert!(e.contains("/nonexistent.conf: no such file"), "{e}");
}
