//! The sizes an Upload disk may have (docs/managed-disks.md, "Limits"): at least 20 MiB, a
//! whole number of MiB, at most 32 TiB, and what a restore point of another size becomes.
//! Apart from the restore because it is Azure's arithmetic, pure and tested on its own.

const MIB: u64 = 1 << 20;
/// `uploadSizeBytes` "should be between 20972032 (20 MiB + 512 bytes for the VHD footer) and
/// 35183298347520 bytes (32 TiB + 512 bytes for the VHD footer)" (DiskRP `CreationData`), and
/// an upload is "N * MiB + 512 bytes" (`Add-AzVhd`): the disk part is a whole number of MiB.
pub const MIN_UPLOAD_DISK: u64 = 20 * MIB;
pub const MAX_UPLOAD_DISK: u64 = 32 * (1 << 40);

/// Whether Azure's documented upload sizes exclude a disk of exactly `size` bytes.
pub fn needs_rounding(size: u64) -> bool {
    size < MIN_UPLOAD_DISK || !size.is_multiple_of(MIB)
}

/// The size of the Upload disk that holds a restore point of `size` bytes: `size` rounded up
/// to Azure's minimum and to a whole MiB. The restore point's bytes come first and the rest
/// reads as zeros, as a disk grown by `az disk update --size-gb` would.
///
/// Refused where rounding cannot be right: above 32 TiB (no Upload disk is that large), and
/// with `--rebase` when the disk would differ from the restore point, since the rebased
/// chain takes the new disk's first snapshot and the restore point as one finished cycle,
/// which needs the two to be the same bytes and size.
pub fn upload_disk_size(size: u64, rebase: bool) -> Result<u64, String> {
    let rounded = size
        .max(MIN_UPLOAD_DISK)
        .checked_next_multiple_of(MIB)
        .filter(|r| *r <= MAX_UPLOAD_DISK)
        .ok_or_else(|| {
            format!(
                "the restore point is {size} bytes; an Upload disk holds at most 32 TiB \
                 ({MAX_UPLOAD_DISK} bytes): restore it with --to to a page blob instead"
            )
        })?;
    if rebase && rounded != size {
        return Err(format!(
            "the restore point is {size} bytes, which no Upload disk can be (at least 20 MiB, a \
             whole number of MiB): the new disk would be {rounded} bytes, {} more, and --rebase \
             needs the new disk and the restore point to hold the same bytes (the chain's first \
             cycle pairs them). Restore without --rebase (the disk is then {rounded} bytes, the \
             rest zeros) and let the next cycle of a config pointing at it seed",
            rounded - size
        ));
    }
    Ok(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_rounded_up_to_azures_upload_sizes() {
        assert_eq!(upload_disk_size(4 * MIB, false), Ok(MIN_UPLOAD_DISK));
        assert_eq!(upload_disk_size(512, false), Ok(MIN_UPLOAD_DISK));
        assert_eq!(upload_disk_size(0, false), Ok(MIN_UPLOAD_DISK));
        assert_eq!(upload_disk_size(20 * MIB, false), Ok(20 * MIB));
        assert_eq!(upload_disk_size(20 * MIB + 512, false), Ok(21 * MIB));
        assert_eq!(upload_disk_size(64 * MIB - 512, false), Ok(64 * MIB));
        assert_eq!(
            upload_disk_size(MAX_UPLOAD_DISK, false),
            Ok(MAX_UPLOAD_DISK)
        );
    }

    #[test]
    fn rounding_is_refused_where_it_cannot_be_right() {
        let e = upload_disk_size(MAX_UPLOAD_DISK + 512, false).unwrap_err();
        assert!(e.contains("32 TiB"), "{e}");
        assert!(upload_disk_size(u64::MAX, false).is_err());
        let e = upload_disk_size(4 * MIB, true).unwrap_err();
        assert!(e.contains("--rebase") && e.contains("16777216 more"), "{e}");
        // A valid size needs no rounding: --rebase is fine.
        assert_eq!(upload_disk_size(32 * MIB, true), Ok(32 * MIB));
    }
}
