//! The transmission phase of one connection: a reader, a small worker pool, one reply writer.
//!
//! # Ordering guarantees
//!
//! - Requests are read in order by one thread and handed to `workers` threads in FIFO order;
//!   they execute concurrently and may complete and be answered in any order (the spec allows
//!   it; clients match replies by handle). Two in-flight requests on overlapping ranges have
//!   no defined order, exactly as on a real disk queue.
//! - A request whose reply the client has received is visible to every later request, on this
//!   connection and on others sharing the export.
//! - `FLUSH` is a barrier for the writes of its connection: it waits until every WRITE, TRIM
//!   and WRITE_ZEROES received *before* it on this connection has completed, then calls
//!   [`Export::flush`](crate::Export::flush), and replies only once that returned. That covers
//!   what the spec requires (writes already answered) and also writes still in flight.
//! - `FUA` requests are answered only after the export made their data durable.
//! - Replies are written whole by one writer at a time; chunks of a structured reply are
//!   never interleaved with another reply.
//! - On `NBD_CMD_DISC`, a read error or a server shutdown, no new request is read; requests
//!   already read are finished and answered before the connection closes.
//!
//! # Resource bounds
//!
//! The payload of a WRITE and the buffer of a READ are allocated only after reserving their
//! length from a per-connection budget (`max_inflight_bytes`), so one connection never holds
//! more than that in request data, whatever the client sends. A WRITE longer than
//! `max_request_bytes` ends the connection (the spec allows a hard disconnect for such a
//! payload); other out-of-limit requests get an error reply.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use crate::execute::{error_reply, execute, ReplyMode};
use crate::handshake::Negotiated;
use crate::proto::REQUEST_HEADER_LEN;
use crate::request::{
    check_request, parse_request, Command, ProtocolError, Request, RequestLimits,
};

/// Settings of the transmission phase taken from the server configuration.
#[derive(Debug, Clone, Copy)]
pub struct TransmissionConfig {
    /// Worker threads of the connection.
    pub workers: usize,
    /// Largest READ/WRITE accepted.
    pub max_request_bytes: u32,
    /// Request data one connection may hold at once (at least `max_request_bytes`).
    pub max_inflight_bytes: u64,
    /// Split READ replies along zero extents.
    pub sparse_reads: bool,
}

/// Requests read ahead of the workers, per worker. Bounds the queue of data-less requests
/// (data-carrying ones are bounded by the byte budget).
const QUEUE_PER_WORKER: usize = 16;

/// Why a connection's transmission phase ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The stream ended between two requests (client hang-up, or server shutdown).
    Closed,
}

/// Why a connection's transmission phase was cut off.
#[derive(Debug, thiserror::Error)]
pub enum TransmissionError {
    /// Reading a request failed (including a disconnect in the middle of one).
    #[error("NBD transmission: i/o error while {step}")]
    Io {
        /// What the server was doing.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A request header with a bad magic.
    #[error("NBD transmission: bad request")]
    Protocol(#[from] ProtocolError),
    /// A WRITE announcing more payload than allowed.
    #[error("NBD transmission: WRITE of {length} bytes at offset {offset} exceeds the {max}-byte request limit")]
    PayloadTooLarge {
        /// Announced payload length.
        length: u32,
        /// Offset of the write.
        offset: u64,
        /// The limit.
        max: u32,
    },
    /// Sending a reply failed (the client stopped reading or went away).
    #[error("NBD transmission: sending a reply failed")]
    Reply(#[source] io::Error),
}

/// A request handed to a worker.
struct Job {
    seq: u64,
    req: Request,
    payload: Vec<u8>,
    budget: u64,
}

/// State shared by the reader and the workers of one connection.
struct Shared<'a, W> {
    negotiated: &'a Negotiated,
    mode: ReplyMode,
    writer: Mutex<W>,
    /// First reply error; once set, the reader stops and workers drop their replies.
    reply_error: Mutex<Option<io::Error>>,
    failed: AtomicBool,
    budget: Budget,
    writes: WriteTracker,
    /// Called once when a reply cannot be sent, to unblock the reader (shuts the socket).
    abort: &'a (dyn Fn() + Sync),
}

impl<W: Write> Shared<'_, W> {
    fn send(&self, bytes: &[u8]) {
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        let result = {
            let mut writer = lock(&self.writer);
            writer.write_all(bytes).and_then(|()| writer.flush())
        };
        if let Err(err) = result {
            if !self.failed.swap(true, Ordering::AcqRel) {
                *lock(&self.reply_error) = Some(err);
                (self.abort)();
            }
        }
    }
}

/// Serves requests from `reader` until the client disconnects, the stream ends or a fatal
/// error; replies go to `writer`. `abort` must make a blocked read on `reader` return (e.g.
/// shut the socket down); it is called if a reply cannot be sent.
pub fn serve_requests<R: Read, W: Write + Send>(
    reader: &mut R,
    writer: W,
    negotiated: &Negotiated,
    config: TransmissionConfig,
    abort: &(dyn Fn() + Sync),
) -> Result<EndReason, TransmissionError> {
    let workers = config.workers.max(1);
    let shared = Shared {
        negotiated,
        mode: ReplyMode {
            structured: negotiated.structured,
            sparse_reads: config.sparse_reads,
        },
        writer: Mutex::new(writer),
        reply_error: Mutex::new(None),
        failed: AtomicBool::new(false),
        budget: Budget::new(
            config
                .max_inflight_bytes
                .max(u64::from(config.max_request_bytes)),
        ),
        writes: WriteTracker::default(),
        abort,
    };
    let limits = RequestLimits {
        export_size: negotiated.size,
        read_only: negotiated.export.read_only(),
        structured: negotiated.structured,
        block_status: negotiated.block_status,
        max_request_bytes: config.max_request_bytes,
    };
    let (tx, rx) = sync_channel::<Job>(workers * QUEUE_PER_WORKER);
    let rx = Mutex::new(rx);
    let result = thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| worker(&rx, &shared));
        }
        let result = read_requests(reader, &shared, &tx, &limits);
        // Closing the queue lets the workers finish what was read, then exit.
        drop(tx);
        result
    });
    if let Some(err) = lock(&shared.reply_error).take() {
        return Err(TransmissionError::Reply(err));
    }
    result
}

fn read_requests<R: Read, W: Write>(
    reader: &mut R,
    shared: &Shared<'_, W>,
    queue: &SyncSender<Job>,
    limits: &RequestLimits,
) -> Result<EndReason, TransmissionError> {
    let mut seq = 0u64;
    loop {
        if shared.failed.load(Ordering::Acquire) {
            return Ok(EndReason::Closed);
        }
        let mut header = [0u8; REQUEST_HEADER_LEN];
        if !read_header(reader, &mut header)? {
            return Ok(EndReason::Closed);
        }
        let req = parse_request(&header)?;
        if req.command == Command::Disconnect {
            return Ok(EndReason::Disconnect);
        }
        let payload_len = req.payload_len();
        if payload_len > limits.max_request_bytes {
            return Err(TransmissionError::PayloadTooLarge {
                length: payload_len,
                offset: req.offset,
                max: limits.max_request_bytes,
            });
        }
        if let Err(errno) = check_request(&req, limits) {
            drain(reader, payload_len)?;
            let mut out = Vec::with_capacity(64);
            let msg = format!(
                "{:?} at offset {} length {} refused",
                req.command, req.offset, req.length
            );
            error_reply(&mut out, shared.mode, &req, errno, &msg);
            shared.send(&out);
            continue;
        }
        let budget = match req.command {
            Command::Read | Command::Write => u64::from(req.length),
            _ => 0,
        };
        shared.budget.acquire(budget);
        // Bounded by max_request_bytes (checked above) and reserved from the budget.
        let mut payload = vec![0u8; payload_len as usize];
        if let Err(source) = reader.read_exact(&mut payload) {
            shared.budget.release(budget);
            return Err(TransmissionError::Io {
                step: "reading a WRITE payload",
                source,
            });
        }
        if req.command.is_write() {
            shared.writes.begin(seq);
        }
        let job = Job {
            seq,
            req,
            payload,
            budget,
        };
        if queue.send(job).is_err() {
            // Workers are gone (only if one panicked); stop reading.
            return Ok(EndReason::Closed);
        }
        seq += 1;
    }
}

fn worker<W: Write>(queue: &Mutex<Receiver<Job>>, shared: &Shared<'_, W>) {
    loop {
        // Holding the lock while waiting keeps dequeueing strictly FIFO across workers,
        // which the FLUSH barrier relies on (earlier writes are always already taken).
        let job = match lock(queue).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let export = shared.negotiated.export.as_ref();
        let barrier = || shared.writes.wait_before(job.seq);
        let out = execute(export, shared.mode, &job.req, &job.payload, &barrier);
        if job.req.command.is_write() {
            shared.writes.end(job.seq);
        }
        drop(job.payload);
        shared.send(&out);
        drop(out);
        shared.budget.release(job.budget);
    }
}

/// Reads a request header; `Ok(false)` on a clean end of stream before its first byte.
fn read_header<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<bool, TransmissionError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(TransmissionError::Io {
                    step: "reading a request header",
                    source: io::ErrorKind::UnexpectedEof.into(),
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(TransmissionError::Io {
                    step: "reading a request header",
                    source,
                })
            }
        }
    }
    Ok(true)
}

/// Skips the payload of a refused WRITE without allocating it.
fn drain<R: Read>(reader: &mut R, len: u32) -> Result<(), TransmissionError> {
    let copied = io::copy(&mut reader.take(u64::from(len)), &mut io::sink()).map_err(|source| {
        TransmissionError::Io {
            step: "skipping a refused WRITE payload",
            source,
        }
    })?;
    if copied != u64::from(len) {
        return Err(TransmissionError::Io {
            step: "skipping a refused WRITE payload",
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker cannot leave these structures half-updated in a way that matters
    // more than stopping the whole connection would; keep going with the inner value.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A byte budget: `acquire` blocks until enough bytes were `release`d.
struct Budget {
    available: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    fn new(total: u64) -> Budget {
        Budget {
            available: Mutex::new(total),
            freed: Condvar::new(),
        }
    }

    /// `n` never exceeds the total (requests are capped at `max_request_bytes` <= total), so
    /// this always returns once enough in-flight requests completed.
    fn acquire(&self, n: u64) {
        let mut available = lock(&self.available);
        while *available < n {
            available = self
                .freed
                .wait(available)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *available -= n;
    }

    fn release(&self, n: u64) {
        *lock(&self.available) += n;
        self.freed.notify_all();
    }
}

/// Sequence numbers of the writes in flight, for the FLUSH barrier.
#[derive(Default)]
struct WriteTracker {
    in_flight: Mutex<BTreeSet<u64>>,
    completed: Condvar,
}

impl WriteTracker {
    fn begin(&self, seq: u64) {
        lock(&self.in_flight).insert(seq);
    }

    fn end(&self, seq: u64) {
        lock(&self.in_flight).remove(&seq);
        self.completed.notify_all();
    }

    /// Waits until every write with a sequence number below `seq` has completed. Cannot
    /// deadlock: those writes were dequeued before the caller's request (FIFO) and never wait.
    fn wait_before(&self, seq: u64) {
        let mut in_flight = lock(&self.in_flight);
        while in_flight.first().is_some_and(|&first| first < seq) {
            in_flight = self
                .completed
                .wait(in_flight)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
