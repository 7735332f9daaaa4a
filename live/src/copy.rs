//! The parallel, sparse-aware copy between two block devices that `convert`, `ovf import`
//! and the VMDK-chain import share.
//!
//! Worker threads read chunks (the expensive side when the source inflates compressed
//! grains or verifies checksums), the calling thread writes them as they arrive, in any
//! order. Memory is bounded: at most `2 × threads` chunks in flight. Only the source's data
//! extents are read; all-zero blocks inside them stay holes (or, above a parent, become zero
//! writes that hide it).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use vdisk_blockdev::{is_zero, BlockDevice, ExtentKind};

/// Default chunk size of a copy: large enough to amortise per-call costs, small enough to
/// keep a few in flight per thread.
pub const CHUNK: u64 = 2 << 20;

/// Granularity of zero detection inside a chunk: what a sparse file or a bundle can skip.
pub const ZERO_BLOCK: usize = 64 << 10;

/// What a failed copy was doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The source's allocation map could not be read.
    #[error("reading the allocation map of the source")]
    Map(#[source] io::Error),
    /// A read of the source failed.
    #[error("reading {len} bytes at offset {offset} of the source")]
    Read {
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// A write (or zeroing) of the destination failed.
    #[error("writing {len} bytes at offset {offset} of the destination")]
    Write {
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// The destination is smaller than a range to copy.
    #[error("the destination ({dst} bytes) is smaller than the source ({src} bytes)")]
    Size { src: u64, dst: u64 },
}

/// How zeros of the source reach the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// The destination reads zeros where nothing is written (a fresh file or bundle):
    /// zero blocks and zero extents are skipped.
    Skip,
    /// The destination has content below (a new snapshot layer over a parent): zero
    /// blocks and zero extents become `write_zeroes`, which hide what lies below.
    Hide,
}

/// Settings of a copy.
pub struct CopyOptions<'a> {
    /// Reader threads (one per core by default).
    pub threads: usize,
    /// Largest chunk read at once.
    pub chunk: u64,
    /// What to do with zeros.
    pub zeros: Zeros,
    /// Called on the writing thread with the bytes of each chunk done.
    pub progress: Option<&'a dyn Fn(u64)>,
}

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        CopyOptions {
            threads: default_threads(),
            chunk: CHUNK,
            zeros: Zeros::Skip,
            progress: None,
        }
    }
}

/// Threads used for reading: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `(offset, length)` byte ranges.
pub type Ranges = Vec<(u64, u64)>;

/// What a copy of a device does: the ranges it reads (the source's data extents) and the
/// ranges it zeroes (its zero extents, with [`Zeros::Hide`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ranges to read and write.
    pub data: Ranges,
    /// Ranges to zero.
    pub zero: Ranges,
}

/// The [`Plan`] of copying `src`.
pub fn plan(src: &dyn BlockDevice, zeros: Zeros) -> Result<Plan, CopyError> {
    let mut p = Plan::default();
    for e in src.extents(0, src.size()).map_err(CopyError::Map)? {
        match e.kind {
            ExtentKind::Data => p.data.push((e.offset, e.length)),
            ExtentKind::Zero if zeros == Zeros::Hide => p.zero.push((e.offset, e.length)),
            _ => {}
        }
    }
    Ok(p)
}

/// Bytes a [`copy`] of `src` reads: the total of its data extents (for a progress bar).
pub fn data_bytes(src: &dyn BlockDevice) -> Result<u64, CopyError> {
    Ok(plan(src, Zeros::Skip)?.data.iter().map(|r| r.1).sum())
}

/// Copies every byte of `src` that can differ from zeros into `dst` (at the same offsets).
/// Returns the bytes read. `dst` is not flushed.
pub fn copy(
    src: &dyn BlockDevice,
    dst: &dyn BlockDevice,
    opts: &CopyOptions,
) -> Result<u64, CopyError> {
    if dst.size() < src.size() {
        return Err(CopyError::Size {
            src: src.size(),
            dst: dst.size(),
        });
    }
    let Plan { data, zero } = plan(src, opts.zeros)?;
    for (offset, len) in zero {
        dst.write_zeroes(offset, len)
            .map_err(|source| CopyError::Write {
                offset,
                len,
                source,
            })?;
    }
    copy_ranges(src, dst, &data, opts)
}

/// Copies the `data` ranges of `src` into `dst`; zero blocks inside them are skipped or
/// written as zeros according to `opts.zeros`. Returns the bytes read.
pub fn copy_ranges(
    src: &dyn BlockDevice,
    dst: &dyn BlockDevice,
    data: &[(u64, u64)],
    opts: &CopyOptions,
) -> Result<u64, CopyError> {
    let chunks = split(data, opts.chunk);
    let mut bytes = 0u64;
    par_copy(
        &chunks,
        opts.threads,
        &|buf: &mut [u8], offset| {
            src.read_at(buf, offset).map_err(|source| CopyError::Read {
                offset,
                len: buf.len() as u64,
                source,
            })
        },
        |buf, offset| {
            write_chunk(dst, buf, offset, opts.zeros).map_err(|(offset, len, source)| {
                CopyError::Write {
                    offset,
                    len,
                    source,
                }
            })
        },
        |n| {
            bytes += n;
            if let Some(p) = opts.progress {
                p(n);
            }
        },
    )?;
    Ok(bytes)
}

type WriteFailure = (u64, u64, io::Error);

fn write_chunk(
    dst: &dyn BlockDevice,
    buf: &[u8],
    offset: u64,
    zeros: Zeros,
) -> Result<(), WriteFailure> {
    let fail = |o: u64, l: usize| move |e| (o, l as u64, e);
    match zeros {
        Zeros::Skip => nonzero_runs(buf, offset, |b, o| {
            dst.write_at(b, o).map_err(fail(o, b.len()))
        }),
        Zeros::Hide => {
            if is_zero(buf) {
                dst.write_zeroes(offset, buf.len() as u64)
                    .map_err(fail(offset, buf.len()))
            } else {
                dst.write_at(buf, offset).map_err(fail(offset, buf.len()))
            }
        }
    }
}

/// Splits `(offset, length)` ranges into pieces of at most `max` bytes, aligned to `max` so
/// pieces of neighbouring ranges never straddle the same chunk boundary twice.
pub fn split(ranges: &[(u64, u64)], max: u64) -> Vec<(u64, u64)> {
    let max = max.max(1);
    let mut out = Vec::new();
    for &(off, len) in ranges {
        let end = off.saturating_add(len);
        let mut pos = off;
        while pos < end {
            let boundary = (pos / max).saturating_add(1).saturating_mul(max);
            let n = boundary.min(end) - pos;
            out.push((pos, n));
            pos += n;
        }
    }
    out
}

/// Fills a chunk buffer from `offset` (called on reader threads).
pub type ReadChunk<'a, E> = dyn Fn(&mut [u8], u64) -> Result<(), E> + Sync + 'a;

/// Copies every chunk: `read` fills a buffer (called on `threads` worker threads), `write`
/// stores it (called on this thread, chunks in completion order), and `progress` gets the
/// byte count of each chunk written. Stops at the first error of either side and returns
/// it; chunks already written stay written.
pub fn par_copy<E: Send>(
    chunks: &[(u64, u64)],
    threads: usize,
    read: &ReadChunk<'_, E>,
    mut write: impl FnMut(&[u8], u64) -> Result<(), E>,
    mut progress: impl FnMut(u64),
) -> Result<(), E> {
    if chunks.is_empty() {
        return Ok(());
    }
    let threads = threads.clamp(1, chunks.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let (tx, rx) = sync_channel::<(usize, Result<Vec<u8>, E>)>(threads * 2);
    std::thread::scope(|s| -> Result<(), E> {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop, pool) = (&next, &stop, &pool);
            s.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(off, len)) = chunks.get(i) else {
                    return;
                };
                let mut buf = pool
                    .lock()
                    .ok()
                    .and_then(|mut p| p.pop())
                    .unwrap_or_default();
                // Chunks come from `split` with a bounded maximum, so the length fits.
                buf.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
                let r = read(&mut buf, off).map(|()| buf);
                if tx.send((i, r)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut result = Ok(());
        for (i, r) in rx.iter() {
            let step = r.and_then(|buf| {
                let (off, len) = chunks[i];
                write(&buf, off)?;
                progress(len);
                if let Ok(mut p) = pool.lock() {
                    p.push(buf);
                }
                Ok(())
            });
            if let Err(e) = step {
                result = Err(e);
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        // Dropping the receiver (end of scope) makes blocked senders fail and return.
        drop(rx);
        result
    })
}

/// Calls `f(bytes, offset)` for each maximal run of [`ZERO_BLOCK`]-sized blocks of `buf`
/// (at guest offset `off`) that are not all zeros, so that zero blocks inside a data chunk
/// stay holes.
pub fn nonzero_runs<E>(
    buf: &[u8],
    off: u64,
    mut f: impl FnMut(&[u8], u64) -> Result<(), E>,
) -> Result<(), E> {
    let mut start: Option<usize> = None;
    let mut pos = 0usize;
    for block in buf.chunks(ZERO_BLOCK) {
        match (is_zero(block), start) {
            (false, None) => start = Some(pos),
            (true, Some(s)) => {
                f(&buf[s..pos], off + s as u64)?;
                start = None;
            }
            _ => {}
        }
        pos += block.len();
    }
    if let Some(s) = start {
        f(&buf[s..], off + s as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vdisk_blockdev::MemDevice;

    #[test]
    fn nonzero_runs_skip_zero_blocks() {
        let mut buf = vec![0u8; ZERO_BLOCK * 5 + 100];
        buf[ZERO_BLOCK + 7] = 1;
        buf[ZERO_BLOCK * 2 + 9] = 1;
        buf[ZERO_BLOCK * 5 + 99] = 1;
        let mut got = Vec::new();
        nonzero_runs::<()>(&buf, 1000, |b, o| {
            got.push((o, b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            vec![
                (1000 + ZERO_BLOCK as u64, 2 * ZERO_BLOCK),
                (1000 + 5 * ZERO_BLOCK as u64, 100)
            ]
        );
        got.clear();
        nonzero_runs::<()>(&[0u8; 10], 0, |b, o| {
            got.push((o, b.len()));
            Ok(())
        })
        .unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn split_aligns_and_covers() {
        let v = split(&[(10, 100), (200, 5)], 64);
        assert_eq!(v, vec![(10, 54), (64, 46), (200, 5)]);
        assert!(split(&[], 64).is_empty());
    }

    #[test]
    fn par_copy_copies_everything_once() {
        let chunks = split(&[(0, 1000), (5000, 333)], 100);
        let mut seen = BTreeMap::new();
        let mut total = 0;
        par_copy::<()>(
            &chunks,
            3,
            &|b, off| {
                for (i, x) in b.iter_mut().enumerate() {
                    *x = ((off + i as u64) % 251) as u8;
                }
                Ok(())
            },
            |b, off| {
                assert!(seen.insert(off, b.to_vec()).is_none());
                Ok(())
            },
            |n| total += n,
        )
        .unwrap();
        assert_eq!(total, 1333);
        assert_eq!(seen.len(), chunks.len());
        for (off, b) in seen {
            assert_eq!(b[0], (off % 251) as u8);
        }
    }

    #[test]
    fn errors_stop_the_copy() {
        let chunks = split(&[(0, 10_000)], 10);
        let err = par_copy(
            &chunks,
            2,
            &|_, off| {
                if off == 500 {
                    Err("bad at 500")
                } else {
                    Ok(())
                }
            },
            |_, _| Ok(()),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(err, "bad at 500");
        let mut writes = 0;
        let err = par_copy(
            &chunks,
            2,
            &|_, _| Ok(()),
            |_, _| {
                writes += 1;
                if writes == 3 {
                    Err("disk full")
                } else {
                    Ok(())
                }
            },
            |_| {},
        )
        .unwrap_err();
        assert_eq!(err, "disk full");
        assert_eq!(writes, 3);
    }

    #[test]
    fn device_copy_is_sparse_and_exact() {
        let src = MemDevice::new(8 << 20);
        src.write_at(&[5u8; 100_000], 3 << 20).unwrap();
        src.write_at(&vec![0u8; 1 << 20], 5 << 20).unwrap(); // stored zeros
        src.write_at(&[7u8; 10], (8 << 20) - 10).unwrap();
        let dst = MemDevice::new(8 << 20);
        let seen = std::cell::Cell::new(0u64);
        let progress = |n| seen.set(seen.get() + n);
        let opts = CopyOptions {
            chunk: 1 << 20,
            progress: Some(&progress),
            ..CopyOptions::default()
        };
        let n = copy(&src, &dst, &opts).unwrap();
        assert_eq!(n, data_bytes(&src).unwrap());
        assert_eq!(seen.get(), n);
        let (mut a, mut b) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
        src.read_at(&mut a, 0).unwrap();
        dst.read_at(&mut b, 0).unwrap();
        assert!(a == b);
        // The stored zeros were not written: only the non-zero pages are allocated.
        assert_eq!(dst.allocated_pages(), 100_000usize.div_ceil(4096) + 1);
        let small = MemDevice::new(1 << 20);
        assert!(matches!(
            copy(&src, &small, &opts),
            Err(CopyError::Size { .. })
        ));
    }

    #[test]
    fn hide_writes_zeros_over_a_parent() {
        let src = MemDevice::new(1 << 20);
        src.write_at(&vec![0u8; 65536], 0).unwrap();
        src.write_at(&[1u8; 4096], 65536).unwrap();
        let dst = MemDevice::new(1 << 20);
        dst.fill(&[9u8; 131072], 0).unwrap();
        let opts = CopyOptions {
            zeros: Zeros::Hide,
            ..CopyOptions::default()
        };
        copy(&src, &dst, &opts).unwrap();
        let mut b = vec![0u8; 131072];
        dst.read_at(&mut b, 0).unwrap();
        assert!(is_zero(&b[..65536]));
        assert_eq!(b[65536], 1);
        assert_eq!(
            b[65536 + 4096],
            9,
            "what the source leaves unallocated stays"
        );
    }
}
