//! `vdisk write` and `vdisk read`: guest bytes in and out.

use crate::size::parse_size;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const CHUNK: usize = 4 << 20;

#[derive(clap::Args)]
pub struct WriteArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Guest offset in bytes (K/M/G suffixes accepted; default 0).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Input file (default: stdin).
    #[arg(long, short = 'i')]
    pub input: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ReadArgs {
    /// The disk bundle.
    pub disk: PathBuf,
    /// Guest offset in bytes (default 0).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Bytes to read (default: to the end of the disk).
    #[arg(long, value_parser = parse_size)]
    pub length: Option<u64>,
    /// Read a snapshot (name or id) instead of the head.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Output file (default: stdout).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn write(a: WriteArgs) -> Result<ExitCode> {
    let disk = crate::open::disk(&a.disk)?;
    let size = disk.virtual_size();
    let (mut input, total): (Box<dyn Read>, Option<u64>) = match &a.input {
        Some(p) => {
            let f = File::open(p).with_context(|| format!("cannot open input {}", p.display()))?;
            let len = f.metadata()?.len();
            if a.offset.checked_add(len).is_none_or(|end| end > size) {
                bail!(
                    "--input {}: {len} bytes at --offset {} pass the end of {} ({size} bytes)",
                    p.display(),
                    a.offset,
                    a.disk.display()
                );
            }
            (Box::new(f), Some(len))
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let bar = match total {
        Some(t) => crate::progress::bytes(t, "writing"),
        None => crate::progress::counter("writing"),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut pos = a.offset;
    loop {
        let n = fill(&mut input, &mut buf).context("reading input")?;
        if n == 0 {
            break;
        }
        if pos.checked_add(n as u64).is_none_or(|end| end > size) {
            bail!(
                "the input passes the end of {} ({size} bytes) at offset {pos}; \
                 what came before is written but not flushed",
                a.disk.display()
            );
        }
        disk.write_at(&buf[..n], pos).with_context(|| {
            format!("writing {n} bytes at offset {pos} of {}", a.disk.display())
        })?;
        pos += n as u64;
        bar.inc(n as u64);
    }
    disk.flush().context("flush")?;
    disk.close().context("close")?;
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

pub fn read(a: ReadArgs) -> Result<ExitCode> {
    let v = crate::open::view(&a.disk, a.snapshot.as_deref())?;
    let size = v.virtual_size();
    if a.offset > size {
        bail!(
            "--offset {} is past the end of {} ({size} bytes)",
            a.offset,
            a.disk.display()
        );
    }
    let len = a.length.unwrap_or(size - a.offset);
    if a.offset.checked_add(len).is_none_or(|end| end > size) {
        bail!(
            "--length {len} at --offset {} passes the end of {} ({size} bytes)",
            a.offset,
            a.disk.display()
        );
    }
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let bar = crate::progress::bytes(len, "reading");
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let copied = (|| -> Result<()> {
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let at = a.offset + done;
            v.read_at(&mut buf[..n], at).with_context(|| {
                format!("reading {n} bytes at offset {at} of {}", a.disk.display())
            })?;
            out.write_all(&buf[..n]).context("writing output")?;
            done += n as u64;
            bar.inc(n as u64);
        }
        out.flush().context("writing output")
    })();
    bar.finish_and_clear();
    if let Err(e) = copied {
        drop(out);
        // Never leave a file that looks like a complete read behind.
        if let Some(p) = &a.output {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}
