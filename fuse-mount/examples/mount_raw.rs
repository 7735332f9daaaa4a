//! Mounts a raw image file as the head of a disk with no snapshots: a manual test bench for
//! the filesystem, and an example of wiring a `MountSource` and going to the background.
//!
//! ```text
//! cargo run -p vdisk-fuse --example mount_raw -- IMAGE MOUNTPOINT [--rw] [--background]
//! ```
//! Stops on Ctrl-C / SIGTERM or `umount MOUNTPOINT`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use vdisk_fuse::{Device, Extent, MountOptions, MountSource, SnapshotEntry};

struct RawFile {
    file: File,
    size: u64,
    writable: bool,
}

impl Device for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let seek = |at: u64, whence| {
            let at = i64::try_from(at).unwrap_or(i64::MAX);
            // SAFETY: lseek on our own open descriptor; no memory involved.
            let r = unsafe { libc::lseek(self.file.as_raw_fd(), at, whence) };
            u64::try_from(r).map_or(end, |r| r.min(end))
        };
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = seek(pos, libc::SEEK_DATA);
            if data > pos {
                out.push(Extent {
                    offset: pos,
                    length: data - pos,
                    data: false,
                });
            }
            if data >= end {
                break;
            }
            let hole = seek(data, libc::SEEK_HOLE).max(data + 1);
            out.push(Extent {
                offset: data,
                length: hole - data,
                data: true,
            });
            pos = hole;
        }
        Ok(out)
    }
}

struct Source(Arc<RawFile>);

impl MountSource for Source {
    fn head(&self) -> Option<Arc<dyn Device>> {
        Some(Arc::clone(&self.0) as Arc<dyn Device>)
    }
    fn head_writable(&self) -> bool {
        self.0.writable
    }
    fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>> {
        Ok(Vec::new())
    }
    fn open_snapshot(&self, _: &str) -> io::Result<Arc<dyn Device>> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn generation(&self) -> u64 {
        0
    }
    fn info_json(&self) -> String {
        format!("{{\"size\": {}}}\n", self.0.size)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [image, mountpoint] = paths.as_slice() else {
        eprintln!("usage: mount_raw IMAGE MOUNTPOINT [--rw] [--background]");
        std::process::exit(2);
    };
    let (image, mountpoint) = (PathBuf::from(image), PathBuf::from(mountpoint));
    let writable = flag("--rw");
    // SAFETY: nothing has started a thread yet.
    let daemon =
        flag("--background").then(|| unsafe { vdisk_fuse::daemonize() }.expect("daemonize"));
    let run = || -> Result<vdisk_fuse::MountHandle, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&image)
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let source = Arc::new(Source(Arc::new(RawFile {
            file,
            size,
            writable,
        })));
        let opts = MountOptions {
            read_write: writable,
            handle_signals: true,
            fs_name: image.display().to_string(),
            ..MountOptions::default()
        };
        vdisk_fuse::mount(source, &mountpoint, opts).map_err(|e| e.to_string())
    };
    match (run(), daemon) {
        (Ok(handle), daemon) => {
            if let Some(d) = daemon {
                d.ready();
            }
            if let Err(e) = handle.wait() {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        (Err(e), Some(d)) => d.failed(&e),
        (Err(e), None) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
