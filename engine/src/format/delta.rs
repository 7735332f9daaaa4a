//! The delta stream (format-spec/delta-stream.md): header, records, end record.
//!
//! Pure: [`RecordWriter`] encodes into any `Write`, [`RecordReader`] decodes from any `Read`
//! one record at a time (so a stream is verified without holding it), and [`encode`] /
//! [`decode`] are the whole-stream pair over byte slices (tests and fuzzing). Every field is
//! checked and refused with a [`FieldError`] naming it; the blake3 and counts of the end
//! record are checked before the end is reported.

use super::{le32, le64, Id};
use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Stream magic.
pub const MAGIC: &[u8; 8] = b"VDSKDLTA";
/// Stream format version.
pub const VERSION: u32 = 1;
/// Largest data record.
pub const MAX_DATA_RECORD: u32 = 4 << 20;
/// Largest header JSON.
pub const MAX_HEADER_JSON: u32 = 1 << 20;

const REC_DATA: u8 = b'D';
const REC_ZERO: u8 = b'Z';
const REC_END: u8 = b'E';

/// A snapshot's identity as a stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSnapshot {
    /// Snapshot id (kept by the importer).
    pub id: Id,
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_ns: u64,
}

/// The stream header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    /// Guest size of the disk.
    pub virtual_size: u64,
    /// Cluster size of the source (informational: any geometry can import it).
    pub cluster_size: u64,
    /// The bundle the stream was made from.
    pub source_bundle: Id,
    /// The snapshot the stream starts from (null: a full stream).
    pub from: Option<StreamSnapshot>,
    /// The snapshot the stream reproduces.
    pub to: StreamSnapshot,
    /// When the stream was made.
    pub created_ns: u64,
}

/// One record of the body (the data of a `D` record travels beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `len` bytes of data at `offset`.
    Data { offset: u64, len: u32 },
    /// Zeros over `[offset, offset + len)`.
    Zero { offset: u64, len: u64 },
}

/// Counts the end record carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `D` + `Z` records.
    pub records: u64,
    /// Sum of `D` lengths.
    pub data_bytes: u64,
    /// Sum of `Z` lengths.
    pub zero_bytes: u64,
}

fn bad(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError::new(field, reason)
}

impl StreamHeader {
    /// Encode magic, version, JSON and crc (the bytes the body's blake3 starts with).
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut head = Vec::with_capacity(20 + json.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(json.len() as u32).to_le_bytes());
        head.extend_from_slice(&json);
        let crc = crc32fast::hash(&head);
        head.extend_from_slice(&crc.to_le_bytes());
        head
    }

    /// Read and check a header from `r`; returns it and its bytes.
    pub fn read(r: &mut dyn Read) -> Result<(StreamHeader, Vec<u8>), FieldError> {
        let mut fixed = [0u8; 16];
        r.read_exact(&mut fixed)
            .map_err(|e| bad("header", format!("cannot be read ({e})")))?;
        if &fixed[0..8] != MAGIC {
            return Err(bad("magic", "not a vdisk delta stream (VDSKDLTA)"));
        }
        let version = le32(&fixed, 8);
        if version != VERSION {
            return Err(bad("version", format!("{version} (this build reads 1)")));
        }
        let jlen = le32(&fixed, 12);
        if jlen == 0 || jlen > MAX_HEADER_JSON {
            return Err(bad("header length", format!("{jlen} bytes")));
        }
        let mut head = fixed.to_vec();
        head.resize(16 + jlen as usize + 4, 0);
        r.read_exact(&mut head[16..])
            .map_err(|e| bad("header", format!("ends early ({e})")))?;
        let n = 16 + jlen as usize;
        if le32(&head, n) != crc32fast::hash(&head[..n]) {
            return Err(FieldError::checksum("header crc32"));
        }
        let h: StreamHeader =
            serde_json::from_slice(&head[16..n]).map_err(|e| bad("header", e.to_string()))?;
        Ok((h, head))
    }
}

/// Writes a stream: the header, then records into one zstd frame, then the end record.
pub struct RecordWriter<W: Write> {
    z: zstd::Encoder<'static, W>,
    hash: blake3::Hasher,
    totals: Totals,
}

impl<W: Write> RecordWriter<W> {
    /// Write `header` to `out` and start the body, compressed at `level` on `threads`.
    pub fn new(mut out: W, header: &StreamHeader, level: i32, threads: u32) -> io::Result<Self> {
        let head = header.encode();
        out.write_all(&head)?;
        let mut z = zstd::Encoder::new(out, level)?;
        z.include_checksum(true)?;
        if threads > 1 {
            let _ = z.multithread(threads);
        }
        let mut hash = blake3::Hasher::new();
        hash.update(&head);
        Ok(RecordWriter {
            z,
            hash,
            totals: Totals::default(),
        })
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.hash.update(b);
        self.z.write_all(b)
    }

    /// A `D` record (1 ≤ len ≤ 4 MiB).
    pub fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|&l| (1..=MAX_DATA_RECORD).contains(&l))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "data record length"))?;
        let mut r = [0u8; 13];
        r[0] = REC_DATA;
        r[1..9].copy_from_slice(&offset.to_le_bytes());
        r[9..13].copy_from_slice(&len.to_le_bytes());
        self.put(&r)?;
        self.put(bytes)?;
        self.totals.records += 1;
        self.totals.data_bytes += u64::from(len);
        Ok(())
    }

    /// A `Z` record.
    pub fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut r = [0u8; 17];
        r[0] = REC_ZERO;
        r[1..9].copy_from_slice(&offset.to_le_bytes());
        r[9..17].copy_from_slice(&len.to_le_bytes());
        self.put(&r)?;
        self.totals.records += 1;
        self.totals.zero_bytes += len;
        Ok(())
    }

    /// Write the end record and finish the frame; returns the totals and the output.
    pub fn finish(mut self) -> io::Result<(Totals, W)> {
        // The digest covers everything before the end record's fields, its type byte included.
        self.hash.update(&[REC_END]);
        let digest = self.hash.finalize();
        let t = self.totals;
        let mut end = vec![REC_END];
        for v in [t.records, t.data_bytes, t.zero_bytes] {
            end.extend_from_slice(&v.to_le_bytes());
        }
        end.extend_from_slice(digest.as_bytes());
        self.z.write_all(&end)?;
        let out = self.z.finish()?;
        Ok((t, out))
    }
}

/// Reads the body of a stream one record at a time, checking each against `virtual_size`,
/// and the end record against the blake3 and counts of everything before it.
pub struct RecordReader<'a> {
    z: zstd::Decoder<'static, io::BufReader<&'a mut dyn Read>>,
    hash: blake3::Hasher,
    totals: Totals,
    virtual_size: u64,
    done: bool,
}

impl<'a> RecordReader<'a> {
    /// Start reading the body that follows `head` (the header bytes) in `input`.
    pub fn new(
        input: &'a mut dyn Read,
        head: &[u8],
        virtual_size: u64,
    ) -> Result<Self, FieldError> {
        let z = zstd::Decoder::new(input).map_err(|e| bad("body", format!("zstd: {e}")))?;
        let mut hash = blake3::Hasher::new();
        hash.update(head);
        Ok(RecordReader {
            z,
            hash,
            totals: Totals::default(),
            virtual_size,
            done: false,
        })
    }

    fn read(&mut self, buf: &mut [u8], what: &str) -> Result<(), FieldError> {
        self.z
            .read_exact(buf)
            .map_err(|e| bad(what, format!("body ends early or is damaged ({e})")))?;
        self.hash.update(buf);
        Ok(())
    }

    fn in_range(&self, what: &str, offset: u64, len: u64) -> Result<(), FieldError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.virtual_size => Ok(()),
            _ => Err(bad(
                what,
                format!(
                    "range {offset}+{len} lies outside the disk ({} bytes)",
                    self.virtual_size
                ),
            )),
        }
    }

    /// The next record (a `D` record's bytes in `data`), or `None` after a valid end record
    /// with nothing following it.
    pub fn next(&mut self, data: &mut Vec<u8>) -> Result<Option<Record>, FieldError> {
        if self.done {
            return Ok(None);
        }
        let mut t = [0u8; 1];
        self.read(&mut t, "record type")?;
        match t[0] {
            REC_DATA => {
                let mut f = [0u8; 12];
                self.read(&mut f, "data record")?;
                let offset = le64(&f, 0);
                let len = le32(&f, 8);
                if len == 0 || len > MAX_DATA_RECORD {
                    return Err(bad("data record length", format!("{len}")));
                }
                self.in_range("data record", offset, u64::from(len))?;
                data.resize(len as usize, 0);
                let mut d = std::mem::take(data);
                let r = self.read(&mut d, "data record bytes");
                *data = d;
                r?;
                self.totals.records += 1;
                self.totals.data_bytes += u64::from(len);
                Ok(Some(Record::Data { offset, len }))
            }
            REC_ZERO => {
                let mut f = [0u8; 16];
                self.read(&mut f, "zero record")?;
                let (offset, len) = (le64(&f, 0), le64(&f, 8));
                self.in_range("zero record", offset, len)?;
                self.totals.records += 1;
                self.totals.zero_bytes += len;
                Ok(Some(Record::Zero { offset, len }))
            }
            REC_END => {
                let digest = self.hash.finalize();
                let mut f = [0u8; 56];
                self.z
                    .read_exact(&mut f)
                    .map_err(|e| bad("end record", format!("truncated ({e})")))?;
                if &f[24..56] != digest.as_bytes() {
                    return Err(FieldError::checksum("blake3"));
                }
                let got = Totals {
                    records: le64(&f, 0),
                    data_bytes: le64(&f, 8),
                    zero_bytes: le64(&f, 16),
                };
                if got != self.totals {
                    return Err(bad("end record", "counts do not match the records"));
                }
                // Nothing may follow the end record, in the frame or after it.
                let mut extra = [0u8; 1];
                match self.z.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(bad("body", "data after the end record")),
                    Err(e) => {
                        return Err(bad("body", format!("damaged after the end record ({e})")))
                    }
                }
                let inner = self.z.get_mut();
                match inner.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(bad("trailer", "bytes after the compressed body")),
                    Err(e) => return Err(bad("trailer", format!("cannot be read ({e})"))),
                }
                self.done = true;
                Ok(None)
            }
            other => Err(bad("record type", format!("unknown type {other:#x}"))),
        }
    }

    /// The totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }
}

/// A whole stream in memory: its header and records with their data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The header.
    pub header: StreamHeader,
    /// Records in order; a `Data` record's bytes beside it (empty for `Zero`).
    pub records: Vec<(Record, Vec<u8>)>,
}

/// Encode a whole stream (zstd level 1, one thread).
pub fn encode(d: &Delta) -> Vec<u8> {
    let mut w = match RecordWriter::new(Vec::new(), &d.header, 1, 1) {
        Ok(w) => w,
        Err(_) => return Vec::new(),
    };
    for (r, bytes) in &d.records {
        let ok = match r {
            Record::Data { offset, .. } => w.data(*offset, bytes),
            Record::Zero { offset, len } => w.zero(*offset, *len),
        };
        if ok.is_err() {
            return Vec::new();
        }
    }
    w.finish().map(|(_, v)| v).unwrap_or_default()
}

/// Decode and check a whole stream; at most `max_data` bytes of data are held.
pub fn decode(mut b: &[u8], max_data: u64) -> Result<Delta, FieldError> {
    let (header, head) = StreamHeader::read(&mut b)?;
    let vs = header.virtual_size;
    let mut records = Vec::new();
    let mut held = 0u64;
    {
        let mut input: &[u8] = b;
        let mut rr = RecordReader::new(&mut input, &head, vs)?;
        let mut data = Vec::new();
        while let Some(r) = rr.next(&mut data)? {
            let bytes = match r {
                Record::Data { len, .. } => {
                    held += u64::from(len);
                    if held > max_data {
                        return Err(bad("body", format!("more than {max_data} bytes of data")));
                    }
                    std::mem::take(&mut data)
                }
                Record::Zero { .. } => Vec::new(),
            };
            records.push((r, bytes));
        }
    }
    Ok(Delta { header, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Delta {
        Delta {
            header: StreamHeader {
                virtual_size: 1 << 20,
                cluster_size: 65536,
                source_bundle: Id([1; 16]),
                from: None,
                to: StreamSnapshot {
                    id: Id([2; 16]),
                    name: "s".into(),
                    created_ns: 5,
                },
                created_ns: 6,
            },
            records: vec![
                (
                    Record::Data {
                        offset: 4096,
                        len: 3,
                    },
                    vec![1, 2, 3],
                ),
                (
                    Record::Zero {
                        offset: 8192,
                        len: 4096,
                    },
                    vec![],
                ),
            ],
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let d = sample();
        let b = encode(&d);
        assert_eq!(decode(&b, 1 << 20).unwrap(), d);
        assert!(decode(&b[..b.len() - 1], 1 << 20).is_err());
        let mut t = b.clone();
        t.push(0);
        assert!(decode(&t, 1 << 20).is_err(), "trailing byte");
        // A flip is refused, or lies in zstd framing that decodes to the very same content
        // (the blake3 of the end record covers every decoded byte).
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            if let Ok(got) = decode(&c, 1 << 20) {
                let head = d.header.encode().len();
                assert!(
                    i >= head && got == d,
                    "flip at {i} of {} changed content",
                    b.len()
                );
            }
        }
        let mut far = sample();
        far.records[0].0 = Record::Data {
            offset: 1 << 20,
            len: 3,
        };
        assert!(decode(&encode(&far), 1 << 20).is_err(), "out of range");
        assert!(decode(&b, 2).is_err(), "data limit");
    }
}
