//! streamOptimized writer for any `Write` (no seeking): header and descriptor, then for
//! each grain table's span its compressed grains (marker + deflate, sector-padded) and the
//! grain table (with a GT marker), then the grain directory, the footer and the
//! end-of-stream marker — the layout of VMware's spec for streams.
//!
//! Grains are deflated on a pool of threads (one per core by default); a reorder buffer
//! keeps the output in LBA order, and a fixed number of jobs in flight bounds memory.

use super::sparse::file_name;
use super::{
    capacity_sectors, data_grain_runs, make_descriptor, read_grains, report_progress,
    sparse_extent_line, WriteOptions, WriteReport, BATCH_GRAINS, GRAIN_BYTES, GRAIN_SECTORS,
    GTES_PER_GT, GT_COVERAGE,
};
use crate::error::{Result, VmdkError};
use crate::sparse::header::{
    COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, MARKER_EOS, MARKER_FOOTER,
    MARKER_GD, MARKER_GT,
};
use crate::sparse::{Marker, SparseHeader, GD_AT_END, SECTOR};
use flate2::{Compress, Compression, FlushCompress, Status};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use vdisk_blockdev::is_zero;
use vdisk_blockdev::BlockDevice;

/// A batch of consecutive grains to compress.
struct Job {
    seq: u64,
    first_grain: u64,
    data: Vec<u8>,
}

/// A compressed batch: the bytes to write and, per stored grain, (grain, sectors).
struct Done {
    seq: u64,
    end_grain: u64,
    bytes: Vec<u8>,
    grains: Vec<(u64, u64)>,
    zero_grains: u64,
}

/// Writes the source as a streamOptimized VMDK file at `dest`.
pub(super) fn write_stream_file(
    source: &dyn BlockDevice,
    dest: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    let dname = dest.display().to_string();
    let file = File::create(dest).map_err(|e| VmdkError::io(&dname, "create", e))?;
    let mut o = opts.clone();
    if o.extent_name.is_none() {
        o.extent_name = Some(file_name(dest));
    }
    let mut report = stream_to(source, BufWriter::with_capacity(1 << 20, &file), &o, &dname)?;
    file.sync_all()
        .map_err(|e| VmdkError::io(&dname, "sync", e))?;
    report.files = vec![dest.to_path_buf()];
    Ok(report)
}

/// Writes the source as a streamOptimized VMDK to `out` without seeking (for OVA
/// streaming) and returns the number of bytes written. `opts.subformat` is ignored.
pub fn write_stream_optimized<W: Write>(
    source: &dyn BlockDevice,
    out: W,
    opts: &WriteOptions,
) -> Result<u64> {
    Ok(stream_to(source, out, opts, "stream")?.bytes_written)
}

/// Counts bytes on their way to the output.
struct Counted<W: Write> {
    inner: W,
    bytes: u64,
    name: String,
}

impl<W: Write> Counted<W> {
    fn put(&mut self, data: &[u8], what: &str) -> Result<()> {
        self.inner.write_all(data).map_err(|e| {
            VmdkError::io(
                &self.name,
                format!("write {what} at byte {}", self.bytes),
                e,
            )
        })?;
        self.bytes += data.len() as u64;
        Ok(())
    }
    fn sector(&self) -> u64 {
        self.bytes / SECTOR
    }
}

fn stream_to<W: Write>(
    source: &dyn BlockDevice,
    out: W,
    opts: &WriteOptions,
    name: &str,
) -> Result<WriteReport> {
    let mut o = opts.clone();
    o.subformat = super::Subformat::StreamOptimized;
    let sectors = capacity_sectors(source, name)?;
    let total = sectors * SECTOR;
    let extent_name = o.extent_name.clone().unwrap_or_else(|| "disk.vmdk".into());
    let desc = make_descriptor(&o, sectors, sparse_extent_line(sectors, extent_name)).render();
    let desc_sectors = (desc.len() as u64).div_ceil(SECTOR);
    let gd_entries = sectors.div_ceil(GRAIN_SECTORS * GTES_PER_GT);
    let mut header = SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: sectors,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: desc_sectors,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: 1 + desc_sectors,
        unclean_shutdown: false,
        newline_chars: *b"\n \r\n",
        compress_algorithm: COMPRESS_DEFLATE,
    };
    let mut w = Counted {
        inner: out,
        bytes: 0,
        name: name.to_string(),
    };
    w.put(&header.encode(), "header")?;
    let mut d = desc.into_bytes();
    d.resize((desc_sectors * SECTOR) as usize, 0);
    w.put(&d, "descriptor")?;

    let threads = if o.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        o.threads
    };
    let level = o.compression_level;
    let in_flight = threads * 4;
    let mut report = WriteReport {
        virtual_size: total,
        ..Default::default()
    };
    let mut gd = vec![0u32; gd_entries as usize];
    let mut table = vec![0u32; GTES_PER_GT as usize];
    let mut cur_gt: Option<u64> = None;

    let flush_gt = |w: &mut Counted<W>, t: u64, table: &mut [u32], gd: &mut [u32]| -> Result<()> {
        w.put(
            &Marker::metadata_sector(GTES_PER_GT * 4 / SECTOR, MARKER_GT),
            "GT marker",
        )?;
        gd[t as usize] = u32::try_from(w.sector()).map_err(|_| VmdkError::Write {
            file: name.to_string(),
            detail: "stream exceeds the 2 TiB a sparse extent can address".into(),
        })?;
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        w.put(&bytes, "grain table")?;
        table.fill(0);
        Ok(())
    };

    let result: Result<()> = std::thread::scope(|s| {
        let (job_tx, job_rx) = sync_channel::<Job>(in_flight);
        let (done_tx, done_rx) = sync_channel::<Result<Done>>(in_flight);
        let (token_tx, token_rx) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            let _ = token_tx.try_send(());
        }
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            s.spawn(move || compress_worker(&rx, &tx, level));
        }
        drop(done_tx);
        let reader = s.spawn(move || -> Result<()> {
            let mut seq = 0u64;
            let mut buf = Vec::new();
            for t in 0..gd_entries {
                let start = t * GT_COVERAGE;
                let len = GT_COVERAGE.min(total - start);
                for (first, count) in data_grain_runs(source, start, len)? {
                    let mut g = first;
                    while g < first + count {
                        let n = BATCH_GRAINS.min(first + count - g);
                        read_grains(source, g, n, &mut buf)?;
                        if token_rx.recv().is_err() {
                            return Ok(()); // writer stopped
                        }
                        let job = Job {
                            seq,
                            first_grain: g,
                            data: std::mem::take(&mut buf),
                        };
                        if job_tx.send(job).is_err() {
                            return Ok(());
                        }
                        seq += 1;
                        g += n;
                    }
                }
            }
            Ok(())
        });

        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next_seq = 0u64;
        let mut outcome = Ok(());
        'recv: for done in done_rx.iter() {
            let done = match done {
                Ok(d) => d,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            pending.insert(done.seq, done);
            while let Some(done) = pending.remove(&next_seq) {
                next_seq += 1;
                let _ = token_tx.try_send(());
                let mut off = 0usize;
                for &(grain, secs) in &done.grains {
                    let t = grain / GTES_PER_GT;
                    if cur_gt != Some(t) {
                        if let Some(prev) = cur_gt {
                            if let Err(e) = flush_gt(&mut w, prev, &mut table, &mut gd) {
                                outcome = Err(e);
                                break 'recv;
                            }
                        }
                        cur_gt = Some(t);
                    }
                    let Ok(sector) = u32::try_from(w.sector()) else {
                        outcome = Err(VmdkError::Write {
                            file: name.to_string(),
                            detail: "stream exceeds the 2 TiB a sparse extent can address".into(),
                        });
                        break 'recv;
                    };
                    table[(grain % GTES_PER_GT) as usize] = sector;
                    let len = (secs * SECTOR) as usize;
                    if let Err(e) = w.put(&done.bytes[off..off + len], "grain") {
                        outcome = Err(e);
                        break 'recv;
                    }
                    off += len;
                    report.grains_written += 1;
                }
                report.zero_grains_skipped += done.zero_grains;
                report_progress(&o, done.end_grain * GRAIN_BYTES, total);
            }
        }
        // Stop the pipeline on error: dropping the receivers unblocks every sender.
        drop(done_rx);
        drop(token_tx);
        let read_result = reader.join().unwrap_or_else(|_| {
            Err(VmdkError::Write {
                file: name.to_string(),
                detail: "source reader thread panicked".into(),
            })
        });
        outcome?;
        read_result?;
        if !pending.is_empty() {
            return Err(VmdkError::Write {
                file: name.to_string(),
                detail: "compression pipeline lost a batch".into(),
            });
        }
        Ok(())
    });
    result?;
    if let Some(prev) = cur_gt {
        flush_gt(&mut w, prev, &mut table, &mut gd)?;
    }
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    w.put(&Marker::metadata_sector(gd_sectors, MARKER_GD), "GD marker")?;
    header.gd_offset = w.sector();
    let mut gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    gd_bytes.resize((gd_sectors * SECTOR) as usize, 0);
    w.put(&gd_bytes, "grain directory")?;
    w.put(&Marker::metadata_sector(1, MARKER_FOOTER), "footer marker")?;
    w.put(&header.encode(), "footer")?;
    w.put(
        &Marker::metadata_sector(0, MARKER_EOS),
        "end-of-stream marker",
    )?;
    w.inner
        .flush()
        .map_err(|e| VmdkError::io(name, "flush", e))?;
    report_progress(&o, total, total);
    report.bytes_written = w.bytes;
    Ok(report)
}

fn compress_worker(
    rx: &Mutex<Receiver<Job>>,
    tx: &std::sync::mpsc::SyncSender<Result<Done>>,
    level: u32,
) {
    let mut c = Deflaters {
        main: Compress::new(Compression::new(level), true),
        probe: Compress::new(Compression::new(1), true),
        stored: Compress::new(Compression::new(0), true),
        scratch: Vec::with_capacity(2 * PROBE_BYTES),
        level,
    };
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.recv()
        };
        let Ok(job) = job else { return };
        let r = compress_job(&mut c, &job);
        if tx.send(r).is_err() {
            return;
        }
    }
}

fn compress_job(c: &mut Deflaters, job: &Job) -> Result<Done> {
    let count = job.data.len() as u64 / GRAIN_BYTES;
    let mut done = Done {
        seq: job.seq,
        end_grain: job.first_grain + count,
        bytes: Vec::with_capacity(job.data.len() / 2 + 4096),
        grains: Vec::new(),
        zero_grains: 0,
    };
    for (i, grain) in job.data.chunks_exact(GRAIN_BYTES as usize).enumerate() {
        if is_zero(grain) {
            done.zero_grains += 1;
            continue;
        }
        let g = job.first_grain + i as u64;
        let start = done.bytes.len();
        done.bytes
            .extend_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
        done.bytes.extend_from_slice(&[0u8; 4]);
        c.deflate_grain(grain, &mut done.bytes)
            .map_err(|detail| VmdkError::Write {
                file: "stream".into(),
                detail: format!("deflate of grain {g} failed: {detail}"),
            })?;
        let size = (done.bytes.len() - start - 12) as u32;
        done.bytes[start + 8..start + 12].copy_from_slice(&size.to_le_bytes());
        let padded = (done.bytes.len() - start).div_ceil(SECTOR as usize) * SECTOR as usize;
        done.bytes.resize(start + padded, 0);
        done.grains.push((g, padded as u64 / SECTOR));
    }
    Ok(done)
}

/// Bytes of a grain test-compressed to detect incompressible data.
const PROBE_BYTES: usize = 4096;

/// A worker's deflate streams.
struct Deflaters {
    main: Compress,
    probe: Compress,
    stored: Compress,
    scratch: Vec<u8>,
    level: u32,
}

impl Deflaters {
    /// Deflates one grain. Incompressible grains (random or already compressed data: the
    /// first 4 KiB do not shrink at level 1) are written as stored deflate blocks, which
    /// costs a copy instead of a futile search and is smaller than a failed compression.
    fn deflate_grain(
        &mut self,
        grain: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        if self.level > 0 && grain.len() > PROBE_BYTES {
            self.scratch.clear();
            deflate_into(&mut self.probe, &grain[..PROBE_BYTES], &mut self.scratch)?;
            if self.scratch.len() >= PROBE_BYTES - PROBE_BYTES / 64 {
                return deflate_into(&mut self.stored, grain, out);
            }
        }
        deflate_into(&mut self.main, grain, out)
    }
}

/// Deflates `data` (zlib framing) and appends it to `out`.
fn deflate_into(
    c: &mut Compress,
    data: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    c.reset();
    loop {
        out.reserve(data.len() / 8 + 1024);
        let consumed = usize::try_from(c.total_in()).map_err(|e| e.to_string())?;
        let rest = data.get(consumed..).unwrap_or_default();
        match c
            .compress_vec(rest, out, FlushCompress::Finish)
            .map_err(|e| e.to_string())?
        {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError => {}
        }
    }
}
