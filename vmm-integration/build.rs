//! Builds the guests in `guests/` from source: `#![no_std]` programs for the host target,
//! linked freestanding at 0x100000 (no rustup target needed), embedded by `src/guests.rs`.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[(&str, &str)] = &[
    ("disk-hash", "disk_hash.rs"),
    ("dirty", "dirty.rs"),
    ("blk-iops", "blk_iops.rs"),
];

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    println!("cargo:rerun-if-changed=guests");
    for (name, src) in GUESTS {
        let elf = out.join(format!("{name}.elf"));
        let status = Command::new(&rustc)
            .args([
                "--edition=2021",
                "--crate-type=bin",
                "--crate-name=guest",
                "-O",
                "-C",
                "panic=abort",
                "-C",
                "relocation-model=static",
                "-C",
                "debuginfo=0",
                "-C",
                "strip=symbols",
                "-C",
                "link-arg=-nostdlib",
                "-C",
                "link-arg=-static",
                "-C",
                "link-arg=-Wl,--image-base=0x100000",
                "-C",
                "link-arg=-Wl,--build-id=none",
                "-o",
            ])
            .arg(&elf)
            .arg(format!("guests/{src}"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run rustc for a guest");
        assert!(
            status.success(),
            "building guest {name} from guests/{src} failed"
        );
    }
}
