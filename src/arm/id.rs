//! ARM resource ids of managed disks and snapshots, parsed and validated.

use std::fmt;
use std::str::FromStr;

/// What an id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Disk,
    Snapshot,
}

impl ResourceKind {
    /// The resource type segment in the id: `disks` or `snapshots`.
    pub fn segment(self) -> &'static str {
        match self {
            ResourceKind::Disk => "disks",
            ResourceKind::Snapshot => "snapshots",
        }
    }
}

/// A resource group: where snapshots are listed and created.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceGroup {
    pub subscription: String,
    pub name: String,
}

/// `/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/{disks|snapshots}/NAME`.
///
/// Compared case-insensitively where ARM does (everything but nothing else); displayed in
/// the canonical casing.
#[derive(Clone, Debug, Eq)]
pub struct ResourceId {
    pub group: ResourceGroup,
    pub kind: ResourceKind,
    pub name: String,
}

/// Why an id was rejected; names the id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid resource id '{id}': {reason}")]
pub struct ResourceIdError {
    pub id: String,
    pub reason: String,
}

impl ResourceId {
    pub fn new(
        group: ResourceGroup,
        kind: ResourceKind,
        name: &str,
    ) -> Result<Self, ResourceIdError> {
        let id = ResourceId {
            group,
            kind,
            name: name.to_string(),
        };
        let text = id.to_string();
        check_subscription(&id.group.subscription).map_err(|reason| err(&text, reason))?;
        check_group(&id.group.name).map_err(|reason| err(&text, reason))?;
        check_name(&id.name).map_err(|reason| err(&text, reason))?;
        Ok(id)
    }

    /// A snapshot named `name` in `group`, e.g. of this disk.
    pub fn snapshot_in(group: &ResourceGroup, name: &str) -> Result<Self, ResourceIdError> {
        Self::new(group.clone(), ResourceKind::Snapshot, name)
    }
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.to_string().eq_ignore_ascii_case(&other.to_string())
    }
}

impl std::hash::Hash for ResourceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.to_string().to_ascii_lowercase().hash(state);
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{}/{}",
            self.group.subscription,
            self.group.name,
            self.kind.segment(),
            self.name
        )
    }
}

fn err(id: &str, reason: impl Into<String>) -> ResourceIdError {
    ResourceIdError {
        id: id.to_string(),
        reason: reason.into(),
    }
}

impl FromStr for ResourceId {
    type Err = ResourceIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = id.split('/').collect();
        let expected = "expected /subscriptions/SUBSCRIPTION/resourceGroups/GROUP/providers/\
                        Microsoft.Compute/disks/NAME (or .../snapshots/NAME)";
        let [empty, subs, sub, rgs, rg, providers, ns, kind, name] = parts.as_slice() else {
            return Err(err(id, expected));
        };
        let keywords_ok = empty.is_empty()
            && subs.eq_ignore_ascii_case("subscriptions")
            && rgs.eq_ignore_ascii_case("resourceGroups")
            && providers.eq_ignore_ascii_case("providers");
        if !keywords_ok {
            return Err(err(id, expected));
        }
        if !ns.eq_ignore_ascii_case("Microsoft.Compute") {
            return Err(err(id, format!("provider '{ns}' is not Microsoft.Compute")));
        }
        let kind = if kind.eq_ignore_ascii_case("disks") {
            ResourceKind::Disk
        } else if kind.eq_ignore_ascii_case("snapshots") {
            ResourceKind::Snapshot
        } else {
            return Err(err(
                id,
                format!("resource type '{kind}' is neither disks nor snapshots"),
            ));
        };
        check_subscription(sub).map_err(|r| err(id, r))?;
        check_group(rg).map_err(|r| err(id, r))?;
        check_name(name).map_err(|r| err(id, r))?;
        Ok(ResourceId {
            group: ResourceGroup {
                subscription: sub.to_string(),
                name: rg.to_string(),
            },
            kind,
            name: name.to_string(),
        })
    }
}

/// Subscription ids are GUIDs; catching a typo here beats a 404 at the first cycle.
fn check_subscription(s: &str) -> Result<(), String> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Ok(())
    } else {
        Err(format!("subscription '{s}' is not a GUID"))
    }
}

/// ARM's rule: 1–90 of letters, digits, `_ - . ( )`, not ending in `.`.
fn check_group(g: &str) -> Result<(), String> {
    let ok_chars = g
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'));
    if (1..=90).contains(&g.chars().count()) && ok_chars && !g.ends_with('.') {
        Ok(())
    } else {
        Err(format!(
            "resource group '{g}' must be 1-90 letters, digits, _ - . ( ) and not end in '.'"
        ))
    }
}

/// Disks and snapshots: 1–80 of `a-z A-Z 0-9 _ - .`, starting with a letter or digit.
fn check_name(n: &str) -> Result<(), String> {
    let ok_chars = n
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let starts_ok = n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if (1..=80).contains(&n.len()) && ok_chars && starts_ok {
        Ok(())
    } else {
        Err(format!(
            "name '{n}' must be 1-80 of a-z A-Z 0-9 _ - . starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "00000000-1111-2222-3333-444444444444";

    #[test]
    fn parses_disk_and_snapshot_ids() {
        let id: ResourceId = format!(
            "/subscriptions/{SUB}/resourcegroups/rg-1/providers/microsoft.compute/disks/db01-data"
        )
        .parse()
        .unwrap();
        assert_eq!(id.kind, ResourceKind::Disk);
        assert_eq!(id.group.name, "rg-1");
        assert_eq!(id.name, "db01-data");
        assert_eq!(
            id.to_string(),
            format!("/subscriptions/{SUB}/resourceGroups/rg-1/providers/Microsoft.Compute/disks/db01-data")
        );
        let snap = ResourceId::snapshot_in(&id.group, "db01-data-c7").unwrap();
        assert_eq!(snap.kind, ResourceKind::Snapshot);
        let again: ResourceId = snap
            .to_string()
            .to_uppercase()
            .replace("SNAPSHOTS", "snapshots")
            .parse()
            .unwrap();
        assert_eq!(again, snap, "ids compare case-insensitively");
    }

    #[test]
    fn errors_name_the_id_and_the_part() {
        let cases = [
            (
                "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/disks/d",
                "subscription 'x' is not a GUID",
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/disks/d"
                ),
                "provider 'Microsoft.Storage'",
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/images/d"
                ),
                "resource type 'images'",
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg./providers/Microsoft.Compute/disks/d"
                ),
                "resource group 'rg.'",
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/-d"
                ),
                "name '-d'",
            ),
            (
                &*format!(
                    "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks"
                ),
                "expected /subscriptions/",
            ),
            ("db01-data", "expected /subscriptions/"),
        ];
        for (id, want) in cases {
            let e = id.parse::<ResourceId>().unwrap_err();
            assert_eq!(e.id, id);
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("invalid resource id '{id}': ")),
                "{text}"
            );
            assert!(text.contains(want), "{text} should contain {want}");
        }
    }
}
