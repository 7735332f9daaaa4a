//! Encoders of everything the server sends: option replies, simple replies and structured
//! reply chunks. Each appends to a `Vec<u8>` so a whole reply goes out in one write.

use crate::proto::{
    reply, MAX_STRING_LEN, OPTION_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};
use crate::request::Errno;

/// Appends an option reply (`magic, option, type, length, data`).
///
/// `data` is at most a few KiB (strings are capped at 4096 bytes), so its length fits the
/// 32-bit field; a longer slice is a bug and is truncated rather than mis-framed.
pub fn option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data.get(..len as usize).unwrap_or(data));
}

/// Appends a simple reply header (the READ payload, if any, follows).
pub fn simple_reply(out: &mut Vec<u8>, error: u32, handle: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
}

/// Appends a structured chunk header; `length` bytes of payload must follow.
pub fn chunk_header(out: &mut Vec<u8>, flags: u16, chunk_type: u16, handle: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&chunk_type.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Appends the final empty chunk (`NBD_REPLY_TYPE_NONE` with `DONE`).
pub fn done_chunk(out: &mut Vec<u8>, handle: u64) {
    chunk_header(out, reply::FLAG_DONE, reply::TYPE_NONE, handle, 0);
}

/// Appends a final `NBD_REPLY_TYPE_ERROR` chunk carrying `message` (cut at a character
/// boundary to the spec's 4096-byte string limit).
pub fn error_chunk(out: &mut Vec<u8>, handle: u64, errno: Errno, message: &str) {
    let msg = truncate_str(message, MAX_STRING_LEN);
    // msg.len() <= 4096, so both casts below are exact.
    let msg_len = u16::try_from(msg.len()).unwrap_or(0);
    let payload_len = 6 + u32::from(msg_len);
    chunk_header(
        out,
        reply::FLAG_DONE,
        reply::TYPE_ERROR,
        handle,
        payload_len,
    );
    out.extend_from_slice(&errno.code().to_be_bytes());
    out.extend_from_slice(&msg_len.to_be_bytes());
    out.extend_from_slice(&msg.as_bytes()[..usize::from(msg_len)]);
}

/// Appends an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk.
pub fn hole_chunk(out: &mut Vec<u8>, flags: u16, handle: u64, offset: u64, len: u32) {
    chunk_header(out, flags, reply::TYPE_OFFSET_HOLE, handle, 12);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chunk_layout() {
        let mut out = Vec::new();
        error_chunk(&mut out, 0x11, Errno::NoSpc, "full");
        assert_eq!(out.len(), 20 + 6 + 4);
        assert_eq!(&out[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[4..6], &reply::FLAG_DONE.to_be_bytes());
        assert_eq!(&out[6..8], &reply::TYPE_ERROR.to_be_bytes());
        assert_eq!(&out[16..20], &10u32.to_be_bytes());
        assert_eq!(&out[20..24], &28u32.to_be_bytes());
        assert_eq!(&out[24..26], &4u16.to_be_bytes());
        assert_eq!(&out[26..], b"full");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let t = truncate_str(&s, MAX_STRING_LEN);
        assert!(t.len() <= MAX_STRING_LEN && t.len().is_multiple_of(2));
        let mut out = Vec::new();
        error_chunk(&mut out, 1, Errno::Io, &s);
        assert_eq!(out.len(), 26 + t.len());
    }

    #[test]
    fn option_reply_layout() {
        let mut out = Vec::new();
        option_reply(&mut out, 7, crate::proto::rep::ACK, b"");
        assert_eq!(out.len(), 20);
        assert_eq!(&out[0..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[8..12], &7u32.to_be_bytes());
    }
}
