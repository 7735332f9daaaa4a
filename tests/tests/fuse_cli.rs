//! `vdisk mount` / `vdisk umount` with real peers: `vdisk read`, mkfs.ext4 and loop mounts,
//! sfdisk partitions, lseek(SEEK_DATA/SEEK_HOLE), unmount under load. Needs root and
//! /dev/fuse (skips with a loud message otherwise).

mod peers;

use peers::{
    alive, bundle, is_mountpoint, read_range, require, run_ok, signal, wait_until, write_at,
    LoopMount, Mounted,
};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vdisk_tests::{rnd, vdisk, vdisk_err, vdisk_ok};

const MIB: u64 = 1 << 20;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn read_file(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn read_only_mount_shows_what_vdisk_read_shows() {
    if !require(
        "read_only_mount_shows_what_vdisk_read_shows",
        true,
        true,
        &[],
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "24M");
    let ds = d.to_str().unwrap();
    write_at(&d, t.path(), 12345, &rnd(1, 700_000));
    vdisk_ok(&["snapshot", "create", ds, "s1"]);
    write_at(&d, t.path(), 5 * MIB, &rnd(2, 3 * MIB as usize));
    vdisk_ok(&["snapshot", "create", ds, "s2"]);
    write_at(&d, t.path(), 0, &rnd(3, 4096));

    let m = Mounted::start(&d, &t.path().join("m"), &[]);
    // The read-only mount takes no lock: writers work beside it.
    assert_eq!(
        read_file(&m.path("head.raw")),
        read_range(&d, None, 0, 24 * MIB)
    );
    for s in ["s1", "s2"] {
        let p = m.path(&format!("snapshots/{s}.raw"));
        assert_eq!(read_file(&p), read_range(&d, Some(s), 0, 24 * MIB), "{s}");
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 24 * MIB);
        assert_eq!(
            meta.mode() & 0o222,
            0,
            "snapshot file writable: {:o}",
            meta.mode()
        );
    }
    // mtime = snapshot creation time.
    let list: serde_json::Value =
        serde_json::from_str(&vdisk_ok(&["snapshot", "list", ds, "--json"])).unwrap();
    let created = list["snapshots"][0]["created_ns"].as_u64().unwrap() / 1_000_000_000;
    let mtime = std::fs::metadata(m.path("snapshots/s1.raw"))
        .unwrap()
        .mtime();
    assert_eq!(u64::try_from(mtime).unwrap(), created);
    let e = OpenOptions::new()
        .write(true)
        .open(m.path("head.raw"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let info: serde_json::Value = serde_json::from_slice(&read_file(&m.path("info.json"))).unwrap();
    assert_eq!(info["virtual_size"], 24 * MIB);
    assert_eq!(info["snapshots"].as_array().unwrap().len(), 2);

    // Snapshot changes by a writer appear (the mount follows the manifest).
    vdisk_ok(&["snapshot", "create", ds, "s3"]);
    vdisk_ok(&["snapshot", "delete", ds, "s1"]);
    assert!(wait_until(Duration::from_secs(5), || {
        m.path("snapshots/s3.raw").exists() && !m.path("snapshots/s1.raw").exists()
    }));
    drop(m);

    // One snapshot only: no head.
    let m = Mounted::start(&d, &t.path().join("m2"), &["--snapshot", "s2"]);
    assert!(!m.path("head.raw").exists());
    let mut entries: Vec<String> = std::fs::read_dir(m.path("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["s2", "s2.raw"]);
    drop(m);

    let e = vdisk_err(&[
        "mount",
        ds,
        t.path().join("m3").to_str().unwrap(),
        "--snapshot",
        "nope",
    ]);
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn ext4_old_files_visible_in_a_snapshot_taken_through_the_control_socket() {
    if !require(
        "ext4_old_files_visible_in_a_snapshot_taken_through_the_control_socket",
        true,
        true,
        &["mkfs.ext4"],
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "64M");
    let ds = d.to_str().unwrap();
    let m = Mounted::start(&d, &t.path().join("m"), &["--read-write"]);
    let head = m.path("head.raw");
    run_ok("mkfs.ext4", &["-q", "-F", head.to_str().unwrap()]);
    let big = rnd(7, 3_000_000);
    {
        let l = LoopMount::new(&head, &t.path().join("l"), false);
        std::fs::write(l.dir.join("hello.txt"), "version one\n").unwrap();
        std::fs::write(l.dir.join("big.bin"), &big).unwrap();
    }
    run_ok("sync", &[]);
    // The mount holds the writer lock: this goes through its control socket.
    let out = vdisk_ok(&["snapshot", "create", ds, "one"]);
    assert!(out.starts_with("Created snapshot one"), "{out}");
    assert!(wait_until(Duration::from_secs(5), || m
        .path("snapshots/one.raw")
        .exists()));
    {
        let l = LoopMount::new(&head, &t.path().join("l"), false);
        std::fs::write(l.dir.join("hello.txt"), "version two\n").unwrap();
        std::fs::remove_file(l.dir.join("big.bin")).unwrap();
    }
    run_ok("sync", &[]);
    {
        let l = LoopMount::new(&m.path("snapshots/one.raw"), &t.path().join("l"), true);
        assert_eq!(
            std::fs::read_to_string(l.dir.join("hello.txt")).unwrap(),
            "version one\n"
        );
        assert_eq!(std::fs::read(l.dir.join("big.bin")).unwrap(), big);
    }
    {
        let l = LoopMount::new(&head, &t.path().join("l"), true);
        assert_eq!(
            std::fs::read_to_string(l.dir.join("hello.txt")).unwrap(),
            "version two\n"
        );
    }
    assert_eq!(
        read_file(&m.path("snapshots/one.raw")),
        read_range(&d, Some("one"), 0, 64 * MIB)
    );
    let pid = m.pid;
    drop(m); // vdisk umount, which waits for the disk to be closed
    assert!(!alive(pid));
    vdisk_ok(&["check", ds]);
    // The head's last state is in the bundle.
    let raw = t.path().join("head.raw");
    std::fs::write(&raw, read_range(&d, None, 0, 64 * MIB)).unwrap();
    let l = LoopMount::new(&raw, &t.path().join("l"), true);
    assert_eq!(
        std::fs::read_to_string(l.dir.join("hello.txt")).unwrap(),
        "version two\n"
    );
}

#[test]
fn gpt_partitions_appear_as_files() {
    if !require("gpt_partitions_appear_as_files", true, true, &["sfdisk"]) {
        return;
    }
    let t = tmp();
    let img = t.path().join("gpt.img");
    File::create(&img).unwrap().set_len(32 * MIB).unwrap();
    let mut child = std::process::Command::new("sfdisk")
        .args(["-q", img.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=20480\nstart=22528, size=30720\n",
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let mut bytes = std::fs::read(&img).unwrap();
    let p1 = rnd(11, 20480 * 512);
    let p2 = rnd(12, 30720 * 512);
    bytes[2048 * 512..22528 * 512].copy_from_slice(&p1);
    bytes[22528 * 512..(22528 + 30720) * 512].copy_from_slice(&p2);
    let d = bundle(t.path(), "d.vdisk", "32M");
    let ds = d.to_str().unwrap();
    write_at(&d, t.path(), 0, &bytes);
    vdisk_ok(&["snapshot", "create", ds, "parted"]);
    let m = Mounted::start(&d, &t.path().join("m"), &[]);
    for dir in ["head", "snapshots/parted"] {
        let a = m.path(&format!("{dir}/part1.raw"));
        let b = m.path(&format!("{dir}/part2.raw"));
        assert_eq!(read_file(&a), p1, "{dir}/part1.raw");
        assert_eq!(read_file(&b), p2, "{dir}/part2.raw");
    }
}

fn lseek(f: &File, off: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: lseek on a descriptor we own; no memory involved.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as u64)
    }
}

#[test]
fn seek_data_and_seek_hole_report_the_allocation_map() {
    if !require(
        "seek_data_and_seek_hole_report_the_allocation_map",
        true,
        true,
        &[],
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "64M");
    let ds = d.to_str().unwrap();
    write_at(&d, t.path(), MIB, &rnd(1, 64 << 10));
    vdisk_ok(&["snapshot", "create", ds, "s"]);
    write_at(&d, t.path(), 40 * MIB, &rnd(2, 128 << 10));
    let m = Mounted::start(&d, &t.path().join("m"), &[]);
    let head = File::open(m.path("head.raw")).unwrap();
    assert_eq!(lseek(&head, 0, libc::SEEK_DATA), Ok(MIB));
    assert_eq!(lseek(&head, MIB, libc::SEEK_HOLE), Ok(MIB + (64 << 10)));
    assert_eq!(
        lseek(&head, MIB + (64 << 10), libc::SEEK_DATA),
        Ok(40 * MIB)
    );
    assert_eq!(
        lseek(&head, 40 * MIB, libc::SEEK_HOLE),
        Ok(40 * MIB + (128 << 10))
    );
    assert_eq!(lseek(&head, 41 * MIB, libc::SEEK_DATA), Err(libc::ENXIO));
    let snap = File::open(m.path("snapshots/s.raw")).unwrap();
    assert_eq!(lseek(&snap, 0, libc::SEEK_DATA), Ok(MIB));
    assert_eq!(lseek(&snap, 2 * MIB, libc::SEEK_DATA), Err(libc::ENXIO));
    // cp --sparse sees the holes.
    let copy = t.path().join("copy.raw");
    run_ok(
        "cp",
        &[
            "--sparse=always",
            m.path("head.raw").to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), 64 * MIB);
    assert!(
        meta.blocks() * 512 < 4 * MIB,
        "copy not sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(read_file(&copy), read_range(&d, None, 0, 64 * MIB));
}

#[test]
fn writes_and_fsync_reach_the_bundle() {
    if !require("writes_and_fsync_reach_the_bundle", true, true, &[]) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "16M");
    let m = Mounted::start(&d, &t.path().join("m"), &["--read-write"]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("head.raw"))
        .unwrap();
    let a = rnd(5, 3 * MIB as usize + 777);
    f.write_all_at(&a, 4095).unwrap();
    f.sync_all().unwrap();
    let mut back = vec![0; a.len()];
    f.read_exact_at(&mut back, 4095).unwrap();
    assert_eq!(back, a);
    // Writing past the end fails instead of growing the disk.
    assert!(f.write_all_at(b"x", 16 * MIB).is_err());
    drop(f);
    drop(m);
    assert_eq!(read_range(&d, None, 4095, a.len() as u64), a);
    vdisk_ok(&["check", d.to_str().unwrap()]);
}

#[test]
fn sigterm_under_load_loses_no_synced_write() {
    if !require("sigterm_under_load_loses_no_synced_write", true, true, &[]) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "32M");
    let m = Mounted::start(&d, &t.path().join("m"), &["--read-write"]);
    let head = m.path("head.raw");
    // Writers: block i gets pattern i, fsync'd; `synced` counts blocks known durable.
    let synced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (head, synced, stop) = (head.clone(), Arc::clone(&synced), Arc::clone(&stop));
        std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).open(&head).unwrap();
            for i in 0..256u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let block = vec![(i % 251) as u8 + 1; 65536];
                if f.write_all_at(&block, i * 65536).is_err() || f.sync_data().is_err() {
                    break;
                }
                synced.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (head, stop) = (head.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let Ok(mut f) = File::open(&head) else { return };
                let mut buf = vec![0; 1 << 20];
                while !stop.load(Ordering::SeqCst) {
                    if f.read(&mut buf).map(|n| n == 0).unwrap_or(true)
                        && f.seek(SeekFrom::Start(0)).is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(20), || synced
        .load(Ordering::SeqCst)
        >= 8));
    // Busy: files are open, a plain umount refuses.
    let o = vdisk(&["umount", m.dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    signal(m.pid, libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(30), || !alive(m.pid)),
        "mount process still alive after SIGTERM"
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert!(!is_mountpoint(&m.dir));
    let n = synced.load(Ordering::SeqCst);
    assert!(n >= 8);
    let data = read_range(&d, None, 0, n * 65536);
    for i in 0..n {
        let want = (i % 251) as u8 + 1;
        let blk = &data[(i * 65536) as usize..((i + 1) * 65536) as usize];
        assert!(blk.iter().all(|&b| b == want), "synced block {i} lost");
    }
    vdisk_ok(&["check", d.to_str().unwrap()]);
    assert!(!d.join("control.sock").exists());
}

#[test]
fn lazy_umount_with_open_files() {
    if !require("lazy_umount_with_open_files", true, true, &[]) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    write_at(&d, t.path(), 0, &[9; 4096]);
    let m = Mounted::start(&d, &t.path().join("m"), &["--read-write"]);
    let f = File::open(m.path("head.raw")).unwrap();
    vdisk_ok(&["umount", "--lazy", m.dir.to_str().unwrap()]);
    assert!(!is_mountpoint(&m.dir));
    // The open file still reads until closed; then the process ends and frees the bundle.
    let mut b = [0u8; 4096];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b, [9; 4096]);
    drop(f);
    assert!(wait_until(Duration::from_secs(20), || !alive(m.pid)));
    vdisk_ok(&["snapshot", "create", d.to_str().unwrap(), "after"]);
}

#[test]
fn a_mountpoint_takes_one_mount_and_umount_removes_only_its_own() {
    if !require(
        "a_mountpoint_takes_one_mount_and_umount_removes_only_its_own",
        true,
        true,
        &[],
    ) {
        return;
    }
    let t = tmp();
    let d = bundle(t.path(), "d.vdisk", "8M");
    let ds = d.to_str().unwrap();
    write_at(&d, t.path(), 0, &rnd(4, 65536));
    let mp = t.path().join("m");
    let m = Mounted::start(&d, &mp, &["--read-write"]);
    // A second mount over the first is refused (it would hide it).
    let e = vdisk_err(&["mount", ds, mp.to_str().unwrap()]);
    assert!(e.contains("already a mount point"), "{e}");
    // A writable mount is a client of the head: revert and commit are refused unless forced.
    vdisk_ok(&["snapshot", "create", ds, "s"]);
    let e = vdisk_err(&["snapshot", "revert", ds, "s"]);
    assert!(e.contains("in use by `vdisk mount --read-write`"), "{e}");
    assert!(e.contains(&format!("pid {}", m.pid)), "{e}");
    let e = vdisk_err(&["commit", ds]);
    assert!(e.contains("in use by"), "{e}");
    let e = vdisk_err(&["merge", ds, "s"]);
    assert!(e.contains("in use by"), "{e}");
    vdisk_ok(&["merge", ds, "s", "--force"]);
    vdisk_ok(&["umount", mp.to_str().unwrap()]);
    assert!(!m.is_mounted(), "one umount removes the mount");
    // Something that is not a vdisk mount is left alone.
    let other = t.path().join("tmpfs");
    std::fs::create_dir(&other).unwrap();
    run_ok("mount", &["-t", "tmpfs", "none", other.to_str().unwrap()]);
    let e = vdisk_err(&["umount", other.to_str().unwrap()]);
    assert!(e.contains("not a vdisk mount"), "{e}");
    assert!(is_mountpoint(&other));
    run_ok("umount", &[other.to_str().unwrap()]);
    let e = vdisk_err(&["umount", other.to_str().unwrap()]);
    assert!(e.contains("nothing is mounted"), "{e}");
}
