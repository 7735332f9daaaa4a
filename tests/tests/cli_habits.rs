//! The CLI as users of qemu-img, rbd and zfs expect it (issue 12): pins protect, reserved
//! and id names, honest replicas, compare/measure, exit codes, quiet and closed pipes,
//! completions and man pages.

use std::fs;
use std::process::{Command, Stdio};
use vdisk_tests::{rnd, vdisk, vdisk_bin, vdisk_err, vdisk_ok};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn code(args: &[&str]) -> i32 {
    vdisk(args).status.code().unwrap_or(-1)
}

/// A 16 MiB bundle with 300 KB of data at 0 and a snapshot `s1`.
fn disk(t: &tempfile::TempDir) -> String {
    let d = t.path().join("d.vdisk").to_str().unwrap().to_string();
    vdisk_ok(&["create", &d, "--size", "16M"]);
    let a = t.path().join("a");
    fs::write(&a, rnd(1, 300_000)).unwrap();
    vdisk_ok(&["write", &d, "--input", a.to_str().unwrap()]);
    vdisk_ok(&["snapshot", "create", &d, "s1"]);
    d
}

#[test]
fn pins_protect_from_delete_merge_and_maintain() {
    let t = tmp();
    let d = disk(&t);
    vdisk_ok(&["snapshot", "create", &d, "s2"]);
    vdisk_ok(&["snapshot", "pin", &d, "s1"]);
    for args in [
        vec!["snapshot", "delete", &d, "s1"],
        vec!["snapshot", "rm", &d, "s1"],
        vec!["merge", &d, "s1"],
        vec!["merge", &d, "--range", "s1..s2"],
    ] {
        let e = vdisk_err(&args);
        assert!(e.contains("pinned"), "{args:?}: {e}");
    }
    vdisk_ok(&["policy", "set", &d, "--keep-last", "0"]);
    vdisk_ok(&["maintain", &d]);
    let list = vdisk_ok(&["snapshot", "ls", &d]);
    assert!(list.contains("s1") && list.contains("pinned"), "{list}");
    vdisk_ok(&["snapshot", "unpin", &d, "s1"]);
    vdisk_ok(&["snapshot", "rm", &d, "s1"]);
    let help = vdisk_ok(&["commit", "--help"]);
    assert!(
        help.contains("REMOVED"),
        "commit --help must say it removes the snapshot: {help}"
    );
}

#[test]
fn names_head_ids_and_clashes() {
    let t = tmp();
    let d = disk(&t);
    for bad in ["head", "@head", "@x", "x.raw"] {
        let e = vdisk_err(&["snapshot", "create", &d, bad]);
        assert!(e.contains("reserved") || e.contains(".raw"), "{bad}: {e}");
    }
    vdisk_ok(&["snapshot", "create", &d, "x"]);
    let e = vdisk_err(&["snapshot", "rename", &d, "x", "head"]);
    assert!(e.contains("reserved"), "{e}");
    // A snapshot by id, or by an unambiguous prefix of it.
    let list: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["snapshot", "list", &d, "--json"])).unwrap();
    let id = list["snapshots"][0]["id"].as_str().unwrap().to_string();
    let out = t.path().join("r");
    let o = out.to_str().unwrap();
    vdisk_ok(&[
        "read",
        &d,
        "--snapshot",
        &id[..8],
        "--length",
        "4096",
        "--output",
        o,
    ]);
    assert_eq!(fs::read(&out).unwrap(), rnd(1, 300_000)[..4096].to_vec());
    vdisk_ok(&[
        "read",
        &d,
        "--snapshot",
        "@head",
        "--length",
        "10",
        "--output",
        o,
    ]);
    vdisk_ok(&["diff", &d, &id, "@head"]);
    vdisk_ok(&["snapshot", "pin", &d, &id]);
    assert_eq!(list["snapshots"][0]["name"], "s1");
    // read defaults to offset 0
    let r = Command::new(vdisk_bin())
        .args(["read", &d, "--length", "300000"])
        .output()
        .unwrap();
    assert_eq!(r.stdout, rnd(1, 300_000));
}

#[test]
fn sizes_are_what_the_user_was_told() {
    let t = tmp();
    let d = t.path().join("c.vdisk");
    let out = vdisk_ok(&["create", d.to_str().unwrap(), "--size", "1000"]);
    let info: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["info", d.to_str().unwrap(), "--json"])).unwrap();
    let size = info["virtual_size"].as_u64().unwrap();
    assert_eq!(size, 1024);
    assert!(
        out.contains("1024 bytes") && out.contains("rounded"),
        "{out}"
    );
    let e = vdisk_err(&[
        "create",
        t.path().join("e").to_str().unwrap(),
        "--size",
        "1G",
        "--cluster-size",
        "4M",
    ]);
    assert!(
        e.contains("--cluster-size") && !e.contains("cluster_bits"),
        "{e}"
    );
    assert!(
        !t.path().join("e").exists(),
        "a refused create leaves nothing"
    );
}

#[test]
fn replicas_refuse_to_diverge_silently() {
    let t = tmp();
    let d = disk(&t);
    let full = t.path().join("full.vdelta");
    vdisk_ok(&[
        "export-diff",
        &d,
        "--to",
        "s1",
        "-o",
        full.to_str().unwrap(),
    ]);
    let a2 = t.path().join("a2");
    fs::write(&a2, rnd(2, 65536)).unwrap();
    vdisk_ok(&[
        "write",
        &d,
        "--offset",
        "1M",
        "--input",
        a2.to_str().unwrap(),
    ]);
    vdisk_ok(&["snapshot", "create", &d, "s2"]);
    let inc = t.path().join("inc.vdelta");
    vdisk_ok(&[
        "export-diff",
        &d,
        "--from",
        "s1",
        "--to",
        "s2",
        "-o",
        inc.to_str().unwrap(),
    ]);
    let r = t.path().join("r.vdisk").to_str().unwrap().to_string();
    vdisk_ok(&["create", &r, "--size", "16M"]);
    let out = vdisk_ok(&["import-diff", &r, full.to_str().unwrap()]);
    assert!(out.contains("moved to snapshot s1"), "{out}");
    // The replica's head gets writes of its own: the next stream is refused.
    vdisk_ok(&[
        "write",
        &r,
        "--offset",
        "2M",
        "--input",
        a2.to_str().unwrap(),
    ]);
    let e = vdisk_err(&["import-diff", &r, inc.to_str().unwrap()]);
    assert!(
        e.contains("writes of its own") && e.contains("force"),
        "{e}"
    );
    let o = vdisk(&["import-diff", &r, inc.to_str().unwrap(), "--force"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("moved to snapshot s2"), "{out}");
    assert!(err.contains("discarded"), "{err}");
    assert_eq!(
        code(&["compare", &d, &r]),
        0,
        "the replica's head equals the source's"
    );
}

#[test]
fn compare_measure_and_diff_exit_codes() {
    let t = tmp();
    let d = disk(&t);
    let raw = t.path().join("d.raw");
    vdisk_ok(&["convert", &d, raw.to_str().unwrap()]);
    assert_eq!(code(&["compare", &d, raw.to_str().unwrap()]), 0);
    let vmdk = t.path().join("d.vmdk");
    vdisk_ok(&["convert", &d, vmdk.to_str().unwrap()]);
    assert_eq!(
        code(&["compare", vmdk.to_str().unwrap(), raw.to_str().unwrap()]),
        0
    );
    let f = fs::OpenOptions::new().write(true).open(&raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"x", 10_000_000).unwrap();
    let o = vdisk(&["compare", &d, raw.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("offset 10000000"));
    assert_eq!(code(&["compare", &d, "/nonexistent"]), 2);
    // A larger image is equal only where it reads as zeros.
    let big = t.path().join("big.raw");
    vdisk_ok(&["convert", &d, big.to_str().unwrap()]);
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    assert_eq!(code(&["compare", &d, big.to_str().unwrap()]), 0);
    assert_eq!(code(&["compare", "-s", &d, big.to_str().unwrap()]), 1);
    let m: serde_json::Value = serde_json::from_str(&vdisk_ok(&["measure", &d, "--json"])).unwrap();
    let (req, full) = (
        m["required"].as_u64().unwrap(),
        m["fully_allocated"].as_u64().unwrap(),
    );
    assert!(req >= 300_000 && req < full && full >= 16 << 20, "{m}");
    let empty: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["measure", "--size", "16M", "--json"])).unwrap();
    assert!(empty["required"].as_u64() < Some(req));
    assert_eq!(code(&["diff", &d, "s1", "--exit-code"]), 0);
    let a = t.path().join("a");
    vdisk_ok(&[
        "write",
        &d,
        "--offset",
        "4M",
        "--input",
        a.to_str().unwrap(),
    ]);
    assert_eq!(code(&["diff", &d, "s1", "--exit-code"]), 1);
}

#[test]
fn exit_codes_streams_and_quiet() {
    let t = tmp();
    let d = disk(&t);
    assert_eq!(code(&["create"]), 64, "usage errors have their own status");
    assert_eq!(code(&["snapshot", "create", &d, "--no-such-flag"]), 64);
    assert_eq!(code(&["--help"]), 0);
    let o = vdisk(&["check", &d]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no problems found"),
        "check reports on stdout"
    );
    assert!(
        vdisk_ok(&["-q", "snapshot", "create", &d, "quiet"]).is_empty(),
        "-q leaves out messages"
    );
    // A closed pipe ends the command quietly.
    let mut child = Command::new(vdisk_bin())
        .args(["read", &d])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    // Every error line has the one prefix.
    let e = vdisk_err(&["info", "/nonexistent"]);
    assert!(e.starts_with("vdisk: error: "), "{e}");
}

#[test]
fn export_to_a_terminal_is_refused() {
    if !std::path::Path::new("/usr/bin/script").exists() {
        eprintln!("*** SKIP: script(1) (bsdutils) missing ***");
        return;
    }
    let t = tmp();
    let d = disk(&t);
    // script(1) gives the command a pseudo-terminal as stdout.
    let cmd = format!(
        "{} export-diff {d} --to s1 -o -; echo rc=$?",
        vdisk_bin().display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("refusing to write a binary stream to a terminal"),
        "{out}"
    );
    assert!(out.contains("rc=1"), "{out}");
}

#[test]
fn completions_and_man_pages() {
    let t = tmp();
    for sh in ["bash", "zsh", "fish"] {
        let s = vdisk_ok(&["completions", sh]);
        assert!(s.contains("snapshot") && s.contains("export-diff"), "{sh}");
    }
    let dir = t.path().join("man");
    vdisk_ok(&["manpage", dir.to_str().unwrap()]);
    let top = fs::read_to_string(dir.join("vdisk.1")).unwrap();
    assert!(
        top.contains(".TH") && top.contains("Exit status"),
        "vdisk.1"
    );
    assert!(dir.join("vdisk-snapshot-create.1").exists());
    assert!(dir.join("vdisk-compare.1").exists());
}

#[test]
fn convert_builds_aside_and_never_deletes_what_it_did_not_make() {
    let t = tmp();
    let src = t.path().join("src.raw");
    fs::write(&src, rnd(9, 48 << 20)).unwrap();
    let s = src.to_str().unwrap();
    // Two converts to one destination: one wins, the other fails without touching it.
    let dst = t.path().join("d.vdisk");
    let d = dst.to_str().unwrap();
    let a = Command::new(vdisk_bin())
        .args(["convert", s, d])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = Command::new(vdisk_bin())
        .args(["convert", s, d])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() || b.status.success(),
        "one convert must win"
    );
    assert_eq!(code(&["compare", s, d]), 0, "the winner's output is whole");
    for o in [&a, &b] {
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("exists"), "{e}");
        }
    }
    // A convert killed part-way leaves no output that looks whole.
    for (i, delay) in [5u64, 40, 150].iter().enumerate() {
        let out = t.path().join(format!("k{i}.vdisk"));
        let mut c = Command::new(vdisk_bin())
            .args(["convert", s, out.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(*delay));
        let _ = c.kill();
        c.wait().unwrap();
        // Killed before the final rename: no output; after it: a whole one.
        if out.exists() {
            assert_eq!(
                code(&["compare", s, out.to_str().unwrap()]),
                0,
                "{}",
                out.display()
            );
        }
    }
    // Nothing but the outputs and their leftover staging folders.
    for e in fs::read_dir(t.path()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            n == "src.raw" || n.ends_with(".vdisk") || n.contains(".partial-"),
            "unexpected {n}"
        );
    }
}

#[test]
fn no_verify_returns_what_verification_refuses() {
    let t = tmp();
    let d = disk(&t);
    // Flip one bit of s1's sealed data (the first cluster its map names).
    let raw = fs::read(t.path().join("d.vdisk/manifest")).unwrap();
    let start = raw.iter().position(|&b| b == b'{').unwrap();
    let m: serde_json::Value = serde_json::from_slice(&raw[start..]).unwrap();
    let layer = m["snapshots"][0]["layer"].as_str().unwrap();
    let file = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == layer)
        .unwrap()["file"]
        .as_str()
        .unwrap()
        .to_string();
    let path = t.path().join("d.vdisk").join(file);
    let mut b = fs::read(&path).unwrap();
    let map = u64::from_le_bytes(b[64..72].try_into().unwrap()) as usize;
    let cluster = u64::from_le_bytes(b[map..map + 8].try_into().unwrap());
    let data = u64::from_le_bytes(b[map + 8..map + 16].try_into().unwrap()) as usize;
    b[data + 100] ^= 0x01;
    fs::write(&path, &b).unwrap();
    let off = (cluster * 65536).to_string();
    let out = t.path().join("r");
    let o = out.to_str().unwrap();
    let e = vdisk_err(&[
        "read",
        &d,
        "--snapshot",
        "s1",
        "--offset",
        &off,
        "--length",
        "4096",
        "--output",
        o,
    ]);
    assert!(
        e.contains("s1") || e.contains("blake3") || e.contains("checksum"),
        "{e}"
    );
    assert!(!out.exists(), "a refused read leaves no output file");
    vdisk_ok(&[
        "--no-verify",
        "read",
        &d,
        "--snapshot",
        "s1",
        "--offset",
        &off,
        "--length",
        "4096",
        "--output",
        o,
    ]);
    let got = fs::read(&out).unwrap();
    let want = rnd(1, 300_000);
    let at = (cluster * 65536) as usize;
    assert_ne!(
        got[100],
        want[at + 100],
        "--no-verify returns the stored (damaged) byte"
    );
    assert_eq!(got[101], want[at + 101]);
}
