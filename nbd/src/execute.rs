//! Executes one checked request against its export and encodes the whole reply.
//!
//! Every reply is built in memory before anything is sent, so a backend error found halfway
//! through a READ still yields a well-formed reply (a single error chunk, or a simple reply
//! with the error and no payload).

use std::io;

use crate::export::{block_status, BlockFlags, Status};
use crate::proto::{cmd_flags, reply, BASE_ALLOCATION_ID};
use crate::reply::{chunk_header, done_chunk, error_chunk, hole_chunk, simple_reply};
use crate::request::{Command, Errno, Request};
use vdisk_blockdev::Export;

/// Zero extents shorter than this are sent as data in READ replies: a hole chunk costs 32
/// bytes and a client-side memset, not worth it for a few sectors.
pub const MIN_HOLE_CHUNK: u64 = 4096;

/// Most chunks one READ reply is split into; beyond it the rest is sent as one data chunk.
pub const MAX_READ_CHUNKS: usize = 256;

/// Most descriptors in one BLOCK_STATUS reply (64 KiB of payload); the client asks again
/// for the rest.
pub const MAX_STATUS_EXTENTS: usize = 8192;

/// How replies must be framed on this connection.
#[derive(Debug, Clone, Copy)]
pub struct ReplyMode {
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Split READ replies along the export's zero extents.
    pub sparse_reads: bool,
}

/// Appends the error reply for `req`.
pub fn error_reply(out: &mut Vec<u8>, mode: ReplyMode, req: &Request, errno: Errno, message: &str) {
    if mode.structured {
        error_chunk(out, req.handle, errno, message);
    } else {
        simple_reply(out, errno.code(), req.handle);
    }
}

/// Runs `req` (already accepted by [`check_request`](crate::request::check_request)) and
/// returns the encoded reply. `payload` is the WRITE data. `flush_barrier` is called before
/// a FLUSH touches the export, to wait for earlier writes of the connection.
pub fn execute(
    export: &dyn Export,
    mode: ReplyMode,
    req: &Request,
    payload: &[u8],
    flush_barrier: &dyn Fn(),
) -> Vec<u8> {
    let offset = req.offset;
    let len = u64::from(req.length);
    let fua = req.has_flag(cmd_flags::FUA);
    let done = |result: io::Result<()>, what: &str| {
        let mut out = Vec::with_capacity(64);
        match result {
            Ok(()) => simple_reply(&mut out, 0, req.handle),
            Err(err) => {
                let msg = format!("{what} at offset {offset} length {len}: {err}");
                log::debug!("{msg}");
                error_reply(&mut out, mode, req, Errno::from_io(&err), &msg);
            }
        }
        out
    };
    match req.command {
        Command::Read => read_reply(export, mode, req),
        Command::Write => done(
            if payload.is_empty() {
                Ok(())
            } else {
                if fua {
                    export.write_at_fua(payload, offset)
                } else {
                    export.write_at(payload, offset)
                }
            },
            "write",
        ),
        Command::Flush => {
            flush_barrier();
            done(export.flush(), "flush")
        }
        Command::Trim => done(
            if len == 0 {
                Ok(())
            } else {
                export
                    .discard(offset, len)
                    .and_then(|()| if fua { export.flush() } else { Ok(()) })
            },
            "trim",
        ),
        Command::WriteZeroes => {
            if req.has_flag(cmd_flags::FAST_ZERO) && !export.fast_zero() {
                let mut out = Vec::new();
                error_reply(
                    &mut out,
                    mode,
                    req,
                    Errno::NotSup,
                    "zeroing is not faster than writing",
                );
                return out;
            }
            done(
                if len == 0 {
                    Ok(())
                } else if req.has_flag(cmd_flags::NO_HOLE) {
                    export.write_zeroes_allocated(offset, len).and_then(|()| {
                        if fua {
                            export.flush()
                        } else {
                            Ok(())
                        }
                    })
                } else if fua {
                    export.write_zeroes_fua(offset, len)
                } else {
                    export.write_zeroes(offset, len)
                },
                "write zeroes",
            )
        }
        Command::BlockStatus => block_status_reply(export, mode, req),
        Command::Disconnect | Command::Cache | Command::Unknown(_) => {
            // Refused by check_request; answer defensively rather than panic.
            let mut out = Vec::new();
            error_reply(&mut out, mode, req, Errno::Inval, "unsupported command");
            out
        }
    }
}

/// Cleans a backend's extent list for the range `[0, len)`: drops empty extents, cuts the
/// list at `len`, merges neighbours with equal flags and keeps at most `max` extents. The
/// result may cover less than `len` (when the backend said less, or `max` was reached).
pub fn normalize_extents(raw: &[Status], len: u64, max: usize) -> Vec<Status> {
    let mut out: Vec<Status> = Vec::new();
    let mut covered = 0u64;
    for &(ext_len, flags) in raw {
        if covered >= len {
            break;
        }
        let ext_len = ext_len.min(len - covered);
        if ext_len == 0 {
            continue;
        }
        let flags = BlockFlags::from_bits_truncate(flags.bits());
        let full = out.len() >= max;
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += ext_len,
            _ if full => break,
            _ => out.push((ext_len, flags)),
        }
        covered += ext_len;
    }
    out
}

/// One piece of a READ reply: `(offset, length, reads_as_zero)`.
type Segment = (u64, u64, bool);

/// Splits a read of `len` bytes at `offset` into data and zero segments covering it exactly.
fn read_segments(extents: &[Status], offset: u64, len: u64) -> Vec<Segment> {
    let mut segs: Vec<Segment> = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    for &(ext_len, flags) in extents {
        let zero = flags.contains(BlockFlags::ZERO) && ext_len >= MIN_HOLE_CHUNK;
        push_segment(&mut segs, pos, ext_len, zero);
        pos += ext_len;
    }
    if pos < end {
        push_segment(&mut segs, pos, end - pos, false);
    }
    if segs.len() > MAX_READ_CHUNKS {
        // Keep the first chunks, send everything after them as data.
        let rest_start = segs[MAX_READ_CHUNKS - 1].0;
        segs.truncate(MAX_READ_CHUNKS - 1);
        segs.push((rest_start, end - rest_start, false));
    }
    segs
}

fn push_segment(segs: &mut Vec<Segment>, offset: u64, len: u64, zero: bool) {
    match segs.last_mut() {
        Some(last) if last.2 == zero => last.1 += len,
        _ => segs.push((offset, len, zero)),
    }
}

fn read_reply(export: &dyn Export, mode: ReplyMode, req: &Request) -> Vec<u8> {
    let offset = req.offset;
    let len = u64::from(req.length);
    let fail = |err: io::Error| {
        let msg = format!("read at offset {offset} length {len}: {err}");
        log::debug!("{msg}");
        let mut out = Vec::with_capacity(64);
        error_reply(&mut out, mode, req, Errno::from_io(&err), &msg);
        out
    };
    // Lengths are bounded by max_request_bytes (checked), so usize conversions are exact.
    let data_len = usize::try_from(len).unwrap_or(0);

    if !mode.structured {
        let mut out = Vec::with_capacity(16 + data_len);
        simple_reply(&mut out, 0, req.handle);
        out.resize(16 + data_len, 0);
        return match export.read_at(&mut out[16..], offset) {
            Ok(()) => out,
            Err(err) => fail(err),
        };
    }
    if len == 0 {
        let mut out = Vec::with_capacity(20);
        done_chunk(&mut out, req.handle);
        return out;
    }

    let extents = if mode.sparse_reads && !req.has_flag(cmd_flags::DF) {
        // Block status is only a hint here: on error, read everything.
        export
            .extents(offset, len)
            .map(|raw| normalize_extents(&block_status(&raw), len, MAX_READ_CHUNKS))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let segments = read_segments(&extents, offset, len);
    let data_bytes: u64 = segments.iter().filter(|s| !s.2).map(|s| s.1).sum();
    let capacity = usize::try_from(data_bytes).unwrap_or(data_len) + 28 * segments.len();
    let mut out = Vec::with_capacity(capacity);
    let count = segments.len();
    for (i, &(seg_off, seg_len, zero)) in segments.iter().enumerate() {
        let flags = if i + 1 == count { reply::FLAG_DONE } else { 0 };
        // seg_len <= len <= max_request_bytes (< 4 GiB - 8), so these fit.
        let seg_len32 = u32::try_from(seg_len).unwrap_or(u32::MAX);
        if zero {
            hole_chunk(&mut out, flags, req.handle, seg_off, seg_len32);
            continue;
        }
        chunk_header(
            &mut out,
            flags,
            reply::TYPE_OFFSET_DATA,
            req.handle,
            seg_len32.saturating_add(8),
        );
        out.extend_from_slice(&seg_off.to_be_bytes());
        let start = out.len();
        out.resize(start + usize::try_from(seg_len).unwrap_or(0), 0);
        if let Err(err) = export.read_at(&mut out[start..], seg_off) {
            return fail(err);
        }
    }
    out
}

fn block_status_reply(export: &dyn Export, mode: ReplyMode, req: &Request) -> Vec<u8> {
    let len = u64::from(req.length);
    let raw = match export.extents(req.offset, len) {
        Ok(raw) => block_status(&raw),
        Err(err) => {
            let msg = format!("block status at offset {} length {len}: {err}", req.offset);
            let mut out = Vec::with_capacity(64);
            error_reply(&mut out, mode, req, Errno::from_io(&err), &msg);
            return out;
        }
    };
    let max = if req.has_flag(cmd_flags::REQ_ONE) {
        1
    } else {
        MAX_STATUS_EXTENTS
    };
    let mut extents = normalize_extents(&raw, len, max);
    if extents.is_empty() {
        extents.push((len, BlockFlags::DATA));
    }
    // At most MAX_STATUS_EXTENTS descriptors: the payload length fits easily.
    let payload = 4 + 8 * extents.len();
    let mut out = Vec::with_capacity(20 + payload);
    chunk_header(
        &mut out,
        reply::FLAG_DONE,
        reply::TYPE_BLOCK_STATUS,
        req.handle,
        u32::try_from(payload).unwrap_or(u32::MAX),
    );
    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (ext_len, flags) in extents {
        // Each extent is at most the request length, a u32.
        out.extend_from_slice(&u32::try_from(ext_len).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&flags.bits().to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: BlockFlags = BlockFlags::DATA;
    const Z: BlockFlags = BlockFlags::ZERO;

    #[test]
    fn normalize_merges_clamps_and_caps() {
        let raw = [(0, D), (10, D), (5, D), (20, Z), (100, D)];
        assert_eq!(
            normalize_extents(&raw, 40, 10),
            vec![(15, D), (20, Z), (5, D)]
        );
        assert_eq!(normalize_extents(&raw, 40, 1), vec![(15, D)]);
        assert_eq!(normalize_extents(&[], 40, 10), vec![]);
    }

    #[test]
    fn segments_cover_the_read_and_skip_small_holes() {
        let ext = [(8192, Z), (512, Z), (100, D)];
        let segs = read_segments(&ext, 1000, 10_000);
        assert_eq!(segs, vec![(1000, 8192, true), (9192, 1808, false)]);
    }

    proptest! {
        #[test]
        fn normalized_extents_never_exceed_the_request(
            raw in proptest::collection::vec((0u64..10_000, 0u32..4), 0..50),
            len in 1u64..100_000,
            max in 1usize..20,
        ) {
            let raw: Vec<Status> = raw.into_iter().map(|(l, f)| (l, BlockFlags::from_bits_truncate(f))).collect();
            let out = normalize_extents(&raw, len, max);
            prop_assert!(out.len() <= max);
            prop_assert!(out.iter().map(|e| e.0).sum::<u64>() <= len);
            prop_assert!(out.iter().all(|e| e.0 > 0));
            prop_assert!(out.windows(2).all(|w| w[0].1 != w[1].1));
        }

        #[test]
        fn read_segments_tile_the_range(
            raw in proptest::collection::vec((1u64..20_000, 0u32..4), 0..400),
            offset in 0u64..1 << 40,
            len in 1u64..1 << 22,
        ) {
            let raw: Vec<Status> = raw.into_iter().map(|(l, f)| (l, BlockFlags::from_bits_truncate(f))).collect();
            let ext = normalize_extents(&raw, len, MAX_READ_CHUNKS);
            let segs = read_segments(&ext, offset, len);
            prop_assert!(segs.len() <= MAX_READ_CHUNKS);
            let mut pos = offset;
            for &(o, l, _) in &segs {
                prop_assert_eq!(o, pos);
                prop_assert!(l > 0);
                pos += l;
            }
            prop_assert_eq!(pos, offset + len);
        }
    }
}
