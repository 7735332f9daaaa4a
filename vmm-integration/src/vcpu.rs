//! vCPU state: what a VM snapshot keeps of each vCPU, captured on the vCPU's own thread
//! while it is paused, and put back into a fresh vCPU of a new process.

use crate::error::{kvm, Result, VmmError};
use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// One vCPU's registers and state (format-spec/vmstate.md §3).
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM lists that could be read.
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
}

/// Complete an exit KVM has not finished (a port read's data goes in on the next entry):
/// enter once with `immediate_exit` set, so the vCPU stops at an instruction boundary.
pub fn settle(vcpu: &mut VcpuFd) {
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
}

/// Capture the state of a paused vCPU (after [`settle`]).
pub fn capture(vcpu: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState> {
    let mut msrs = Msrs::from_entries(
        &msr_list
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    )
    .map_err(|e| VmmError::Refused(format!("MSR list: {e:?}")))?;
    let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
    Ok(VcpuState {
        regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
        debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
        msrs: msrs.as_slice()[..n]
            .iter()
            .map(|e| (e.index, e.data))
            .collect(),
        events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
    })
}

/// Put `s` into a fresh vCPU (CPUID already set). Order matters: special registers before
/// MSRs and the LAPIC, events and the MP state last.
pub fn restore(vcpu: &VcpuFd, s: &VcpuState) -> Result<()> {
    vcpu.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
    // SAFETY: kvm_xsave is the fixed 4 KiB legacy layout KVM_GET_XSAVE returned; KVM checks
    // its content.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    if s.msrs.len() > 1024 {
        return Err(VmmError::State {
            object: "vm state".into(),
            field: "vcpus.msrs".into(),
            reason: format!("{} entries (at most 1024)", s.msrs.len()),
        });
    }
    let msrs = Msrs::from_entries(
        &s.msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    )
    .map_err(|e| VmmError::Refused(format!("MSR list: {e:?}")))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n != s.msrs.len() {
        return Err(VmmError::State {
            object: "vm state".into(),
            field: "vcpus.msrs".into(),
            reason: format!(
                "KVM took {n} of {} MSRs (index {:#x} refused)",
                s.msrs.len(),
                s.msrs[n].0
            ),
        });
    }
    vcpu.set_vcpu_events(&s.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    vcpu.set_mp_state(s.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    Ok(())
}
