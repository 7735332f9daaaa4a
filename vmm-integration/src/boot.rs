//! Loading a guest image and the long-mode starting state of its vCPUs (layout.rs).

use crate::error::{kvm, Result, VmmError};
use crate::layout::*;
use crate::memory::Mem;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, CpuId};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Copy the PT_LOAD segments of the ELF image `elf` into guest memory; returns the entry.
pub fn load_elf(mem: &Mem, elf: &[u8], guest: &str) -> Result<u64> {
    let bad = |r: &str| VmmError::Image {
        guest: guest.to_string(),
        reason: r.to_string(),
    };
    if elf.len() < 64 || &elf[0..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    if le16(elf, 18) != 0x3e {
        return Err(bad("not an x86-64 ELF file"));
    }
    let entry = le64(elf, 24);
    let phoff = le64(elf, 32) as usize;
    let phentsize = le16(elf, 54) as usize;
    let phnum = le16(elf, 56) as usize;
    if phentsize < 56
        || phnum > 64
        || phoff
            .checked_add(phentsize * phnum)
            .is_none_or(|e| e > elf.len())
    {
        return Err(bad("program headers outside the file"));
    }
    let mut loaded = false;
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..];
        if le32(ph, 0) != 1 {
            continue;
        }
        let (off, vaddr, filesz, memsz) = (le64(ph, 8), le64(ph, 16), le64(ph, 32), le64(ph, 40));
        if vaddr < IMAGE_BASE
            || vaddr.checked_add(memsz).is_none_or(|e| e > IMAGE_END)
            || filesz > memsz
            || off.checked_add(filesz).is_none_or(|e| e > elf.len() as u64)
        {
            return Err(bad("a segment outside 0x100000..0x1000000 or the file"));
        }
        mem.write_slice(
            &elf[off as usize..(off + filesz) as usize],
            GuestAddress(vaddr),
        )
        .map_err(|e| VmmError::Memory(e.to_string()))?;
        loaded = true;
    }
    if !loaded || !(IMAGE_BASE..IMAGE_END).contains(&entry) {
        return Err(bad("no loadable segment or an entry outside the image"));
    }
    Ok(entry)
}

/// Write the GDT, TSS, page tables and boot information.
pub fn write_tables(mem: &Mem, vcpus: u32, disks: u32, tsc_khz: u64, args: &str) -> Result<()> {
    let w = |v: &[u8], at: u64| {
        mem.write_slice(v, GuestAddress(at))
            .map_err(|e| VmmError::Memory(e.to_string()))
    };
    let tss_lo: u64 = TSS_LIMIT | (TSS & 0xff_ffff) << 16 | 0x8b << 40 | ((TSS >> 24) & 0xff) << 56;
    let gdt: [u64; 7] = [
        0,
        0x00af_9b00_0000_ffff, // 0x08 kernel code, 64-bit
        0x00cf_9300_0000_ffff, // 0x10 kernel data
        0x00cf_f300_0000_ffff, // 0x18 user data (DPL 3)
        0x00af_fb00_0000_ffff, // 0x20 user code, 64-bit (DPL 3)
        tss_lo,                // 0x28 TSS (busy)
        TSS >> 32,
    ];
    let g: Vec<u8> = gdt.iter().flat_map(|x| x.to_le_bytes()).collect();
    w(&g, GDT)?;
    // An I/O permission bitmap allowing every port: ring 3 does port I/O whatever IOPL
    // the hypervisor leaves in RFLAGS (this machine's clears it).
    let mut tss = vec![0u8; TSS_LIMIT as usize + 1];
    tss[4..12].copy_from_slice(&STACK_TOP.to_le_bytes()); // rsp0
    tss[102..104].copy_from_slice(&104u16.to_le_bytes()); // I/O bitmap at 104
    tss[TSS_LIMIT as usize] = 0xff; // the bitmap's terminating byte
    w(&tss, TSS)?;
    // PML4 → PDPT → 4 page directories of 2 MiB pages: identity map of 4 GiB, user, writable
    let pdpt = PML4 + 0x1000;
    w(&(pdpt | 7).to_le_bytes(), PML4)?;
    for i in 0..4u64 {
        let pd = PML4 + 0x2000 + i * 0x1000;
        w(&(pd | 7).to_le_bytes(), pdpt + i * 8)?;
        let e: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i << 30) + (j << 21)) | 0x87).to_le_bytes())
            .collect();
        w(&e, pd)?;
    }
    let size = crate::memory::host_range(mem).1;
    let mut bi = vec![0u8; 8 * 5 + 8 * 8 + 8];
    bi[0..8].copy_from_slice(&BOOT_MAGIC.to_le_bytes());
    bi[8..16].copy_from_slice(&size.to_le_bytes());
    bi[16..24].copy_from_slice(&tsc_khz.to_le_bytes());
    bi[24..28].copy_from_slice(&vcpus.to_le_bytes());
    bi[28..32].copy_from_slice(&disks.to_le_bytes());
    for i in 0..MAX_DISKS {
        let a = MMIO_BASE + i as u64 * MMIO_SIZE;
        bi[32 + i * 8..40 + i * 8].copy_from_slice(&a.to_le_bytes());
    }
    let a = args.as_bytes();
    if a.len() > MAX_ARGS {
        return Err(VmmError::Refused(format!(
            "guest arguments: {} bytes, more than {MAX_ARGS}",
            a.len()
        )));
    }
    bi[96..100].copy_from_slice(&(a.len() as u32).to_le_bytes());
    bi.truncate(104);
    bi.extend_from_slice(a);
    w(&bi, BOOT_INFO)
}

/// TSS limit: 104 bytes, 8 KiB of I/O bitmap, its terminating byte.
const TSS_LIMIT: u64 = 104 + 8192;

fn seg(selector: u16, type_: u8, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Give vCPU `index` the supported CPUID with its own APIC ids (at boot and at a restore
/// alike, so a restored guest sees what it saw when it booted).
pub fn set_cpuid(vcpu: &VcpuFd, index: u32, cpuid: &CpuId) -> Result<()> {
    let mut cpuid = cpuid.clone();
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24);
        }
        if e.function == 0xb || e.function == 0x1f {
            e.edx = index;
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))
}

/// The starting state of vCPU `index`: 64-bit mode, ring 0, at `entry`.
pub fn setup_vcpu(vcpu: &VcpuFd, index: u32, entry: u64, cpuid: &CpuId) -> Result<()> {
    set_cpuid(vcpu, index, cpuid)?;
    let mut s: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    s.cs = seg(0x08, 0xb, true, 0);
    let data = seg(0x10, 0x3, false, 0);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        base: TSS,
        limit: TSS_LIMIT as u32,
        selector: 0x28,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    s.gdt.base = GDT;
    s.gdt.limit = 7 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = 0x8005_0033; // PG WP NE ET MP PE
    s.cr3 = PML4;
    s.cr4 = 0x620; // OSXMMEXCPT OSFXSR PAE
    s.efer = 0x500; // LMA LME
    vcpu.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    let regs = kvm_regs {
        rip: entry,
        rsp: STACK_TOP - u64::from(index) * 0x1000,
        rflags: 0x3002, // IOPL 3: the ring-3 workload does port I/O
        rdi: BOOT_INFO,
        rsi: u64::from(index),
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}
