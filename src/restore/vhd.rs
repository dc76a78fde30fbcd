//! The fixed-VHD footer Azure expects at the end of a managed-disk upload: a disk of `size`
//! bytes is uploaded as `size + 512` bytes, the last 512 being this footer (Microsoft's
//! "Virtual Hard Disk Image Format Specification", hard disk footer; a fixed disk has no
//! other metadata). Snapback's restore points hold the raw disk bytes without it
//! (docs/managed-disks.md, "Sizes"), so a restore to a managed disk writes it.

/// Bytes of the footer.
pub const FOOTER_SIZE: u64 = 512;

/// Seconds from the Unix epoch to 2000-01-01T00:00:00Z, the VHD time origin.
const VHD_EPOCH: i64 = 946_684_800;

/// The footer of a fixed VHD of `size` bytes (a multiple of 512), made at `unix` time,
/// with `unique_id` as its identifier.
pub fn fixed_footer(size: u64, unix: i64, unique_id: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    let stamp = u32::try_from((unix - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"sbk ");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k"); // creator host OS, as Azure's own tools write
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    let (c, h, s) = geometry(size / 512);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&unique_id);
    let sum = f.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// Cylinders, heads and sectors per track for `sectors`, by the specification's algorithm
/// (capped at 65535 × 16 × 255 sectors, as it says).
fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65_535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65_535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_fields_and_checksum() {
        let size = 32 * 1024 * 1024 * 1024u64;
        let f = fixed_footer(size, VHD_EPOCH + 10, [7; 16]);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), size);
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 10);
        // The checksum is the one's complement of the sum of every other byte.
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        let sum = zeroed
            .iter()
            .fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
        assert_eq!(stored, !sum);
    }

    #[test]
    fn geometry_follows_the_specification() {
        // 127 GiB (a common OS disk): 266,338,304 sectors / 255 / 16 heads = 65,278 cylinders.
        // A small disk, against the algorithm worked by hand:
        assert_eq!(geometry(127 * 1024 * 1024 * 2), (65278, 16, 255));
        // 20 MiB: 40,960 sectors -> 17 spt, 2,409 cylinder-heads, 4 heads.
        assert_eq!(geometry(40_960), (602, 4, 17));
    }
}
