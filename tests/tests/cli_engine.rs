//! The `vdisk` binary over the engine: the command contract, bad input, kill -9, qemu-img.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use vdisk_tests::{have, rnd, vdisk, vdisk_bin, vdisk_err, vdisk_ok};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn create_write_snapshot_read_revert() {
    let t = tmp();
    let d = t.path().join("d.vdisk");
    let ds = d.to_str().unwrap();
    vdisk_ok(&["create", ds, "--size", "64M"]);
    let a = rnd(1, 300_000);
    fs::write(t.path().join("a"), &a).unwrap();
    vdisk_ok(&[
        "write",
        ds,
        "--offset",
        "12345",
        "--input",
        t.path().join("a").to_str().unwrap(),
    ]);
    vdisk_ok(&["snapshot", "create", ds, "one"]);
    // stdin input
    let mut child = Command::new(vdisk_bin())
        .args(["write", ds, "--offset", "1M"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&rnd(2, 70_000))
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = t.path().join("r");
    let os = out.to_str().unwrap();
    vdisk_ok(&[
        "read",
        ds,
        "--offset",
        "12345",
        "--length",
        "300000",
        "--snapshot",
        "one",
        "--output",
        os,
    ]);
    assert_eq!(fs::read(&out).unwrap(), a);
    vdisk_ok(&[
        "read", ds, "--offset", "1M", "--length", "70000", "--output", os,
    ]);
    assert_eq!(fs::read(&out).unwrap(), rnd(2, 70_000));
    // stdout output
    let o = Command::new(vdisk_bin())
        .args([
            "read",
            ds,
            "--offset",
            "1M",
            "--length",
            "100",
            "--snapshot",
            "one",
        ])
        .output()
        .unwrap();
    assert_eq!(o.stdout, vec![0u8; 100]);
    vdisk_ok(&["snapshot", "revert", ds, "one"]);
    vdisk_ok(&[
        "read", ds, "--offset", "1M", "--length", "70000", "--output", os,
    ]);
    assert_eq!(
        fs::read(&out).unwrap(),
        vec![0u8; 70_000],
        "revert kept a later write"
    );
    let list: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["snapshot", "list", ds, "--json"])).unwrap();
    assert_eq!(list["snapshots"][0]["name"], "one");
    let info: serde_json::Value = serde_json::from_str(&vdisk_ok(&["info", ds, "--json"])).unwrap();
    assert_eq!(info["virtual_size"], 64 << 20);
    assert_eq!(info["cluster_size"], 65536);
    let map: serde_json::Value = serde_json::from_str(&vdisk_ok(&["map", ds, "--json"])).unwrap();
    assert_eq!(map["schema"], "vdisk-map/1");
    let data: Vec<_> = map["extents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .collect();
    assert!(!data.is_empty());
    let first = data[0]["offset"].as_u64().unwrap();
    assert!(first <= 12345 && first + data[0]["length"].as_u64().unwrap() >= 12345 + 300_000);
    vdisk_ok(&["snapshot", "rename", ds, "one", "uno"]);
    vdisk_ok(&["snapshot", "pin", ds, "uno"]);
    let list: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["snapshot", "list", ds, "--json"])).unwrap();
    assert_eq!(list["snapshots"][0]["name"], "uno");
    assert_eq!(list["snapshots"][0]["pinned"], true);
    let e = vdisk_err(&["snapshot", "delete", ds, "uno"]);
    assert!(e.contains("pinned"), "{e}");
    vdisk_ok(&["snapshot", "delete", ds, "uno", "--force"]);
    vdisk_ok(&["check", ds]);
}

#[test]
fn user_errors_are_clear_and_do_not_panic() {
    let t = tmp();
    let d = t.path().join("d.vdisk");
    let ds = d.to_str().unwrap();
    assert!(vdisk_err(&["info", "/nonexistent/x.vdisk"]).contains("not a vdisk bundle"));
    assert!(vdisk_err(&["create", ds, "--size", "12Q"]).contains("size"));
    assert!(
        vdisk_err(&["create", ds, "--size", "1M", "--cluster-size", "3000"])
            .contains("--cluster-size")
    );
    vdisk_ok(&["create", ds, "--size", "1M"]);
    assert!(vdisk_err(&["create", ds, "--size", "1M"]).contains("exists"));
    assert!(vdisk_err(&["read", ds, "--offset", "2M", "--length", "1"]).contains("past the end"));
    assert!(vdisk_err(&[
        "read",
        ds,
        "--offset",
        "0",
        "--length",
        "4096",
        "--snapshot",
        "nope"
    ])
    .contains("not found"));
    let f = t.path().join("big");
    fs::write(&f, vec![1u8; 2 << 20]).unwrap();
    assert!(
        vdisk_err(&["write", ds, "--offset", "0", "--input", f.to_str().unwrap()])
            .contains("pass the end of")
    );
    assert!(vdisk_err(&["snapshot", "create", ds, "a/b"]).contains("invalid snapshot name"));
    vdisk_ok(&["snapshot", "create", ds, "s"]);
    assert!(vdisk_err(&["snapshot", "create", ds, "s"]).contains("already exists"));
    assert!(vdisk_err(&["snapshot", "delete", ds, "zz"]).contains("not found"));
    // a disk held by a writer refuses a second writer
    let mut child = Command::new(vdisk_bin())
        .args(["write", ds, "--offset", "0"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[5u8; 4096]).unwrap();
    // wait until the writer holds the lock (a shared flock fails while it is held)
    let lock = fs::File::open(d.join("lock")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    let mut held = false;
    for _ in 0..500 {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(fd, libc::LOCK_SH | libc::LOCK_NB) } != 0 {
            held = true;
            break;
        }
        // SAFETY: as above; releases the shared lock just taken.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(held, "the writer never took the lock");
    // `vdisk write` has no control socket: a second writer is refused with a clear message.
    let err = vdisk_err(&["snapshot", "create", ds, "t"]);
    assert!(err.contains("locked by another writer"), "{err}");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn kill_9_of_a_writer_leaves_a_clean_bundle() {
    let t = tmp();
    let d = t.path().join("d.vdisk");
    let ds = d.to_str().unwrap();
    vdisk_ok(&["create", ds, "--size", "256M"]);
    let base = rnd(7, 1 << 20);
    fs::write(t.path().join("base"), &base).unwrap();
    vdisk_ok(&[
        "write",
        ds,
        "--offset",
        "0",
        "--input",
        t.path().join("base").to_str().unwrap(),
    ]);
    vdisk_ok(&["snapshot", "create", ds, "s"]);
    let big = rnd(8, 48 << 20);
    for (i, delay_ms) in [5u64, 40, 120, 300].into_iter().enumerate() {
        let mut child = Command::new(vdisk_bin())
            .args(["write", ds, "--offset", "64M"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = big.clone();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let _ = feeder.join();
        let chk = vdisk(&["check", ds]);
        assert!(
            chk.status.success(),
            "round {i}: check after kill -9: {}",
            String::from_utf8_lossy(&chk.stderr)
        );
        let out = t.path().join("r");
        vdisk_ok(&[
            "read",
            ds,
            "--offset",
            "0",
            "--length",
            "1M",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            fs::read(&out).unwrap(),
            base,
            "round {i}: data outside the killed write changed"
        );
        vdisk_ok(&[
            "read",
            ds,
            "--offset",
            "0",
            "--length",
            "1M",
            "--snapshot",
            "s",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert_eq!(fs::read(&out).unwrap(), base, "round {i}: snapshot changed");
        // Whatever of the killed write survived is the written data or zeros, per byte.
        vdisk_ok(&[
            "read",
            ds,
            "--offset",
            "64M",
            "--length",
            "48M",
            "--output",
            out.to_str().unwrap(),
        ]);
        let got = fs::read(&out).unwrap();
        for (k, (&g, &w)) in got.iter().zip(&big).enumerate() {
            assert!(
                g == w || g == 0,
                "round {i}: byte {k} of the killed write is garbage"
            );
        }
        // the bundle is writable again
        vdisk_ok(&["snapshot", "create", ds, &format!("after{i}")]);
    }
}

#[test]
fn raw_round_trip_is_sparse_and_qemu_agrees() {
    let t = tmp();
    let src = t.path().join("src.raw");
    let f = fs::File::create(&src).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, at) in [0u64, 3, 100, 517, 1023].into_iter().enumerate() {
        f.write_all_at(&rnd(i as u64, 65536), at * 65536).unwrap();
    }
    // a zero-filled data region (not a hole) must not be stored either
    f.write_all_at(&vec![0u8; 1 << 20], 40 << 20).unwrap();
    drop(f);
    let d = t.path().join("c.vdisk");
    let back = t.path().join("back.raw");
    vdisk_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vdisk",
        src.to_str().unwrap(),
        d.to_str().unwrap(),
    ]);
    vdisk_ok(&["convert", d.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(fs::read(&src).unwrap(), fs::read(&back).unwrap());
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["info", d.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(info["allocated_bytes"], 5 * 65536, "zero data stored");
    if have("qemu-img") {
        let o = Command::new("qemu-img")
            .args([
                "compare",
                "-q",
                "-f",
                "raw",
                "-F",
                "raw",
                src.to_str().unwrap(),
                back.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(o.success(), "qemu-img compare disagrees");
        let map = Command::new("qemu-img")
            .args(["map", "--output=json", "-f", "raw", back.to_str().unwrap()])
            .output()
            .unwrap();
        let m: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
        let data: u64 = m
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["data"] == true)
            .map(|e| e["length"].as_u64().unwrap())
            .sum();
        assert!(
            data <= 5 * 65536 + (1 << 20),
            "exported raw file is not sparse: {data} bytes of data"
        );
    } else {
        eprintln!("qemu-img not installed: interop part skipped");
    }
    // a snapshot converts too
    vdisk_ok(&["snapshot", "create", d.to_str().unwrap(), "s"]);
    let back2 = t.path().join("back2.raw");
    vdisk_ok(&[
        "convert",
        "--snapshot",
        "s",
        d.to_str().unwrap(),
        back2.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&src).unwrap(), fs::read(&back2).unwrap());
}

#[test]
fn check_reports_corruption_precisely() {
    let t = tmp();
    let d = t.path().join("d.vdisk");
    let ds = d.to_str().unwrap();
    vdisk_ok(&["create", ds, "--size", "8M"]);
    let a = rnd(3, 200_000);
    fs::write(t.path().join("a"), &a).unwrap();
    vdisk_ok(&[
        "write",
        ds,
        "--offset",
        "0",
        "--input",
        t.path().join("a").to_str().unwrap(),
    ]);
    vdisk_ok(&["snapshot", "create", ds, "s"]);
    // find s's data in its layer file and flip a bit
    let info: serde_json::Value = serde_json::from_str(&vdisk_ok(&["info", ds, "--json"])).unwrap();
    let layer = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["snapshots"][0] == "s")
        .unwrap();
    let file = d.join(layer["file"].as_str().unwrap());
    let mut bytes = fs::read(&file).unwrap();
    let at = bytes
        .windows(64)
        .position(|w| w == &a[100_000..100_064])
        .unwrap();
    bytes[at + 5] ^= 1;
    fs::write(&file, &bytes).unwrap();
    let o = vdisk(&["check", ds, "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &r["problems"][0];
    assert_eq!(p["object"], layer["file"]);
    assert!(
        p["field"].as_str().unwrap().contains("guest offset 65536"),
        "{p}"
    );
}

#[test]
fn check_repair_rewrites_a_damaged_header_slot() {
    let t = tmp();
    let d = t.path().join("d.vdisk");
    let ds = d.to_str().unwrap();
    vdisk_ok(&["create", ds, "--size", "8M"]);
    let a = rnd(5, 100_000);
    fs::write(t.path().join("a"), &a).unwrap();
    vdisk_ok(&[
        "write",
        ds,
        "--offset",
        "0",
        "--input",
        t.path().join("a").to_str().unwrap(),
    ]);
    vdisk_ok(&["snapshot", "create", ds, "s"]);
    let info: serde_json::Value = serde_json::from_str(&vdisk_ok(&["info", ds, "--json"])).unwrap();
    let layer = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["snapshots"][0] == "s")
        .unwrap();
    let file = d.join(layer["file"].as_str().unwrap());
    let mut bytes = fs::read(&file).unwrap();
    bytes[20] ^= 0xff; // slot A's generation field: its crc no longer matches
    fs::write(&file, &bytes).unwrap();
    // still readable (the twin is used), and check reports the damage (exit 2)
    let o = vdisk(&["check", ds]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("header slot A: damaged"), "{out}");
    let out = vdisk_ok(&["check", ds, "--repair"]);
    assert!(out.contains("rewritten from its twin"), "{out}");
    let out = vdisk_ok(&["check", ds]);
    assert!(!out.contains("damaged"), "{out}");
    let r = t.path().join("r");
    vdisk_ok(&[
        "read",
        ds,
        "--offset",
        "0",
        "--length",
        "100000",
        "--snapshot",
        "s",
        "--output",
        r.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&r).unwrap(), a);
}
