//! The Azure CLI commands printed after a restore to a managed disk, which swap the new disk
//! into a VM (ARM operations snapback never runs). Apart from the restore because they are
//! text for the operator, not work on Azure.

use super::ManagedRestoreReport;
use crate::arm::ResourceId;

/// The commands that swap the disk of `report` into a VM, for its kind: an OS disk
/// (`osType` set) replaces the VM's OS disk, which Azure allows only between disks of the
/// VM's generation and, with a customer-managed key, the VM's encryption settings
/// (os-disk-swap); a data disk is detached and attached.
pub fn swap_commands_for(target: &ResourceId, report: &ManagedRestoreReport) -> String {
    let rg = &target.group.name;
    let mut out = String::from(
        "# Swap the restored disk into the VM (snapback does not run these). Fill in <VM>",
    );
    if report.os_type.is_none() {
        out.push_str(" and <OLD_DISK>.\n");
        out.push_str(&format!(
            "# A data disk (the source disk had no osType).\n\
             az vm disk detach --resource-group {rg} --vm-name <VM> --name <OLD_DISK>\n\
             az vm disk attach --resource-group {rg} --vm-name <VM> --name {target}\n"
        ));
        if !report.recorded {
            out.push_str(
                "# The restore point recorded no disk properties (taken by an older snapback):\n\
                 # for an OS disk, restore again with --os-type (and --hyper-v-generation V2 for Gen2).\n",
            );
        }
        return out;
    }
    out.push_str(".\n");
    out.push_str(&format!(
        "# An OS disk ({}, Hyper-V generation {}): the VM must be of that generation.\n",
        report.os_type.as_deref().unwrap_or(""),
        report.hyper_v_generation.as_deref().unwrap_or("V1")
    ));
    if let Some(des) = &report.disk_encryption_set {
        out.push_str(&format!(
            "# Encrypted with the customer-managed key of {des}: the VM's disks use the same.\n"
        ));
    }
    if let Some(bytes) = report.guest_state {
        out.push_str(&format!(
            "# Trusted Launch, with its VM guest state ({bytes} bytes: vTPM, UEFI variables): the VM\n\
             # must be a Trusted Launch VM (Gen2, security type TrustedLaunch); its vTPM keys are the\n\
             # restore point's, so BitLocker / TPM-sealed volumes open as they did then.\n"
        ));
    }
    out.push_str(&format!(
        "az vm deallocate --resource-group {rg} --name <VM>\n\
         az vm update --resource-group {rg} --name <VM> --os-disk {target}\n\
         az vm start --resource-group {rg} --name <VM>\n"
    ));
    out
}

/// The Azure CLI commands that swap the restored disk into a VM (printed, never run).
pub fn swap_commands(target: &ResourceId) -> String {
    let rg = &target.group.name;
    format!(
        "# Swap the restored disk into the VM (snapback does not run these). Fill in <VM>\n\
         # and, for a data disk, <OLD_DISK>.\n\
         az vm deallocate --resource-group {rg} --name <VM>\n\
         az vm update --resource-group {rg} --name <VM> --os-disk {target}        # OS disk\n\
         # or, for a data disk:\n\
         #   az vm disk detach --resource-group {rg} --vm-name <VM> --name <OLD_DISK>\n\
         #   az vm disk attach --resource-group {rg} --vm-name <VM> --name {target}\n\
         az vm start --resource-group {rg} --name <VM>\n"
    )
}
