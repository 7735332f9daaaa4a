//! Transmission requests: the pure parser of the 28-byte header, the checks a request must
//! pass before it reaches an export, and the NBD error codes.

use std::io;

use crate::proto::{cmd, cmd_flags, REQUEST_HEADER_LEN, REQUEST_MAGIC};

/// A request header the server cannot make sense of; the connection must be dropped (the
/// byte stream cannot be resynchronised).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The first 4 bytes are not `NBD_REQUEST_MAGIC`.
    #[error(
        "NBD request header: magic at byte 0 is {found:#010x}, expected {REQUEST_MAGIC:#010x}"
    )]
    BadMagic {
        /// The value found.
        found: u32,
    },
}

/// The command of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE` (payload follows the header).
    Write,
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE` (parsed, refused with `EINVAL`).
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Any other type (refused with `EINVAL`).
    Unknown(u16),
}

impl Command {
    fn from_wire(value: u16) -> Command {
        match value {
            cmd::READ => Command::Read,
            cmd::WRITE => Command::Write,
            cmd::DISC => Command::Disconnect,
            cmd::FLUSH => Command::Flush,
            cmd::TRIM => Command::Trim,
            cmd::CACHE => Command::Cache,
            cmd::WRITE_ZEROES => Command::WriteZeroes,
            cmd::BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// True for commands that change the export (covered by a later FLUSH).
    pub fn is_write(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }
}

/// A parsed request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Raw command flags (`NBD_CMD_FLAG_*`), unknown bits kept so they can be refused.
    pub flags: u16,
    /// The command.
    pub command: Command,
    /// Opaque cookie echoed in the reply.
    pub handle: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length (of the range; also of the payload for a WRITE).
    pub length: u32,
}

impl Request {
    /// Bytes of payload following the header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }

    /// True when `flag` (one of [`cmd_flags`]) is set.
    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Decodes a request header. Pure: the only failure is a bad magic; every semantic check is
/// in [`check_request`], so a hostile header can always be answered with an error.
pub fn parse_request(header: &[u8; REQUEST_HEADER_LEN]) -> Result<Request, ProtocolError> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != REQUEST_MAGIC {
        return Err(ProtocolError::BadMagic { found: magic });
    }
    let flags = u16::from_be_bytes([header[4], header[5]]);
    let kind = u16::from_be_bytes([header[6], header[7]]);
    let mut handle = [0u8; 8];
    handle.copy_from_slice(&header[8..16]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&header[16..24]);
    let length = u32::from_be_bytes([header[24], header[25], header[26], header[27]]);
    Ok(Request {
        flags,
        command: Command::from_wire(kind),
        handle: u64::from_be_bytes(handle),
        offset: u64::from_be_bytes(offset),
        length,
    })
}

/// Encodes a request header (the inverse of [`parse_request`]; used by tests and tools).
pub fn encode_request(
    flags: u16,
    command: u16,
    handle: u64,
    offset: u64,
    length: u32,
) -> [u8; REQUEST_HEADER_LEN] {
    let mut out = [0u8; REQUEST_HEADER_LEN];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&command.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out[16..24].copy_from_slice(&offset.to_be_bytes());
    out[24..28].copy_from_slice(&length.to_be_bytes());
    out
}

/// NBD error codes (the spec's fixed list, errno-compatible values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Errno {
    /// Operation not permitted (write on a read-only export).
    Perm = 1,
    /// Input/output error (default for backend failures).
    Io = 5,
    /// Out of memory.
    NoMem = 12,
    /// Invalid argument (bad flags, out-of-range read, unknown command).
    Inval = 22,
    /// No space (write beyond the end of the export).
    NoSpc = 28,
    /// Value too large.
    Overflow = 75,
    /// Not supported (`FAST_ZERO` that would not be fast).
    NotSup = 95,
    /// The server is shutting down.
    Shutdown = 108,
}

impl Errno {
    /// The value sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Maps a backend error to the closest NBD error.
    pub fn from_io(err: &io::Error) -> Errno {
        if let Some(raw) = err.raw_os_error() {
            return match raw {
                libc::EPERM | libc::EACCES | libc::EROFS => Errno::Perm,
                libc::ENOMEM => Errno::NoMem,
                libc::EINVAL => Errno::Inval,
                libc::ENOSPC | libc::EDQUOT | libc::EFBIG => Errno::NoSpc,
                libc::EOVERFLOW => Errno::Overflow,
                libc::EOPNOTSUPP => Errno::NotSup,
                libc::ESHUTDOWN => Errno::Shutdown,
                _ => Errno::Io,
            };
        }
        match err.kind() {
            io::ErrorKind::PermissionDenied => Errno::Perm,
            io::ErrorKind::InvalidInput => Errno::Inval,
            io::ErrorKind::OutOfMemory => Errno::NoMem,
            io::ErrorKind::Unsupported => Errno::NotSup,
            _ => Errno::Io,
        }
    }
}

/// What a request is checked against: the negotiated session and the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Export size in bytes, as advertised.
    pub export_size: u64,
    /// The export refuses writes.
    pub read_only: bool,
    /// Structured replies were negotiated (makes `DF` valid).
    pub structured: bool,
    /// `base:allocation` was selected for this export (makes `BLOCK_STATUS` valid).
    pub block_status: bool,
    /// Largest READ/WRITE length accepted (the advertised maximum block size).
    pub max_request_bytes: u32,
}

/// Checks a request before it is executed; the `Err` is the error to reply with.
///
/// Pure. The order follows the spec's preferences: unknown command or flag → `EINVAL`;
/// write on a read-only export → `EPERM`; write past the end → `ENOSPC`; read, trim or block
/// status past the end → `EINVAL`. `DISC` always passes (it has no reply).
pub fn check_request(req: &Request, limits: &RequestLimits) -> Result<(), Errno> {
    use cmd_flags::{DF, FAST_ZERO, FUA, NO_HOLE, REQ_ONE};
    // FUA is valid on every command once SEND_FUA is advertised (which we always do).
    let allowed = FUA
        | match req.command {
            Command::Read if limits.structured => DF,
            Command::WriteZeroes => NO_HOLE | FAST_ZERO,
            Command::BlockStatus => REQ_ONE,
            _ => 0,
        };
    let in_range = req
        .offset
        .checked_add(u64::from(req.length))
        .is_some_and(|end| end <= limits.export_size);
    match req.command {
        Command::Disconnect => return Ok(()),
        Command::Unknown(_) | Command::Cache => return Err(Errno::Inval),
        _ => {}
    }
    if req.flags & !allowed != 0 {
        return Err(Errno::Inval);
    }
    match req.command {
        Command::Read => {
            if req.length > limits.max_request_bytes || !in_range {
                return Err(Errno::Inval);
            }
        }
        Command::Write | Command::WriteZeroes | Command::Trim => {
            if limits.read_only {
                return Err(Errno::Perm);
            }
            if req.command == Command::Write && req.length > limits.max_request_bytes {
                return Err(Errno::Inval);
            }
            if !in_range {
                return Err(if req.command == Command::Trim {
                    Errno::Inval
                } else {
                    Errno::NoSpc
                });
            }
        }
        Command::Flush => {
            if req.offset != 0 || req.length != 0 {
                return Err(Errno::Inval);
            }
        }
        Command::BlockStatus => {
            if !limits.block_status || req.length == 0 || !in_range {
                return Err(Errno::Inval);
            }
        }
        Command::Disconnect | Command::Unknown(_) | Command::Cache => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            export_size: 1 << 20,
            read_only: false,
            structured: true,
            block_status: true,
            max_request_bytes: 1 << 16,
        }
    }

    fn req(command: u16, flags: u16, offset: u64, length: u32) -> Request {
        parse_request(&encode_request(flags, command, 7, offset, length)).unwrap()
    }

    #[test]
    fn bad_magic_is_reported_with_the_value() {
        let mut header = encode_request(0, cmd::READ, 1, 0, 512);
        header[0] = 0x12;
        let err = parse_request(&header).unwrap_err();
        assert_eq!(err, ProtocolError::BadMagic { found: 0x1260_9513 });
        assert!(err.to_string().contains("0x12609513"));
    }

    #[test]
    fn fields_decode_big_endian() {
        let r = req(cmd::WRITE, cmd_flags::FUA, 0x0102_0304_0506_0708, 0x1000);
        assert_eq!(r.command, Command::Write);
        assert_eq!(r.offset, 0x0102_0304_0506_0708);
        assert_eq!(r.length, 0x1000);
        assert_eq!(r.handle, 7);
        assert_eq!(r.payload_len(), 0x1000);
        assert!(r.has_flag(cmd_flags::FUA));
        assert_eq!(req(cmd::READ, 0, 0, 9).payload_len(), 0);
        assert_eq!(req(42, 0, 0, 0).command, Command::Unknown(42));
    }

    #[test]
    fn errors_follow_the_spec() {
        let l = limits();
        let size = l.export_size;
        assert_eq!(check_request(&req(cmd::READ, 0, 0, 4096), &l), Ok(()));
        assert_eq!(
            check_request(&req(cmd::READ, 0, size, 1), &l),
            Err(Errno::Inval)
        );
        assert_eq!(check_request(&req(cmd::READ, 0, size, 0), &l), Ok(()));
        assert_eq!(
            check_request(&req(cmd::READ, 0, u64::MAX, 2), &l),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::READ, 0, 0, 1 << 17), &l),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::WRITE, 0, size - 1, 2), &l),
            Err(Errno::NoSpc)
        );
        assert_eq!(
            check_request(&req(cmd::WRITE_ZEROES, 0, size, 1), &l),
            Err(Errno::NoSpc)
        );
        assert_eq!(
            check_request(&req(cmd::TRIM, 0, size, 1), &l),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::READ, cmd_flags::NO_HOLE, 0, 1), &l),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::READ, cmd_flags::DF, 0, 1), &l),
            Ok(())
        );
        assert_eq!(
            check_request(&req(cmd::READ, 1 << 9, 0, 1), &l),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::FLUSH, 0, 1, 0), &l),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::FLUSH, cmd_flags::FUA, 0, 0), &l),
            Ok(())
        );
        assert_eq!(
            check_request(&req(cmd::CACHE, 0, 0, 1), &l),
            Err(Errno::Inval)
        );
        assert_eq!(check_request(&req(99, 0, 0, 1), &l), Err(Errno::Inval));
        assert_eq!(
            check_request(&req(cmd::BLOCK_STATUS, 0, 0, 0), &l),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::BLOCK_STATUS, cmd_flags::REQ_ONE, 0, 1), &l),
            Ok(())
        );
        assert_eq!(check_request(&req(cmd::DISC, 0xffff, 9, 9), &l), Ok(()));

        let ro = RequestLimits {
            read_only: true,
            ..l
        };
        for c in [cmd::WRITE, cmd::TRIM, cmd::WRITE_ZEROES] {
            assert_eq!(check_request(&req(c, 0, 0, 1), &ro), Err(Errno::Perm));
        }
        let plain = RequestLimits {
            structured: false,
            block_status: false,
            ..l
        };
        assert_eq!(
            check_request(&req(cmd::READ, cmd_flags::DF, 0, 1), &plain),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&req(cmd::BLOCK_STATUS, 0, 0, 1), &plain),
            Err(Errno::Inval)
        );
    }

    #[test]
    fn io_errors_map_to_nbd_codes() {
        let e = |raw| Errno::from_io(&io::Error::from_raw_os_error(raw));
        assert_eq!(e(libc::ENOSPC), Errno::NoSpc);
        assert_eq!(e(libc::EDQUOT), Errno::NoSpc);
        assert_eq!(e(libc::EROFS), Errno::Perm);
        assert_eq!(e(libc::EBADF), Errno::Io);
        assert_eq!(
            Errno::from_io(&io::Error::new(io::ErrorKind::InvalidInput, "x")),
            Errno::Inval
        );
        assert_eq!(Errno::from_io(&io::Error::other("x")), Errno::Io);
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(flags: u16, command: u16, handle: u64, offset: u64, length: u32) {
            let r = parse_request(&encode_request(flags, command, handle, offset, length)).unwrap();
            prop_assert_eq!(r.flags, flags);
            prop_assert_eq!(r.handle, handle);
            prop_assert_eq!(r.offset, offset);
            prop_assert_eq!(r.length, length);
        }

        #[test]
        fn accepted_requests_stay_in_range(command in 0u16..10, flags: u16, offset: u64, length: u32,
                                           size in 0u64..1 << 40, ro: bool) {
            let l = RequestLimits { export_size: size, read_only: ro, ..limits() };
            let r = parse_request(&encode_request(flags, command, 1, offset, length)).unwrap();
            if check_request(&r, &l).is_ok() && r.command != Command::Disconnect && r.command != Command::Flush {
                prop_assert!(offset.checked_add(u64::from(length)).is_some_and(|e| e <= size));
                prop_assert!(!(ro && r.command.is_write()));
                if matches!(r.command, Command::Read | Command::Write) {
                    prop_assert!(length <= l.max_request_bytes);
                }
            }
        }
    }
}
