//! Whole sessions replayed from memory through `negotiate` and `serve_requests` (the same
//! path the fuzz target drives), with the server's byte stream decoded and checked.

use std::io::{self, Cursor, Read, Write};
use std::sync::Arc;
use vdisk_blockdev::BlockDevice;

use vdisk_nbd::handshake::{
    negotiate, HandshakeConfig, HandshakeError, HandshakeOutcome, HandshakeStream,
};
use vdisk_nbd::option::{
    encode_info_request, encode_meta_context_request, InfoRequest, MetaContextRequest,
};
use vdisk_nbd::proto::{cmd, info, opt, rep, IHAVEOPT, OPTION_REPLY_MAGIC};
use vdisk_nbd::request::encode_request;
use vdisk_nbd::transmission::{serve_requests, EndReason, TransmissionConfig};
use vdisk_nbd::{MemDevice, ShutdownSignal, StaticExports};

/// Client bytes in, server bytes recorded.
struct Duplex {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

/// NOTLS: the in-memory client never gets TLS.
impl HandshakeStream for Duplex {}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut out = IHAVEOPT.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Splits the server's option replies (after the 18-byte greeting) into (option, type, data).
fn option_replies(bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 18;
    while pos + 20 <= bytes.len() {
        assert_eq!(&bytes[pos..pos + 8], &OPTION_REPLY_MAGIC.to_be_bytes());
        let code = u32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        let kind = u32::from_be_bytes(bytes[pos + 12..pos + 16].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[pos + 16..pos + 20].try_into().unwrap()) as usize;
        out.push((code, kind, bytes[pos + 20..pos + 20 + len].to_vec()));
        pos += 20 + len;
    }
    assert_eq!(pos, bytes.len(), "no stray bytes after the option replies");
    out
}

fn provider() -> (StaticExports, Arc<MemDevice>) {
    let disk = Arc::new(MemDevice::new(1 << 20).with_description("the head"));
    (
        StaticExports::with_default(disk.clone()).add("head", disk.clone()),
        disk,
    )
}

const CONFIG: HandshakeConfig = HandshakeConfig {
    max_request_bytes: 1 << 16,
};

#[test]
fn info_answers_every_requested_item() {
    let (provider, _) = provider();
    let mut input = 3u32.to_be_bytes().to_vec();
    let req = InfoRequest {
        name: "head".into(),
        items: vec![info::NAME, info::DESCRIPTION, info::BLOCK_SIZE, 999],
    };
    input.extend(option(opt::INFO, &encode_info_request(&req)));
    input.extend(option(opt::ABORT, &[]));
    let mut s = Duplex {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    let outcome = negotiate(&mut s, &provider, CONFIG, &ShutdownSignal::new()).unwrap();
    assert!(matches!(outcome, HandshakeOutcome::Closed));
    let replies = option_replies(&s.output);
    let infos: Vec<&Vec<u8>> = replies
        .iter()
        .filter(|r| r.1 == rep::INFO)
        .map(|r| &r.2)
        .collect();
    let by_type = |t: u16| {
        infos
            .iter()
            .find(|d| u16::from_be_bytes([d[0], d[1]]) == t)
            .map(|d| d[2..].to_vec())
    };
    let export = by_type(info::EXPORT).expect("NBD_INFO_EXPORT");
    assert_eq!(
        u64::from_be_bytes(export[0..8].try_into().unwrap()),
        1 << 20
    );
    assert_eq!(by_type(info::NAME).unwrap(), b"head");
    assert_eq!(by_type(info::DESCRIPTION).unwrap(), b"the head");
    let bs = by_type(info::BLOCK_SIZE).unwrap();
    assert_eq!(
        [&bs[0..4], &bs[4..8], &bs[8..12]].map(|b| u32::from_be_bytes(b.try_into().unwrap())),
        [1, 4096, 1 << 16]
    );
    assert_eq!(
        replies.iter().filter(|r| r.1 == rep::ACK).count(),
        2,
        "INFO and ABORT"
    );
}

#[test]
fn meta_context_list_and_set_rules() {
    let (provider, _) = provider();
    let mut input = 3u32.to_be_bytes().to_vec();
    let meta = |queries: &[&str]| {
        encode_meta_context_request(&MetaContextRequest {
            export: String::new(),
            queries: queries.iter().map(|q| q.to_string()).collect(),
        })
    };
    input.extend(option(opt::STRUCTURED_REPLY, &[]));
    input.extend(option(opt::LIST_META_CONTEXT, &meta(&[])));
    input.extend(option(opt::LIST_META_CONTEXT, &meta(&["base:"])));
    input.extend(option(opt::SET_META_CONTEXT, &meta(&["base:"])));
    input.extend(option(
        opt::SET_META_CONTEXT,
        &meta(&["qemu:dirty-bitmap:x", "base:allocation"]),
    ));
    let mut s = Duplex {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    let err = negotiate(&mut s, &provider, CONFIG, &ShutdownSignal::new()).err();
    assert!(
        matches!(err, Some(HandshakeError::Io { .. })),
        "ends at end of input"
    );
    let kinds: Vec<(u32, u32)> = option_replies(&s.output)
        .iter()
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (opt::STRUCTURED_REPLY, rep::ACK),
            (opt::LIST_META_CONTEXT, rep::META_CONTEXT),
            (opt::LIST_META_CONTEXT, rep::ACK),
            (opt::LIST_META_CONTEXT, rep::META_CONTEXT),
            (opt::LIST_META_CONTEXT, rep::ACK),
            // "base:" selects nothing in SET.
            (opt::SET_META_CONTEXT, rep::ACK),
            (opt::SET_META_CONTEXT, rep::META_CONTEXT),
            (opt::SET_META_CONTEXT, rep::ACK),
        ]
    );
}

#[test]
fn shutdown_during_haggling_answers_err_shutdown() {
    let (provider, _) = provider();
    let mut input = 3u32.to_be_bytes().to_vec();
    input.extend(option(opt::LIST, &[]));
    let mut s = Duplex {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    let sd = ShutdownSignal::new();
    sd.trigger();
    let outcome = negotiate(&mut s, &provider, CONFIG, &sd).unwrap();
    assert!(matches!(outcome, HandshakeOutcome::Closed));
    assert_eq!(option_replies(&s.output)[0].1, rep::ERR_SHUTDOWN);
}

#[test]
fn replayed_session_writes_reads_and_disconnects() {
    let (provider, disk) = provider();
    let mut input = 3u32.to_be_bytes().to_vec();
    input.extend(option(opt::EXPORT_NAME, b"head"));
    let mut s = Duplex {
        input: Cursor::new(input),
        output: Vec::new(),
    };
    let HandshakeOutcome::Transmission(negotiated) =
        negotiate(&mut s, &provider, CONFIG, &ShutdownSignal::new()).unwrap()
    else {
        panic!("no transmission")
    };
    assert_eq!(negotiated.name, "head");
    assert!(!negotiated.structured);

    let mut requests = Vec::new();
    requests.extend(encode_request(0, cmd::WRITE, 1, 512, 4));
    requests.extend(b"abcd");
    requests.extend(encode_request(0, cmd::FLUSH, 2, 0, 0));
    requests.extend(encode_request(0, cmd::DISC, 3, 0, 0));
    requests.extend(encode_request(0, cmd::READ, 4, 0, 4)); // after DISC: never read
    let mut reader = Cursor::new(requests);
    let config = TransmissionConfig {
        workers: 1,
        max_request_bytes: 1 << 16,
        max_inflight_bytes: 1 << 16,
        sparse_reads: true,
    };
    let mut replies = Vec::new();
    let end = serve_requests(&mut reader, &mut replies, &negotiated, config, &|| {}).unwrap();
    assert_eq!(end, EndReason::Disconnect);
    assert_eq!(
        replies.len(),
        32,
        "two simple replies, nothing for DISC or after it"
    );
    let mut b = [0u8; 4];
    disk.read_at(&mut b, 512).unwrap();
    assert_eq!(&b, b"abcd");
    assert_eq!(disk.flush_count(), 1);
}
