//! The writer's control socket (format-spec/control.md): `vdisk snapshot …` against a bundle
//! held by `vdisk serve`, the raw protocol, stale and missing sockets, long paths.

mod peers;

use peers::{bundle, read_range, write_at, Served};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_tests::{vdisk_err, vdisk_ok};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn names(disk: &Path) -> Vec<String> {
    let v: Value = serde_json::from_str(&vdisk_ok(&[
        "snapshot",
        "list",
        disk.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn snapshot_commands_go_through_the_running_writer() {
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "16M");
    let ds = d.to_str().unwrap();
    write_at(&d, t.path(), 0, &[1; 8192]);
    let srv = Served::start(&d, &[]);
    let sock = d.join("control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    let out = vdisk_ok(&["snapshot", "create", ds, "a"]);
    assert!(
        out.starts_with("Created snapshot a (") && out.trim_end().ends_with(&format!("of {ds}")),
        "{out}"
    );
    assert_eq!(names(&d), ["a"]);
    let e = vdisk_err(&["snapshot", "create", ds, "a"]);
    assert!(e.contains("already exists"), "{e}");
    let e = vdisk_err(&["snapshot", "delete", ds, "zzz"]);
    assert!(e.contains("not found"), "{e}");
    vdisk_ok(&["snapshot", "rename", ds, "a", "b"]);
    vdisk_ok(&["snapshot", "pin", ds, "b"]);
    let list = vdisk_ok(&["snapshot", "list", ds]);
    assert!(list.contains("pinned"), "{list}");
    vdisk_ok(&["snapshot", "unpin", ds, "b"]);
    assert!(!vdisk_ok(&["snapshot", "list", ds]).contains("pinned"));
    vdisk_ok(&["snapshot", "revert", ds, "b"]);
    vdisk_ok(&["snapshot", "delete", ds, "b"]);
    assert!(names(&d).is_empty());

    // Several at once, from parallel processes.
    let disk = Arc::new(d.clone());
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let disk = Arc::clone(&disk);
            std::thread::spawn(move || {
                vdisk_ok(&[
                    "snapshot",
                    "create",
                    disk.to_str().unwrap(),
                    &format!("p{i}"),
                ]);
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let mut n = names(&d);
    n.sort();
    assert_eq!(n, ["p0", "p1", "p2", "p3", "p4", "p5"]);
    drop(srv);
    assert!(!sock.exists(), "socket not removed on exit");
    assert_eq!(read_range(&d, Some("p0"), 0, 8192), vec![1; 8192]);
    vdisk_ok(&["check", ds]);
}

fn ask(s: &mut BufReader<UnixStream>, line: &[u8]) -> Value {
    s.get_mut().write_all(line).unwrap();
    let mut resp = String::new();
    s.read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
}

#[test]
fn raw_protocol_answers_and_bounds() {
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let _srv = Served::start(&d, &[]);
    let mut s = BufReader::new(UnixStream::connect(d.join("control.sock")).unwrap());
    let r = ask(&mut s, b"{\"op\":\"ping\",\"id\":42}\n");
    assert_eq!(
        (r["ok"].clone(), r["writer"].clone(), r["id"].clone()),
        (true.into(), "serve".into(), 42.into())
    );
    let r = ask(&mut s, b"{\"op\":\"info\"}\n");
    assert_eq!(r["info"]["virtual_size"], 8 << 20);
    assert!(r["ops"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o == "snapshot_create"));
    for (req, code) in [
        (&b"garbage\n"[..], "bad_request"),
        (b"{\"op\":\"defragment\"}\n", "unknown_op"),
        (b"{\"op\":\"snapshot_create\"}\n", "bad_request"),
        (
            b"{\"op\":\"snapshot_delete\",\"name\":\"none\"}\n",
            "not_found",
        ),
    ] {
        let r = ask(&mut s, req);
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["code"], code, "{r}");
    }
    let r = ask(&mut s, b"{\"op\":\"snapshot_create\",\"name\":\"x\"}\n");
    assert_eq!(r["snapshot"]["name"], "x", "{r}");
    let r = ask(&mut s, b"{\"op\":\"flush\"}\n");
    assert_eq!(r["ok"], true);
    // An oversized request: an error, then the connection is closed.
    let mut big = vec![b'x'; 200_000];
    big.push(b'\n');
    let r = ask(&mut s, &big);
    assert_eq!(r["code"], "bad_request", "{r}");
    let mut rest = String::new();
    assert_eq!(s.read_line(&mut rest).unwrap_or(0), 0, "still open: {rest}");
    // A fresh connection still works.
    let mut s = BufReader::new(UnixStream::connect(d.join("control.sock")).unwrap());
    assert_eq!(ask(&mut s, b"{\"op\":\"ping\"}\n")["ok"], true);
}

#[test]
fn missing_and_stale_sockets_give_clear_errors() {
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let ds = d.to_str().unwrap();
    vdisk_ok(&["snapshot", "create", ds, "s0"]);
    // Hold the writer lock in this process, without a control socket.
    let store: Arc<dyn vdisk_engine::Store> = Arc::new(vdisk_engine::LocalStore::open(&d).unwrap());
    let disk = vdisk_engine::Disk::open(store).unwrap();
    let t0 = Instant::now();
    let e = vdisk_err(&["snapshot", "create", ds, "x"]);
    assert!(e.contains("no control socket"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    // A socket file nobody listens on.
    let l = UnixListener::bind(d.join("control.sock")).unwrap();
    drop(l);
    let e = vdisk_err(&["snapshot", "delete", ds, "s0"]);
    assert!(e.contains("stale") && e.contains("control.sock"), "{e}");
    disk.close().unwrap();
    // With the lock free, the command works locally (and ignores the stale socket).
    vdisk_ok(&["snapshot", "create", ds, "x"]);
    // A writer starting over a stale socket replaces it.
    let _srv = Served::start(&d, &[]);
    vdisk_ok(&["snapshot", "create", ds, "y"]);
    assert_eq!(names(&d), ["s0", "x", "y"]);
}

#[test]
fn killed_writer_leaves_a_socket_the_next_writer_replaces() {
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let ds = d.to_str().unwrap();
    let mut srv = Served::start(&d, &[]);
    srv.child.kill().unwrap(); // SIGKILL: no cleanup
    srv.child.wait().unwrap();
    assert!(d.join("control.sock").exists());
    // The lock died with the process: local again.
    vdisk_ok(&["snapshot", "create", ds, "a"]);
    let _srv = Served::start(&d, &[]);
    vdisk_ok(&["snapshot", "create", ds, "b"]);
    assert_eq!(names(&d), ["a", "b"]);
}

#[test]
fn long_bundle_paths_work() {
    let t = tmp();
    let mut dir = t.path().to_path_buf();
    for i in 0..6 {
        dir.push(format!("a-rather-long-directory-name-{i}"));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let d = bundle(&dir, "d.vdisk", "8M");
    assert!(d.join("control.sock").as_os_str().len() > 108);
    let _srv = Served::start(&d, &[]);
    vdisk_ok(&["snapshot", "create", d.to_str().unwrap(), "deep"]);
    assert_eq!(names(&d), ["deep"]);
}
