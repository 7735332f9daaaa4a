//! Wire constants of the NBD protocol (the NBD project's `doc/proto.md`).
//!
//! Every multi-byte field on the wire is big-endian. Names follow the spec with the `NBD_`
//! prefix dropped, grouped by the phase that uses them.

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second server magic of the newstyle handshake, and prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply (fixed newstyle).
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Size of a transmission request header (without the WRITE payload).
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const STRUCTURED_HEADER_LEN: usize = 20;
/// Size of an option request header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;

/// Handshake flags (16 bits, server to client).
pub mod handshake_flags {
    /// The server speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// The server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits, client to server).
pub mod client_flags {
    /// The client speaks fixed newstyle.
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// The client wants no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub const C_NO_ZEROES: u32 = 1 << 1;
    /// Every flag this server understands; any other bit makes it drop the connection.
    pub const KNOWN: u32 = C_FIXED_NEWSTYLE | C_NO_ZEROES;
}

/// Transmission flags (16 bits, sent with the export size).
pub mod transmission_flags {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export refuses writes.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational medium hint (never set by us).
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` and `NBD_CMD_FLAG_NO_HOLE` are supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_CMD_FLAG_DF` is supported on reads (only with structured replies).
    pub const SEND_DF: u16 = 1 << 7;
    /// Flush and FUA effects are visible across all connections to the export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` is understood (never set by us).
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported on `NBD_CMD_WRITE_ZEROES`.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes (`NBD_OPT_*`).
pub mod opt {
    /// Choose an export and enter transmission; cannot be answered with an error.
    pub const EXPORT_NAME: u32 = 1;
    /// Soft disconnect.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// Withdrawn extension.
    pub const PEEK_EXPORT: u32 = 4;
    /// Upgrade to TLS (accepted in FORCEDTLS mode, refused without TLS credentials).
    pub const STARTTLS: u32 = 5;
    /// Describe one export.
    pub const INFO: u32 = 6;
    /// Describe one export and enter transmission.
    pub const GO: u32 = 7;
    /// Enable structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// 64-bit extended headers (not supported: answered `NBD_REP_ERR_UNSUP`).
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (`NBD_REP_*`).
pub mod rep {
    /// Success, no more data.
    pub const ACK: u32 = 1;
    /// One export of a list.
    pub const SERVER: u32 = 2;
    /// One piece of information about an export.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    /// Bit set on every error reply.
    pub const ERR_BIT: u32 = 1 << 31;
    /// Unknown option.
    pub const ERR_UNSUP: u32 = ERR_BIT | 1;
    /// Known option refused by policy.
    pub const ERR_POLICY: u32 = ERR_BIT | 2;
    /// Syntactically or semantically invalid option.
    pub const ERR_INVALID: u32 = ERR_BIT | 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = ERR_BIT | 4;
    /// TLS required (FORCEDTLS mode, before `STARTTLS`).
    pub const ERR_TLS_REQD: u32 = ERR_BIT | 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = ERR_BIT | 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = ERR_BIT | 7;
    /// Block size information must be requested first.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR_BIT | 8;
    /// Request or reply too large.
    pub const ERR_TOO_BIG: u32 = ERR_BIT | 9;
}

/// Information types of `NBD_REP_INFO` (`NBD_INFO_*`).
pub mod info {
    /// Size and transmission flags (mandatory before a successful `NBD_REP_ACK`).
    pub const EXPORT: u16 = 0;
    /// Canonical export name.
    pub const NAME: u16 = 1;
    /// Human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types (`NBD_CMD_*`).
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (followed by `length` bytes of payload).
    pub const WRITE: u16 = 1;
    /// Disconnect (no reply).
    pub const DISC: u16 = 2;
    /// Make completed writes durable.
    pub const FLUSH: u16 = 3;
    /// Discard hint.
    pub const TRIM: u16 = 4;
    /// Prefetch hint (not supported).
    pub const CACHE: u16 = 5;
    /// Write zeroes without payload.
    pub const WRITE_ZEROES: u16 = 6;
    /// Query metadata (block status).
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod cmd_flags {
    /// Force unit access: reply only once the data written by this command is durable.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES`: allocate, do not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `READ`: at most one content chunk.
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS`: at most one extent.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES`: fail with `ENOTSUP` unless zeroing is faster than writing.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// `PAYLOAD_LEN` (extended headers only; never valid here).
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`) and flags.
pub mod reply {
    /// Last chunk of a reply.
    pub const FLAG_DONE: u16 = 1 << 0;
    /// Empty final chunk.
    pub const TYPE_NONE: u16 = 0;
    /// Data at an offset.
    pub const TYPE_OFFSET_DATA: u16 = 1;
    /// Zeroes at an offset.
    pub const TYPE_OFFSET_HOLE: u16 = 2;
    /// Extents of one metadata context.
    pub const TYPE_BLOCK_STATUS: u16 = 5;
    /// Error without offset.
    pub const TYPE_ERROR: u16 = (1 << 15) | 1;
    /// Error at an offset.
    pub const TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;
}

/// The one metadata context we serve.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id we give `base:allocation` when a client selects it (any nonzero value works).
pub const BASE_ALLOCATION_ID: u32 = 1;

/// `NBD_STATE_HOLE` bit of a `base:allocation` extent.
pub const STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO` bit of a `base:allocation` extent.
pub const STATE_ZERO: u32 = 1 << 1;

/// Longest string (export name, query, message) the spec allows.
pub const MAX_STRING_LEN: usize = 4096;
