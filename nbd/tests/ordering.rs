//! Concurrency, FLUSH/FUA ordering, backend errors and graceful shutdown, observed through
//! an instrumented export.

mod common;

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vdisk_blockdev::BlockDevice;

use common::{RawClient, Reply, TestServer};
use vdisk_blockdev::Extent;
use vdisk_nbd::proto::{cmd, cmd_flags};
use vdisk_nbd::request::encode_request;
use vdisk_nbd::{Export, MemDevice, StaticExports};

/// A MemDevice with delays, failure injection and a log of what happened.
struct Probe {
    inner: MemDevice,
    write_delay: Box<dyn Fn(u64) -> Duration + Send + Sync>,
    read_delay: Duration,
    completed_writes: AtomicU64,
    /// Completed writes seen by each flush, in call order.
    flushes: Mutex<Vec<u64>>,
    fua_writes: AtomicUsize,
    fail_reads_from: u64,
    started: Mutex<Option<mpsc::Sender<()>>>,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            inner: MemDevice::new(64 << 20),
            write_delay: Box::new(|_| Duration::ZERO),
            read_delay: Duration::ZERO,
            completed_writes: AtomicU64::new(0),
            flushes: Mutex::new(Vec::new()),
            fua_writes: AtomicUsize::new(0),
            fail_reads_from: u64::MAX,
            started: Mutex::new(None),
        }
    }
}

impl Probe {
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        if let Some(tx) = self.started.lock().unwrap().as_ref() {
            let _ = tx.send(());
        }
        std::thread::sleep((self.write_delay)(offset));
        if offset >= 60 << 20 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.write_at(buf, offset)?;
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        self.completed_writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl BlockDevice for Probe {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::thread::sleep(self.read_delay);
        if offset + buf.len() as u64 > self.fail_reads_from {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset, false)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn flush(&self) -> io::Result<()> {
        let done = self.completed_writes.load(Ordering::SeqCst);
        self.flushes.lock().unwrap().push(done);
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.extents(offset, len)
    }
}

impl Export for Probe {
    fn write_at_fua(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset, true)
    }
}

fn serve(probe: Arc<Probe>) -> TestServer {
    TestServer::start(Arc::new(StaticExports::with_default(probe)))
}

#[test]
fn flush_waits_for_earlier_writes_still_in_flight() {
    let mut probe = Probe::new();
    // Uneven delays so that, without the barrier, a worker would reach the FLUSH while
    // slower writes are still running.
    probe.write_delay = Box::new(|offset| Duration::from_millis(10 + (offset / 4096 % 4) * 40));
    let probe = Arc::new(probe);
    let srv = serve(probe.clone());
    let (mut c, _, _) = RawClient::open(srv.addr, "", true);
    let mut batch = Vec::new();
    for i in 0..8u64 {
        batch.extend_from_slice(&encode_request(0, cmd::WRITE, i, i * 4096, 4096));
        batch.extend_from_slice(&[1u8; 4096]);
    }
    batch.extend_from_slice(&encode_request(0, cmd::FLUSH, 100, 0, 0));
    c.send(&batch);
    for _ in 0..9 {
        assert!(matches!(c.reply(), Reply::Simple { error: 0, .. }));
    }
    assert_eq!(
        *probe.flushes.lock().unwrap(),
        vec![8],
        "flush saw every earlier write"
    );
}

#[test]
fn requests_of_one_client_run_concurrently() {
    let mut probe = Probe::new();
    probe.read_delay = Duration::from_millis(200);
    let srv = serve(Arc::new(probe));
    let (mut c, _, _) = RawClient::open(srv.addr, "", true);
    let start = Instant::now();
    let mut batch = Vec::new();
    for i in 0..4u64 {
        // DF: one data chunk, no block status lookup.
        batch.extend_from_slice(&encode_request(cmd_flags::DF, cmd::READ, i, i * 4096, 4096));
    }
    c.send(&batch);
    for _ in 0..4 {
        match c.reply() {
            Reply::Chunk { kind: 1, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(600),
        "4 x 200 ms reads took {elapsed:?}"
    );
}

#[test]
fn fua_reaches_the_export_and_errors_map_to_nbd_codes() {
    let mut probe = Probe::new();
    probe.fail_reads_from = 32 << 20;
    let probe = Arc::new(probe);
    let srv = serve(probe.clone());
    let (mut c, _, _) = RawClient::open(srv.addr, "", true);
    c.write(1, 0, &[3; 4096], cmd_flags::FUA);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 1
        }
    );
    assert_eq!(probe.fua_writes.load(Ordering::SeqCst), 1);

    c.write(2, 61 << 20, &[3; 4096], 0);
    assert_eq!(c.error_of(2), 28, "backend ENOSPC");
    // DF: read the range (a hole there would otherwise be answered without reading).
    c.request(cmd::READ, cmd_flags::DF, 3, (32 << 20) - 4096, 8192);
    assert_eq!(c.error_of(3), 5, "backend EIO as an error chunk");
    // Trim with FUA flushes.
    let flushes_before = probe.flushes.lock().unwrap().len();
    c.request(cmd::TRIM, cmd_flags::FUA, 4, 0, 4096);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 4
        }
    );
    assert_eq!(probe.flushes.lock().unwrap().len(), flushes_before + 1);
    // Still usable.
    c.request(cmd::READ, 0, 5, 0, 4096);
    assert_eq!(c.read_structured(5, 0, 4096).0, vec![0; 4096]);
}

#[test]
fn shutdown_finishes_in_flight_requests_then_flushes() {
    let mut probe = Probe::new();
    probe.write_delay = Box::new(|_| Duration::from_millis(300));
    let (tx, rx) = mpsc::channel();
    probe.started = Mutex::new(Some(tx));
    let probe = Arc::new(probe);
    let srv = serve(probe.clone());
    let (mut c, _, _) = RawClient::open(srv.addr, "", true);
    c.write(1, 0, &[8; 4096], 0);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("write started");
    let shutdown = srv.shutdown.clone();
    shutdown.trigger();
    // The in-flight write is still answered.
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 1
        }
    );
    assert!(c.is_closed());
    srv.stop().expect("clean shutdown");
    assert_eq!(
        *probe.flushes.lock().unwrap(),
        vec![1],
        "final flush after the write"
    );
}
