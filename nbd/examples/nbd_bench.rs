//! Side-by-side NBD benchmark: `qemu-img bench` against this crate's server and against
//! `qemu-nbd -f raw`, both serving the same raw file (data everywhere, so every read moves
//! data), one client connection each.
//!
//! ```text
//! cargo run --release -p vdisk-nbd --example nbd_bench -- [--count 100000] [--depth 16]
//!     [--size-mib 256] [--block 4096] [--write] [--mem]
//! ```
//!
//! `--mem` serves our side from a `MemDevice` holding the same bytes instead of the file.
//! Prints one line per server with IOPS, then the ratio ours / qemu-nbd.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk_nbd::{
    Export, ListenAddr, MemDevice, Server, ServerConfig, ShutdownSignal, StaticExports,
};

struct Options {
    count: u64,
    depth: u32,
    size_mib: u64,
    block: u64,
    write: bool,
    mem: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        count: 100_000,
        depth: 16,
        size_mib: 256,
        block: 4096,
        write: false,
        mem: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            args.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match a.as_str() {
            "--count" => o.count = num("--count")?,
            "--depth" => o.depth = u32::try_from(num("--depth")?).map_err(|e| e.to_string())?,
            "--size-mib" => o.size_mib = num("--size-mib")?,
            "--block" => o.block = num("--block")?,
            "--write" => o.write = true,
            "--mem" => o.mem = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// Fills `path` with `size` bytes of non-zero pseudo-random data (xorshift).
fn make_image(path: &Path, size: u64) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&(state | 1).to_le_bytes()[..chunk.len()]);
        }
        let n = (size - off).min(buf.len() as u64) as usize;
        f.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    f.sync_all()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(10810)
}

fn wait_listening(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on {addr}"))
}

/// Runs `qemu-img bench` on `url`; returns IOPS.
fn bench(url: &str, o: &Options) -> Result<f64, String> {
    let mut args = vec![
        "bench".to_owned(),
        "-f".into(),
        "raw".into(),
        "-c".into(),
        o.count.to_string(),
        "-d".into(),
        o.depth.to_string(),
        "-s".into(),
        o.block.to_string(),
    ];
    if o.write {
        args.push("-w".into());
    }
    args.push(url.to_owned());
    let out = Command::new("qemu-img")
        .args(&args)
        .output()
        .map_err(|e| format!("qemu-img: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "qemu-img bench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|l| l.strip_suffix(" seconds."))
        .ok_or(format!("unexpected qemu-img output: {text}"))?
        .parse()
        .map_err(|e| format!("seconds: {e}"))?;
    Ok(o.count as f64 / secs)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse_args()?;
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("bench.raw");
    let size = o.size_mib << 20;
    make_image(&image, size)?;

    // Ours.
    let export: Arc<dyn Export> = if o.mem {
        let mem = MemDevice::new(size);
        let mut buf = vec![0u8; 1 << 20];
        let file = std::fs::File::open(&image)?;
        for off in (0..size).step_by(1 << 20) {
            file.read_exact_at(&mut buf, off)?;
            mem.fill(&buf, off)?;
        }
        Arc::new(mem)
    } else {
        Arc::new(vdisk_live::RawFile::open(&image, false)?)
    };
    let server = Server::bind_tcp("127.0.0.1:0")?;
    let ListenAddr::Tcp(addr) = server.local_addr().clone() else {
        return Err("not tcp".into());
    };
    let shutdown = ShutdownSignal::new();
    let sd = shutdown.clone();
    let provider = Arc::new(StaticExports::with_default(export));
    let ours = std::thread::spawn(move || server.run(provider, ServerConfig::default(), sd));
    let ours_iops = bench(&format!("nbd://{addr}"), &o);
    shutdown.trigger();
    ours.join().map_err(|_| "server thread panicked")??;
    let ours_iops = ours_iops?;

    // qemu-nbd on the same file.
    let port = free_port();
    let qaddr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // -t (persistent): keep serving after the readiness probe disconnects.
    let child = Killed(
        Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-t",
                "-b",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-x",
                "",
            ])
            .arg(&image)
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_listening(qaddr)?;
    let qemu_iops = bench(&format!("nbd://{qaddr}"), &o)?;
    drop(child);

    let what = if o.write { "write" } else { "read" };
    let backend = if o.mem { "memory" } else { "file" };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "qemu-img bench: {} x {} B {what}s, depth {}, {} MiB raw image",
        o.count, o.block, o.depth, o.size_mib
    )?;
    writeln!(out, "vdisk-nbd ({backend} backend): {ours_iops:>10.0} IOPS")?;
    writeln!(out, "qemu-nbd -f raw (file):      {qemu_iops:>10.0} IOPS")?;
    writeln!(
        out,
        "ratio vdisk-nbd / qemu-nbd:  {:>10.2}",
        ours_iops / qemu_iops
    )?;
    Ok(())
}
