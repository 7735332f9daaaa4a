//! The migration protocol's frames (format-spec/migration.md): a fixed header, a bounded
//! payload, a crc32 over both. [`read_frame`] never allocates more than [`MAX_PAYLOAD`]
//! whatever a peer sends, and [`Message::decode`] checks every field against its bounds.

use std::io::{self, Read, Write};

/// Frame magic.
pub const MAGIC: &[u8; 4] = b"VDMG";
/// Protocol version (HELLO's `protocol`).
pub const PROTOCOL: u32 = 1;
/// Header bytes: magic, type, 3 reserved, payload length.
pub const HEADER: usize = 12;
/// Most pages in one PAGES frame (2 MiB).
pub const MAX_PAGES: u64 = 512;
/// Most bytes of a frame's payload.
pub const MAX_PAYLOAD: u32 = 4 << 20;
/// Page size.
pub const PAGE: u64 = 4096;

/// Frame types.
pub(crate) mod ty {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const PAGES: u8 = 3;
    pub const ZEROS: u8 = 4;
    pub const ROUND: u8 = 5;
    pub const STREAM: u8 = 6;
    pub const STREAM_END: u8 = 7;
    pub const STATE: u8 = 8;
    pub const DONE: u8 = 9;
    pub const READY: u8 = 10;
    pub const RELEASED: u8 = 11;
    pub const RUNNING: u8 = 12;
    pub const ERROR: u8 = 13;
    pub const SNAPSHOT: u8 = 14;
    pub const OBJECT: u8 = 15;
    pub const ACK: u8 = 16;
}

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Source → destination, first: JSON (protocol, purpose, VM config, memory, disks).
    Hello(serde_json::Value),
    /// Destination → source: JSON (how the disks travel).
    Welcome(serde_json::Value),
    /// Guest pages from `gpa`.
    Pages { gpa: u64, data: Vec<u8> },
    /// `pages` zero pages from `gpa`.
    Zeros { gpa: u64, pages: u64 },
    /// End of a pre-copy round: JSON.
    Round(serde_json::Value),
    /// A chunk of disk `disk`'s delta stream.
    Stream { disk: u32, data: Vec<u8> },
    /// Disk `disk`'s delta stream is complete.
    StreamEnd { disk: u32 },
    /// vCPU, device and clock state (JSON, the VM-state payload of vmstate.md §3).
    State(Vec<u8>),
    /// Source: everything sent; JSON totals and the blake3 of the memory frames.
    Done(serde_json::Value),
    /// Destination: all received and verified; it waits for the disks.
    Ready,
    /// Source: its VMM stopped and its disks are closed.
    Released,
    /// Destination: the vCPUs run.
    Running,
    /// Either side gives up: why.
    Error(String),
    /// Replication: a VM snapshot follows (JSON: name, id, VM-state record, objects).
    Snapshot(serde_json::Value),
    /// Replication: bytes of one object of the snapshot (`state/…`).
    Object {
        name: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// Replication: the standby applied the snapshot (JSON: name).
    Ack(serde_json::Value),
}

/// A frame or message that breaks the protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A field is out of bounds or the checksum does not match.
    #[error("bad frame: {field}: {reason}")]
    Bad {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn bad(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Bad {
        field,
        reason: reason.into(),
    }
}

/// A checked frame: its type and payload.
pub struct Frame {
    /// Type byte.
    pub ty: u8,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Read one frame (crc checked); `Closed` at a clean end of input before its first byte.
pub fn read_frame(r: &mut dyn Read) -> Result<Frame, WireError> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed),
            Ok(0) => return Err(bad("header", "truncated")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if &h[0..4] != MAGIC {
        return Err(bad("magic", "not a vdisk migration frame"));
    }
    if h[5..8] != [0, 0, 0] {
        return Err(bad("reserved", "not zero"));
    }
    let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD + 64 {
        return Err(bad(
            "length",
            format!("{len} bytes (at most {})", MAX_PAYLOAD + 64),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad("payload", "truncated"),
        _ => WireError::Io(e),
    })?;
    let mut crc = [0u8; 4];
    r.read_exact(&mut crc).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad("crc32", "truncated"),
        _ => WireError::Io(e),
    })?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h);
    hasher.update(&payload);
    if hasher.finalize() != u32::from_le_bytes(crc) {
        return Err(bad("crc32", "does not match the frame"));
    }
    Ok(Frame { ty: h[4], payload })
}

/// Write one frame.
pub fn write_frame(w: &mut dyn Write, ty: u8, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(MAGIC);
    h[4] = ty;
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h);
    w.write_all(&h)?;
    for p in parts {
        hasher.update(p);
        w.write_all(p)?;
    }
    w.write_all(&hasher.finalize().to_le_bytes())
}

fn json_of(field: &'static str, b: &[u8]) -> Result<serde_json::Value, WireError> {
    let v: serde_json::Value =
        serde_json::from_slice(b).map_err(|e| bad(field, format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad(field, "not a JSON object"));
    }
    Ok(v)
}

fn u64_at(b: &[u8], at: usize, field: &'static str) -> Result<u64, WireError> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| bad(field, "truncated"))
}

fn u32_at(b: &[u8], at: usize, field: &'static str) -> Result<u32, WireError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| bad(field, "truncated"))
}

/// Most bytes of an object name.
pub const MAX_NAME: usize = 256;

impl Message {
    /// Decode a checked frame; `memory` bounds guest addresses.
    pub fn decode(f: Frame, memory: u64) -> Result<Message, WireError> {
        let p = f.payload;
        let empty = |m: Message| {
            if p.is_empty() {
                Ok(m)
            } else {
                Err(bad("payload", "not empty"))
            }
        };
        Ok(match f.ty {
            ty::HELLO => Message::Hello(json_of("hello", &p)?),
            ty::WELCOME => Message::Welcome(json_of("welcome", &p)?),
            ty::PAGES => {
                let gpa = u64_at(&p, 0, "pages.gpa")?;
                let data = p[8..].to_vec();
                let n = data.len() as u64;
                if n == 0 || !n.is_multiple_of(PAGE) || n / PAGE > MAX_PAGES {
                    return Err(bad(
                        "pages.data",
                        format!("{n} bytes (1 to {MAX_PAGES} whole pages)"),
                    ));
                }
                check_range(gpa, n, memory)?;
                Message::Pages { gpa, data }
            }
            ty::ZEROS => {
                if p.len() != 16 {
                    return Err(bad("zeros", "16 bytes expected"));
                }
                let gpa = u64_at(&p, 0, "zeros.gpa")?;
                let pages = u64_at(&p, 8, "zeros.pages")?;
                if pages == 0 {
                    return Err(bad("zeros.pages", "0"));
                }
                let len = pages
                    .checked_mul(PAGE)
                    .ok_or_else(|| bad("zeros.pages", "overflows"))?;
                check_range(gpa, len, memory)?;
                Message::Zeros { gpa, pages }
            }
            ty::ROUND => Message::Round(json_of("round", &p)?),
            ty::STREAM => {
                let disk = u32_at(&p, 0, "stream.disk")?;
                if p.len() == 4 {
                    return Err(bad("stream.data", "empty"));
                }
                Message::Stream {
                    disk,
                    data: p[4..].to_vec(),
                }
            }
            ty::STREAM_END => {
                if p.len() != 4 {
                    return Err(bad("stream_end", "4 bytes expected"));
                }
                Message::StreamEnd {
                    disk: u32_at(&p, 0, "stream_end.disk")?,
                }
            }
            ty::STATE => {
                json_of("state", &p)?;
                Message::State(p)
            }
            ty::DONE => Message::Done(json_of("done", &p)?),
            ty::READY => empty(Message::Ready)?,
            ty::RELEASED => empty(Message::Released)?,
            ty::RUNNING => empty(Message::Running)?,
            ty::ERROR => Message::Error(String::from_utf8_lossy(&p[..p.len().min(4096)]).into()),
            ty::SNAPSHOT => Message::Snapshot(json_of("snapshot", &p)?),
            ty::OBJECT => {
                let nl = p
                    .get(0..2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                    .ok_or_else(|| bad("object.name_len", "truncated"))?;
                if nl == 0 || nl > MAX_NAME {
                    return Err(bad("object.name_len", format!("{nl} (1 to {MAX_NAME})")));
                }
                let name = p
                    .get(2..2 + nl)
                    .ok_or_else(|| bad("object.name", "truncated"))?;
                let name = std::str::from_utf8(name)
                    .map_err(|_| bad("object.name", "not UTF-8"))?
                    .to_string();
                if !safe_object_name(&name) {
                    return Err(bad(
                        "object.name",
                        format!("{name:?} is not a state/ object name"),
                    ));
                }
                let offset = u64_at(&p, 2 + nl, "object.offset")?;
                Message::Object {
                    name,
                    offset,
                    data: p[2 + nl + 8..].to_vec(),
                }
            }
            ty::ACK => Message::Ack(json_of("ack", &p)?),
            other => return Err(bad("type", format!("unknown frame type {other}"))),
        })
    }

    /// Write this message as one frame.
    pub fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        let js = |v: &serde_json::Value| serde_json::to_vec(v).expect("JSON values serialize");
        match self {
            Message::Hello(v) => write_frame(w, ty::HELLO, &[&js(v)]),
            Message::Welcome(v) => write_frame(w, ty::WELCOME, &[&js(v)]),
            Message::Pages { gpa, data } => write_frame(w, ty::PAGES, &[&gpa.to_le_bytes(), data]),
            Message::Zeros { gpa, pages } => {
                write_frame(w, ty::ZEROS, &[&gpa.to_le_bytes(), &pages.to_le_bytes()])
            }
            Message::Round(v) => write_frame(w, ty::ROUND, &[&js(v)]),
            Message::Stream { disk, data } => {
                write_frame(w, ty::STREAM, &[&disk.to_le_bytes(), data])
            }
            Message::StreamEnd { disk } => write_frame(w, ty::STREAM_END, &[&disk.to_le_bytes()]),
            Message::State(b) => write_frame(w, ty::STATE, &[b]),
            Message::Done(v) => write_frame(w, ty::DONE, &[&js(v)]),
            Message::Ready => write_frame(w, ty::READY, &[]),
            Message::Released => write_frame(w, ty::RELEASED, &[]),
            Message::Running => write_frame(w, ty::RUNNING, &[]),
            Message::Error(m) => {
                let b = m.as_bytes();
                write_frame(w, ty::ERROR, &[&b[..b.len().min(4096)]])
            }
            Message::Snapshot(v) => write_frame(w, ty::SNAPSHOT, &[&js(v)]),
            Message::Object { name, offset, data } => write_frame(
                w,
                ty::OBJECT,
                &[
                    &(name.len() as u16).to_le_bytes(),
                    name.as_bytes(),
                    &offset.to_le_bytes(),
                    data,
                ],
            ),
            Message::Ack(v) => write_frame(w, ty::ACK, &[&js(v)]),
        }
    }

    /// Short name for errors ("expected READY, got PAGES").
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "HELLO",
            Message::Welcome(_) => "WELCOME",
            Message::Pages { .. } => "PAGES",
            Message::Zeros { .. } => "ZEROS",
            Message::Round(_) => "ROUND",
            Message::Stream { .. } => "STREAM",
            Message::StreamEnd { .. } => "STREAM_END",
            Message::State(_) => "STATE",
            Message::Done(_) => "DONE",
            Message::Ready => "READY",
            Message::Released => "RELEASED",
            Message::Running => "RUNNING",
            Message::Error(_) => "ERROR",
            Message::Snapshot(_) => "SNAPSHOT",
            Message::Object { .. } => "OBJECT",
            Message::Ack(_) => "ACK",
        }
    }
}

/// `state/<name>` with a plain file name: nothing a peer names can leave the bundle.
pub fn safe_object_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("state/") else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 200
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !rest.starts_with('.')
}

fn check_range(gpa: u64, len: u64, memory: u64) -> Result<(), WireError> {
    if !gpa.is_multiple_of(PAGE) {
        return Err(bad("gpa", format!("{gpa:#x} is not page-aligned")));
    }
    match gpa.checked_add(len) {
        Some(end) if end <= memory => Ok(()),
        _ => Err(bad(
            "gpa",
            format!("{gpa:#x}+{len:#x} lies outside the guest's {memory:#x} bytes"),
        )),
    }
}

/// Read and decode one message.
pub fn read_message(r: &mut dyn Read, memory: u64) -> Result<Message, WireError> {
    Message::decode(read_frame(r)?, memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(m: Message) -> Message {
        let mut b = Vec::new();
        m.write(&mut b).unwrap();
        read_message(&mut &b[..], 1 << 30).unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let all = vec![
            Message::Hello(serde_json::json!({"protocol": 1})),
            Message::Pages {
                gpa: 4096,
                data: vec![7; 8192],
            },
            Message::Zeros { gpa: 0, pages: 3 },
            Message::Stream {
                disk: 1,
                data: vec![1, 2, 3],
            },
            Message::StreamEnd { disk: 0 },
            Message::State(b"{}".to_vec()),
            Message::Ready,
            Message::Released,
            Message::Running,
            Message::Error("no".into()),
            Message::Object {
                name: "state/x.mem".into(),
                offset: 9,
                data: vec![1],
            },
        ];
        for m in all {
            assert_eq!(round_trip(m.clone()), m);
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut b = Vec::new();
        Message::Pages {
            gpa: (1 << 30) - 4096,
            data: vec![0; 8192],
        }
        .write(&mut b)
        .unwrap();
        assert!(matches!(
            read_message(&mut &b[..], 1 << 30),
            Err(WireError::Bad { field: "gpa", .. })
        ));
        // a flipped byte
        let mut b = Vec::new();
        Message::Ready.write(&mut b).unwrap();
        Message::Zeros { gpa: 0, pages: 1 }.write(&mut b).unwrap();
        b[20] ^= 1;
        let mut r = &b[..];
        read_message(&mut r, 1 << 30).unwrap();
        assert!(matches!(
            read_message(&mut r, 1 << 30),
            Err(WireError::Bad { field: "crc32", .. })
        ));
        // a huge length never allocates
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&[3, 0, 0, 0]);
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_message(&mut &h[..], 1 << 30),
            Err(WireError::Bad {
                field: "length",
                ..
            })
        ));
        // object names stay in state/
        for n in [
            "state/../manifest",
            "layers/x",
            "state/",
            "state/.x",
            "/etc/x",
        ] {
            assert!(!safe_object_name(n), "{n}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = &b[..];
            for _ in 0..4 {
                if read_message(&mut r, 1 << 20).is_err() { break; }
            }
        }

        #[test]
        fn truncations_fail(cut in 0usize..8208) {
            let mut b = Vec::new();
            Message::Pages { gpa: 0, data: vec![5; 8192] }.write(&mut b).unwrap();
            prop_assume!(cut < b.len());
            prop_assert!(read_message(&mut &b[..cut], 1 << 20).is_err());
        }
    }
}
