//! streamOptimized export throughput, ours vs `qemu-img convert`, on the same 1 GiB mostly
//! random input (7 of every 8 MiB random, the rest zeros). Run in release:
//! `cargo test --release -p vdisk-vmdk --test bench_stream -- --ignored --nocapture`
//! (`VMDK_BENCH_MIB` changes the size; `VMDK_BENCH_KIND=text` makes the non-zero data
//! compressible, 4 bits of entropy per byte, instead of random).

mod common;
use std::fs::File;
use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;
use vdisk_vmdk::{write_vmdk, BlockDevice, RawSource, Subformat, VmdkImage, WriteOptions};

#[test]
#[ignore = "benchmark: ~1 minute, run explicitly"]
fn stream_optimized_vs_qemu_img() {
    let mib: u64 = std::env::var("VMDK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let text = std::env::var("VMDK_BENCH_KIND").is_ok_and(|k| k == "text");
    let t = common::tempdir();
    let raw = t.path().join("src.raw");
    {
        let mut f = std::io::BufWriter::new(File::create(&raw).unwrap());
        for i in 0..mib {
            let chunk = if i % 8 == 7 {
                vec![0u8; 1 << 20]
            } else if text {
                // 4 bits of entropy per byte: compresses to about half.
                common::pseudo_random(i + 1, 1 << 20)
                    .into_iter()
                    .map(|b| b'a' + (b & 15))
                    .collect()
            } else {
                common::pseudo_random(i + 1, 1 << 20)
            };
            f.write_all(&chunk).unwrap();
        }
    }
    let size = mib << 20;
    let src = RawSource::new(Arc::new(File::open(&raw).unwrap())).unwrap();
    let ours = t.path().join("ours.vmdk");
    let mut opts = WriteOptions {
        subformat: Subformat::StreamOptimized,
        ..Default::default()
    };
    if let Some(l) = std::env::var("VMDK_BENCH_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.compression_level = l;
    }
    let start = Instant::now();
    let report = write_vmdk(&src, &ours, &opts).unwrap();
    let ours_s = start.elapsed().as_secs_f64();

    let theirs = t.path().join("qemu.vmdk");
    let start = Instant::now();
    let st = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw)
        .arg(&theirs)
        .status()
        .unwrap();
    let qemu_s = start.elapsed().as_secs_f64();
    assert!(st.success());

    // Our output must be read back identical by qemu-img.
    let st = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "vmdk"])
        .arg(&raw)
        .arg(&ours)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img disagrees with our stream");
    let img = VmdkImage::open(&ours).unwrap();
    assert_eq!(img.size(), size);

    let mbps = |s: f64| size as f64 / s / 1e6;
    let ours_len = std::fs::metadata(&ours).unwrap().len();
    let qemu_len = std::fs::metadata(&theirs).unwrap().len();
    println!(
        "streamOptimized export of {mib} MiB (7/8 {}): ours {ours_s:.2} s = {:.0} MB/s \
         ({} threads, deflate level {}, {ours_len} bytes), qemu-img {qemu_s:.2} s = {:.0} MB/s \
         ({qemu_len} bytes), ratio {:.2}x; grains {} written, {} zero skipped",
        if text { "text-like" } else { "random" },
        mbps(ours_s),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        opts.compression_level,
        mbps(qemu_s),
        qemu_s / ours_s,
        report.grains_written,
        report.zero_grains_skipped,
    );
    assert!(qemu_s / ours_s >= 2.0, "less than 2x qemu-img");
}
