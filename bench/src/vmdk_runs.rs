//! streamOptimized VMDK export (what `vdisk convert -O vmdk -o subformat=streamOptimized` and
//! `vdisk ovf export` run) next to `qemu-img convert -O vmdk -o subformat=streamOptimized`.
//!
//! Same data for both: qemu-img reads the raw file (its fastest input), vdisk reads a bundle
//! holding the same bytes through a [`View`], as the CLI does. Two data sets: the fixture's
//! random bytes (incompressible) and text-like bytes (words of a small vocabulary,
//! compressing about 2:1); output sizes are reported beside the throughput. Our output is
//! checked with `qemu-img compare` against the raw file.

use crate::engine_runs::Fixture;
use crate::qemu::Qemu;
use crate::report::Report;
use crate::Opts;
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use vdisk_engine::{CreateOptions, Disk, LocalStore, Store, Target, View};
use vdisk_vmdk::{write_vmdk, Subformat, WriteOptions};

/// Text-like bytes: words of a fixed 512-word vocabulary (2 to 9 letters) in random order,
/// separated by spaces and line breaks. Compresses like logs or documents (about 2:1 with
/// deflate), unlike letters drawn independently, which no LZ match shortens.
struct Words {
    vocab: Vec<Vec<u8>>,
    seed: u64,
}

impl Words {
    fn new(seed: u64) -> Words {
        let mut w = Words {
            vocab: Vec::new(),
            seed,
        };
        for _ in 0..512 {
            let len = 2 + (w.next() % 8) as usize;
            let word = (0..len).map(|_| b'a' + (w.next() % 26) as u8).collect();
            w.vocab.push(word);
        }
        w
    }
    fn next(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }
    fn fill(&mut self, buf: &mut [u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            let r = self.next();
            let word = &self.vocab[(r % 512) as usize];
            let n = word.len().min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&word[..n]);
            pos += n;
            if pos < buf.len() {
                buf[pos] = if (r >> 32).is_multiple_of(12) {
                    b'\n'
                } else {
                    b' '
                };
                pos += 1;
            }
        }
    }
}

/// Writes `size` bytes of text-like data as a raw file and as a bundle.
fn prepare_text(opts: &Opts, size: u64) -> Result<(PathBuf, PathBuf)> {
    let raw = opts.dir.join("text.raw");
    let bundle = opts.dir.join("text.vdisk");
    let _ = fs::remove_dir_all(&bundle);
    let f = File::create(&raw)?;
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(&bundle)?);
    let d = Disk::create(store, &CreateOptions::new(size))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut words = Words::new(0x7e47);
    let mut off = 0;
    while off < size {
        words.fill(&mut buf);
        f.write_all_at(&buf, off)?;
        d.write_at(&buf, off)?;
        off += buf.len() as u64;
    }
    f.sync_all()?;
    d.close()?;
    Ok((raw, bundle))
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// One measurement: vdisk's export of `bundle` and qemu-img's conversion of `raw`.
fn one(
    opts: &Opts,
    q: &Qemu,
    kind: &str,
    raw: &Path,
    bundle: &Path,
    rep: &mut Report,
) -> Result<()> {
    let ours = opts.dir.join("export-vdisk.vmdk");
    let theirs = opts.dir.join("export-qemu.vmdk");
    let _ = fs::remove_file(&ours);
    let _ = fs::remove_file(&theirs);
    let store = LocalStore::open(bundle)?;
    let view = View::open(&store, Target::Head)?;
    let size = view.virtual_size();
    // A view is a block device: the VMDK writers read it as the CLI does.
    let src = &view;
    let wopts = WriteOptions {
        subformat: Subformat::StreamOptimized,
        ..WriteOptions::default()
    };
    let t = Instant::now();
    write_vmdk(src, &ours, &wopts).context("vdisk export")?;
    let ours_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    q.run(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        path_str(raw),
        path_str(&theirs),
    ])?;
    let qemu_s = t.elapsed().as_secs_f64();
    // Our output must read back as the same bytes.
    q.run(&[
        "compare",
        "-q",
        "-f",
        "raw",
        "-F",
        "vmdk",
        path_str(raw),
        path_str(&ours),
    ])
    .context("qemu-img disagrees with vdisk's streamOptimized export")?;
    let (ours_len, qemu_len) = (fs::metadata(&ours)?.len(), fs::metadata(&theirs)?.len());
    eprintln!(
        "    {kind}: vdisk {ours_s:.2} s ({} MiB out), qemu-img {qemu_s:.2} s ({} MiB out)",
        ours_len >> 20,
        qemu_len >> 20
    );
    let mbps = |s: f64| size as f64 / s / 1e6;
    rep.higher(
        &format!("streamOptimized export, {kind} data (bundle → VMDK)"),
        "MB/s",
        mbps(ours_s),
        "qemu-img convert raw → VMDK",
        Some(mbps(qemu_s)),
        "≥ 2 × qemu-img convert",
        Some(2.0),
    );
    // The price of the speed, shown beside it: output size (deflate level 1 vs qemu's 6).
    rep.lower(
        &format!("streamOptimized output size, {kind} data"),
        "MB",
        ours_len as f64 / 1e6,
        "qemu-img",
        Some(qemu_len as f64 / 1e6),
        "(informational)",
        None,
    );
    let _ = fs::remove_file(&ours);
    let _ = fs::remove_file(&theirs);
    Ok(())
}

/// The "vmdk" group: random (the fixture) and text-like data.
pub fn stream_export(opts: &Opts, q: &Qemu, fx: &Fixture, rep: &mut Report) -> Result<()> {
    eprintln!("streamOptimized export vs qemu-img convert ...");
    one(opts, q, "random", &fx.raw, &fx.vdisk[0], rep)?;
    let (raw, bundle) = prepare_text(opts, fx.size)?;
    let r = one(opts, q, "text-like", &raw, &bundle, rep);
    let _ = fs::remove_file(&raw);
    let _ = fs::remove_dir_all(&bundle);
    r
}
