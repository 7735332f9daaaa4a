//! Mounts a test source through FUSE and checks what ordinary tools see. Needs root and
//! /dev/fuse; the ext4 and partition tests also need e2fsprogs and fdisk (sfdisk).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use vdisk_blockdev::{BlockDevice, Volume};
use vdisk_fuse::{mount, MountHandle, MountOptions};

const MIB: u64 = 1 << 20;

fn mount_at(source: Arc<TestSource>, dir: &Path, read_write: bool) -> MountHandle {
    require_fuse();
    let src: Arc<dyn Volume> = source;
    let opts = MountOptions {
        read_write,
        fs_name: "vdisk-test".into(),
        ..MountOptions::default()
    };
    let handle = mount(src, dir, opts).expect("mount");
    watch(dir);
    handle
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn files_show_device_bytes_sizes_times_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let head = MemDevice::new(8 * MIB);
    head.write_at(&pattern(1, 3 * MIB as usize), 512).unwrap();
    let src = TestSource::new(head, true);
    let t_a = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    src.snapshot_at("a", t_a);
    src.head_device()
        .write_at(&pattern(2, MIB as usize), 5 * MIB)
        .unwrap();
    src.snapshot("b with space");
    src.head_device().write_at(b"head only", 0).unwrap();

    let m = mount_at(src.clone(), tmp.path(), false);
    let mp = tmp.path();

    assert_eq!(read_all(&mp.join("head.raw")), src.head_device().contents());
    // Collected first: the filesystem calls into the source, so never hold its lock here.
    let snaps: Vec<_> = src
        .snaps
        .lock()
        .unwrap()
        .iter()
        .map(|(e, d)| (e.name.clone(), Arc::clone(d)))
        .collect();
    for (name, dev) in snaps {
        let mut want = vec![0; dev.size() as usize];
        dev.read_at(&mut want, 0).unwrap();
        let got = read_all(&mp.join("snapshots").join(format!("{name}.raw")));
        assert!(got == want, "snapshot {name} differs from its device");
    }
    let a = fs::metadata(mp.join("snapshots/a.raw")).unwrap();
    assert_eq!(a.len(), 8 * MIB);
    assert_eq!(a.modified().unwrap(), t_a, "mtime is the creation time");
    assert_eq!(a.permissions().mode() & 0o777, 0o444);
    assert!(
        a.blocks() * 512 < 8 * MIB,
        "st_blocks follows the allocation map: {}",
        a.blocks()
    );
    let h = fs::metadata(mp.join("head.raw")).unwrap();
    assert_eq!(
        h.permissions().mode() & 0o777,
        0o444,
        "read-only mount: head is 0444"
    );
    let d = fs::metadata(mp.join("snapshots")).unwrap();
    assert!(d.is_dir());
    assert_eq!(d.permissions().mode() & 0o777, 0o555);

    let mut names: Vec<String> = fs::read_dir(mp.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "a.raw", "b with space", "b with space.raw"]);
    let mut top: Vec<String> = fs::read_dir(mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["head", "head.raw", "info.json", "snapshots"]);
    assert_eq!(
        fs::read_to_string(mp.join("info.json")).unwrap(),
        src.info_json()
    );

    // Read-only: the head on a read-only mount, and snapshots always.
    let e = OpenOptions::new()
        .write(true)
        .open(mp.join("head.raw"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    let e = OpenOptions::new()
        .write(true)
        .open(mp.join("snapshots/a.raw"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS, "{e}");
    assert_eq!(
        fs::metadata(mp.join("snapshots/missing.raw"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    // Reads at odd offsets and past the end.
    let f = File::open(mp.join("snapshots/a.raw")).unwrap();
    let mut buf = vec![0; 10_000];
    f.read_exact_at(&mut buf, 511).unwrap();
    let mut want = vec![0; 10_000];
    let first = Arc::clone(&src.snaps.lock().unwrap()[0].1);
    first.read_at(&mut want, 511).unwrap();
    assert_eq!(buf, want);
    assert_eq!(f.read_at(&mut buf, 8 * MIB - 5).unwrap(), 5);
    assert_eq!(f.read_at(&mut buf, 8 * MIB).unwrap(), 0);
    drop(f);

    m.unmount().unwrap();
    assert!(!is_mountpoint(mp));
}

#[test]
fn writes_reach_the_device_and_fsync_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = TestSource::new(MemDevice::new(4 * MIB), true);
    src.snapshot("s");
    let m = mount_at(src.clone(), tmp.path(), true);
    let mp = tmp.path();
    let head_meta = fs::metadata(mp.join("head.raw")).unwrap();
    assert_eq!(head_meta.permissions().mode() & 0o777, 0o644);

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mp.join("head.raw"))
        .unwrap();
    let data = pattern(7, 1_500_000);
    f.write_all_at(&data, 12_345).unwrap();
    let before = src
        .head_device()
        .flushes
        .load(std::sync::atomic::Ordering::SeqCst);
    f.sync_all().unwrap();
    let after = src
        .head_device()
        .flushes
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(after > before, "fsync reached BlockDevice::flush");
    let mut got = vec![0; data.len()];
    src.head_device().read_at(&mut got, 12_345).unwrap();
    assert!(got == data, "the device holds what was written");

    // Writes stop at the end of the disk.
    assert_eq!(f.write_at(b"abcdef", 4 * MIB - 3).unwrap(), 3);
    let e = f.write_at(b"x", 4 * MIB).unwrap_err();
    assert!(matches!(errno_of(&e), libc::ENOSPC | libc::EFBIG), "{e}");
    // The disk is not resized through the mount.
    assert!(f.set_len(MIB).is_err());
    assert_eq!(fs::metadata(mp.join("head.raw")).unwrap().len(), 4 * MIB);
    // Punching a hole zeroes the range.
    // SAFETY: fallocate on a descriptor open for the whole call; no memory involved.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            20_000,
            8192,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let mut z = vec![1u8; 8192];
    src.head_device().read_at(&mut z, 20_000).unwrap();
    assert!(z.iter().all(|&b| b == 0));
    drop(f);

    // Snapshots stay read-only on a read-write mount.
    let e = OpenOptions::new()
        .write(true)
        .open(mp.join("snapshots/s.raw"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS);
    m.unmount().unwrap();
}

#[test]
fn snapshot_list_refreshes_on_generation_change() {
    let tmp = tempfile::tempdir().unwrap();
    let src = TestSource::new(MemDevice::new(MIB), true);
    let m = mount_at(src.clone(), tmp.path(), false);
    let snaps = tmp.path().join("snapshots");
    assert_eq!(fs::read_dir(&snaps).unwrap().count(), 0);
    src.snapshot("new");
    assert!(
        wait_for(Duration::from_secs(3), || snaps.join("new.raw").exists()),
        "new snapshot appears"
    );
    src.delete_snapshot("new");
    assert!(
        wait_for(Duration::from_secs(3), || fs::read_dir(&snaps)
            .unwrap()
            .count()
            == 0),
        "deleted one goes"
    );
    m.unmount().unwrap();
}

#[test]
fn ext4_on_head_then_old_snapshot_shows_old_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("m");
    fs::create_dir(&mp).unwrap();
    let src = TestSource::new(MemDevice::new(64 * MIB), true);
    let m = mount_at(src.clone(), &mp, true);
    let head = mp.join("head.raw");
    run("mkfs.ext4", &["-q", "-F", head.to_str().unwrap()]);

    let l = tmp.path().join("l");
    {
        let _lm = LoopMount::new(&head, &l, "loop");
        fs::write(l.join("hello.txt"), "version one\n").unwrap();
        fs::write(l.join("big.bin"), pattern(3, 5 << 20)).unwrap();
    }
    src.snapshot("one");
    assert!(wait_for(Duration::from_secs(3), || mp
        .join("snapshots/one.raw")
        .exists()));
    {
        let _lm = LoopMount::new(&head, &l, "loop");
        fs::write(l.join("hello.txt"), "version two\n").unwrap();
        fs::remove_file(l.join("big.bin")).unwrap();
    }
    {
        let _lm = LoopMount::new(&mp.join("snapshots/one.raw"), &l, "loop,ro");
        assert_eq!(
            fs::read_to_string(l.join("hello.txt")).unwrap(),
            "version one\n"
        );
        assert!(fs::read(l.join("big.bin")).unwrap() == pattern(3, 5 << 20));
    }
    {
        let _lm = LoopMount::new(&head, &l, "loop,ro");
        assert_eq!(
            fs::read_to_string(l.join("hello.txt")).unwrap(),
            "version two\n"
        );
    }
    // The mount's bytes are the device's bytes.
    assert!(read_all(&head) == src.head_device().contents());
    run(
        "e2fsck",
        &["-f", "-n", mp.join("snapshots/one.raw").to_str().unwrap()],
    );
    m.unmount().unwrap();
}

/// Partitions a disk image file with sfdisk and returns the bytes.
fn sfdisk_image(dir: &Path, size: u64, script: &str) -> Vec<u8> {
    let img = dir.join("disk.img");
    File::create(&img).unwrap().set_len(size).unwrap();
    let mut child = std::process::Command::new("sfdisk")
        .args([
            "--no-reread",
            "--no-tell-kernel",
            "-q",
            img.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (package fdisk) is needed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&img).unwrap()
}

/// Fills the partition (start, sectors in 512-byte units) with a pattern.
fn fill(dev: &MemDevice, start: u64, sectors: u64, seed: u64) -> Vec<u8> {
    let data = pattern(seed, (sectors * 512) as usize);
    dev.write_at(&data, start * 512).unwrap();
    data
}

#[test]
fn gpt_and_mbr_partitions_appear_as_files() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let gpt = sfdisk_image(
        tmp.path(),
        size,
        "label: gpt\nstart=2048, size=20480, type=L\nstart=24576, size=40960, type=L\n",
    );
    let head = MemDevice::new(size);
    head.write_at(&gpt, 0).unwrap();
    let p1 = fill(&head, 2048, 20480, 11);
    let p2 = fill(&head, 24576, 40960, 12);
    let src = TestSource::new(head, true);
    src.snapshot("gpt");

    let dos = sfdisk_image(
        tmp.path(),
        size,
        "label: dos\nstart=2048, size=8192, type=83\nstart=12288, size=100000, type=5\n\
         start=14336, size=4096, type=83\nstart=20480, size=6144, type=83\n",
    );
    let mbr = MemDevice::new(size);
    mbr.write_at(&dos, 0).unwrap();
    let l6 = fill(&mbr, 20480, 6144, 13);
    src.add_snapshot("dos", SystemTime::now(), Arc::new(mbr));

    let mp = tmp.path().join("m");
    fs::create_dir(&mp).unwrap();
    let m = mount_at(src.clone(), &mp, false);
    let list = |dir: &str| {
        let mut v: Vec<String> = fs::read_dir(mp.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("snapshots/gpt"), ["part1.raw", "part2.raw"]);
    assert_eq!(list("head"), ["part1.raw", "part2.raw"]);
    assert_eq!(
        list("snapshots/dos"),
        ["part1.raw", "part5.raw", "part6.raw"]
    );
    assert!(read_all(&mp.join("snapshots/gpt/part1.raw")) == p1);
    assert!(read_all(&mp.join("snapshots/gpt/part2.raw")) == p2);
    assert!(read_all(&mp.join("head/part2.raw")) == p2);
    assert_eq!(
        fs::metadata(mp.join("snapshots/dos/part5.raw"))
            .unwrap()
            .len(),
        4096 * 512
    );
    assert!(read_all(&mp.join("snapshots/dos/part6.raw")) == l6);
    assert!(!mp.join("snapshots/gpt/part3.raw").exists());
    m.unmount().unwrap();
}

fn lseek(f: &File, off: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: lseek on a descriptor open for the whole call; no memory involved.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as u64)
    }
}

#[test]
fn seek_data_and_seek_hole_follow_the_allocation_map() {
    let tmp = tempfile::tempdir().unwrap();
    let head = MemDevice::new(16 * MIB);
    head.write_at(&pattern(5, 8192), MIB).unwrap(); // data [1 MiB, 1 MiB + 8 KiB)
    head.write_at(&pattern(6, 100), 10 * MIB + 10).unwrap(); // data in block [10 MiB, +4 KiB)
    let src = TestSource::new(head, true);
    src.snapshot("s");
    let mp = tmp.path().join("m");
    fs::create_dir(&mp).unwrap();
    let m = mount_at(src.clone(), &mp, false);
    for file in ["head.raw", "snapshots/s.raw"] {
        let f = File::open(mp.join(file)).unwrap();
        assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(MIB), "{file}");
        assert_eq!(lseek(&f, MIB, libc::SEEK_HOLE), Ok(MIB + 8192));
        assert_eq!(lseek(&f, MIB + 8192, libc::SEEK_DATA), Ok(10 * MIB));
        assert_eq!(
            lseek(&f, 10 * MIB + 4096, libc::SEEK_DATA),
            Err(libc::ENXIO)
        );
        assert_eq!(
            lseek(&f, 10 * MIB + 4096, libc::SEEK_HOLE),
            Ok(10 * MIB + 4096)
        );
        assert_eq!(lseek(&f, 16 * MIB, libc::SEEK_HOLE), Err(libc::ENXIO));
    }

    // Tools see the holes: qemu-img's map and a sparse cp.
    let map = run(
        "qemu-img",
        &[
            "map",
            "-f",
            "raw",
            "--output=json",
            mp.join("snapshots/s.raw").to_str().unwrap(),
        ],
    );
    assert!(
        map.contains("\"data\": false") && map.contains("\"data\": true"),
        "{map}"
    );
    let copy = tmp.path().join("copy.raw");
    run(
        "cp",
        &[
            "--sparse=always",
            mp.join("snapshots/s.raw").to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    assert!(read_all(&copy) == src.head_device().contents());
    assert!(
        fs::metadata(&copy).unwrap().blocks() * 512 <= 64 * 1024,
        "the copy is sparse"
    );
    m.unmount().unwrap();
}
