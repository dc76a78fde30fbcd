//! Fair share of disks across cluster replicas: bounded-load rendezvous hashing (pure).
//!
//! Every replica computes the assignment itself from the same inputs (the configured disk
//! names and the alive replica ids), so no replica has to hand out work and no extra round
//! trip is needed: equal views give equal assignments. Each disk ranks the replicas by
//! [`score`]`(disk, replica)`; disks are then taken in name order and each goes to its
//! best-ranked replica that still has room: `floor(disks / replicas)` disks each, plus one
//! for the first `disks mod replicas` replicas that reach it. So loads differ by at most one
//! (none above `ceil(disks / replicas)`, and no replica idle while another has two: a bare
//! `ceil` cap would let 4 disks over 3 replicas go 2, 2, 0). The score alone gives minimal
//! movement (a leaving replica's disks spread over the others, a joining one takes only disks
//! that now rank it first); the caps keep the load even where plain hashing would not.

use std::collections::BTreeMap;

/// A stable 64-bit score of the pair: the same on every host, build and Rust version (unlike
/// `std`'s `DefaultHasher`, which may change), and well mixed (FNV-1a followed by the
/// SplitMix64 finaliser) so rankings of different disks are independent. A CRC would not do:
/// it is linear, so which of two replicas wins would be nearly the same for every disk.
pub fn score(disk: &str, replica: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in disk.bytes().chain([0u8]).chain(replica.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Which replica runs each disk: `disk -> replica`. Empty without replicas. Duplicate names
/// count once; the order of either input does not matter.
pub fn assign(disks: &[String], replicas: &[String]) -> BTreeMap<String, String> {
    let mut replicas: Vec<&str> = replicas.iter().map(String::as_str).collect();
    replicas.sort_unstable();
    replicas.dedup();
    let mut disks: Vec<&str> = disks.iter().map(String::as_str).collect();
    disks.sort_unstable();
    disks.dedup();
    let mut out = BTreeMap::new();
    if replicas.is_empty() {
        return out;
    }
    let floor = disks.len() / replicas.len();
    let mut extra = disks.len() % replicas.len();
    let mut load: BTreeMap<&str, usize> = replicas.iter().map(|r| (*r, 0)).collect();
    for disk in disks {
        // Highest score first (each scored once); the name breaks the (astronomically
        // unlikely) tie.
        let mut ranked: Vec<(std::cmp::Reverse<u64>, &str)> = replicas
            .iter()
            .map(|r| (std::cmp::Reverse(score(disk, r)), *r))
            .collect();
        ranked.sort_unstable();
        // The capacity (floor × replicas + extra) equals the number of disks, so some
        // replica has room for every disk.
        if let Some(r) = ranked
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| load[r] < floor || (load[r] == floor && extra > 0))
        {
            if load[r] == floor {
                extra -= 1;
            }
            *load.entry(r).or_default() += 1;
            out.insert(disk.to_string(), r.to_string());
        }
    }
    out
}

/// The disks `assign` gives to `replica`, in name order.
pub fn disks_of(assignment: &BTreeMap<String, String>, replica: &str) -> Vec<String> {
    assignment
        .iter()
        .filter(|(_, r)| r.as_str() == replica)
        .map(|(d, _)| d.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn loads(a: &BTreeMap<String, String>, replicas: &[String]) -> Vec<usize> {
        replicas.iter().map(|r| disks_of(a, r).len()).collect()
    }

    #[test]
    fn every_disk_goes_to_one_replica_and_none_exceeds_its_share() {
        for (d, r) in [(4, 3), (1, 3), (10, 1), (100, 7), (1000, 3), (5, 5), (3, 8)] {
            let (disks, replicas) = (names("disk-", d), names("pod-", r));
            let a = assign(&disks, &replicas);
            assert_eq!(a.len(), d, "{d} disks over {r}");
            let cap = d.div_ceil(r);
            let l = loads(&a, &replicas);
            assert!(l.iter().all(|&n| n <= cap), "{d}/{r}: {l:?} above {cap}");
            assert_eq!(l.iter().sum::<usize>(), d);
            // Balanced both ways: loads differ by at most one.
            let (lo, hi) = (l.iter().min().unwrap(), l.iter().max().unwrap());
            assert!(hi - lo <= 1, "{d}/{r}: {l:?}");
        }
    }

    #[test]
    fn the_same_view_gives_the_same_assignment_in_any_order() {
        let disks = names("d", 40);
        let replicas = names("r", 4);
        let a = assign(&disks, &replicas);
        let mut rd = disks.clone();
        rd.reverse();
        let mut rr = replicas.clone();
        rr.rotate_left(1);
        rr.push("r0".into());
        assert_eq!(assign(&rd, &rr), a);
        // Pinned values: a change to the score would reshuffle every running cluster during a
        // rolling upgrade (two versions would disagree on every disk).
        assert_eq!(
            score("d1", "r1"),
            0x3c1d_4126_c975_3df3,
            "{:#x}",
            score("d1", "r1")
        );
    }

    #[test]
    fn no_replicas_no_assignment() {
        assert!(assign(&names("d", 3), &[]).is_empty());
    }

    fn moved(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> usize {
        a.iter().filter(|(d, r)| b.get(*d) != Some(*r)).count()
    }

    #[test]
    fn a_joining_replica_takes_about_its_share_and_little_else_moves() {
        let disks = names("disk-", 300);
        for r in [1, 2, 3, 5, 9] {
            let before = names("pod-", r);
            let mut after = before.clone();
            after.push("pod-new".into());
            let (a, b) = (assign(&disks, &before), assign(&disks, &after));
            let share = disks.len() / (r + 1);
            let to_new = disks_of(&b, "pod-new").len();
            assert!(to_new >= share, "{r}+1: the new replica got {to_new}");
            // Ideal: exactly the new replica's share moves. The load cap moves a few more.
            let m = moved(&a, &b);
            assert!(
                m <= share + share / 2 + 2,
                "{r}+1: {m} moved, share {share}"
            );
        }
    }

    #[test]
    fn a_leaving_replicas_disks_spread_and_little_else_moves() {
        let disks = names("disk-", 300);
        for r in [2, 3, 5, 9] {
            let before = names("pod-", r);
            let after: Vec<String> = before[1..].to_vec();
            let (a, b) = (assign(&disks, &before), assign(&disks, &after));
            let lost = disks_of(&a, "pod-0").len();
            let m = moved(&a, &b);
            assert!(m >= lost);
            assert!(m <= lost + lost / 2 + 2, "{r}-1: {m} moved, {lost} had to");
            let l = loads(&b, &after);
            assert!(l.iter().all(|&n| n <= disks.len().div_ceil(r - 1)), "{l:?}");
        }
    }
}
