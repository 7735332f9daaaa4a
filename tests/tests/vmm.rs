//! The bundled VMM end to end on this machine's KVM, through the `vdisk` binary: a repo-built
//! guest on a vdisk disk; snapshots taken from another process (full, then diffs), kill -9 of
//! the VMM, restores in new processes finishing with the uninterrupted run's hash — also after
//! merging a snapshot of the diff chain away; bad input refused without a panic.

use std::path::Path;
use std::process::{Command, Stdio};
use vdisk_tests::vm::{hash_of, kvm, wait_progress};
use vdisk_tests::{vdisk, vdisk_bin, vdisk_err, vdisk_ok};

const ARGS: &str = "seed=3 rounds=12000 mem_mib=16 disk_mib=16";

fn create(dir: &Path) {
    vdisk_ok(&[
        "vm",
        "create",
        dir.to_str().unwrap(),
        "--guest",
        "disk-hash",
        "--guest-args",
        ARGS,
        "--memory",
        "64M",
        "--disk-size",
        "32M",
    ]);
}

fn run_to_end(args: &[&str]) -> String {
    let o = vdisk(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "vdisk {args:?}: {err}");
    assert!(!err.contains("panicked"));
    err.into_owned()
}

#[test]
fn boot_snapshot_kill_restore_merge() {
    if !kvm() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n);
    let s = |n: &str| p(n).to_str().unwrap().to_string();
    // the uninterrupted run
    create(&p("a"));
    run_to_end(&["vm", "run", &s("a"), "--serial", &s("a.log")]);
    let h = hash_of(&p("a.log")).expect("a hash");
    vdisk_ok(&["check", &s("a/disk0.vdisk")]);
    // snapshots from another process, then kill -9
    create(&p("b"));
    let mut child = Command::new(vdisk_bin())
        .args(["vm", "run", &s("b"), "--serial", &s("b.log")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_progress(&p("b.log"), 0.15, &mut child);
    // a second runner of a running VM is refused
    let e = vdisk_err(&["vm", "run", &s("b")]);
    assert!(e.contains("running"), "{e}");
    vdisk_ok(&["vm", "snapshot", &s("b"), "s1"]);
    wait_progress(&p("b.log"), 0.3, &mut child);
    let j = vdisk_ok(&["vm", "snapshot", &s("b"), "s2", "--diff", "--json"]);
    assert!(j.contains("\"diff\""), "{j}");
    wait_progress(&p("b.log"), 0.45, &mut child);
    vdisk_ok(&["vm", "snapshot", &s("b"), "s3", "--diff"]);
    let info = vdisk_ok(&["vm", "info", &s("b"), "--json"]);
    assert!(info.contains(&format!("\"pid\": {}", child.id())), "{info}");
    wait_progress(&p("b.log"), 0.6, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let d = s("b/disk0.vdisk");
    vdisk_ok(&["check", &d]);
    // each restore in a new process finishes with the uninterrupted run's hash
    let restore = |snap: &str, log: &str, why: &str| {
        let log = p(log);
        run_to_end(&[
            "vm",
            "restore",
            &s("b"),
            snap,
            "--serial",
            log.to_str().unwrap(),
        ]);
        assert_eq!(hash_of(&log).as_deref(), Some(h.as_str()), "{why}");
    };
    restore("s3", "b-s3.log", "restore of s3");
    restore("s1", "b-s1.log", "restore of s1");
    // merge the middle of the diff chain away: s3 stays restorable
    vdisk_ok(&["snapshot", "delete", &d, "s2"]);
    restore("s3", "b-s3-after-merge.log", "restore after the merge");
    // and the full one under it too
    vdisk_ok(&["snapshot", "delete", &d, "s1"]);
    restore(
        "s3",
        "b-s3-after-merge2.log",
        "restore after merging the full image",
    );
    vdisk_ok(&["check", &d]);
    // a disk-only snapshot holds no VM state
    vdisk_ok(&["snapshot", "create", &d, "plain"]);
    let e = vdisk_err(&["vm", "restore", &s("b"), "plain"]);
    assert!(e.contains("no VM state"), "{e}");
}

#[test]
fn damaged_vm_state_is_a_clear_error() {
    if !kvm() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("c");
    let s = dir.to_str().unwrap().to_string();
    vdisk_ok(&[
        "vm",
        "create",
        &s,
        "--guest",
        "disk-hash",
        "--guest-args",
        "seed=1 rounds=40000 mem_mib=8 disk_mib=8",
        "--memory",
        "64M",
        "--disk-size",
        "16M",
    ]);
    let log = t.path().join("c.log");
    let mut child = Command::new(vdisk_bin())
        .args(["vm", "run", &s, "--serial", log.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_progress(&log, 0.05, &mut child);
    vdisk_ok(&["vm", "snapshot", &s, "s1"]);
    vdisk_ok(&["vm", "stop", &s]);
    child.wait().unwrap();
    // flip a byte of the state object
    let state = std::fs::read_dir(dir.join("disk0.vdisk/state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "vmstate"))
        .unwrap();
    let mut b = std::fs::read(&state).unwrap();
    let n = b.len() - 10;
    b[n] ^= 1;
    std::fs::write(&state, &b).unwrap();
    let e = vdisk_err(&["vm", "restore", &s, "s1"]);
    assert!(e.contains(".vmstate") && e.contains("checksum"), "{e}");
    let o = vdisk(&["check", dir.join("disk0.vdisk").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "check reports the damage");
    // a config with too much memory
    let cfg = dir.join("vm.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"memory_mib\": 64", "\"memory_mib\": 65536");
    std::fs::write(&cfg, text).unwrap();
    let e = vdisk_err(&["vm", "run", &s]);
    assert!(e.contains("memory_mib"), "{e}");
}

#[test]
fn an_ovf_package_carries_the_vm() {
    if !kvm() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).to_str().unwrap().to_string();
    let args = "seed=9 rounds=3000 mem_mib=8 disk_mib=8";
    vdisk_ok(&[
        "vm",
        "create",
        &p("a"),
        "--guest",
        "disk-hash",
        "--guest-args",
        args,
        "--memory",
        "64M",
        "--disk-size",
        "16M",
    ]);
    vdisk_ok(&["ovf", "export", &p("a"), &p("app.ova")]);
    vdisk_ok(&["ovf", "import", &p("app.ova"), &p("b")]);
    run_to_end(&["vm", "run", &p("b"), "--serial", &p("b.log")]);
    run_to_end(&["vm", "run", &p("a"), "--serial", &p("a.log")]);
    let (ha, hb) = (
        hash_of(Path::new(&p("a.log"))),
        hash_of(Path::new(&p("b.log"))),
    );
    assert!(ha.is_some());
    assert_eq!(
        ha, hb,
        "the imported VM runs the same guest with the same arguments"
    );
}
