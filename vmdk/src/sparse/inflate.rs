//! Inflating one compressed grain into a buffer bounded by the grain size.

use crate::error::{Result, VmdkError};
use flate2::{Decompress, FlushDecompress, Status};

/// Inflates `input` (zlib-framed deflate, as VMware and qemu write it; raw deflate is
/// accepted as a fallback) into at most `grain_bytes` bytes and returns the data.
///
/// `file` and `offset` (of the grain in the file) name the grain in errors.
pub fn inflate_grain(input: &[u8], grain_bytes: usize, file: &str, offset: u64) -> Result<Vec<u8>> {
    match inflate_with(input, grain_bytes, true) {
        Ok(v) => Ok(v),
        Err(zlib_err) => inflate_with(input, grain_bytes, false).map_err(|_| VmdkError::Deflate {
            file: file.to_string(),
            offset,
            detail: zlib_err,
        }),
    }
}

fn inflate_with(
    input: &[u8],
    grain_bytes: usize,
    zlib: bool,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; grain_bytes];
    let mut d = Decompress::new(zlib);
    match d.decompress(input, &mut out, FlushDecompress::Finish) {
        Ok(Status::StreamEnd) => {
            let n =
                usize::try_from(d.total_out()).map_err(|_| "output size overflow".to_string())?;
            out.truncate(n);
            Ok(out)
        }
        Ok(_) => {
            if d.total_out() >= grain_bytes as u64 {
                Err(format!(
                    "inflates to more than the grain size ({grain_bytes} bytes)"
                ))
            } else {
                Err(format!(
                    "deflate stream truncated after {} input bytes",
                    d.total_in()
                ))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(1), true);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    }

    #[test]
    fn round_trip_and_bounds() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let z = zlib(&data);
        assert_eq!(inflate_grain(&z, 65536, "f", 0).unwrap(), data);
        let e = inflate_grain(&z, 4096, "f", 7).unwrap_err().to_string();
        assert!(e.contains("grain size") && e.contains("byte 7"), "{e}");
        let e = inflate_grain(&z[..z.len() / 2], 65536, "f", 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(inflate_grain(&[0xff; 64], 65536, "f", 0).is_err());
    }
}
