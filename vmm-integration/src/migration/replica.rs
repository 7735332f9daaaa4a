//! Replication of a running VM's snapshots to a standby (format-spec/migration.md §5):
//! the primary's [`Replicator`] sends each committed VM snapshot — the disk layers as delta
//! streams, the memory image and the VM-state object — and the [`Standby`] applies it only
//! once everything verified, by the one manifest replace of the import. On `vm promote` the
//! standby resumes the VM from the last complete snapshot it holds.

use super::wire::{safe_object_name, Message, WireError};
use super::{peer_err, Conn};
use crate::error::{Result, VmmError};
use crate::folder::{self, Folder};
use crate::periodic::retention_plan;
use crate::vm::Machine;
use serde_json::{json, Value};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vdisk_engine::format::vmstate::VmStateRecord;
use vdisk_engine::stream::{export_diff, ImportOptions};
use vdisk_engine::vmstate::{compose, memory_chain, MemImage};
use vdisk_engine::{CreateOptions, Disk, Id, LocalStore, Store};
use vdisk_vmconfig::{VmConfig, CONFIG_FILE_NAME};

/// Chunk of an object or a stream in one frame.
const CHUNK: usize = 1 << 20;

/// The primary's side: one connection to the standby, re-made after a failure.
pub struct Replicator {
    addr: String,
    hello: Value,
    conn: Option<Conn>,
    /// The last snapshot the standby holds (name, id).
    last: Option<(String, Id)>,
    timeout: Duration,
}

impl Replicator {
    /// A replicator of the VM of `f` to the standby at `addr` (connects on first use).
    pub fn new(addr: &str, f: &Folder, keep: u32) -> Replicator {
        let mut disks = Vec::new();
        for p in &f.disks {
            let g = LocalStore::open(p)
                .ok()
                .and_then(|s| vdisk_engine::bundle::read_manifest(&s).ok());
            disks.push(match g {
                Some(m) => json!({
                    "virtual_size": m.virtual_size,
                    "cluster_size": m.cluster_size,
                    "subcluster_size": m.subcluster_size,
                }),
                None => json!({}),
            });
        }
        Replicator {
            addr: addr.to_string(),
            hello: json!({
                "protocol": super::wire::PROTOCOL,
                "purpose": "replicate",
                "memory": f.config.memory_mib << 20,
                "vm_json": f.config.to_json().unwrap_or_default(),
                "disks": disks,
                "keep": keep,
            }),
            conn: None,
            last: None,
            timeout: Duration::from_secs(30),
        }
    }

    fn connect(&mut self, m: &Machine) -> Result<()> {
        let mut c = Conn::connect(&self.addr, Duration::from_secs(2).min(self.timeout))?;
        let peer = c.peer.clone();
        let pe = |e: WireError| peer_err(&peer, e);
        c.send(&Message::Hello(self.hello.clone())).map_err(pe)?;
        c.flush().map_err(pe)?;
        let w = match c.recv(0).map_err(pe)? {
            Message::Welcome(v) => v,
            Message::Error(e) => return Err(peer_err(&peer, format!("refused: {e}"))),
            other => {
                return Err(peer_err(
                    &peer,
                    format!("expected WELCOME, got {}", other.name()),
                ))
            }
        };
        // continue from what the standby holds, if this side still has it
        let man = m.disks()[0].manifest();
        self.last = w
            .get("last_id")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Id>().ok())
            .and_then(|id| man.snapshots.iter().find(|s| s.id == id))
            .map(|s| (s.name.clone(), s.id));
        self.conn = Some(c);
        Ok(())
    }

    /// Send VM snapshot `name` (committed) and wait for the standby to apply it.
    pub fn send(&mut self, m: &Machine, name: &str) -> Result<()> {
        if self.conn.is_none() {
            self.connect(m)?;
        }
        let r = self.send_one(m, name);
        if r.is_err() {
            self.conn = None;
            self.last = None;
        }
        r
    }

    fn send_one(&mut self, m: &Machine, name: &str) -> Result<()> {
        let disk0 = &m.disks()[0];
        let store0 = disk0.store().clone();
        let man = disk0.manifest();
        let s = man
            .snapshot(name)
            .ok_or_else(|| vdisk_engine::Error::SnapshotNotFound(name.into()))?;
        let mut rec = s.vm().ok_or_else(|| vdisk_engine::Error::NoVmState {
            snapshot: name.into(),
        })?;
        let (Some(state), Some(mem)) = (rec.state.clone(), rec.memory.clone()) else {
            return Err(VmmError::Refused(format!(
                "{name}: not a VM snapshot with memory"
            )));
        };
        // the standby holds the base of a diff only when it got the previous snapshot;
        // otherwise it gets the memory composed into one full image
        let mut tmp = None;
        let mem = if mem.base.is_some() && mem.base != self.last.as_ref().map(|l| l.1) {
            let chain = memory_chain(&man, name)?;
            let images = chain
                .iter()
                .map(|r| MemImage::open(store0.as_ref(), r))
                .collect::<vdisk_engine::Result<Vec<_>>>()?;
            let t = format!("state/{}-replica-{}.mem", s.id, Id::random().short());
            let full = compose(store0.as_ref(), &images, &t, None)?;
            tmp = Some(t);
            full
        } else {
            mem
        };
        rec.memory = Some(mem.clone());
        let from = self
            .last
            .as_ref()
            .filter(|l| {
                m.disks()
                    .iter()
                    .all(|d| d.manifest().snapshot(&l.0).is_some())
            })
            .map(|l| l.0.clone());
        let c = self.conn.as_mut().expect("connected");
        let peer = c.peer.clone();
        let pe = |e: WireError| peer_err(&peer, e);
        let mut objects = Vec::new();
        for o in [&state.object, &mem.object] {
            let obj = store0
                .open_object(o, false)
                .map_err(|e| vdisk_engine::Error::io(o, "open", e))?;
            objects.push((o.clone(), obj));
        }
        let lens: Vec<Value> = objects
            .iter()
            .map(|(n, o)| json!({"name": n, "len": o.len().unwrap_or(0)}))
            .collect();
        c.send(&Message::Snapshot(json!({
            "name": name,
            "id": s.id.to_string(),
            "vm_state": rec.to_value(),
            "objects": lens,
            "from": from,
        })))
        .map_err(pe)?;
        let mut buf = vec![0u8; CHUNK];
        for (n, o) in &objects {
            let len = o.len().map_err(|e| vdisk_engine::Error::io(n, "stat", e))?;
            let mut off = 0;
            while off < len {
                let k = (len - off).min(CHUNK as u64) as usize;
                o.read_exact_at(&mut buf[..k], off)
                    .map_err(|e| vdisk_engine::Error::io(n, "read", e))?;
                // holes of a memory image stay holes
                if buf[..k].chunks(64).any(|c| c.iter().any(|&b| b != 0)) {
                    c.send(&Message::Object {
                        name: n.clone(),
                        offset: off,
                        data: buf[..k].to_vec(),
                    })
                    .map_err(pe)?;
                }
                off += k as u64;
            }
        }
        drop(objects);
        if let Some(t) = tmp {
            let _ = store0.remove_object(&t);
        }
        // the first disk last: its record names the VM state, so the snapshot is complete
        // on the standby only once every other disk has it
        for (i, d) in m.disks().iter().enumerate().rev() {
            let mut f = Frames {
                c: &mut *c,
                disk: i as u32,
                buf: Vec::new(),
            };
            export_diff(d.store().as_ref(), from.as_deref(), name, &mut f, 1)?;
            f.push().map_err(|e| peer_err(&peer, e))?;
            c.send(&Message::StreamEnd { disk: i as u32 }).map_err(pe)?;
        }
        c.send(&Message::Done(json!({"name": name}))).map_err(pe)?;
        c.flush().map_err(pe)?;
        match c.recv(0).map_err(pe)? {
            Message::Ack(_) => {}
            Message::Error(e) => return Err(peer_err(&peer, format!("refused {name}: {e}"))),
            other => {
                return Err(peer_err(
                    &peer,
                    format!("expected ACK, got {}", other.name()),
                ))
            }
        }
        self.last = Some((name.to_string(), s.id));
        Ok(())
    }
}

struct Frames<'a> {
    c: &'a mut Conn,
    disk: u32,
    buf: Vec<u8>,
}

impl std::io::Write for Frames<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.push()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Frames<'_> {
    fn push(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let m = Message::Stream {
            disk: self.disk,
            data: std::mem::take(&mut self.buf),
        };
        self.c.send(&m).map_err(std::io::Error::other)
    }
}

fn bad(field: &str, reason: impl Into<String>) -> VmmError {
    VmmError::State {
        object: "replication".into(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// The newest VM snapshot (with memory) that every disk of the folder holds.
pub fn last_complete(disks: &[Arc<Disk>]) -> Option<(String, Id)> {
    let m0 = disks.first()?.manifest();
    let mut v: Vec<_> = m0
        .snapshots
        .iter()
        .filter(|s| s.vm().and_then(|r| r.memory).is_some())
        .filter(|s| {
            disks[1..]
                .iter()
                .all(|d| d.manifest().snapshot(&s.name).is_some())
        })
        .collect();
    v.sort_by_key(|s| s.created_ns);
    v.last().map(|s| (s.name.clone(), s.id))
}

/// The standby's state, shared with its control socket.
pub struct Standby {
    dir: PathBuf,
    promote: AtomicBool,
    stop: AtomicBool,
    /// Shutdown handle of the connection being served.
    current: Mutex<Option<TcpStream>>,
    /// The disks (open while receiving).
    disks: Mutex<Vec<Arc<Disk>>>,
    received: Mutex<u64>,
    started: Instant,
}

impl Standby {
    /// Stop standing by without taking over.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Ask the standby to take over: stop receiving and resume the VM from the last
    /// complete snapshot (its name; `None`, and nothing changes, when there is none).
    pub fn promote(&self) -> Option<String> {
        let last =
            last_complete(&self.disks.lock().unwrap_or_else(|p| p.into_inner())).map(|l| l.0);
        last.as_ref()?;
        self.promote.store(true, Ordering::SeqCst);
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        last
    }

    /// For `vm info`.
    pub fn info(&self) -> Value {
        let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "pid": std::process::id(),
            "role": "standby",
            "dir": self.dir.display().to_string(),
            "snapshots_received": *self.received.lock().unwrap_or_else(|p| p.into_inner()),
            "last_complete": last_complete(&disks).map(|l| l.0),
            "uptime_s": self.started.elapsed().as_secs_f64(),
        })
    }

    fn serve(&self, c: &mut Conn) -> Result<()> {
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
        if hello.get("purpose").and_then(|v| v.as_str()) != Some("replicate")
            || hello.get("protocol").and_then(|v| v.as_u64())
                != Some(u64::from(super::wire::PROTOCOL))
        {
            return Err(bad("hello", "not replication of protocol 1"));
        }
        let memory = hello.get("memory").and_then(|v| v.as_u64()).unwrap_or(0);
        crate::vm::check_memory(memory).map_err(|r| bad("hello.memory", r))?;
        let keep = hello.get("keep").and_then(|v| v.as_u64()).unwrap_or(4) as usize;
        self.ensure_folder(&hello)?;
        let last = last_complete(&self.disks.lock().unwrap_or_else(|p| p.into_inner()));
        c.send(&Message::Welcome(json!({
            "last_id": last.map(|l| l.1.to_string()),
        })))
        .map_err(pe)?;
        c.flush().map_err(pe)?;
        // between snapshots the primary may be quiet for a long time
        loop {
            c.set_read_timeout(None);
            let first = match c.recv(memory) {
                Err(WireError::Closed) => return Ok(()),
                r => r.map_err(pe)?,
            };
            c.set_read_timeout(Some(Duration::from_secs(30)));
            let Message::Snapshot(head) = first else {
                return Err(peer_err(
                    &peer,
                    format!("expected SNAPSHOT, got {}", first.name()),
                ));
            };
            match self.apply(c, memory, &head) {
                Ok(name) => {
                    *self.received.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let plan = retention_plan(&disks[0].manifest(), keep);
                    if !plan.is_empty() {
                        for d in &disks {
                            if let Err(e) = d.merge_snapshots(&plan) {
                                log::warn!("standby retention {plan:?}: {e}");
                                break;
                            }
                        }
                    }
                    c.send(&Message::Ack(json!({"name": name}))).map_err(pe)?;
                    c.flush().map_err(pe)?;
                }
                Err(e) => {
                    let _ = c.send(&Message::Error(e.to_string()));
                    let _ = c.flush();
                    return Err(e);
                }
            }
        }
    }

    /// Open the standby folder, or make it from the first HELLO.
    fn ensure_folder(&self, hello: &Value) -> Result<()> {
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        if !disks.is_empty() {
            return Ok(());
        }
        let dir = &self.dir;
        if !dir.join(CONFIG_FILE_NAME).exists() {
            let text = hello
                .get("vm_json")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad("hello.vm_json", "missing"))?;
            let cfg = VmConfig::from_json(text, "HELLO vm_json")
                .map_err(|e| bad("hello.vm_json", e.to_string()))?;
            let geo = hello
                .get("disks")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            if geo.len() != cfg.disks.len() {
                return Err(bad("hello.disks", "does not match the VM's disks"));
            }
            for (i, d) in cfg.disks.iter().enumerate() {
                if !super::recv::plain_name(&d.path) {
                    return Err(bad(
                        &format!("vm_json.disks[{i}].path"),
                        "a replicated disk is a plain file name in the folder",
                    ));
                }
            }
            std::fs::create_dir_all(dir).map_err(|source| VmmError::File {
                path: dir.clone(),
                op: "create",
                source,
            })?;
            for (i, d) in cfg.disks.iter().enumerate() {
                let n = |k: &str| geo[i].get(k).and_then(|v| v.as_u64());
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
                Disk::create(
                    store,
                    &CreateOptions {
                        virtual_size: vs,
                        cluster_size: cs,
                        subcluster_size: n("subcluster_size"),
                    },
                )?
                .close()?;
            }
            vdisk_vmconfig::save(&cfg, &dir.join(CONFIG_FILE_NAME))
                .map_err(|e| bad("vm.json", e.to_string()))?;
        }
        let f = folder::open(dir)?;
        for p in &f.disks {
            let store: Arc<dyn Store> =
                Arc::new(LocalStore::open(p).map_err(|source| VmmError::File {
                    path: p.clone(),
                    op: "open the disk bundle",
                    source,
                })?);
            disks.push(Arc::new(Disk::open(store)?));
        }
        Ok(())
    }

    /// Receive one snapshot's objects and streams; import it into every disk (the first
    /// last, so the VM state exists only once the whole snapshot does).
    fn apply(&self, c: &mut Conn, memory: u64, head: &Value) -> Result<String> {
        let peer = c.peer.clone();
        let pe = |e: WireError| peer_err(&peer, e);
        let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let name = head
            .get("name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("snapshot.name", "missing"))?
            .to_string();
        let rec = VmStateRecord::from_value(head.get("vm_state").unwrap_or(&Value::Null))
            .map_err(|e| e.in_object("replicated snapshot vm_state"))?;
        let (Some(_), Some(mem)) = (rec.state.clone(), rec.memory.clone()) else {
            return Err(bad("snapshot.vm_state", "no state or memory"));
        };
        if mem.guest_size != memory {
            return Err(bad(
                "snapshot.vm_state.memory.guest_size",
                "differs from HELLO's",
            ));
        }
        if let Some(b) = mem.base {
            if !disks[0].manifest().snapshots.iter().any(|s| s.id == b) {
                return Err(bad(
                    "snapshot.vm_state.memory.base",
                    format!("{b}: the standby does not hold the base of this diff"),
                ));
            }
        }
        let want: Vec<(String, u64)> = head
            .get("objects")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|o| Some((o["name"].as_str()?.to_string(), o["len"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let named: Vec<&str> = rec.objects().collect();
        if want.len() != 2 || want.iter().any(|(n, _)| !named.contains(&n.as_str())) {
            return Err(bad("snapshot.objects", "not the record's state and memory"));
        }
        let limit = memory * 2 + (64 << 20);
        let store0 = disks[0].store().clone();
        let mut made = Vec::new();
        let result = (|| -> Result<()> {
            let mut objs = Vec::new();
            for (n, len) in &want {
                if !safe_object_name(n) || *len > limit {
                    return Err(bad("snapshot.objects", format!("{n}: refused")));
                }
                if store0.open_object(n, false).is_ok() {
                    return Err(bad("snapshot.objects", format!("{n}: already here")));
                }
                let o = store0
                    .create_object(n)
                    .map_err(|e| vdisk_engine::Error::io(n, "create", e))?;
                made.push(n.clone());
                objs.push((n.clone(), *len, o));
            }
            let primary = disks[0].manifest().bundle_id;
            let mut imports: Vec<Option<super::recv::Import>> =
                (0..disks.len()).map(|_| None).collect();
            let mut ended = vec![false; disks.len()];
            let mut verified = false;
            loop {
                match c.recv(memory).map_err(pe)? {
                    Message::Object { name, offset, data } => {
                        if verified {
                            return Err(bad("object", "after the disk streams began"));
                        }
                        let Some((_, len, o)) = objs.iter().find(|(n, _, _)| *n == name) else {
                            return Err(bad("object.name", format!("{name}: not announced")));
                        };
                        if offset
                            .checked_add(data.len() as u64)
                            .is_none_or(|e| e > *len)
                        {
                            return Err(bad("object.offset", format!("{name}: past its length")));
                        }
                        o.write_all_at(&data, offset)
                            .map_err(|e| vdisk_engine::Error::io(&name, "write", e))?;
                    }
                    Message::Stream { disk, data } => {
                        let i = disk as usize;
                        if i >= disks.len() || ended[i] {
                            return Err(bad("stream.disk", format!("{disk}: none open")));
                        }
                        if i == 0 && ended[1..].iter().any(|e| !e) {
                            return Err(bad("stream.disk", "the first disk's stream comes last"));
                        }
                        if !verified {
                            // the objects are complete: verified before anything names them
                            for (n, len, o) in &objs {
                                o.set_len(*len)
                                    .and_then(|_| o.sync())
                                    .map_err(|e| vdisk_engine::Error::io(n, "sync", e))?;
                            }
                            vdisk_engine::vmstate::verify(store0.as_ref(), &rec)?;
                            verified = true;
                        }
                        let imp = imports[i].get_or_insert_with(|| {
                            let r = if i == 0 {
                                rec.clone()
                            } else {
                                VmStateRecord {
                                    version: rec.version,
                                    state: None,
                                    memory: None,
                                    primary: Some(primary),
                                }
                            };
                            super::recv::start_import(
                                disks[i].clone(),
                                ImportOptions {
                                    force: true,
                                    vm_state: Some(r),
                                },
                            )
                        });
                        let _ = imp.tx.send(data);
                    }
                    Message::StreamEnd { disk } => {
                        let i = disk as usize;
                        let Some(imp) = imports.get_mut(i).and_then(|x| x.take()) else {
                            return Err(bad("stream_end.disk", format!("{disk}: none open")));
                        };
                        drop(imp.tx);
                        match imp.thread.join() {
                            Ok(Ok(_)) => ended[i] = true,
                            Ok(Err(e)) => {
                                return Err(bad(&format!("disk {i} stream"), e.to_string()))
                            }
                            Err(_) => return Err(bad(&format!("disk {i} stream"), "panicked")),
                        }
                    }
                    Message::Done(_) => break,
                    Message::Error(e) => return Err(peer_err(&peer, format!("gave up: {e}"))),
                    other => return Err(peer_err(&peer, format!("unexpected {}", other.name()))),
                }
            }
            if ended.iter().any(|e| !e) {
                return Err(bad("done", "a disk's stream is missing"));
            }
            Ok(())
        })();
        if let Err(e) = result {
            for n in &made {
                let _ = store0.remove_object(n);
            }
            return Err(e);
        }
        Ok(name)
    }
}

/// Options of `vm standby`.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    /// `addr:port` to listen on.
    pub listen: String,
}

/// `vm standby DIR`: take the folder (made from the first primary's HELLO when absent),
/// apply every snapshot the primary sends, until `vm promote` (the control socket); then
/// resume the VM from the last complete snapshot and run it like `vm restore`.
pub fn standby(
    dir: &Path,
    o: &StandbyOptions,
    run: &crate::runner::RunOptions,
    on_listen: impl FnOnce(&str),
    started: impl FnOnce(&Arc<Machine>),
    stop: Arc<AtomicBool>,
) -> Result<Option<crate::runner::RunReport>> {
    let l =
        TcpListener::bind(&o.listen).map_err(|e| peer_err(&o.listen, format!("listen: {e}")))?;
    l.set_nonblocking(true)
        .map_err(|e| peer_err(&o.listen, e))?;
    std::fs::create_dir_all(dir).map_err(|source| VmmError::File {
        path: dir.into(),
        op: "create",
        source,
    })?;
    let sb = Arc::new(Standby {
        dir: dir.to_path_buf(),
        promote: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        current: Mutex::new(None),
        disks: Mutex::new(Vec::new()),
        received: Mutex::new(0),
        started: Instant::now(),
    });
    let lock = folder::lock(dir)?;
    if dir.join(CONFIG_FILE_NAME).exists() {
        sb.ensure_folder(&Value::Null)?;
    }
    let control = vdisk_live::control::ControlServer::start(
        &folder::socket_path(dir),
        Arc::new(crate::control::StandbyService(sb.clone())),
    )?;
    on_listen(&l.local_addr().map(|a| a.to_string()).unwrap_or_default());
    // a signal (the caller's flag) ends a connection being served too
    {
        let (sb, stop) = (sb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sb.promote.load(Ordering::SeqCst) && !sb.stop.load(Ordering::SeqCst) {
                if stop.load(Ordering::Relaxed) {
                    sb.stop();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    while !sb.promote.load(Ordering::SeqCst)
        && !sb.stop.load(Ordering::SeqCst)
        && !stop.load(Ordering::Relaxed)
    {
        match l.accept() {
            Ok((s, addr)) => {
                let _ = s.set_nonblocking(false);
                *sb.current.lock().unwrap_or_else(|p| p.into_inner()) = s.try_clone().ok();
                let sb2 = sb.clone();
                // served on this thread; a promote shuts the socket down to end it
                match Conn::new(s, &addr.to_string(), Duration::from_secs(30)) {
                    Ok(mut c) => {
                        if let Err(e) = sb2.serve(&mut c) {
                            if !sb.promote.load(Ordering::SeqCst) {
                                log::warn!("standby: {e}");
                            }
                        }
                    }
                    Err(e) => log::warn!("standby: {e}"),
                }
                *sb.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(peer_err(&o.listen, format!("accept: {e}"))),
        }
    }
    drop(l);
    let disks: Vec<Arc<Disk>> =
        std::mem::take(&mut *sb.disks.lock().unwrap_or_else(|p| p.into_inner()));
    let last = last_complete(&disks);
    for d in disks {
        if let Ok(d) = Arc::try_unwrap(d) {
            d.close()?;
        }
    }
    control.stop();
    drop(lock);
    if !sb.promote.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let Some((name, _)) = last else {
        return Err(VmmError::Refused(format!(
            "{}: promoted before any snapshot arrived: nothing to resume",
            dir.display()
        )));
    };
    let mut run = run.clone();
    run.append_serial = true;
    crate::runner::run(dir, Some(&name), &run, started).map(Some)
}
