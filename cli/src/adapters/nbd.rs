//! [`vdisk_nbd::ExportProvider`] and [`vdisk_nbd::Export`] over a [`Bundle`]: the head is
//! the default export, each snapshot (with `--export-snapshots`) a read-only export named
//! after it, listed afresh for every client.

use super::{Bundle, Dev};
use std::io;
use std::sync::Arc;
use vdisk_engine::ExtentKind;
use vdisk_nbd::{BlockFlags, Export, ExportProvider, Extent};

/// Longest range one block-status answer describes; the client asks again for the rest.
pub const MAX_STATUS_SPAN: u64 = 1 << 30;

/// A [`Dev`] as an NBD export.
pub struct NbdExport {
    dev: Dev,
    description: String,
}

impl NbdExport {
    /// Wraps `dev`; `description` is sent as `NBD_INFO_DESCRIPTION`.
    pub fn new(dev: Dev, description: String) -> NbdExport {
        NbdExport { dev, description }
    }
}

/// Engine extents as `base:allocation` runs, neighbours with the same flags merged.
/// Data is `DATA`; zero and unallocated extents read as zeros and hold no data: `HOLE|ZERO`.
pub fn nbd_extents(ext: &[vdisk_engine::Extent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(ext.len());
    for e in ext {
        let flags = match e.kind {
            ExtentKind::Data => BlockFlags::DATA,
            ExtentKind::Zero | ExtentKind::Unallocated => BlockFlags::HOLE | BlockFlags::ZERO,
        };
        match out.last_mut() {
            Some((len, f)) if *f == flags => *len += e.length,
            _ => out.push((e.length, flags)),
        }
    }
    out
}

impl Export for NbdExport {
    fn size(&self) -> u64 {
        self.dev.size()
    }
    fn read_only(&self) -> bool {
        self.dev.read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.dev.read(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.dev.write(buf, offset)?;
        if fua {
            self.dev.flush()?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        // The engine stores zeros as a map state either way: reads return zeros, which is
        // all NO_HOLE promises the client.
        self.dev.write_zeroes(offset, len)?;
        if fua {
            self.dev.flush()?;
        }
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.dev.discard(offset, len)
    }
    fn flush(&self) -> io::Result<()> {
        self.dev.flush()
    }
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let ext = self.dev.allocation(offset, len.min(MAX_STATUS_SPAN))?;
        Ok(nbd_extents(&ext))
    }
    fn description(&self) -> String {
        self.description.clone()
    }
    fn can_multi_conn(&self) -> bool {
        // One engine behind every connection, no per-connection cache: a flush on any
        // connection makes every completed write durable.
        true
    }
    fn fast_zero(&self) -> bool {
        true
    }
}

/// Hands out the head and (optionally) the snapshots.
pub struct NbdProvider {
    bundle: Arc<dyn Bundle>,
    export_snapshots: bool,
    /// The head, created once so that every client and the final flush share it.
    head: Option<Arc<dyn Export>>,
}

impl NbdProvider {
    /// Serves `bundle`'s head as the default export and, with `export_snapshots`, every
    /// snapshot as a read-only export named after it.
    pub fn new(bundle: Arc<dyn Bundle>, export_snapshots: bool) -> NbdProvider {
        NbdProvider {
            head: None,
            bundle,
            export_snapshots,
        }
    }

    /// For a lock-free reader the head view follows the manifest, so ask each time; the
    /// writer's head never changes identity and is created once.
    pub fn with_fixed_head(mut self) -> NbdProvider {
        self.head = self.make_head();
        self
    }

    fn make_head(&self) -> Option<Arc<dyn Export>> {
        let path = self.bundle.path().display().to_string();
        self.bundle.head().map(|d| {
            let what = if d.read_only() {
                "read-only head"
            } else {
                "head"
            };
            Arc::new(NbdExport::new(d, format!("vdisk {what} of {path}"))) as Arc<dyn Export>
        })
    }
}

impl ExportProvider for NbdProvider {
    fn default_export(&self) -> Option<Arc<dyn Export>> {
        match &self.head {
            Some(h) => Some(Arc::clone(h)),
            None => self.make_head(),
        }
    }

    fn list(&self) -> Vec<String> {
        let mut names = vec![String::new()];
        if self.export_snapshots {
            names.extend(self.bundle.snapshots().into_iter().map(|s| s.name));
        }
        names
    }

    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        if !self.export_snapshots {
            return None;
        }
        match self.bundle.snapshot(name) {
            Ok(dev) => Some(Arc::new(NbdExport::new(
                dev,
                format!("vdisk snapshot {name} of {}", self.bundle.path().display()),
            ))),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("opening snapshot {name:?}: {e}");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_engine::Extent as E;

    #[test]
    fn extents_become_block_status() {
        let ext = [
            E {
                offset: 0,
                length: 4096,
                kind: ExtentKind::Data,
                depth: Some(0),
            },
            E {
                offset: 4096,
                length: 4096,
                kind: ExtentKind::Zero,
                depth: Some(0),
            },
            E {
                offset: 8192,
                length: 8192,
                kind: ExtentKind::Unallocated,
                depth: None,
            },
            E {
                offset: 16384,
                length: 4096,
                kind: ExtentKind::Data,
                depth: Some(2),
            },
        ];
        assert_eq!(
            nbd_extents(&ext),
            [
                (4096, BlockFlags::DATA),
                (12288, BlockFlags::HOLE | BlockFlags::ZERO),
                (4096, BlockFlags::DATA)
            ]
        );
    }
}
