//! Hostile and damaged files: every case is refused with an error naming the file and the
//! field, and nothing panics.

mod common;
use common::{make_raw, tempdir};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdisk_vmdk::{write_vmdk, BlockDevice, RawSource, Subformat, VmdkImage, WriteOptions};

/// Opens and reads the whole image; the error text if anything fails.
fn try_read(path: &Path) -> Result<(), String> {
    let img = VmdkImage::open(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < img.size() {
        let n = (img.size() - pos).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], pos).map_err(|e| e.to_string())?;
        pos += n as u64;
    }
    img.extents(0, img.size()).map_err(|e| e.to_string())?;
    Ok(())
}

fn expect_err(path: &Path, needles: &[&str]) {
    let e = try_read(path).expect_err(&format!("{} was accepted", path.display()));
    for n in needles {
        assert!(e.contains(n), "error {e:?} lacks {n:?}");
    }
}

/// A small image written by us (8 MiB: one grain table) or 64 MiB (two).
fn image(dir: &Path, sub: Subformat, size: u64) -> (PathBuf, Vec<u8>) {
    let raw = dir.join(format!("src-{size}.raw"));
    make_raw(&raw, size, &[0, 1, 2, 40, 100, 600]);
    let src = RawSource::new(Arc::new(File::open(&raw).unwrap())).unwrap();
    let out = dir.join(format!("{sub}-{size}.vmdk"));
    let opts = WriteOptions {
        subformat: sub,
        cid: Some(0x1234),
        ..Default::default()
    };
    write_vmdk(&src, &out, &opts).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    (out, bytes)
}

fn patch(path: &Path, base: &[u8], at: usize, data: &[u8]) {
    let mut b = base.to_vec();
    b[at..at + data.len()].copy_from_slice(data);
    std::fs::write(path, b).unwrap();
}

const MIB8: u64 = 8 << 20;

#[test]
fn truncated_files() {
    let t = tempdir();
    for sub in [Subformat::MonolithicSparse, Subformat::StreamOptimized] {
        let (_, bytes) = image(t.path(), sub, MIB8);
        let p = t.path().join("cut.vmdk");
        let len = bytes.len();
        for cut in [
            0,
            3,
            100,
            511,
            512,
            1000,
            10_752,
            13_824,
            65_536,
            70_000,
            len / 2,
            len - 1536,
            len - 512,
            len - 1,
        ] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            expect_err(&p, &["cut.vmdk"]);
        }
    }
}

#[test]
fn header_fields() {
    let t = tempdir();
    let (_, bytes) = image(t.path(), Subformat::MonolithicSparse, MIB8);
    let p = t.path().join("h.vmdk");
    let cases: &[(usize, &[u8], &str)] = &[
        (0, b"XXXX", "magic"),
        (4, &9u32.to_le_bytes(), "version"),
        (12, &(1u64 << 60).to_le_bytes(), "capacity"),
        (20, &0u64.to_le_bytes(), "grainSize"),
        (20, &(1u64 << 40).to_le_bytes(), "grainSize"),
        (44, &0u32.to_le_bytes(), "numGTEsPerGT"),
        (44, &u32::MAX.to_le_bytes(), "numGTEsPerGT"),
        (56, &(1u64 << 40).to_le_bytes(), "gdOffset"),
        (56, &0u64.to_le_bytes(), "gdOffset"),
        (56, &u64::MAX.to_le_bytes(), "gdOffset"),
        (28, &(1u64 << 50).to_le_bytes(), "descriptorOffset"),
        (36, &(1u64 << 50).to_le_bytes(), "descriptorSize"),
        (75, b"\n", "newline"),
        (8, &0x10003u32.to_le_bytes(), "compressAlgorithm"),
        (12, &(1u64 << 36).to_le_bytes(), "gdOffset"),
    ];
    for (at, data, field) in cases {
        patch(&p, &bytes, *at, data);
        expect_err(&p, &["h.vmdk", field]);
    }
}

#[test]
fn hostile_grain_tables() {
    let t = tempdir();
    let (_, bytes) = image(t.path(), Subformat::MonolithicSparse, MIB8);
    // Our layout: RGD at sector 21, RGT at 22, GD at 26, GT at 27, grains from 128.
    let gt = 27 * 512;
    let gd = 26 * 512;
    let p = t.path().join("g.vmdk");
    let cases: &[(usize, u32, &str)] = &[
        (gt, 1 << 30, "past the end"),            // grain past EOF
        (gt, 26, "metadata"),                     // grain onto the GD
        (gt, 2, "metadata"),                      // grain inside the descriptor
        (gt + 4, 27, "metadata"),                 // grain onto its own table
        (gd, 1 << 30, "grain directory entry 0"), // table past EOF
        (gd, 26, "grain directory entry 0"),      // table onto the GD itself
        (gd, 0x0fff_ffff, "grain directory entry 0"),
    ];
    for (at, v, needle) in cases {
        patch(&p, &bytes, *at, &v.to_le_bytes());
        expect_err(&p, &["g.vmdk", needle]);
    }
    // Two directory entries sharing one table (a loop in the map).
    let (_, big) = image(t.path(), Subformat::MonolithicSparse, 64 << 20);
    let gd2 = u32::from_le_bytes(big[56..60].try_into().unwrap()) as usize * 512;
    let first = big[gd2..gd2 + 4].to_vec();
    patch(&p, &big, gd2 + 4, &first);
    expect_err(&p, &["g.vmdk", "overlap"]);
}

#[test]
fn stream_damage() {
    let t = tempdir();
    let (_, bytes) = image(t.path(), Subformat::StreamOptimized, MIB8);
    let p = t.path().join("s.vmdk");
    let overhead = u64::from_le_bytes(bytes[64..72].try_into().unwrap()) as usize * 512;
    // First grain marker: LBA, then compressed size.
    patch(&p, &bytes, overhead, &12345u64.to_le_bytes());
    expect_err(&p, &["s.vmdk", "LBA"]);
    patch(&p, &bytes, overhead + 8, &u32::MAX.to_le_bytes());
    expect_err(&p, &["s.vmdk", "compressed size"]);
    patch(
        &p,
        &bytes,
        overhead + 12,
        &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0],
    );
    expect_err(&p, &["s.vmdk", "deflate"]);
    // Without the footer the markers are walked: a bad marker type is reported.
    let len = bytes.len();
    let mut b = bytes.clone();
    b[len - 1536..len - 512].fill(0xee);
    std::fs::write(&p, &b).unwrap();
    expect_err(&p, &["s.vmdk", "marker"]);
    // And a walk that never meets an end-of-stream marker is a truncated stream.
    let mut b = bytes[..len - 512].to_vec();
    b.extend_from_slice(&[0x55; 512]);
    std::fs::write(&p, &b).unwrap();
    expect_err(&p, &["s.vmdk"]);
}

#[test]
fn scanning_a_footerless_stream_reads_the_same() {
    let t = tempdir();
    let (orig, bytes) = image(t.path(), Subformat::StreamOptimized, MIB8);
    let expect = common::read_all(&VmdkImage::open(&orig).unwrap());
    // Replace GD/GT markers' tail (footer marker + footer) with an EOS right after the GD.
    let len = bytes.len();
    let mut b = bytes[..len - 1536].to_vec();
    b.extend_from_slice(&[0u8; 512]);
    let p = t.path().join("nofooter.vmdk");
    std::fs::write(&p, &b).unwrap();
    let img = VmdkImage::open(&p).unwrap();
    assert_eq!(common::read_all(&img), expect);
}

#[test]
fn descriptor_problems() {
    let t = tempdir();
    let d = t.path();
    std::fs::write(d.join("x-flat.vmdk"), vec![0u8; 4096]).unwrap();
    let desc = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(&p, format!("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{body}\n")).unwrap();
        p
    };
    expect_err(
        &desc("a.vmdk", "RW 8 FLAT \"../x-flat.vmdk\" 0"),
        &["a.vmdk", "leaves"],
    );
    expect_err(
        &desc("b.vmdk", "RW 8 FLAT \"/etc/passwd\" 0"),
        &["b.vmdk", "leaves"],
    );
    expect_err(
        &desc("c.vmdk", "RW 8 FLAT \"nope.vmdk\" 0"),
        &["c.vmdk", "nope.vmdk"],
    );
    expect_err(
        &desc("e.vmdk", "RW 16 FLAT \"x-flat.vmdk\" 0"),
        &["x-flat.vmdk", "flat extent size"],
    );
    expect_err(
        &desc("f.vmdk", "RW 8 FLAT \"x-flat.vmdk\" 1"),
        &["x-flat.vmdk"],
    );
    expect_err(
        &desc("g.vmdk", "RW 8 FLAT \"x-flat.vmdk\""),
        &["g.vmdk", "line 6"],
    );
    expect_err(&desc("h.vmdk", ""), &["h.vmdk", "extents"]);
    expect_err(
        &desc("i.vmdk", "RW 8 VMFSSPARSE \"x-flat.vmdk\""),
        &["i.vmdk", "unsupported"],
    );
    assert!(try_read(&desc("ok.vmdk", "RW 4 FLAT \"x-flat.vmdk\" 4\nRW 4 ZERO")).is_ok());
    // Sparse extent smaller than its descriptor line.
    let (sp, _) = image(d, Subformat::MonolithicSparse, MIB8);
    let spname = sp.file_name().unwrap().to_str().unwrap().to_string();
    expect_err(
        &desc("j.vmdk", &format!("RW 99999 SPARSE \"{spname}\"")),
        &["capacity"],
    );
    // Not a descriptor at all.
    std::fs::write(d.join("k.vmdk"), b"hello world\n").unwrap();
    expect_err(&d.join("k.vmdk"), &["k.vmdk", "createType"]);
    std::fs::write(d.join("l.vmdk"), vec![0xffu8; 2 << 20]).unwrap();
    expect_err(&d.join("l.vmdk"), &["l.vmdk", "descriptor"]);
}

#[test]
fn parent_problems() {
    let t = tempdir();
    let d = t.path();
    std::fs::write(d.join("z-flat.vmdk"), vec![0u8; 4096]).unwrap();
    let desc = |name: &str, cid: &str, pcid: &str, parent: &str| {
        let p = d.join(name);
        let hint = if parent.is_empty() {
            String::new()
        } else {
            format!("parentFileNameHint=\"{parent}\"\n")
        };
        std::fs::write(&p, format!("version=1\nCID={cid}\nparentCID={pcid}\ncreateType=\"monolithicFlat\"\n{hint}RW 8 FLAT \"z-flat.vmdk\" 0\n")).unwrap();
        p
    };
    expect_err(
        &desc("m.vmdk", "2", "1", "missing.vmdk"),
        &["m.vmdk", "parent", "missing.vmdk"],
    );
    expect_err(
        &desc("n.vmdk", "2", "1", "../n.vmdk"),
        &["n.vmdk", "parentFileNameHint"],
    );
    desc("p.vmdk", "1", "2", "q.vmdk");
    expect_err(&desc("q.vmdk", "2", "1", "p.vmdk"), &["loop"]);
    desc("base.vmdk", "7", "ffffffff", "");
    expect_err(
        &desc("child.vmdk", "8", "6", "base.vmdk"),
        &["child.vmdk", "parentCID"],
    );
    assert!(try_read(&desc("child2.vmdk", "8", "7", "base.vmdk")).is_ok());
}

#[test]
fn random_bit_flips_never_panic() {
    let t = tempdir();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for sub in [Subformat::MonolithicSparse, Subformat::StreamOptimized] {
        let (_, bytes) = image(t.path(), sub, MIB8);
        let p = t.path().join("flip.vmdk");
        let hot = if sub == Subformat::MonolithicSparse {
            32 * 512
        } else {
            bytes.len()
        };
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = if next() % 2 == 0 {
                    (next() % 80) as usize
                } else if sub == Subformat::StreamOptimized && next() % 2 == 0 {
                    bytes.len() - 1 - (next() % 2048) as usize
                } else {
                    (next() % hot as u64) as usize
                };
                b[at] ^= 1 << (next() % 8);
            }
            std::fs::write(&p, &b).unwrap();
            let _ = try_read(&p); // either outcome is fine; a panic fails the test
        }
    }
}
