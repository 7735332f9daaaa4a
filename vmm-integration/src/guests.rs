//! The guests built from `guests/` at build time (build.rs).

/// A guest program the VMM can boot.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    /// Name (`vm create --guest NAME`).
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Its arguments.
    pub args: &'static str,
    /// The ELF image.
    pub elf: &'static [u8],
}

/// Every guest, by name.
pub const GUESTS: &[Guest] = &[
    Guest {
        name: "disk-hash",
        description: "deterministic memory and disk workload; prints DONE hash=<16 hex>",
        args: "seed=S rounds=N mem_mib=M disk_mib=D",
        elf: include_bytes!(concat!(env!("OUT_DIR"), "/disk-hash.elf")),
    },
    Guest {
        name: "dirty",
        description: "dirties guest memory at a set rate (snapshot and migration benches)",
        args: "mem_mib=M mib_per_s=X seconds=T (T=0: until stopped)",
        elf: include_bytes!(concat!(env!("OUT_DIR"), "/dirty.elf")),
    },
    Guest {
        name: "blk-iops",
        description: "random 4 KiB virtio-blk reads or writes (the virtio-blk bench)",
        args: "mode=read|write ops=N disk_mib=D seed=S",
        elf: include_bytes!(concat!(env!("OUT_DIR"), "/blk-iops.elf")),
    },
];

/// The guest called `name`.
pub fn find(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.name == name)
}
