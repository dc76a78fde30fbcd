//! What a restore prints for the operator to run or paste: the Azure CLI commands that attach
//! a restored blob (ARM operations snapback never runs) and the `[[disk]]` stanza of a rebased
//! chain. Apart from the restore because it is text for a person, not work on storage.

use super::RebasedChain;
use crate::config::DiskConfig;

/// The Azure CLI commands that put a restored blob under a VM. Attaching disks is an ARM
/// operation, outside the storage API snapback uses, so it is printed, never run.
pub fn attach_commands(url: &str, account_name: &str, disk_name: &str) -> String {
    format!(
        "# Attach the restored disk (ARM operations; snapback does not run them).\n\
         # Fill in <RG>, <VM>, <SUBSCRIPTION> and, for a data disk, <OLD_DISK>.\n\
         #\n\
         # Managed disks: import the blob as a new managed disk, then swap it in.\n\
         az disk create --resource-group <RG> --name {disk_name} \\\n\
         \x20   --source {url} \\\n\
         \x20   --source-storage-account-id /subscriptions/<SUBSCRIPTION>/resourceGroups/<RG>/providers/Microsoft.Storage/storageAccounts/{account_name}\n\
         az vm deallocate --resource-group <RG> --name <VM>\n\
         az vm update --resource-group <RG> --name <VM> --os-disk {disk_name}        # OS disk\n\
         # or, for a data disk:\n\
         #   az vm disk detach --resource-group <RG> --vm-name <VM> --name <OLD_DISK>\n\
         #   az vm disk attach --resource-group <RG> --vm-name <VM> --name {disk_name}\n\
         az vm start --resource-group <RG> --name <VM>\n\
         #\n\
         # Unmanaged disks (the VM uses the page blob itself; a --rebase chain follows it):\n\
         #   az vm deallocate --resource-group <RG> --name <VM>\n\
         #   az vm update --resource-group <RG> --name <VM> --set storageProfile.osDisk.vhd.uri={url}\n\
         #   az vm unmanaged-disk attach --resource-group <RG> --vm-name <VM> --name {disk_name} --vhd-uri {url}   # data disk\n\
         #   az vm start --resource-group <RG> --name <VM>\n"
    )
}

/// The `[[disk]]` stanza of a rebased chain, with the original disk's other settings.
pub fn config_stanza(chain: &RebasedChain, original: &DiskConfig) -> String {
    use crate::config::VerifyMode;
    let mut s = format!(
        "[[disk]]\nname = \"{}\"\nsource = \"{}\"\nbackup = \"{}\"\n",
        chain.name, chain.source, chain.backup
    );
    if let Some(sched) = &original.schedule {
        s.push_str(&format!("schedule = \"{sched}\"\n"));
    }
    s.push_str(&format!("tz = \"{}\"\n", original.tz));
    s.push_str(&format!("concurrency = {}\n", original.concurrency));
    if original.verify == VerifyMode::AfterCycle {
        s.push_str("verify = \"after-cycle\"\n");
    }
    let r = &original.retention;
    let rules: Vec<String> = [
        ("keep_last", r.keep_last),
        ("hourly", r.hourly),
        ("daily", r.daily),
        ("weekly", r.weekly),
        ("monthly", r.monthly),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}")))
    .collect();
    if !rules.is_empty() {
        s.push_str(&format!("retention = {{ {} }}\n", rules.join(", ")));
    }
    s
}
