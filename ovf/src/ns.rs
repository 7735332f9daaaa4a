//! Namespace URIs. Elements are matched by URI, never by prefix: producers use `ovf:`,
//! a default namespace, or no namespace at all (oVirt) for the same elements.

/// DMTF OVF 1.x envelope.
pub const OVF1: &str = "http://schemas.dmtf.org/ovf/envelope/1";
/// oVirt's spelling of the OVF 1.x envelope (trailing slash).
pub const OVF1_OVIRT: &str = "http://schemas.dmtf.org/ovf/envelope/1/";
/// DMTF OVF 2.x envelope.
pub const OVF2: &str = "http://schemas.dmtf.org/ovf/envelope/2";
/// OVF 0.9 envelope (VMware-hosted, before DMTF standardization).
pub const OVF09: &str = "http://www.vmware.com/schema/ovf/1/envelope";
/// CIM ResourceAllocationSettingData.
pub const RASD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
/// CIM VirtualSystemSettingData.
pub const VSSD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
/// CIM EthernetPortAllocationSettingData (OVF 2.x).
pub const EPASD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData";
/// CIM StorageAllocationSettingData (OVF 2.x).
pub const SASD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData";
/// CIM common types.
pub const CIM: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";
/// XML Schema instance (`xsi:type`).
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// VMware extensions (`vmw:Config`, `vmw:osType`, ...).
pub const VMW: &str = "http://www.vmware.com/schema/ovf";
/// VirtualBox machine settings (`vbox:Machine`).
pub const VBOX: &str = "http://www.virtualbox.org/ovf/machine";
/// This project's extensions (`vdisk:BootOrder`).
pub const VDISK: &str = "urn:x-vdisk:ovf:1";

/// Whether `uri` is one of the CIM settings-data namespaces (RASD, VSSD, EPASD, SASD). Also
/// accepts the spelling with the schema file's `.xsd` suffix, which VirtualBox writes for
/// EPASD and SASD in its OVF 2.0 exports.
pub fn is_cim_settings(uri: &str) -> bool {
    let uri = uri.strip_suffix(".xsd").unwrap_or(uri);
    [RASD, VSSD, EPASD, SASD].contains(&uri)
}
