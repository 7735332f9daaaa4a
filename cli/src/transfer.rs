//! Parallel block copy for `convert` and `ovf import`: worker threads read chunks (the
//! expensive side when the source inflates compressed grains), the calling thread writes them
//! as they arrive, in any order. Memory is bounded: at most `2 × threads` chunks in flight.

use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

/// Default chunk size of a copy: large enough to amortise per-call costs, small enough to
/// keep a few in flight per thread.
pub const CHUNK: u64 = 2 << 20;

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

/// Threads used for reading: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Copies every chunk: `read` fills a buffer from the source (called on `threads` worker
/// threads), `write` stores it (called on this thread, chunks in completion order), and
/// `progress` gets the byte count of each chunk written. Stops at the first error of either
/// side and returns it; chunks already written stay written.
pub fn par_copy(
    chunks: &[(u64, u64)],
    threads: usize,
    read: &(dyn Fn(&mut [u8], u64) -> Result<()> + Sync),
    mut write: impl FnMut(&[u8], u64) -> Result<()>,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let threads = threads.clamp(1, chunks.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let (tx, rx) = sync_channel::<(usize, Result<Vec<u8>>)>(threads * 2);
    std::thread::scope(|s| -> Result<()> {
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
                let r = usize::try_from(len)
                    .map_err(|_| anyhow!("chunk of {len} bytes does not fit in memory"))
                    .and_then(|n| {
                        buf.resize(n, 0);
                        read(&mut buf, off)
                    })
                    .map(|()| buf);
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

/// Granularity of zero detection inside a chunk: what a sparse file or a bundle can skip.
pub const ZERO_BLOCK: usize = 64 << 10;

/// Calls `f(bytes, offset)` for each maximal run of `ZERO_BLOCK`-sized blocks of `buf` (at
/// guest offset `off`) that are not all zeros, so that zero blocks inside a data chunk stay
/// holes.
pub fn nonzero_runs(
    buf: &[u8],
    off: u64,
    mut f: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut start: Option<usize> = None;
    let mut pos = 0usize;
    for block in buf.chunks(ZERO_BLOCK) {
        let zero = vdisk_engine::is_zero(block);
        match (zero, start) {
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

    #[test]
    fn nonzero_runs_skip_zero_blocks() {
        let mut buf = vec![0u8; ZERO_BLOCK * 5 + 100];
        buf[ZERO_BLOCK + 7] = 1;
        buf[ZERO_BLOCK * 2 + 9] = 1;
        buf[ZERO_BLOCK * 5 + 99] = 1;
        let mut got = Vec::new();
        nonzero_runs(&buf, 1000, |b, o| {
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
        nonzero_runs(&[0u8; 10], 0, |b, o| {
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
    fn copies_everything_once() {
        let chunks = split(&[(0, 1000), (5000, 333)], 100);
        let mut seen = BTreeMap::new();
        let mut total = 0;
        par_copy(
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
    fn read_error_stops() {
        let chunks = split(&[(0, 10_000)], 10);
        let err = par_copy(
            &chunks,
            2,
            &|_, off| {
                if off == 500 {
                    Err(anyhow!("bad at 500"))
                } else {
                    Ok(())
                }
            },
            |_, _| Ok(()),
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("bad at 500"));
    }

    #[test]
    fn write_error_stops() {
        let chunks = split(&[(0, 10_000)], 10);
        let mut writes = 0;
        let err = par_copy(
            &chunks,
            2,
            &|_, _| Ok(()),
            |_, _| {
                writes += 1;
                if writes == 3 {
                    Err(anyhow!("disk full"))
                } else {
                    Ok(())
                }
            },
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(writes, 3);
    }
}
