//! The OVF envelope model (DSP0243): what a descriptor says, independent of how it was
//! spelled (OVF 0.9/1.x/2.x, `Section xsi:type` or named sections, namespace prefixes).
//!
//! Values the descriptor states are kept as stated; interpretations (bytes of a capacity,
//! the VM config) are computed by methods and by [`crate::mapping`].

use std::collections::BTreeMap;

use serde::Serialize;

/// Which OVF envelope namespace (and so which spelling rules) a descriptor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// OVF 0.9 (`http://www.vmware.com/schema/ovf/1/envelope`): `Section xsi:type` style.
    Ovf09,
    /// DMTF OVF 1.x (`http://schemas.dmtf.org/ovf/envelope/1`).
    Ovf1,
    /// DMTF OVF 2.x (`http://schemas.dmtf.org/ovf/envelope/2`).
    Ovf2,
    /// oVirt/RHV (`http://schemas.dmtf.org/ovf/envelope/1/`, trailing slash): unqualified
    /// elements, `Section xsi:type`, `Disk/@fileRef` naming a `File/@href`.
    Ovirt,
}

/// One `References/File`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRef {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: relative path inside the package (checked safe by the parser).
    pub href: String,
    /// `ovf:size` in bytes, when stated.
    pub size: Option<u64>,
    /// `ovf:compression` (`gzip`), when stated.
    pub compression: Option<String>,
    /// `ovf:chunkSize`: the file is split into `href.000000000`, `href.000000001`, ...
    pub chunk_size: Option<u64>,
}

/// One `DiskSection/Disk`: a virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:capacity` as written (a number, or a `${property}` reference).
    pub capacity: String,
    /// `ovf:capacityAllocationUnits` (default `byte`).
    pub capacity_units: Option<String>,
    /// Capacity in bytes, when `capacity` is a number in a byte unit.
    pub capacity_bytes: Option<u64>,
    /// `ovf:populatedSize`: bytes actually used, when stated.
    pub populated_size: Option<u64>,
    /// `ovf:format` URI (e.g. `...vmdk.html#streamOptimized`).
    pub format: Option<String>,
    /// `ovf:fileRef`: the `File` id holding the disk; `None` for a blank disk.
    pub file_ref: Option<String>,
    /// `ovf:parentRef`: the parent `Disk` id of a delta disk.
    pub parent_ref: Option<String>,
    /// Other attributes (vendor ones, e.g. oVirt's `disk-interface`), by local name.
    pub extra: BTreeMap<String, String>,
}

/// One `NetworkSection/Network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// `ovf:name`.
    pub name: String,
    /// `Description`.
    pub description: Option<String>,
}

/// One `DeploymentOptionSection/Configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentOption {
    /// `ovf:id`.
    pub id: String,
    /// `Label`.
    pub label: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// `ovf:default="true"`.
    pub default: bool,
}

/// A localized text: the inline value and its `ovf:msgid`, resolved through `Strings` bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Text {
    /// The text as written in the descriptor.
    pub value: String,
    /// `ovf:msgid`, when the text is localizable.
    pub msgid: Option<String>,
}

/// `OperatingSystemSection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatingSystem {
    /// `ovf:id`: CIM_OperatingSystem.OsType number (as written; oVirt writes a GUID).
    pub id: Option<String>,
    /// `ovf:version`.
    pub version: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// VMware's `vmw:osType` (e.g. `ubuntu64Guest`).
    pub vmw_os_type: Option<String>,
}

/// One `ProductSection/Property`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Property {
    /// `ovf:key`.
    pub key: String,
    /// `ovf:type` (`string`, `int`, `boolean`, ...).
    pub type_name: Option<String>,
    /// `ovf:value` (default value).
    pub value: Option<String>,
    /// `ovf:userConfigurable="true"`.
    pub user_configurable: bool,
    /// `ovf:password="true"`: the value must not be displayed.
    pub password: bool,
    /// `Label`.
    pub label: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// `ovf:qualifiers`.
    pub qualifiers: Option<String>,
    /// Per-configuration values: `Value ovf:configuration=... ovf:value=...`.
    pub configuration_values: Vec<(String, String)>,
}

/// `ProductSection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// `ovf:class`.
    pub class: Option<String>,
    /// `ovf:instance`.
    pub instance: Option<String>,
    /// `Product`.
    pub product: Option<String>,
    /// `Vendor`.
    pub vendor: Option<String>,
    /// `Version`.
    pub version: Option<String>,
    /// `FullVersion`.
    pub full_version: Option<String>,
    /// `ProductUrl`.
    pub product_url: Option<String>,
    /// `VendorUrl`.
    pub vendor_url: Option<String>,
    /// `AppUrl`.
    pub app_url: Option<String>,
    /// `Property` elements, in order (categories dropped).
    pub properties: Vec<Property>,
}

/// `EulaSection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Eula {
    /// `License`.
    pub license: Text,
}

/// `Strings` bundle: inline `Msg` elements or a reference to an external bundle file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StringBundle {
    /// `xml:lang`.
    pub lang: Option<String>,
    /// `ovf:fileRef` of an external `.ovfmsg` bundle.
    pub file_ref: Option<String>,
    /// `(msgid, text)` of inline `Msg` elements.
    pub messages: Vec<(String, String)>,
}

/// Which CIM class (and so which element name) a hardware item is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemClass {
    /// `Item`: CIM_ResourceAllocationSettingData (`rasd:`).
    Resource,
    /// `EthernetPortItem`: CIM_EthernetPortAllocationSettingData (`epasd:`, OVF 2.x).
    EthernetPort,
    /// `StorageItem`: CIM_StorageAllocationSettingData (`sasd:`, OVF 2.x).
    Storage,
}

/// One hardware item of a `VirtualHardwareSection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HardwareItem {
    /// Element and CIM class.
    pub class: ItemClass,
    /// `InstanceID` (0.9: `InstanceId`).
    pub instance_id: String,
    /// `ResourceType` (CIM value map: 3 CPU, 4 memory, 5 IDE, 6 SCSI, 10 NIC, 17 disk, ...).
    pub resource_type: Option<u32>,
    /// `ResourceSubType` (`lsilogic`, `E1000`, `AHCI`, ...).
    pub resource_sub_type: Option<String>,
    /// `ElementName`.
    pub element_name: Option<String>,
    /// `Description`.
    pub description: Option<String>,
    /// `Caption`.
    pub caption: Option<String>,
    /// `Address` (controller number; a NIC's MAC address).
    pub address: Option<String>,
    /// `AddressOnParent` (unit number on the parent controller).
    pub address_on_parent: Option<String>,
    /// `Parent`: `InstanceID` of the controller.
    pub parent: Option<String>,
    /// `HostResource` values (`ovf:/disk/ID`, `ovf:/file/ID`).
    pub host_resources: Vec<String>,
    /// `Connection` values (network names).
    pub connections: Vec<String>,
    /// `AllocationUnits`.
    pub allocation_units: Option<String>,
    /// `VirtualQuantity`.
    pub virtual_quantity: Option<u64>,
    /// `AutomaticAllocation`.
    pub automatic_allocation: Option<bool>,
    /// `ovf:required` (default true).
    pub required: bool,
    /// `ovf:configuration`: deployment options this item applies to (empty: all).
    pub configurations: Vec<String>,
    /// `ovf:bound` (`min`, `max`, `normal`).
    pub bound: Option<String>,
    /// Other CIM properties and unqualified vendor elements, by local name.
    pub other: BTreeMap<String, String>,
    /// `vmw:Config` key/values attached to the item.
    pub vmw_config: Vec<(String, String)>,
    /// `vdisk:BootOrder`, the boot priority this project writes for disks.
    pub boot_order: Option<u32>,
}

/// `VirtualHardwareSection/System` (CIM_VirtualSystemSettingData).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemSettings {
    /// `ElementName`.
    pub element_name: Option<String>,
    /// `InstanceID`.
    pub instance_id: Option<String>,
    /// `VirtualSystemIdentifier`.
    pub identifier: Option<String>,
    /// `VirtualSystemType` (e.g. `vmx-13`, `virtualbox-2.2`), split on spaces.
    pub system_types: Vec<String>,
}

/// `VirtualHardwareSection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualHardware {
    /// `ovf:id` (several sections may exist for different platforms).
    pub id: Option<String>,
    /// `ovf:transport` (`iso`, `com.vmware.guestInfo`).
    pub transport: Option<String>,
    /// `System`.
    pub system: Option<SystemSettings>,
    /// Items in document order.
    pub items: Vec<HardwareItem>,
    /// `vmw:Config` key/values of the section (e.g. `firmware`).
    pub vmw_config: Vec<(String, String)>,
    /// `vmw:ExtraConfig` key/values of the section.
    pub vmw_extra_config: Vec<(String, String)>,
    /// `vdisk:GuestSection` of the section: the program the bundled VMM runs. This project
    /// writes it here, among the section's `##other` extensions (as `vmw:Config`), because
    /// DSP8023 admits no foreign element directly in a VirtualSystem.
    pub vdisk_guest: Option<VdiskGuest>,
}

/// A section or element this reader does not interpret, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtensionSection {
    /// Namespace URI of the element (empty when unqualified).
    pub namespace: String,
    /// Local name, or the `xsi:type` for `Section xsi:type=...` style.
    pub name: String,
    /// `ovf:required` (false: safe to ignore).
    pub required: bool,
    /// The element's source XML.
    pub xml: String,
}

/// Sections that may appear in a VirtualSystem or a VirtualSystemCollection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Sections {
    /// `OperatingSystemSection`.
    pub operating_system: Option<OperatingSystem>,
    /// `VirtualHardwareSection`s.
    pub hardware: Vec<VirtualHardware>,
    /// `ProductSection`s.
    pub products: Vec<Product>,
    /// `EulaSection`s.
    pub eulas: Vec<Eula>,
    /// `AnnotationSection/Annotation`.
    pub annotation: Option<Text>,
    /// VirtualBox's `vbox:Machine` (its settings XML), kept verbatim.
    pub vbox_machine: Option<String>,
    /// Standard sections not interpreted (Startup, ResourceAllocation, Install, ...) and
    /// optional vendor sections, kept verbatim.
    pub other: Vec<ExtensionSection>,
    /// Unqualified simple elements of the oVirt dialect (`BiosType`, `TemplateName`, ...).
    pub vendor_fields: BTreeMap<String, String>,
    /// `vdisk:GuestSection` placed directly in the VirtualSystem (read, never written: see
    /// [`VirtualHardware::vdisk_guest`]).
    pub vdisk_guest: Option<VdiskGuest>,
}

/// `vdisk:GuestSection` (namespace [`crate::ns::VDISK`], `ovf:required="false"`): the bundled
/// VMM's guest program of a VM and its arguments, i.e. `vm.json`'s `guest` member. Other
/// consumers ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VdiskGuest {
    /// `vdisk:Name`: the guest program (`disk-hash`, ...), verbatim.
    pub name: String,
    /// `vdisk:Args`: its arguments, verbatim (empty when the element is absent).
    pub args: String,
}

/// `VirtualSystem`: one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualSystem {
    /// `ovf:id`.
    pub id: String,
    /// `Info`.
    pub info: Option<String>,
    /// `Name`.
    pub name: Option<String>,
    /// Its sections.
    pub sections: Sections,
}

/// `VirtualSystemCollection`: a vApp of VMs and nested collections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualSystemCollection {
    /// `ovf:id`.
    pub id: String,
    /// `Info`.
    pub info: Option<String>,
    /// `Name`.
    pub name: Option<String>,
    /// Its sections.
    pub sections: Sections,
    /// Children in document order.
    pub children: Vec<Content>,
}

/// The content of an envelope: one VM or a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// A single VM.
    System(VirtualSystem),
    /// A collection.
    Collection(VirtualSystemCollection),
}

impl Content {
    /// `ovf:id` of the content.
    pub fn id(&self) -> &str {
        match self {
            Content::System(s) => &s.id,
            Content::Collection(c) => &c.id,
        }
    }

    /// Every VirtualSystem, depth first in document order.
    pub fn systems(&self) -> Vec<&VirtualSystem> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(c) = stack.pop() {
            match c {
                Content::System(s) => out.push(s),
                Content::Collection(col) => stack.extend(col.children.iter().rev()),
            }
        }
        out
    }
}

/// A parsed OVF envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// Namespace family.
    pub dialect: Dialect,
    /// `ovf:version` attribute, when present.
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// `References/File` in document order.
    pub files: Vec<FileRef>,
    /// `DiskSection/Disk` in document order.
    pub disks: Vec<VirtualDisk>,
    /// `NetworkSection/Network` in document order.
    pub networks: Vec<Network>,
    /// `DeploymentOptionSection/Configuration` in document order.
    pub deployment_options: Vec<DeploymentOption>,
    /// Other envelope-level sections (standard but not interpreted, or optional vendor ones).
    pub other_sections: Vec<ExtensionSection>,
    /// The VM or collection.
    pub content: Content,
    /// `Strings` bundles.
    pub strings: Vec<StringBundle>,
}

impl Envelope {
    /// The `File` with this id.
    pub fn file(&self, id: &str) -> Option<&FileRef> {
        self.files.iter().find(|f| f.id == id)
    }

    /// The `Disk` with this id.
    pub fn disk(&self, id: &str) -> Option<&VirtualDisk> {
        self.disks.iter().find(|d| d.disk_id == id)
    }

    /// The `File` holding a disk: by `File/@id`, or (oVirt) by `File/@href`.
    pub fn disk_file(&self, disk: &VirtualDisk) -> Option<&FileRef> {
        let r = disk.file_ref.as_deref()?;
        self.file(r)
            .or_else(|| self.files.iter().find(|f| f.href == r))
    }

    /// Resolves a localized text: inline `Msg` of `lang` (or the envelope's language, or any),
    /// falling back to the inline value.
    pub fn resolve_text(&self, text: &Text, lang: Option<&str>) -> String {
        let Some(id) = text.msgid.as_deref() else {
            return text.value.clone();
        };
        let want = lang.or(self.lang.as_deref());
        let found = |pred: &dyn Fn(&StringBundle) -> bool| {
            self.strings
                .iter()
                .filter(|b| pred(b))
                .flat_map(|b| b.messages.iter())
                .find(|(k, _)| k == id)
                .map(|(_, v)| v.clone())
        };
        if !text.value.trim().is_empty() {
            if let Some(v) = found(&|b| b.lang.as_deref() == want) {
                return v;
            }
            return text.value.clone();
        }
        found(&|b| b.lang.as_deref() == want)
            .or_else(|| found(&|_| true))
            .unwrap_or_default()
    }
}

/// A section marked (or defaulting to) `ovf:required="true"` that this reader does not
/// understand. DSP0243 lets a consumer refuse to deploy such a package; `inspect` lists them
/// and `import` refuses them unless forced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsupportedSection {
    /// Its qualified name (`{namespace}local`) or xsi:type.
    pub section: String,
    /// Where it is (`Envelope`, `VirtualSystem "web"`, `VirtualHardwareSection`, ...).
    pub location: String,
}
