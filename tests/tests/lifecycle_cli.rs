//! The snapshot lifecycle through the `vdisk` binary: merge, commit, compact, policy,
//! maintain, diff, export-diff/import-diff (files and pipes), and merges of a disk in use.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use vdisk_tests::{rnd, vdisk_bin, vdisk_err, vdisk_ok};

struct Disk {
    _t: tempfile::TempDir,
    dir: std::path::PathBuf,
}

impl Disk {
    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
    fn write(&self, seed: u64, len: usize, off: u64) {
        let f = self.dir.with_extension("in");
        fs::write(&f, rnd(seed, len)).unwrap();
        vdisk_ok(&[
            "write",
            self.path(),
            "--offset",
            &off.to_string(),
            "--input",
            f.to_str().unwrap(),
        ]);
    }
    fn read(&self, snap: Option<&str>) -> Vec<u8> {
        let out = self.dir.with_extension("out");
        let mut args = vec![
            "read",
            self.path(),
            "--offset",
            "0",
            "--output",
            out.to_str().unwrap(),
        ];
        if let Some(s) = snap {
            args.extend(["--snapshot", s]);
        }
        vdisk_ok(&args);
        fs::read(out).unwrap()
    }
    fn snaps(&self) -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&vdisk_ok(&["snapshot", "list", self.path(), "--json"])).unwrap();
        v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn disk(size: &str) -> Disk {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d.vdisk");
    vdisk_ok(&["create", dir.to_str().unwrap(), "--size", size]);
    Disk { _t: t, dir }
}

fn chain(d: &Disk) {
    d.write(1, 1 << 20, 0);
    vdisk_ok(&["snapshot", "create", d.path(), "s1"]);
    d.write(2, 70_000, 500_000);
    vdisk_ok(&["snapshot", "create", d.path(), "s2"]);
    d.write(3, 4096, 3 << 20);
    vdisk_ok(&["snapshot", "create", d.path(), "s3"]);
    d.write(4, 10_000, 100);
}

#[test]
fn merge_range_commit_keep_contents() {
    let d = disk("8M");
    chain(&d);
    let s3 = d.read(Some("s3"));
    let head = d.read(None);
    let out = vdisk_ok(&["merge", d.path(), "--range", "s1..s3", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["removed_snapshots"], serde_json::json!(["s1", "s2"]));
    assert_eq!(d.snaps(), vec!["s3"]);
    assert_eq!(d.read(Some("s3")), s3);
    vdisk_ok(&["commit", d.path()]);
    assert!(d.snaps().is_empty());
    assert_eq!(d.read(None), head);
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["info", d.path(), "--json"])).unwrap();
    assert_eq!(info["chain_depth"], 1);
    vdisk_ok(&["check", d.path()]);
    assert!(vdisk_err(&["merge", d.path(), "nope"]).contains("not found"));
    assert!(vdisk_err(&["merge", d.path(), "--range", "bad"]).contains("OLDER..NEWER"));
}

#[test]
fn diff_outputs() {
    let d = disk("64G");
    chain(&d);
    let v: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["diff", d.path(), "s1", "s3", "--json"])).unwrap();
    let ext = v["extents"].as_array().unwrap();
    assert!(ext
        .iter()
        .any(|e| e["offset"].as_u64().unwrap() <= 500_000 && e["kind"] == "data"));
    let total: u64 = ext.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(v["changed_bytes"].as_u64().unwrap(), total);
    assert!(
        total < 200_000,
        "diff reports far more than written: {total}"
    );
    let stat: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["diff", d.path(), "s1", "--stat", "--json"])).unwrap();
    assert!(stat["changed_bytes"].as_u64().unwrap() > 0);
    // rewriting identical bytes: in the metadata diff, gone with --content
    d.write(1, 65536, 0);
    vdisk_ok(&["snapshot", "create", d.path(), "same"]);
    let meta: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["diff", d.path(), "s3", "same", "--json"])).unwrap();
    let content: serde_json::Value = serde_json::from_str(&vdisk_ok(&[
        "diff",
        d.path(),
        "s3",
        "same",
        "--json",
        "--content",
    ]))
    .unwrap();
    assert!(meta["changed_bytes"].as_u64().unwrap() >= 65536);
    assert!(content["changed_bytes"].as_u64().unwrap() < meta["changed_bytes"].as_u64().unwrap());
    let human = vdisk_ok(&["diff", d.path(), "s1", "s2"]);
    assert!(human.contains("changed"));
}

#[test]
fn streams_through_pipes_and_files() {
    let src = disk("16M");
    chain(&src);
    let dst = disk("16M");
    // full stream through a pipe: vdisk export-diff -o - | vdisk import-diff DST -
    let mut exp = Command::new(vdisk_bin())
        .args(["export-diff", src.path(), "--to", "s1", "-o", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let imp = Command::new(vdisk_bin())
        .args(["import-diff", dst.path(), "-"])
        .stdin(exp.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(exp.wait().unwrap().success());
    assert!(
        imp.status.success(),
        "{}",
        String::from_utf8_lossy(&imp.stderr)
    );
    // incremental through a file; a damaged copy is refused first
    let f = dst.dir.with_extension("vdelta");
    vdisk_ok(&[
        "export-diff",
        src.path(),
        "--from",
        "s1",
        "--to",
        "s3",
        "-o",
        f.to_str().unwrap(),
    ]);
    assert!(vdisk_err(&[
        "export-diff",
        src.path(),
        "--from",
        "s1",
        "--to",
        "s3",
        "-o",
        f.to_str().unwrap()
    ])
    .contains("exists"));
    let good = fs::read(&f).unwrap();
    let bad = dst.dir.with_extension("bad");
    let mut b = good.clone();
    let n = b.len();
    b[n / 2] ^= 0x10;
    fs::write(&bad, &b).unwrap();
    assert!(!vdisk_err(&["import-diff", dst.path(), bad.to_str().unwrap()]).is_empty());
    assert_eq!(
        dst.snaps(),
        vec!["s1"],
        "a refused stream changed the snapshot list"
    );
    let garbage = dst.dir.with_extension("junk");
    fs::File::create(&garbage)
        .unwrap()
        .write_all(b"not a stream at all")
        .unwrap();
    assert!(
        vdisk_err(&["import-diff", dst.path(), garbage.to_str().unwrap()]).contains("delta stream")
    );
    vdisk_ok(&["import-diff", dst.path(), f.to_str().unwrap()]);
    assert_eq!(dst.snaps(), vec!["s1", "s3"]);
    assert_eq!(dst.read(Some("s3")), src.read(Some("s3")));
    // the replica's snapshot ids are the source's
    let ids = |d: &Disk| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&vdisk_ok(&["snapshot", "list", d.path(), "--json"])).unwrap();
        v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(ids(&src).contains(&ids(&dst)[1]));
    vdisk_ok(&["check", dst.path()]);
}

#[test]
fn compact_policy_maintain() {
    let d = disk("8M");
    for i in 0..6u64 {
        d.write(10 + i, 100_000, i * 1_000_000);
        vdisk_ok(&["snapshot", "create", d.path(), &format!("p{i}")]);
    }
    vdisk_ok(&["snapshot", "pin", d.path(), "p0"]);
    let before: Vec<Vec<u8>> = (0..6).map(|i| d.read(Some(&format!("p{i}")))).collect();
    vdisk_ok(&["policy", "set", d.path(), "--keep-last", "2"]);
    let p: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["policy", "show", d.path(), "--json"])).unwrap();
    assert_eq!(p["schema"], "vdisk-policy/1");
    assert_eq!(p["policy"]["keep_last"], 2);
    let dry: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["maintain", d.path(), "--dry-run", "--json"])).unwrap();
    assert_eq!(dry["removed"], serde_json::json!(["p1", "p2", "p3"]));
    assert_eq!(d.snaps().len(), 6);
    let real: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["maintain", d.path(), "--json"])).unwrap();
    assert_eq!(d.snaps(), vec!["p0", "p4", "p5"]);
    // The dry run predicts the depth the real run reaches.
    assert_eq!(dry["chain_before"], real["chain_before"]);
    assert_eq!(dry["chain_after"], real["chain_after"], "{dry} vs {real}");
    assert!(real["chain_after"].as_u64() < real["chain_before"].as_u64());
    for (i, b) in before.iter().enumerate() {
        if [0, 4, 5].contains(&i) {
            assert_eq!(&d.read(Some(&format!("p{i}"))), b, "p{i} changed");
        }
    }
    let r: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["compact", d.path(), "--compress", "--json"])).unwrap();
    assert!(!r["layers"].as_array().unwrap().is_empty());
    assert_eq!(&d.read(Some("p4")), &before[4]);
    vdisk_ok(&["check", d.path()]);
    vdisk_ok(&["policy", "clear", d.path()]);
    assert!(vdisk_ok(&["policy", "show", d.path()]).contains("no retention policy"));
    assert!(vdisk_err(&["policy", "set", d.path()]).contains("at least one"));
}

#[test]
fn merge_of_a_served_disk_goes_through_the_writer() {
    if !vdisk_tests::have("qemu-img") {
        eprintln!("*** SKIP: qemu-img missing ***");
        return;
    }
    let d = disk("8M");
    chain(&d);
    let s3 = d.read(Some("s3"));
    let sock = d.dir.with_extension("sock");
    let mut server = Command::new(vdisk_bin())
        .args(["serve", d.path(), "--socket", sock.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // wait for the control socket
    for _ in 0..200 {
        if d.dir.join("control.sock").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // s3 is the active layer's parent: only the writer can fold it
    vdisk_ok(&["merge", d.path(), "s3"]);
    vdisk_ok(&["merge", d.path(), "s1"]);
    vdisk_ok(&["snapshot", "create", d.path(), "live"]);
    assert_eq!(d.snaps(), vec!["s2", "live"]);
    // the head through NBD still reads what s3 held
    let o = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &format!("nbd:unix:{}", sock.display()),
            d.dir.with_extension("nbd").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let head = fs::read(d.dir.with_extension("nbd")).unwrap();
    let mut want = s3.clone();
    want[100..10_100].copy_from_slice(&rnd(4, 10_000));
    assert!(
        head == want,
        "head differs after merges through the control socket"
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().unwrap().success());
    vdisk_ok(&["check", d.path()]);
}
