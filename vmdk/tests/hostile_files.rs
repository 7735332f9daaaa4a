//! Hostile file layouts around a descriptor: the same extent named many times, FIFOs and
//! devices where files should be, symlinks leading out of the descriptor's folder, empty
//! embedded descriptors.

mod common;
use common::tempdir;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use vdisk_vmdk::sparse::header::FLAG_NEWLINE_TEST;
use vdisk_vmdk::sparse::{SparseHeader, SECTOR};
use vdisk_vmdk::{BlockDevice, OpenOptions, VmdkImage};

/// A sparse extent of `capacity` sectors with 8 KiB grains and an all-empty grain
/// directory (the file is sparse: the directory reads as zeros), no embedded descriptor.
/// Returns the directory's size in bytes.
fn empty_sparse_extent(path: &Path, capacity: u64) -> u64 {
    let grain = 16u64;
    let gtes = 512u64;
    let gd_entries = capacity.div_ceil(grain * gtes);
    let gd_bytes = gd_entries * 4;
    let h = SparseHeader {
        version: 1,
        flags: FLAG_NEWLINE_TEST,
        capacity,
        grain_size: grain,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: 512,
        rgd_offset: 0,
        gd_offset: 1,
        overhead: 1 + gd_bytes.div_ceil(SECTOR),
        unclean_shutdown: false,
        newline_chars: *b"\n \r\n",
        compress_algorithm: 0,
    };
    let f = std::fs::File::create(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &h.encode(), 0).unwrap();
    f.set_len(SECTOR + gd_bytes.div_ceil(SECTOR) * SECTOR)
        .unwrap();
    gd_bytes
}

fn descriptor(lines: &[String]) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n{}\n",
        lines.join("\n")
    )
}

/// Runs `f` on a thread and fails the test if it has not returned after 20 s (a FIFO
/// opened for reading blocks until a writer appears).
fn within_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} hangs"))
}

fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn one_extent_named_thirty_times_is_opened_once() {
    let t = tempdir();
    // 2^31 sectors (1 TiB) of 8 KiB grains: a 1 MiB grain directory.
    let gd = empty_sparse_extent(&t.path().join("big.vmdk"), 1 << 31);
    assert_eq!(gd, 1 << 20);
    let lines: Vec<String> = (0..30)
        .map(|_| "RW 2048 SPARSE \"big.vmdk\"".to_string())
        .collect();
    let d = t.path().join("d.vmdk");
    std::fs::write(&d, descriptor(&lines)).unwrap();
    // A budget of 4 directories: thirty separate copies would need 30 MiB.
    let opts = OpenOptions {
        max_table_bytes: 4 << 20,
        ..OpenOptions::default()
    };
    let img = VmdkImage::open_with(&d, &opts).expect("thirty names of one file");
    assert_eq!(img.size(), 30 * 2048 * 512);
    let mut b = vec![1u8; 4096];
    img.read_at(&mut b, 29 * 2048 * 512).unwrap();
    assert!(b.iter().all(|&x| x == 0));

    // Thirty distinct files do cost thirty directories, and the budget refuses them.
    let lines: Vec<String> = (0..30)
        .map(|i| {
            empty_sparse_extent(&t.path().join(format!("e{i}.vmdk")), 1 << 31);
            format!("RW 2048 SPARSE \"e{i}.vmdk\"")
        })
        .collect();
    std::fs::write(&d, descriptor(&lines)).unwrap();
    let e = VmdkImage::open_with(&d, &opts)
        .err()
        .expect("over budget")
        .to_string();
    assert!(
        e.contains("grain directories") && e.contains("limit"),
        "{e}"
    );
}

#[test]
fn fifo_as_extent_parent_or_descriptor_is_refused_without_hanging() {
    let t = tempdir();
    let dir = t.path().to_path_buf();
    mkfifo(&dir.join("fifo.vmdk"));
    // As the extent of a descriptor.
    std::fs::write(
        dir.join("ext.vmdk"),
        descriptor(&["RW 2048 FLAT \"fifo.vmdk\" 0".to_string()]),
    )
    .unwrap();
    // As the parent of a delta.
    empty_sparse_extent(&dir.join("delta-s001.vmdk"), 2048);
    std::fs::write(
        dir.join("child.vmdk"),
        "version=1\nCID=1\nparentCID=2\ncreateType=\"twoGbMaxExtentSparse\"\nparentFileNameHint=\"fifo.vmdk\"\nRW 2048 SPARSE \"delta-s001.vmdk\"\n",
    )
    .unwrap();
    for (file, needle) in [
        ("ext.vmdk", "extent"),
        ("child.vmdk", "parent"),
        ("fifo.vmdk", "fifo.vmdk"),
    ] {
        let p = dir.join(file);
        let e = within_deadline(file, move || {
            VmdkImage::open(&p).err().map(|e| e.to_string())
        })
        .unwrap_or_else(|| panic!("{file} opened"));
        assert!(e.contains(needle), "{file}: {e}");
        let chain = {
            let p = dir.join(file);
            within_deadline(file, move || {
                let e = VmdkImage::open(&p).err().unwrap();
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(c) = src {
                    s.push_str(&format!(": {c}"));
                    src = c.source();
                }
                s
            })
        };
        assert!(chain.contains("FIFO"), "{file}: {chain}");
    }
    // A character device as an extent.
    std::fs::write(
        dir.join("dev.vmdk"),
        descriptor(&["RW 2048 FLAT \"null\" 0".to_string()]),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("null")).unwrap();
    let e = VmdkImage::open(&dir.join("dev.vmdk")).err().unwrap();
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        chain.contains("outside") || chain.contains("character device"),
        "{chain}"
    );
}

#[test]
fn extent_through_a_symlinked_folder_stays_inside_unless_allowed() {
    let t = tempdir();
    let vm = t.path().join("vm");
    let outside = t.path().join("secret");
    std::fs::create_dir_all(&vm).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("data.bin"), vec![0x5au8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(&outside, vm.join("sub")).unwrap();
    let d = vm.join("d.vmdk");
    std::fs::write(
        &d,
        descriptor(&["RW 2048 FLAT \"sub/data.bin\" 0".to_string()]),
    )
    .unwrap();
    let e = VmdkImage::open(&d)
        .err()
        .expect("escape accepted")
        .to_string();
    assert!(e.contains("outside the descriptor's folder"), "{e}");
    assert!(e.contains("d.vmdk"), "{e}");
    // A symlinked file pointing out is refused the same way.
    std::os::unix::fs::symlink(outside.join("data.bin"), vm.join("link.bin")).unwrap();
    std::fs::write(&d, descriptor(&["RW 2048 FLAT \"link.bin\" 0".to_string()])).unwrap();
    assert!(VmdkImage::open(&d).is_err());
    // With the folder allowed explicitly, it reads.
    let opts = OpenOptions {
        allowed_dirs: vec![outside.clone()],
        ..OpenOptions::default()
    };
    let img = VmdkImage::open_with(&d, &opts).unwrap();
    let mut b = [0u8; 16];
    img.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [0x5a; 16]);
    // A symlink that stays inside the folder is fine.
    std::fs::write(vm.join("real.bin"), vec![7u8; 1 << 20]).unwrap();
    std::fs::create_dir(vm.join("inner")).unwrap();
    std::os::unix::fs::symlink("../real.bin", vm.join("inner/l.bin")).unwrap();
    std::fs::write(
        &d,
        descriptor(&["RW 2048 FLAT \"inner/l.bin\" 0".to_string()]),
    )
    .unwrap();
    VmdkImage::open(&d).unwrap();
}

#[test]
fn empty_or_missing_embedded_descriptor_is_refused() {
    let t = tempdir();
    let raw = t.path().join("r.raw");
    common::make_raw(&raw, 4 << 20, &[0, 3]);
    let src = vdisk_vmdk::RawSource::new(std::sync::Arc::new(std::fs::File::open(&raw).unwrap()))
        .unwrap();
    let out = t.path().join("m.vmdk");
    vdisk_vmdk::write_vmdk(&src, &out, &vdisk_vmdk::WriteOptions::default()).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let h = SparseHeader::decode(&bytes[..512], "m").unwrap();
    let (s, n) = (
        (h.descriptor_offset * SECTOR) as usize,
        (h.descriptor_size * SECTOR) as usize,
    );
    VmdkImage::open(&out).expect("the original opens");
    // NUL-filled descriptor.
    let mut b = bytes.clone();
    b[s..s + n].fill(0);
    std::fs::write(&out, &b).unwrap();
    let e = VmdkImage::open(&out)
        .err()
        .expect("empty accepted")
        .to_string();
    assert!(
        e.contains("m.vmdk") && e.contains("embedded descriptor"),
        "{e}"
    );
    // Only comments and blank lines.
    let text = b"# Disk DescriptorFile\n\n# nothing\n";
    b[s..s + text.len()].copy_from_slice(text);
    std::fs::write(&out, &b).unwrap();
    assert!(VmdkImage::open(&out).is_err());
    // No descriptor at all (descriptorSize 0): an extent of a split disk opened alone.
    let e = empty_sparse_extent(&t.path().join("x-s001.vmdk"), 2048);
    assert!(e > 0);
    let e = VmdkImage::open(&t.path().join("x-s001.vmdk"))
        .err()
        .expect("descriptor-less extent accepted")
        .to_string();
    assert!(e.contains("embedded descriptor"), "{e}");
}
