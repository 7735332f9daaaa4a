//! The destination side of a live migration (format-spec/migration.md §4). Memory arrives
//! into anonymous memory; shipped disks arrive as delta streams imported into new bundles
//! of a new folder. Only when DONE's blake3 matches every memory frame, the state parses
//! and every stream was verified by its import does it say READY; then it waits for the
//! source to let go of the disks and runs the VM like `vm run`. Before READY any failure
//! removes the folder it made, and nothing outside that folder is ever written.

use super::wire::{Message, WireError, PAGE};
use super::{peer_err, Conn};
use crate::error::{Result, VmmError};
use crate::folder;
use crate::memory::{self, Mem};
use crate::runner::{run_from, RunOptions, RunReport, Source};
use crate::vm::{check_memory, write_guest, Machine, VmState};
use serde_json::json;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vdisk_engine::stream::{ImportOptions, StreamReport};
use vdisk_engine::{CreateOptions, Disk, LocalStore, Store};
use vdisk_vmconfig::{VmConfig, CONFIG_FILE_NAME};

/// Options of `vm receive`.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// `addr:port` to listen on.
    pub listen: String,
    /// Each network wait at most this long once the source connected.
    pub timeout: Duration,
}

/// A delta stream arriving in frames, read by an import on its own thread.
struct ChanReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = b.len().min(self.cur.len() - self.pos);
        b[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An import running on its own thread, fed frame by frame.
pub(crate) struct Import {
    pub(crate) tx: SyncSender<Vec<u8>>,
    pub(crate) thread: JoinHandle<vdisk_engine::Result<StreamReport>>,
}

pub(crate) fn start_import(d: Arc<Disk>, opts: ImportOptions) -> Import {
    let (tx, rx) = sync_channel(16);
    let thread = std::thread::spawn(move || {
        let mut r = ChanReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let rep = d.import_diff_with(&mut r, &opts);
        // drain what the source still sends so its frames do not block on us
        let mut sink = [0u8; 65536];
        while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
        rep
    });
    Import { tx, thread }
}

/// What arrived: the memory, the state, and whether this side made the folder.
struct Arrived {
    mem: Mem,
    state: VmState,
}

fn bad(field: &str, reason: impl Into<String>) -> VmmError {
    VmmError::State {
        object: "migration".into(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// A disk path a source may name in a shipped folder: one plain file name.
pub(crate) fn plain_name(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 200
        && p != "."
        && p != ".."
        && !p.starts_with('.')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// What a failed receive removes.
#[derive(PartialEq)]
enum Made {
    Nothing,
    /// The contents of a folder that was there, empty.
    Contents,
    /// The folder.
    Folder,
}

fn receive_all(dir: &Path, c: &mut Conn, made: &mut Made) -> Result<Arrived> {
    let peer = c.peer.clone();
    let pe = |e: WireError| peer_err(&peer, e);
    let hello = match c.recv(0).map_err(pe)? {
        Message::Hello(v) => v,
        other => {
            return Err(peer_err(
                &peer,
                format!("expected HELLO, got {}", other.name()),
            ))
        }
    };
    if hello.get("protocol").and_then(|v| v.as_u64()) != Some(u64::from(super::wire::PROTOCOL)) {
        return Err(bad(
            "hello.protocol",
            format!("{} (this side speaks 1)", hello["protocol"]),
        ));
    }
    if hello.get("purpose").and_then(|v| v.as_str()) != Some("migrate") {
        return Err(bad(
            "hello.purpose",
            "not a migration (a standby takes replication)",
        ));
    }
    let memory = hello.get("memory").and_then(|v| v.as_u64()).unwrap_or(0);
    check_memory(memory).map_err(|r| bad("hello.memory", r))?;
    let vm_json = hello
        .get("vm_json")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("hello.vm_json", "missing"))?;
    let cfg = VmConfig::from_json(vm_json, "HELLO vm_json")
        .map_err(|e| bad("hello.vm_json", e.to_string()))?;
    if cfg.memory_mib << 20 != memory {
        return Err(bad("hello.memory", "differs from the VM's config"));
    }
    let disks = hello
        .get("disks")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("hello.disks", "missing"))?
        .clone();
    if disks.len() != cfg.disks.len() || disks.is_empty() || disks.len() > crate::layout::MAX_DISKS
    {
        return Err(bad("hello.disks", "does not match the VM's disks"));
    }
    let shared = dir.join(CONFIG_FILE_NAME).exists();
    let mut opened: Vec<Arc<Disk>> = Vec::new();
    if shared {
        let f = folder::open(dir)?;
        if f.config.memory_mib != cfg.memory_mib || f.disks.len() != disks.len() {
            return Err(bad(
                "vm.json",
                format!(
                    "{}: this folder holds another VM (memory or disks differ from the source's)",
                    dir.display()
                ),
            ));
        }
        for (i, p) in f.disks.iter().enumerate() {
            let s = LocalStore::open(p).map_err(|source| VmmError::File {
                path: p.clone(),
                op: "open the disk bundle",
                source,
            })?;
            let m = vdisk_engine::bundle::read_manifest(&s)?;
            if Some(m.bundle_id.to_string().as_str()) != disks[i]["bundle_id"].as_str() {
                return Err(bad(
                    &format!("disks[{i}]"),
                    format!(
                        "{}: not the source's bundle (a folder on shared storage must be the source's own)",
                        p.display()
                    ),
                ));
            }
        }
    } else {
        match std::fs::read_dir(dir) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    return Err(bad(
                        "folder",
                        format!("{}: not empty and not a VM folder", dir.display()),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(VmmError::File {
                    path: dir.into(),
                    op: "read",
                    source,
                })
            }
        }
        let existed = dir.exists();
        for (i, d) in cfg.disks.iter().enumerate() {
            if !plain_name(&d.path) {
                return Err(bad(
                    &format!("vm_json.disks[{i}].path"),
                    format!(
                        "{:?}: a shipped disk is a plain file name in the folder",
                        d.path
                    ),
                ));
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| VmmError::File {
            path: dir.into(),
            op: "create",
            source,
        })?;
        *made = Made::Contents;
        if !existed {
            *made = Made::Folder;
        }
        let cfg_path = dir.join(CONFIG_FILE_NAME);
        vdisk_vmconfig::save(&cfg, &cfg_path).map_err(|e| bad("vm.json", e.to_string()))?;
        for (i, d) in cfg.disks.iter().enumerate() {
            let g = &disks[i];
            let n = |k: &str| g.get(k).and_then(|v| v.as_u64());
            let (Some(vs), Some(cs)) = (n("virtual_size"), n("cluster_size")) else {
                return Err(bad(&format!("hello.disks[{i}]"), "no geometry"));
            };
            let p = dir.join(&d.path);
            let store: Arc<dyn Store> =
                Arc::new(LocalStore::create(&p).map_err(|source| VmmError::File {
                    path: p.clone(),
                    op: "create",
                    source,
                })?);
            let disk = Disk::create(
                store,
                &CreateOptions {
                    virtual_size: vs,
                    cluster_size: cs,
                    subcluster_size: n("subcluster_size"),
                },
            )?;
            opened.push(Arc::new(disk));
        }
    }
    c.send(&Message::Welcome(json!({
        "disks": if shared { "shared" } else { "shipped" }
    })))
    .map_err(pe)?;
    c.flush().map_err(pe)?;
    let mem = memory::anonymous(memory)?;
    let zeros = vec![0u8; (super::wire::MAX_PAGES * PAGE) as usize];
    let mut hash = blake3::Hasher::new();
    let mut imports: Vec<Option<Import>> = (0..opened.len()).map(|_| None).collect();
    let mut ended = vec![0u32; opened.len()];
    let mut state: Option<VmState> = None;
    loop {
        match c.recv(memory).map_err(pe)? {
            Message::Pages { gpa, data } => {
                hash.update(&gpa.to_le_bytes());
                hash.update(&data);
                write_guest(&mem, gpa, &data)?;
            }
            Message::Zeros { gpa, pages } => {
                hash.update(&gpa.to_le_bytes());
                hash.update(&pages.to_le_bytes());
                let mut g = gpa;
                let end = gpa + pages * PAGE;
                while g < end {
                    let n = (end - g).min(zeros.len() as u64);
                    write_guest(&mem, g, &zeros[..n as usize])?;
                    g += n;
                }
            }
            Message::Round(_) => {}
            Message::Stream { disk, data } => {
                let i = disk as usize;
                let Some(d) = opened.get(i) else {
                    return Err(bad(
                        "stream.disk",
                        if shared {
                            "a disk stream to a folder on shared storage".to_string()
                        } else {
                            format!("disk {disk} of {}", opened.len())
                        },
                    ));
                };
                let imp = imports[i]
                    .get_or_insert_with(|| start_import(d.clone(), ImportOptions::default()));
                if imp.tx.send(data).is_err() {
                    // the import stopped early: its error is reported at STREAM_END
                }
            }
            Message::StreamEnd { disk } => {
                let i = disk as usize;
                let Some(imp) = imports.get_mut(i).and_then(|s| s.take()) else {
                    return Err(bad(
                        "stream_end.disk",
                        format!("no stream of disk {disk} open"),
                    ));
                };
                drop(imp.tx);
                match imp.thread.join() {
                    Ok(Ok(_)) => ended[i] += 1,
                    Ok(Err(e)) => {
                        return Err(bad(
                            &format!("disk {i} stream"),
                            format!("refused by the import: {e}"),
                        ))
                    }
                    Err(_) => return Err(bad(&format!("disk {i} stream"), "the import panicked")),
                }
            }
            Message::State(b) => {
                let s: VmState = serde_json::from_slice(&b)
                    .map_err(|e| bad("state", format!("does not parse: {e}")))?;
                if s.memory != memory {
                    return Err(bad("state.memory", "differs from HELLO's"));
                }
                if s.vcpus.len() != cfg.vcpus as usize || s.disks.len() != cfg.disks.len() {
                    return Err(bad("state", "vCPUs or disks differ from the VM's config"));
                }
                state = Some(s);
            }
            Message::Done(v) => {
                let want = v.get("blake3").and_then(|h| h.as_str()).unwrap_or("");
                if hash.finalize().to_hex().as_str() != want {
                    return Err(bad(
                        "done.blake3",
                        "the memory received does not match the source's",
                    ));
                }
                if imports.iter().any(|i| i.is_some()) {
                    return Err(bad("done", "a disk stream is still open"));
                }
                if !shared && ended.contains(&0) {
                    return Err(bad("done", "a shipped disk never arrived"));
                }
                break;
            }
            Message::Error(e) => return Err(peer_err(&peer, format!("the source gave up: {e}"))),
            other => return Err(peer_err(&peer, format!("unexpected {}", other.name()))),
        }
    }
    let state = state.ok_or_else(|| bad("state", "DONE before STATE"))?;
    drop(imports);
    for d in opened {
        match Arc::try_unwrap(d) {
            Ok(d) => d.close()?,
            Err(_) => return Err(bad("disks", "an import still holds a disk")),
        }
    }
    c.send(&Message::Ready).map_err(pe)?;
    c.flush().map_err(pe)?;
    Ok(Arrived { mem, state })
}

/// `vm receive`: listen on `o.listen`, take one migration into `dir` (the source's folder
/// on shared storage, or an absent or empty folder for shipped disks), then run the VM
/// until the guest leaves. `on_listen` is called once the socket listens.
pub fn receive(
    dir: &Path,
    o: &ReceiveOptions,
    run: &RunOptions,
    on_listen: impl FnOnce(&str),
    started: impl FnOnce(&Arc<Machine>),
) -> Result<RunReport> {
    let l =
        TcpListener::bind(&o.listen).map_err(|e| peer_err(&o.listen, format!("listen: {e}")))?;
    on_listen(&l.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let (s, addr) = l
        .accept()
        .map_err(|e| peer_err(&o.listen, format!("accept: {e}")))?;
    drop(l);
    let mut c = Conn::new(s, &addr.to_string(), o.timeout)?;
    let mut made = Made::Nothing;
    let arrived = receive_all(dir, &mut c, &mut made).and_then(|a| match c.recv(0) {
        Ok(Message::Released) => Ok(a),
        Ok(Message::Error(e)) => Err(peer_err(&c.peer, format!("the source gave up: {e}"))),
        Ok(other) => Err(peer_err(
            &c.peer,
            format!("expected RELEASED, got {}", other.name()),
        )),
        Err(e) => Err(peer_err(&c.peer, e)),
    });
    let a = match arrived {
        Ok(a) => a,
        Err(e) => {
            let _ = c.send(&Message::Error(e.to_string()));
            let _ = c.flush();
            match made {
                Made::Folder => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Made::Contents => {
                    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
                Made::Nothing => {}
            }
            return Err(e);
        }
    };
    let conn = Arc::new(Mutex::new(Some(c)));
    let c2 = conn.clone();
    let r = run_from(
        dir,
        Source::Incoming {
            mem: a.mem,
            state: Box::new(a.state),
            running: Box::new(move || {
                if let Some(mut c) = c2.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = c.send(&Message::Running);
                    let _ = c.flush();
                }
            }),
        },
        run,
        started,
    );
    if let Err(e) = &r {
        if let Some(mut c) = conn.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.send(&Message::Error(e.to_string()));
            let _ = c.flush();
        }
    }
    r
}
