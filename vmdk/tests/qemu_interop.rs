//! Interop with qemu-img 10 in both directions, and qemu-made snapshot chains.

mod common;
use common::{make_raw, read_all, run, tempdir};
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vdisk_vmdk::{
    write_stream_optimized, write_vmdk, BlockDevice, ExtentKind, RawSource, ReadAt, VmdkImage,
    WriteOptions,
};

const SIZE: u64 = 8 * 1024 * 1024 + 100 * 1024 + 1536; // not a multiple of the grain
const CHUNKS: &[u64] = &[0, 3, 17, 64, 65, 127, 129];

fn raw_source(p: &Path) -> RawSource {
    RawSource::new(Arc::new(File::open(p).unwrap())).unwrap()
}

fn qemu_img(args: &[&str], dir: &Path) -> String {
    run(Command::new("qemu-img").args(args).current_dir(dir))
}

#[test]
fn qemu_reads_what_we_write() {
    let t = tempdir();
    let d = t.path();
    let raw = d.join("src.raw");
    let content = make_raw(&raw, SIZE, CHUNKS);
    let src = raw_source(&raw);
    for opts in [
        "subformat=monolithicSparse",
        "subformat=monolithicSparse,zeroed_grain=on,adapter_type=lsilogic",
        "subformat=streamOptimized",
        "subformat=streamOptimized,compat6=on,adapter_type=buslogic,threads=1",
        "subformat=monolithicFlat",
        "subformat=monolithicFlat,hwversion=14,adapter_type=legacyESX",
    ] {
        let mut o = WriteOptions::default();
        o.apply_options(opts).unwrap();
        let out = d.join(format!("ours-{}.vmdk", opts.replace([',', '='], "_")));
        let report = write_vmdk(&src, &out, &o).unwrap_or_else(|e| panic!("{opts}: {e}"));
        assert_eq!(report.virtual_size, SIZE);
        assert!(
            report.grains_written >= 7 && report.grains_written <= 10,
            "{opts}: {report:?}"
        );
        let outs = out.to_str().unwrap();
        qemu_img(
            &["compare", "-q", "-f", "raw", "-F", "vmdk", "src.raw", outs],
            d,
        );
        if !opts.contains("Flat") {
            qemu_img(&["check", "-f", "vmdk", outs], d);
        }
        let info = qemu_img(&["info", "--output=json", outs], d);
        assert!(
            info.contains(&format!("\"virtual-size\": {SIZE}")),
            "{opts}: {info}"
        );
        let img = VmdkImage::open(&out).unwrap();
        assert_eq!(read_all(&img), content, "{opts}: our reader disagrees");
        let i = img.info();
        assert_eq!(i.subformat, o.subformat.create_type());
        assert_eq!(i.adapter_type.as_deref(), Some(o.adapter_type.as_str()));
        if o.compat6 {
            assert_eq!(i.hw_version.as_deref(), Some("6"));
        }
        // Sparse writers store no hole: everything outside the random chunks is unallocated.
        if !opts.contains("Flat") {
            let data: u64 = img
                .extents(0, img.size())
                .unwrap()
                .iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .map(|e| e.length)
                .sum();
            // The last grain is partial: the map stops at the virtual size.
            let full = report.grains_written * 65536;
            assert!(
                data <= full && data > full - 65536,
                "{opts}: {data} vs {full}"
            );
        }
    }
}

#[test]
fn stream_to_plain_writer_reads_back() {
    let t = tempdir();
    let raw = t.path().join("src.raw");
    let content = make_raw(&raw, SIZE, CHUNKS);
    let src = raw_source(&raw);
    let mut out = Vec::new();
    let done = std::cell::Cell::new(0u64);
    let progress = |d: u64, total: u64| {
        assert!(d <= total && d >= done.get());
        done.set(d);
    };
    let opts = WriteOptions {
        progress: Some(&progress),
        ..Default::default()
    };
    let n = write_stream_optimized(&src, &mut out, &opts).unwrap();
    assert_eq!(n, out.len() as u64);
    assert_eq!(done.get(), SIZE);
    let img = VmdkImage::open_single(Arc::new(out.clone()), "mem.vmdk").unwrap();
    assert_eq!(read_all(&img), content);
    // The same bytes inside a bigger file, read in place through a FileSlice.
    let mut tar = vec![7u8; 1536];
    tar.extend_from_slice(&out);
    tar.extend_from_slice(&[9u8; 1000]);
    let outer: Arc<dyn ReadAt> = Arc::new(tar);
    let slice = vdisk_vmdk::FileSlice::new(outer, 1536, out.len() as u64).unwrap();
    let img = VmdkImage::open_single(Arc::new(slice), "member.vmdk").unwrap();
    assert_eq!(read_all(&img), content);
    std::fs::write(t.path().join("s.vmdk"), &out).unwrap();
    qemu_img(
        &[
            "compare", "-q", "-f", "raw", "-F", "vmdk", "src.raw", "s.vmdk",
        ],
        t.path(),
    );
}

#[test]
fn we_read_what_qemu_writes() {
    let t = tempdir();
    let d = t.path();
    let raw = d.join("src.raw");
    let content = make_raw(&raw, SIZE, CHUNKS);
    let mut cases = Vec::new();
    for sub in [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        cases.push(format!("subformat={sub}"));
        cases.push(format!("subformat={sub},compat6=on"));
    }
    for a in ["ide", "lsilogic", "buslogic", "legacyESX"] {
        cases.push(format!("adapter_type={a}"));
    }
    cases.push("zeroed_grain=on".into());
    cases.push("hwversion=14,toolsversion=12345".into());
    for (i, opts) in cases.iter().enumerate() {
        let sub = d.join(format!("q{i}"));
        std::fs::create_dir(&sub).unwrap();
        qemu_img(
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                opts,
                "src.raw",
                &format!("q{i}/d.vmdk"),
            ],
            d,
        );
        let img = VmdkImage::open(&sub.join("d.vmdk")).unwrap_or_else(|e| panic!("{opts}: {e}"));
        assert_eq!(img.size(), SIZE, "{opts}");
        assert!(read_all(&img) == content, "{opts}: content differs");
        let info = img.info();
        if let Some(a) = opts.strip_prefix("adapter_type=") {
            assert_eq!(info.adapter_type.as_deref(), Some(a));
        }
        if opts.contains("compat6") {
            assert_eq!(info.hw_version.as_deref(), Some("6"), "{opts}");
        }
    }
}

#[test]
fn qemu_multi_extent_two_gb_layouts() {
    let t = tempdir();
    let d = t.path();
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let name = format!("{sub}.vmdk");
        qemu_img(
            &[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                &name,
                "5G",
            ],
            d,
        );
        let a: u64 = (2 << 30) - 512; // straddles the first extent boundary
        let b: u64 = 4 << 30;
        run(Command::new("qemu-io").current_dir(d).args([
            "-f",
            "vmdk",
            "-c",
            &format!("write -P 0xab {a} 1024"),
            "-c",
            &format!("write -P 0xcd {b} 65536"),
            &name,
        ]));
        let img = VmdkImage::open(&d.join(&name)).unwrap();
        assert_eq!(img.size(), 5 << 30);
        assert!(img.info().extents.len() >= 3, "{sub}");
        let mut buf = vec![0u8; 2048];
        img.read_at(&mut buf, a - 512).unwrap();
        assert!(buf[..512].iter().all(|&x| x == 0));
        assert!(buf[512..1536].iter().all(|&x| x == 0xab), "{sub}");
        assert!(buf[1536..].iter().all(|&x| x == 0));
        let mut buf = vec![0u8; 65536];
        img.read_at(&mut buf, b).unwrap();
        assert!(buf.iter().all(|&x| x == 0xcd), "{sub}");
        if sub.ends_with("Sparse") {
            let data: u64 = img
                .extents(0, img.size())
                .unwrap()
                .iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .map(|e| e.length)
                .sum();
            assert_eq!(data, 3 * 65536, "{sub}");
        }
    }
}

#[test]
fn qemu_snapshot_chain_layers() {
    let t = tempdir();
    let d = t.path();
    let io = |file: &str, cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.current_dir(d).args(["-f", "vmdk"]);
        for x in cmds {
            c.args(["-c", x]);
        }
        c.arg(file);
        run(&mut c);
    };
    qemu_img(&["create", "-q", "-f", "vmdk", "base.vmdk", "4M"], d);
    io(
        "base.vmdk",
        &["write -P 0x11 0 128k", "write -P 0x22 1M 64k"],
    );
    qemu_img(
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "mid.vmdk",
        ],
        d,
    );
    io("mid.vmdk", &["write -P 0x33 64k 64k", "write -z 1M 64k"]);
    qemu_img(
        &[
            "create", "-q", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", "top.vmdk",
        ],
        d,
    );
    io("top.vmdk", &["write -P 0x44 3M 4k"]);

    let img = VmdkImage::open(&d.join("top.vmdk")).unwrap();
    assert_eq!(img.depth(), 3);
    let info = img.info();
    assert_eq!(info.parents.len(), 2);
    assert_eq!(info.parent_cid, info.parents[0].cid);
    let layers = img.chain_layers();
    assert_eq!(layers.len(), 3);
    assert!(layers[0].file.ends_with("base.vmdk"));
    assert!(layers[2].file.ends_with("top.vmdk"));
    for (layer, name) in layers.iter().zip(["base", "mid", "top"]) {
        qemu_img(
            &[
                "convert",
                "-f",
                "vmdk",
                "-O",
                "raw",
                &format!("{name}.vmdk"),
                &format!("{name}.raw"),
            ],
            d,
        );
        let expect = std::fs::read(d.join(format!("{name}.raw"))).unwrap();
        assert!(
            read_all(&layer.content) == expect,
            "layer {name} differs from qemu's view"
        );
    }
    let kinds = |i: usize| -> Vec<(u64, u64, ExtentKind)> {
        layers[i]
            .allocation()
            .unwrap()
            .iter()
            .map(|e| (e.offset, e.length, e.kind))
            .collect()
    };
    assert_eq!(
        kinds(0),
        vec![
            (0, 128 << 10, ExtentKind::Data),
            (1 << 20, 64 << 10, ExtentKind::Data)
        ]
    );
    assert_eq!(
        kinds(1),
        vec![
            (64 << 10, 64 << 10, ExtentKind::Data),
            (1 << 20, 64 << 10, ExtentKind::Zero)
        ]
    );
    assert_eq!(kinds(2), vec![(3 << 20, 64 << 10, ExtentKind::Data)]);
    // Merged map of the whole chain.
    let merged: Vec<_> = img
        .extents(0, img.size())
        .unwrap()
        .into_iter()
        .filter(|e| e.kind != ExtentKind::Unallocated)
        .map(|e| (e.offset, e.length, e.kind))
        .collect();
    assert_eq!(
        merged,
        vec![
            (0, 128 << 10, ExtentKind::Data),
            (1 << 20, 64 << 10, ExtentKind::Zero),
            (3 << 20, 64 << 10, ExtentKind::Data)
        ]
    );

    // A parent whose CID changed under the child is refused, naming the field.
    let mut mid = std::fs::read(d.join("mid.vmdk")).unwrap();
    let pos = mid.windows(4).position(|w| w == b"CID=").unwrap();
    mid[pos + 4] = if mid[pos + 4] == b'0' { b'1' } else { b'0' };
    std::fs::write(d.join("mid.vmdk"), &mid).unwrap();
    let e = VmdkImage::open(&d.join("top.vmdk"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("top.vmdk") && e.contains("parentCID"), "{e}");
}
