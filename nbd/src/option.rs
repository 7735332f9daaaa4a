//! Option haggling messages: the pure parsers of the option header and of each option's data.
//!
//! The server reads an option's data (bounded by [`MAX_OPTION_DATA`]) before parsing it, so
//! these functions see whole messages and never touch a socket; they are what the fuzz target
//! drives.

use crate::proto::{opt, IHAVEOPT, MAX_STRING_LEN, OPTION_HEADER_LEN};

/// Largest option data the server reads; longer options are drained and answered
/// `NBD_REP_ERR_TOO_BIG` (or, beyond [`MAX_OPTION_DRAIN`], cut off). The largest legitimate
/// option is a `SET_META_CONTEXT` with a 4 KiB name and a few 4 KiB queries.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// Largest oversized option data the server still drains to keep the session alive.
pub const MAX_OPTION_DRAIN: u32 = 1024 * 1024;

/// A malformed option; `option` names the option and `offset` is the byte offset inside
/// the option's data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The option header does not start with `IHAVEOPT`.
    #[error("NBD option header: magic at byte 0 is {found:#018x}, expected {IHAVEOPT:#018x}")]
    BadMagic {
        /// The value found.
        found: u64,
    },
    /// An option that takes no data came with some.
    #[error("NBD option {option}: {len} bytes of data, expected none")]
    UnexpectedData {
        /// Option name.
        option: &'static str,
        /// Data length received.
        len: usize,
    },
    /// A field runs past the end of the option data.
    #[error("NBD option {option}: field {field} at data offset {offset} runs past the end ({len} bytes)")]
    Truncated {
        /// Option name.
        option: &'static str,
        /// Field name.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Total data length.
        len: usize,
    },
    /// Bytes left over after the last field.
    #[error("NBD option {option}: {extra} unexpected bytes after the last field at data offset {offset}")]
    TrailingData {
        /// Option name.
        option: &'static str,
        /// Offset of the first extra byte.
        offset: usize,
        /// Number of extra bytes.
        extra: usize,
    },
    /// A string longer than the spec's 4096-byte limit.
    #[error("NBD option {option}: {field} at data offset {offset} is {len} bytes, limit {MAX_STRING_LEN}")]
    StringTooLong {
        /// Option name.
        option: &'static str,
        /// Field name.
        field: &'static str,
        /// Offset of the string.
        offset: usize,
        /// Declared length.
        len: usize,
    },
    /// A string that is not UTF-8 or contains NUL.
    #[error("NBD option {option}: {field} at data offset {offset} is not a NUL-free UTF-8 string")]
    BadString {
        /// Option name.
        option: &'static str,
        /// Field name.
        field: &'static str,
        /// Offset of the string.
        offset: usize,
    },
}

/// The fixed 16-byte header of every option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code (`NBD_OPT_*`).
    pub option: u32,
    /// Length of the data that follows.
    pub length: u32,
}

/// Decodes an option header.
pub fn parse_option_header(header: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, OptionError> {
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[0..8]);
    let magic = u64::from_be_bytes(magic);
    if magic != IHAVEOPT {
        return Err(OptionError::BadMagic { found: magic });
    }
    Ok(OptionHeader {
        option: u32::from_be_bytes([header[8], header[9], header[10], header[11]]),
        length: u32::from_be_bytes([header[12], header[13], header[14], header[15]]),
    })
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name; empty for the default export.
    pub name: String,
    /// Requested `NBD_INFO_*` items (unknown ones are kept and ignored by the server).
    pub items: Vec<u16>,
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export the contexts are for.
    pub export: String,
    /// Queries such as `base:allocation` or `base:`.
    pub queries: Vec<String>,
}

/// A decoded option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName(String),
    /// `NBD_OPT_ABORT` (any data is ignored, as the spec asks).
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// Any option we do not implement (answered `NBD_REP_ERR_UNSUP`).
    Unsupported(u32),
}

/// Human name of an option code, for messages.
pub fn option_name(option: u32) -> &'static str {
    match option {
        opt::EXPORT_NAME => "EXPORT_NAME",
        opt::ABORT => "ABORT",
        opt::LIST => "LIST",
        opt::PEEK_EXPORT => "PEEK_EXPORT",
        opt::STARTTLS => "STARTTLS",
        opt::INFO => "INFO",
        opt::GO => "GO",
        opt::STRUCTURED_REPLY => "STRUCTURED_REPLY",
        opt::LIST_META_CONTEXT => "LIST_META_CONTEXT",
        opt::SET_META_CONTEXT => "SET_META_CONTEXT",
        opt::EXTENDED_HEADERS => "EXTENDED_HEADERS",
        _ => "unknown",
    }
}

/// Decodes the data of option `option`. Pure and total: every input yields a value or an
/// error naming the field.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, OptionError> {
    let name = option_name(option);
    let no_data = |value: ClientOption| {
        if data.is_empty() {
            Ok(value)
        } else {
            Err(OptionError::UnexpectedData {
                option: name,
                len: data.len(),
            })
        }
    };
    match option {
        opt::EXPORT_NAME => Ok(ClientOption::ExportName(check_string(
            name,
            "export name",
            0,
            data,
        )?)),
        opt::ABORT => Ok(ClientOption::Abort),
        opt::LIST => no_data(ClientOption::List),
        opt::STARTTLS => no_data(ClientOption::StartTls),
        opt::STRUCTURED_REPLY => no_data(ClientOption::StructuredReply),
        opt::INFO | opt::GO => {
            let mut r = Fields::new(name, data);
            let name_len = r.u32("name length")?;
            let export = r.string("export name", name_len)?;
            let count = r.u16("information request count")?;
            let mut items = Vec::with_capacity(usize::from(count).min(r.remaining() / 2));
            for _ in 0..count {
                items.push(r.u16("information request")?);
            }
            r.finish()?;
            let req = InfoRequest {
                name: export,
                items,
            };
            Ok(if option == opt::INFO {
                ClientOption::Info(req)
            } else {
                ClientOption::Go(req)
            })
        }
        opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
            let mut r = Fields::new(name, data);
            let name_len = r.u32("export name length")?;
            let export = r.string("export name", name_len)?;
            let count = r.u32("query count")?;
            // Each query takes at least its 4-byte length: bound the allocation by the data.
            let cap = usize::try_from(count)
                .unwrap_or(usize::MAX)
                .min(r.remaining() / 4);
            let mut queries = Vec::with_capacity(cap);
            for _ in 0..count {
                let len = r.u32("query length")?;
                queries.push(r.string("query", len)?);
            }
            r.finish()?;
            let req = MetaContextRequest { export, queries };
            Ok(if option == opt::LIST_META_CONTEXT {
                ClientOption::ListMetaContext(req)
            } else {
                ClientOption::SetMetaContext(req)
            })
        }
        other => Ok(ClientOption::Unsupported(other)),
    }
}

/// Validates an NBD string: at most 4096 bytes, UTF-8, no NUL.
fn check_string(
    option: &'static str,
    field: &'static str,
    offset: usize,
    bytes: &[u8],
) -> Result<String, OptionError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(OptionError::StringTooLong {
            option,
            field,
            offset,
            len: bytes.len(),
        });
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\0') => Ok(s.to_owned()),
        _ => Err(OptionError::BadString {
            option,
            field,
            offset,
        }),
    }
}

/// A bounds-checked big-endian field reader over an option's data.
struct Fields<'a> {
    option: &'static str,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(option: &'static str, data: &'a [u8]) -> Self {
        Fields {
            option,
            data,
            pos: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], OptionError> {
        let truncated = OptionError::Truncated {
            option: self.option,
            field,
            offset: self.pos,
            len: self.data.len(),
        };
        let end = self.pos.checked_add(n).ok_or(truncated.clone())?;
        let bytes = self.data.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, OptionError> {
        let b = self.take(field, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, OptionError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, field: &'static str, len: u32) -> Result<String, OptionError> {
        let offset = self.pos;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_STRING_LEN {
            return Err(OptionError::StringTooLong {
                option: self.option,
                field,
                offset,
                len,
            });
        }
        let bytes = self.take(field, len)?;
        check_string(self.option, field, offset, bytes)
    }

    fn finish(&self) -> Result<(), OptionError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(OptionError::TrailingData {
                option: self.option,
                offset: self.pos,
                extra,
            }),
        }
    }
}

/// Encodes `NBD_OPT_INFO`/`NBD_OPT_GO` data (inverse of the parser; for tests and tools).
pub fn encode_info_request(req: &InfoRequest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&len_u32(req.name.len()).to_be_bytes());
    out.extend_from_slice(req.name.as_bytes());
    out.extend_from_slice(
        &u16::try_from(req.items.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for item in req.items.iter().take(usize::from(u16::MAX)) {
        out.extend_from_slice(&item.to_be_bytes());
    }
    out
}

/// Encodes `NBD_OPT_*_META_CONTEXT` data (inverse of the parser; for tests and tools).
pub fn encode_meta_context_request(req: &MetaContextRequest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&len_u32(req.export.len()).to_be_bytes());
    out.extend_from_slice(req.export.as_bytes());
    out.extend_from_slice(&len_u32(req.queries.len()).to_be_bytes());
    for q in &req.queries {
        out.extend_from_slice(&len_u32(q.len()).to_be_bytes());
        out.extend_from_slice(q.as_bytes());
    }
    out
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_magic_is_checked() {
        let mut h = [0u8; 16];
        h[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        h[8..12].copy_from_slice(&7u32.to_be_bytes());
        h[12..16].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            parse_option_header(&h),
            Ok(OptionHeader {
                option: 7,
                length: 9
            })
        );
        h[0] = 0;
        assert!(matches!(
            parse_option_header(&h),
            Err(OptionError::BadMagic { .. })
        ));
    }

    #[test]
    fn go_parses_and_rejects_bad_lengths() {
        let data = encode_info_request(&InfoRequest {
            name: "s1".into(),
            items: vec![3, 1],
        });
        assert_eq!(
            parse_option(opt::GO, &data),
            Ok(ClientOption::Go(InfoRequest {
                name: "s1".into(),
                items: vec![3, 1]
            }))
        );
        // Name length pointing past the end.
        let mut bad = data.clone();
        bad[3] = 200;
        assert!(matches!(
            parse_option(opt::GO, &bad),
            Err(OptionError::Truncated {
                field: "export name",
                ..
            })
        ));
        // Info count larger than the data.
        let mut bad = data.clone();
        let n = bad.len();
        bad[n - 5] = 9;
        assert!(matches!(
            parse_option(opt::INFO, &bad),
            Err(OptionError::Truncated { .. })
        ));
        // One byte too many.
        let mut bad = data;
        bad.push(0);
        assert!(matches!(
            parse_option(opt::GO, &bad),
            Err(OptionError::TrailingData { extra: 1, .. })
        ));
        // Huge name length.
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0, 0]);
        assert!(matches!(
            parse_option(opt::GO, &huge),
            Err(OptionError::StringTooLong { .. })
        ));
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        assert!(matches!(
            parse_option(opt::EXPORT_NAME, b"a\0b"),
            Err(OptionError::BadString { .. })
        ));
        assert!(matches!(
            parse_option(opt::EXPORT_NAME, &[0xff, 0xfe]),
            Err(OptionError::BadString { .. })
        ));
        assert!(matches!(
            parse_option(opt::EXPORT_NAME, &[b'a'; 4097]),
            Err(OptionError::StringTooLong { .. })
        ));
        assert_eq!(
            parse_option(opt::EXPORT_NAME, b""),
            Ok(ClientOption::ExportName(String::new()))
        );
    }

    #[test]
    fn data_on_dataless_options_is_refused_except_abort() {
        assert!(parse_option(opt::LIST, b"x").is_err());
        assert!(parse_option(opt::STARTTLS, b"x").is_err());
        assert!(parse_option(opt::STRUCTURED_REPLY, b"x").is_err());
        assert_eq!(parse_option(opt::ABORT, b"x"), Ok(ClientOption::Abort));
        assert_eq!(
            parse_option(opt::EXTENDED_HEADERS, b""),
            Ok(ClientOption::Unsupported(opt::EXTENDED_HEADERS))
        );
    }

    #[test]
    fn meta_context_query_count_is_bounded_by_the_data() {
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_option(opt::SET_META_CONTEXT, &data),
            Err(OptionError::Truncated {
                field: "query length",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn meta_context_round_trip(export in "[a-z0-9]{0,20}", queries in proptest::collection::vec("[a-z:]{0,30}", 0..5)) {
            let req = MetaContextRequest { export, queries };
            let data = encode_meta_context_request(&req);
            prop_assert_eq!(parse_option(opt::SET_META_CONTEXT, &data), Ok(ClientOption::SetMetaContext(req.clone())));
            prop_assert_eq!(parse_option(opt::LIST_META_CONTEXT, &data), Ok(ClientOption::ListMetaContext(req)));
        }

        #[test]
        fn info_round_trip(name in "\\PC{0,40}", items in proptest::collection::vec(any::<u16>(), 0..10)) {
            let req = InfoRequest { name, items };
            let data = encode_info_request(&req);
            prop_assert_eq!(parse_option(opt::INFO, &data), Ok(ClientOption::Info(req)));
        }

        #[test]
        fn any_bytes_parse_without_panic(option in 0u32..16, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_option(option, &data);
        }
    }
}
