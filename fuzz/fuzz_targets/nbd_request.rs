//! Fuzzes the NBD server's input parsers and state machines: the 28-byte request parser and
//! request checks (plus executing accepted requests on a RAM disk), the option-haggling
//! parser, and whole client sessions (handshake then transmission) fed from memory.
#![no_main]

use std::io::{self, Cursor, Read, Write};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdisk_nbd::execute::{execute, ReplyMode};
use vdisk_nbd::handshake::{negotiate, HandshakeConfig, HandshakeOutcome, HandshakeStream};
use vdisk_nbd::option::parse_option;
use vdisk_nbd::request::{check_request, Command, RequestLimits};
use vdisk_nbd::transmission::{serve_requests, TransmissionConfig};
use vdisk_blockdev::BlockDevice;
use vdisk_nbd::{parse_request, MemDevice, ShutdownSignal, StaticExports};

const MAX_REQUEST: u32 = 64 * 1024;

/// Client bytes in, server bytes discarded. With `forced_tls` the server runs in FORCEDTLS
/// mode; the "upgrade" after STARTTLS keeps the bytes in plain text so the rest of the
/// session is still fuzzed.
struct Duplex<'a> {
    input: Cursor<&'a [u8]>,
    forced_tls: bool,
    tls_up: bool,
}

impl HandshakeStream for Duplex<'_> {
    fn tls_required(&self) -> bool {
        self.forced_tls
    }
    fn tls_active(&self) -> bool {
        self.tls_up
    }
    fn start_tls(&mut self) -> io::Result<()> {
        self.tls_up = true;
        Ok(())
    }
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn disk(seed: &[u8]) -> Arc<MemDevice> {
    let size = 1 << 20;
    let disk = MemDevice::new(size);
    // Some data so reads mix data and hole chunks.
    let _ = disk.fill(seed.get(..seed.len().min(8192)).unwrap_or(&[]), 4096);
    Arc::new(disk)
}

fn one_request(data: &[u8]) {
    let mut header = [0u8; 28];
    let n = data.len().min(28);
    header[..n].copy_from_slice(&data[..n]);
    let rest = data.get(28..).unwrap_or(&[]);
    let Ok(req) = parse_request(&header) else {
        return;
    };
    let knobs = rest.first().copied().unwrap_or(0);
    let export = disk(rest);
    let limits = RequestLimits {
        export_size: export.size(),
        read_only: knobs & 1 != 0,
        structured: knobs & 2 != 0,
        block_status: knobs & 4 != 0,
        max_request_bytes: MAX_REQUEST,
    };
    if check_request(&req, &limits).is_err() {
        return;
    }
    // Accepted range commands stay inside the export.
    if matches!(
        req.command,
        Command::Read
            | Command::Write
            | Command::Trim
            | Command::WriteZeroes
            | Command::BlockStatus
    ) {
        let end = req.offset.checked_add(u64::from(req.length));
        assert!(end.is_some_and(|e| e <= limits.export_size));
    }
    let payload = vec![0x5a; req.payload_len() as usize];
    let mode = ReplyMode {
        structured: limits.structured,
        sparse_reads: knobs & 8 != 0,
    };
    let reply = execute(export.as_ref(), mode, &req, &payload, &|| {});
    assert!(reply.len() >= 16);
}

fn session(data: &[u8], transmission: bool) {
    let export = disk(data);
    let provider = StaticExports::with_default(export.clone())
        .add("ro", Arc::new(MemDevice::new(8192).read_only(true)));
    let mut stream = Duplex {
        input: Cursor::new(data),
        forced_tls: data.last().is_some_and(|b| b & 1 != 0),
        tls_up: false,
    };
    let config = HandshakeConfig {
        max_request_bytes: MAX_REQUEST,
    };
    let Ok(HandshakeOutcome::Transmission(negotiated)) =
        negotiate(&mut stream, &provider, config, &ShutdownSignal::new())
    else {
        return;
    };
    if !transmission {
        return;
    }
    let config = TransmissionConfig {
        workers: 2,
        max_request_bytes: MAX_REQUEST,
        max_inflight_bytes: 2 * u64::from(MAX_REQUEST),
        sparse_reads: true,
    };
    let _ = serve_requests(&mut stream.input, io::sink(), &negotiated, config, &|| {});
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => one_request(rest),
        1 => {
            let (code, body) = match rest {
                [a, b, body @ ..] => (u32::from(*a) % 16 + u32::from(*b) / 128 * 1000, body),
                _ => return,
            };
            let _ = parse_option(code, body);
        }
        2 => session(rest, false),
        _ => session(rest, true),
    }
});
