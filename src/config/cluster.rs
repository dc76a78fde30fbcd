//! `[cluster]`: several replicas on one config share the disks (see `docs/scaling.md`,
//! "Cluster mode"). Optional: without the table a daemon runs every configured disk (each
//! cycle still under the disk's lease), as before.
//!
//! ```toml
//! [cluster]
//! account = "backup"               # an [accounts.KEY] every replica reaches (required)
//! container = "snapback-cluster"   # default
//! replica_id = "pod-a"             # default: $SNAPBACK_REPLICA_ID, else the host name
//! heartbeat_lease = "15s"          # 15s..60s (Azure's lease bounds)
//! heartbeat_every = "5s"           # at most a third of heartbeat_lease
//! ```

use super::reader::{check_unknown, get_duration, get_nonempty_str, type_err, Ctx};
use std::time::Duration;
use toml::de::{DeTable, DeValue};

const FIELDS: &[&str] = &[
    "account",
    "container",
    "replica_id",
    "heartbeat_lease",
    "heartbeat_every",
];

/// The default coordination container.
pub const DEFAULT_CONTAINER: &str = "snapback-cluster";
/// Where `replica_id` comes from when the file does not say (a Kubernetes Deployment sets it
/// from the pod name through the downward API).
pub const REPLICA_ID_ENV: &str = "SNAPBACK_REPLICA_ID";
const DEFAULT_HEARTBEAT_LEASE: Duration = Duration::from_secs(15);
const DEFAULT_HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The validated `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The `[accounts.KEY]` holding the coordination container.
    pub account: String,
    pub container: String,
    /// This replica's name: its heartbeat blob is `replicas/<replica_id>`. Unique per
    /// replica; letters, digits, `.`, `_` and `-`, at most 63. `None`: nothing named it here
    /// (a table takes `$SNAPBACK_REPLICA_ID` when the file does not say); `service::App::open`
    /// then uses the variable, else the host name and the state directory's owner key
    /// (`ownership::default_replica_id`), unique per installation even on one host.
    pub replica_id: Option<String>,
    /// Duration of the heartbeat blob's lease: how long a replica that died without releasing
    /// it still counts as alive (its disks wait that long before others plan them).
    pub heartbeat_lease: Duration,
    /// How often a replica renews its heartbeat and re-reads who is alive.
    pub heartbeat_every: Duration,
}

/// Reads the optional `[cluster]` table; problems go to `cx`. `accounts`: every
/// `[accounts.KEY]` name in the file.
pub(super) fn build_cluster(
    cx: &mut Ctx<'_>,
    doc: &DeTable<'_>,
    accounts: &[String],
) -> Option<ClusterConfig> {
    let v = doc.get("cluster")?;
    let DeValue::Table(t) = v.get_ref() else {
        type_err(cx, "", "cluster", v, "a table ([cluster])");
        return None;
    };
    let at = v.span();
    let p = "cluster: ";
    check_unknown(cx, t, FIELDS, p);
    let account = match get_nonempty_str(cx, t, "account", p) {
        Some((a, span)) if !accounts.iter().any(|k| k == a) => {
            cx.err(
                span,
                format!("{p}field \"account\": no [accounts.{a}] section"),
            );
            None
        }
        Some((a, _)) => Some(a.to_string()),
        None => {
            if !t.contains_key("account") {
                cx.err(
                    at.clone(),
                    format!("{p}field \"account\" is required (the [accounts.KEY] holding the coordination container)"),
                );
            }
            None
        }
    };
    let container = match get_nonempty_str(cx, t, "container", p) {
        Some((c, span)) if !crate::model::valid_container_name(c) => {
            cx.err(
                span,
                format!("{p}field \"container\": \"{c}\" is not a valid container name (3-63 lowercase letters, digits and single hyphens)"),
            );
            None
        }
        Some((c, _)) => Some(c.to_string()),
        None => Some(DEFAULT_CONTAINER.to_string()),
    };
    // Outer `None`: an invalid id (reported); inner `None`: the daemon's default.
    let replica_id = match get_nonempty_str(cx, t, "replica_id", p) {
        Some((r, span)) => check_replica(cx, span, r, "field \"replica_id\"").map(Some),
        None if t.contains_key("replica_id") => None,
        None => match std::env::var(REPLICA_ID_ENV) {
            Ok(r) => check_replica(cx, at.clone(), &r, &format!("${REPLICA_ID_ENV}")).map(Some),
            Err(_) => Some(None),
        },
    };
    let heartbeat_lease = get_duration(cx, t, "heartbeat_lease", p);
    if let Some(d) =
        heartbeat_lease.filter(|d| !(15..=60).contains(&d.as_secs()) || d.subsec_nanos() != 0)
    {
        if let Some(v) = t.get("heartbeat_lease") {
            cx.err(
                v.span(),
                format!("{p}field \"heartbeat_lease\" must be whole seconds between 15s and 60s (Azure's lease bounds), got {d:?}"),
            );
        }
    }
    let heartbeat_lease = heartbeat_lease.unwrap_or(DEFAULT_HEARTBEAT_LEASE);
    let heartbeat_every = get_duration(cx, t, "heartbeat_every", p);
    if let Some(d) = heartbeat_every.filter(|d| d.is_zero() || *d > heartbeat_lease / 3) {
        if let Some(v) = t.get("heartbeat_every") {
            cx.err(
                v.span(),
                format!("{p}field \"heartbeat_every\" must be more than 0 and at most a third of heartbeat_lease ({heartbeat_lease:?}), so two renewals can fail before the lease expires; got {d:?}"),
            );
        }
    }
    Some(ClusterConfig {
        account: account?,
        container: container?,
        replica_id: replica_id?,
        heartbeat_lease,
        heartbeat_every: heartbeat_every.unwrap_or(DEFAULT_HEARTBEAT_EVERY),
    })
}

impl ClusterConfig {
    /// The cluster a daemon joins when the file has no `[cluster]` table: coordination in the
    /// first disk's backup account, every other setting at its default. So replicas started
    /// on one config share its disks with nothing more to configure; a table pins the account.
    pub fn implicit(backup_account: &str) -> ClusterConfig {
        ClusterConfig {
            account: backup_account.to_string(),
            container: DEFAULT_CONTAINER.to_string(),
            replica_id: None,
            heartbeat_lease: DEFAULT_HEARTBEAT_LEASE,
            heartbeat_every: DEFAULT_HEARTBEAT_EVERY,
        }
    }
}

/// `$SNAPBACK_REPLICA_ID` where no `[cluster]` table names the replica (the implicit
/// cluster); an invalid value is logged and not used.
pub fn replica_id_from_env() -> Option<String> {
    let id = std::env::var(REPLICA_ID_ENV).ok()?;
    if valid_replica_id(&id) {
        return Some(id);
    }
    tracing::warn!(variable = REPLICA_ID_ENV, value = %id, "not a valid replica id (1-63 letters, digits, '.', '_' or '-'); using the default");
    None
}

/// Blob-name safe and unambiguous in logs and metrics labels.
fn valid_replica_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_replica(
    cx: &mut Ctx<'_>,
    span: std::ops::Range<usize>,
    id: &str,
    what: &str,
) -> Option<String> {
    if valid_replica_id(id) {
        return Some(id.to_string());
    }
    cx.err(
        span,
        format!("cluster: {what}: \"{id}\" is not a valid replica id (1-63 letters, digits, '.', '_' or '-'; it names the heartbeat blob replicas/<replica_id>)"),
    );
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{assert_problems_with_one_account, with_one_account as parse};

    #[test]
    fn without_the_table_there_is_no_cluster() {
        assert_eq!(parse("").unwrap().cluster, None);
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse("[cluster]\naccount = \"a\"\nreplica_id = \"pod-1\"\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            (
                c.account.as_str(),
                c.container.as_str(),
                c.replica_id.as_deref()
            ),
            ("a", "snapback-cluster", Some("pod-1"))
        );
        assert_eq!(c.heartbeat_lease, Duration::from_secs(15));
        assert_eq!(c.heartbeat_every, Duration::from_secs(5));
        let c = parse("[cluster]\naccount = \"a\"\ncontainer = \"coord\"\nreplica_id = \"x_1.b\"\nheartbeat_lease = \"30s\"\nheartbeat_every = \"10s\"\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.container, "coord");
        assert_eq!(c.heartbeat_lease, Duration::from_secs(30));
        assert_eq!(c.heartbeat_every, Duration::from_secs(10));
    }

    #[test]
    fn replica_id_defaults_to_the_variable_and_is_checked_there_too() {
        // The only test that sets the variable; the others name replica_id in the file.
        std::env::set_var(super::REPLICA_ID_ENV, "snapback-7d9f-x2");
        let c = parse("[cluster]\naccount = \"a\"\n")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.replica_id.as_deref(), Some("snapback-7d9f-x2"));
        std::env::set_var(super::REPLICA_ID_ENV, "pod one");
        let e = parse("[cluster]\naccount = \"a\"\n")
            .unwrap_err()
            .to_string();
        std::env::remove_var(super::REPLICA_ID_ENV);
        assert!(
            e.contains("snapback.toml:4:1: cluster: $SNAPBACK_REPLICA_ID: \"pod one\" is not a valid replica id"),
            "{e}"
        );
    }

    #[test]
    fn bad_fields_are_named_with_their_line() {
        let cases = [
            ("[cluster]\nreplica_id = \"r\"\n", "snapback.toml:4:1: cluster: field \"account\" is required"),
            ("[cluster]\naccount = \"nope\"\nreplica_id = \"r\"\n", "snapback.toml:5:11: cluster: field \"account\": no [accounts.nope] section"),
            ("[cluster]\naccount = \"a\"\nreplica_id = \"pod/1\"\n", "snapback.toml:6:14: cluster: field \"replica_id\": \"pod/1\" is not a valid replica id"),
            ("[cluster]\naccount = \"a\"\nreplica_id = \"r\"\ncontainer = \"Bad\"\n", "snapback.toml:7:13: cluster: field \"container\": \"Bad\" is not a valid container name"),
            ("[cluster]\naccount = \"a\"\nreplica_id = \"r\"\nheartbeat_lease = \"5s\"\n", "snapback.toml:7:19: cluster: field \"heartbeat_lease\" must be whole seconds between 15s and 60s"),
            ("[cluster]\naccount = \"a\"\nreplica_id = \"r\"\nheartbeat_every = \"6s\"\n", "snapback.toml:7:19: cluster: field \"heartbeat_every\" must be more than 0 and at most a third of heartbeat_lease"),
            ("[cluster]\naccount = \"a\"\nreplica_id = \"r\"\nheartbeat = \"6s\"\n", "snapback.toml:7:1: cluster: unknown field \"heartbeat\""),
        ];
        assert_problems_with_one_account(&cases);
    }
}
