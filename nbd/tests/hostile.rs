//! Malformed, oversized and abusive clients over a real in-process socket: each gets an
//! error reply or a closed connection, and the server keeps serving everyone else.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_blockdev::BlockDevice;

use common::{RawClient, Reply, TestServer};
use vdisk_nbd::proto::{cmd, cmd_flags, opt, rep, transmission_flags as tf, IHAVEOPT};
use vdisk_nbd::{MemDevice, ServerConfig, StaticExports};

const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const SIZE: u64 = 4 << 20;

fn server() -> (TestServer, Arc<MemDevice>) {
    server_with(ServerConfig::default())
}

fn server_with(config: ServerConfig) -> (TestServer, Arc<MemDevice>) {
    let disk = Arc::new(MemDevice::new(SIZE));
    let snap = Arc::new(MemDevice::new(SIZE).read_only(true));
    let provider = StaticExports::with_default(disk.clone()).add("ro", snap);
    (TestServer::with_config(Arc::new(provider), config), disk)
}

/// The server still serves a well-behaved client.
fn assert_alive(srv: &TestServer) {
    let (mut c, size, _) = RawClient::open(srv.addr, "", true);
    assert_eq!(size, SIZE);
    c.request(cmd::READ, 0, 99, 0, 512);
    let (data, _) = c.read_structured(99, 0, 512);
    assert_eq!(data.len(), 512);
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let (srv, _) = server();
    let mut c = RawClient::connect(srv.addr);
    let _greeting = c.read_data(18);
    c.send(&0x8000_0001u32.to_be_bytes());
    assert!(c.is_closed());
    assert_alive(&srv);
}

#[test]
fn bad_option_magic_closes_the_connection() {
    let (srv, _) = server();
    let mut c = RawClient::greet(srv.addr);
    c.send(&[0x55; 16]);
    assert!(c.is_closed());
    assert_alive(&srv);
}

#[test]
fn unknown_options_and_starttls_are_refused_politely() {
    let (srv, _) = server();
    let mut c = RawClient::greet(srv.addr);
    c.option(opt::EXTENDED_HEADERS, &[]);
    assert_eq!(c.opt_reply().kind, rep::ERR_UNSUP);
    c.option(0x1234_5678, b"whatever");
    let r = c.opt_reply();
    assert_eq!((r.option, r.kind), (0x1234_5678, rep::ERR_UNSUP));
    c.option(opt::STARTTLS, &[]);
    assert_eq!(c.opt_reply().kind, rep::ERR_POLICY);
    c.option(opt::LIST, b"junk");
    assert_eq!(c.opt_reply().kind, rep::ERR_INVALID);
    // Malformed GO: name length beyond the data.
    c.option(opt::GO, &[0, 0, 1, 0, 0, 0]);
    assert_eq!(c.opt_reply().kind, rep::ERR_INVALID);
    // Meta contexts need structured replies first.
    c.option(opt::SET_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c.opt_reply().kind, rep::ERR_INVALID);
    assert_eq!(c.go("missing"), Err(rep::ERR_UNKNOWN));
    // After all that, the session still works.
    assert!(c.go("").is_ok());
}

#[test]
fn oversized_options_are_drained_or_cut_off() {
    let (srv, _) = server();
    let mut c = RawClient::greet(srv.addr);
    c.option(0x99, &vec![0u8; 100_000]);
    assert_eq!(c.opt_reply().kind, rep::ERR_TOO_BIG);
    assert!(c.go("").is_ok());

    // Announcing 4 GiB of option data ends the session without the server reading it.
    let mut c = RawClient::greet(srv.addr);
    let mut h = Vec::new();
    h.extend_from_slice(&IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&opt::GO.to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send(&h);
    assert!(c.is_closed());
    assert_alive(&srv);
}

#[test]
fn export_name_of_a_missing_export_closes_and_abort_is_acked() {
    let (srv, _) = server();
    let mut c = RawClient::greet(srv.addr);
    c.option(opt::EXPORT_NAME, b"nope");
    assert!(c.is_closed());

    let mut c = RawClient::greet(srv.addr);
    c.option(opt::ABORT, &[]);
    assert_eq!(c.opt_reply().kind, rep::ACK);
    assert!(c.is_closed());

    // Old-style EXPORT_NAME entry with NO_ZEROES: 8 bytes size + 2 bytes flags, nothing else.
    let mut c = RawClient::greet(srv.addr);
    c.option(opt::EXPORT_NAME, b"");
    let info = c.read_data(10);
    assert_eq!(u64::from_be_bytes(info[0..8].try_into().unwrap()), SIZE);
    c.request(cmd::READ, 0, 5, 0, 4);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 5
        }
    );
    assert_eq!(c.read_data(4), vec![0; 4]);
}

#[test]
fn request_errors_follow_the_spec_and_keep_the_session() {
    let (srv, disk) = server();
    let (mut c, _, flags) = RawClient::open(srv.addr, "", true);
    assert_eq!(flags & tf::READ_ONLY, 0);
    c.request(cmd::READ, 0, 1, SIZE - 512, 1024);
    assert_eq!(c.error_of(1), EINVAL);
    c.request(cmd::READ, 0, 2, u64::MAX - 10, 100);
    assert_eq!(c.error_of(2), EINVAL);
    c.write(3, SIZE - 2, &[1, 2, 3, 4], 0);
    assert_eq!(c.error_of(3), ENOSPC);
    c.request(cmd::WRITE_ZEROES, 0, 4, SIZE, 4096);
    assert_eq!(c.error_of(4), ENOSPC);
    c.request(cmd::TRIM, 0, 5, SIZE, 1);
    assert_eq!(c.error_of(5), EINVAL);
    c.request(cmd::READ, 0, 6, 0, 64 << 20);
    assert_eq!(c.error_of(6), EINVAL, "over max_request_bytes");
    c.request(77, 0, 7, 0, 0);
    assert_eq!(c.error_of(7), EINVAL, "unknown command");
    c.request(cmd::READ, cmd_flags::NO_HOLE, 8, 0, 512);
    assert_eq!(c.error_of(8), EINVAL, "flag not valid for READ");
    c.write(9, 0, &[7; 512], 0x100);
    assert_eq!(c.error_of(9), EINVAL, "unknown flag, payload skipped");
    c.request(cmd::FLUSH, 0, 10, 4096, 0);
    assert_eq!(c.error_of(10), EINVAL);
    c.request(cmd::BLOCK_STATUS, 0, 11, 0, 0);
    assert_eq!(c.error_of(11), EINVAL);
    // The stream is still in sync: a valid write and read round-trip.
    c.write(12, 4096, &[0x42; 512], cmd_flags::FUA);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 12
        }
    );
    c.request(cmd::READ, 0, 13, 4096, 512);
    assert_eq!(c.read_structured(13, 4096, 512).0, vec![0x42; 512]);
    let mut b = [0u8; 1];
    BlockDevice::read_at(&*disk, &mut b, SIZE - 2).unwrap();
    assert_eq!(b[0], 0, "refused write left no trace");
}

#[test]
fn read_only_export_answers_eperm() {
    let (srv, _) = server();
    let (mut c, _, flags) = RawClient::open(srv.addr, "ro", true);
    assert_ne!(flags & tf::READ_ONLY, 0);
    assert_eq!(flags & (tf::SEND_TRIM | tf::SEND_WRITE_ZEROES), 0);
    c.write(1, 0, &[1; 4096], 0);
    assert_eq!(c.error_of(1), EPERM);
    c.request(cmd::TRIM, 0, 2, 0, 4096);
    assert_eq!(c.error_of(2), EPERM);
    c.request(cmd::WRITE_ZEROES, 0, 3, 0, 4096);
    assert_eq!(c.error_of(3), EPERM);
    c.request(cmd::READ, 0, 4, 0, 4096);
    assert_eq!(c.read_structured(4, 0, 4096).0, vec![0; 4096]);
}

#[test]
fn bad_request_magic_and_huge_writes_close_only_that_client() {
    let (srv, _) = server();
    let (mut other, _, _) = RawClient::open(srv.addr, "", true);

    let (mut c, _, _) = RawClient::open(srv.addr, "", true);
    c.send(&[0xde; 28]);
    assert!(c.is_closed());

    let (mut c, _, _) = RawClient::open(srv.addr, "", false);
    let start = Instant::now();
    c.request(cmd::WRITE, 0, 1, 0, u32::MAX);
    assert!(c.is_closed());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no attempt to read 4 GiB"
    );

    other.request(cmd::READ, 0, 1, 0, 512);
    assert_eq!(other.read_structured(1, 0, 512).0.len(), 512);
}

#[test]
fn abrupt_disconnect_in_the_middle_of_a_write_payload() {
    let (srv, disk) = server();
    for _ in 0..5 {
        let (mut c, _, _) = RawClient::open(srv.addr, "", true);
        c.request(cmd::WRITE, 0, 1, 0, 1 << 20);
        c.send(&[0x66; 1000]);
        drop(c);
    }
    // Truncated writes were never executed.
    let mut b = [0u8; 1];
    BlockDevice::read_at(&*disk, &mut b, 0).unwrap();
    assert_eq!(b[0], 0);
    assert_alive(&srv);
}

#[test]
fn connections_beyond_the_limit_are_closed() {
    let (srv, _) = server_with(ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    });
    let (a, _, _) = RawClient::open(srv.addr, "", true);
    let (_b, _, _) = RawClient::open(srv.addr, "", true);
    let mut c = RawClient::connect(srv.addr);
    assert!(c.is_closed(), "third connection refused");
    drop(a);
    // The slot frees once the server notices the hang-up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = RawClient::connect(srv.addr);
        let mut g = [0u8; 8];
        if std::io::Read::read_exact(&mut c.stream, &mut g).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn silent_clients_time_out_during_the_handshake() {
    let (srv, _) = server_with(ServerConfig {
        handshake_timeout: Some(Duration::from_millis(200)),
        ..ServerConfig::default()
    });
    let mut c = RawClient::connect(srv.addr);
    let _greeting = c.read_data(18);
    let start = Instant::now();
    assert!(c.is_closed());
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn structured_reads_send_hole_chunks_and_df_sends_one_chunk() {
    let (srv, disk) = server();
    disk.fill(&[0x33; 8192], 64 << 10).unwrap();
    let (mut c, _, flags) = RawClient::open(srv.addr, "", true);
    assert_ne!(flags & tf::SEND_DF, 0);
    c.request(cmd::READ, 0, 1, 0, 256 << 10);
    let (data, holes) = c.read_structured(1, 0, 256 << 10);
    assert_eq!(holes, 2, "zeroes before and after the data are hole chunks");
    assert!(data[64 << 10..(64 << 10) + 8192].iter().all(|&b| b == 0x33));
    assert_eq!(data.iter().filter(|&&b| b != 0).count(), 8192);

    c.request(cmd::READ, cmd_flags::DF, 2, 0, 256 << 10);
    let chunks = c.structured(2);
    let content: Vec<_> = chunks.iter().filter(|(k, _)| *k == 1 || *k == 2).collect();
    assert_eq!(content.len(), 1);
    assert_eq!(content[0].0, 1, "DF: one data chunk");
}

#[test]
fn block_status_extents_and_req_one() {
    let (srv, disk) = server();
    disk.fill(&[1; 4096], 8192).unwrap();
    let (mut c, _, _) = RawClient::open(srv.addr, "", true);
    c.request(cmd::BLOCK_STATUS, 0, 1, 0, 65536);
    let chunks = c.structured(1);
    assert_eq!(chunks.len(), 1);
    let (kind, p) = &chunks[0];
    assert_eq!(*kind, 5);
    assert_eq!(
        u32::from_be_bytes(p[0..4].try_into().unwrap()),
        1,
        "context id"
    );
    let ext: Vec<(u32, u32)> = p[4..]
        .chunks(8)
        .map(|d| {
            (
                u32::from_be_bytes(d[0..4].try_into().unwrap()),
                u32::from_be_bytes(d[4..8].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(ext, vec![(8192, 3), (4096, 0), (65536 - 12288, 3)]);

    c.request(cmd::BLOCK_STATUS, cmd_flags::REQ_ONE, 2, 0, 65536);
    let p = &c.structured(2)[0].1;
    assert_eq!(p.len(), 12, "exactly one descriptor");
    assert_eq!(u32::from_be_bytes(p[4..8].try_into().unwrap()), 8192);

    // Without SET_META_CONTEXT, block status is refused.
    let (mut plain, _, _) = RawClient::open(srv.addr, "", false);
    plain.request(cmd::BLOCK_STATUS, 0, 3, 0, 4096);
    assert_eq!(plain.error_of(3), EINVAL);
}

#[test]
fn simple_replies_without_structured_negotiation() {
    let (srv, disk) = server();
    disk.fill(&[9; 1024], 0).unwrap();
    let (mut c, _, flags) = RawClient::open(srv.addr, "", false);
    assert_eq!(flags & tf::SEND_DF, 0);
    c.request(cmd::READ, 0, 1, 0, 1024);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 1
        }
    );
    assert_eq!(c.read_data(1024), vec![9; 1024]);
    c.request(cmd::READ, 0, 2, SIZE, 1);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: EINVAL,
            handle: 2
        }
    );
    // No payload followed the error: the next reply parses.
    c.request(cmd::FLUSH, 0, 3, 0, 0);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 3
        }
    );
}

#[test]
fn pipelined_requests_all_get_their_reply_and_disc_drains() {
    let (srv, disk) = server();
    let (mut c, _, _) = RawClient::open(srv.addr, "", true);
    let mut batch = Vec::new();
    for i in 0..200u64 {
        batch.extend_from_slice(&vdisk_nbd::request::encode_request(
            0,
            cmd::WRITE,
            i,
            i * 4096,
            4096,
        ));
        batch.extend_from_slice(&[i as u8; 4096]);
    }
    batch.extend_from_slice(&vdisk_nbd::request::encode_request(
        0,
        cmd::FLUSH,
        1000,
        0,
        0,
    ));
    batch.extend_from_slice(&vdisk_nbd::request::encode_request(
        0,
        cmd::DISC,
        1001,
        0,
        0,
    ));
    c.stream.write_all(&batch).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..201 {
        match c.reply() {
            Reply::Simple { error: 0, handle } => assert!(seen.insert(handle)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen.len(), 201);
    assert!(c.is_closed(), "DISC closes after the replies");
    for i in [0u64, 57, 199] {
        let mut b = [0u8; 4096];
        BlockDevice::read_at(&*disk, &mut b, i * 4096).unwrap();
        assert!(b.iter().all(|&x| x == i as u8));
    }
    assert!(disk.flush_count() >= 1);
}

#[test]
fn fast_zero_is_honoured() {
    let (srv, disk) = server();
    disk.fill(&[5; 8192], 0).unwrap();
    let (mut c, _, flags) = RawClient::open(srv.addr, "", true);
    assert_ne!(flags & tf::SEND_FAST_ZERO, 0);
    c.request(cmd::WRITE_ZEROES, cmd_flags::FAST_ZERO, 1, 0, 8192);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 1
        }
    );
    assert_eq!(
        disk.allocated_pages(),
        0,
        "zeroes with trim allowed free the pages"
    );
    disk.fill(&[5; 4096], 0).unwrap();
    c.request(cmd::WRITE_ZEROES, cmd_flags::NO_HOLE, 2, 0, 4096);
    assert_eq!(
        c.reply(),
        Reply::Simple {
            error: 0,
            handle: 2
        }
    );
    assert_eq!(
        disk.allocated_pages(),
        1,
        "NO_HOLE keeps the page allocated"
    );
}
