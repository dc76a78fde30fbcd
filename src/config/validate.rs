//! The hand-written walk over the parsed TOML document: every field checked, every problem
//! collected with its position (see the module docs of `config`).
//!
//! This file walks the top-level fields and hands each section to its builder: the storage
//! accounts ([`super::accounts`]), the disks ([`super::disks`]), the `[azure]` table here,
//! hooks and the cluster in their own files.

use super::accounts::build_accounts;
use super::disks::build_disks;
use super::reader::*;
use super::*;

pub(super) fn build_config(cx: &mut Ctx<'_>, doc: &DeTable<'_>, path: &Path) -> Config {
    check_unknown(cx, doc, TOP_FIELDS, "");
    let p = "";

    let state_dir = get_nonempty_str(cx, doc, "state_dir", p).map_or_else(
        || PathBuf::from(DEFAULT_STATE_DIR),
        |(s, _)| PathBuf::from(s),
    );
    let log_format = get_choice(
        cx,
        doc,
        "log_format",
        p,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )
    .unwrap_or_default();
    let max_concurrent_cycles =
        get_int_in(cx, doc, "max_concurrent_cycles", p, 1, usize::MAX as i128)
            .map_or(DEFAULT_MAX_CONCURRENT_CYCLES, |n| n as usize);
    let max_inflight_requests = get_int_in(
        cx,
        doc,
        "max_inflight_requests",
        p,
        1,
        MAX_INFLIGHT_REQUESTS as i128,
    )
    .map_or(DEFAULT_MAX_INFLIGHT_REQUESTS, |n| n as usize);
    // At least one full 4 MiB read must fit.
    let max_buffer_mib = get_int_in(cx, doc, "max_buffer_mib", p, 4, MAX_BUFFER_MIB as i128)
        .map_or(DEFAULT_MAX_BUFFER_MIB, |n| n as u64);
    let shutdown_grace =
        get_duration(cx, doc, "shutdown_grace", p).unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let copy_stall_timeout = get_duration(cx, doc, "copy_stall_timeout", p)
        .and_then(|d| {
            if d.is_zero() {
                let span = doc
                    .get("copy_stall_timeout")
                    .map(|v| v.span())
                    .unwrap_or(0..0);
                cx.err(span, "field \"copy_stall_timeout\" must be more than 0s");
                return None;
            }
            Some(d)
        })
        .unwrap_or(DEFAULT_COPY_STALL_TIMEOUT);
    let lease_duration = get_duration(cx, doc, "lease_duration", p)
        .and_then(|d| {
            if d.subsec_nanos() != 0 || !LEASE_DURATION_RANGE.contains(&d.as_secs()) {
                let span = doc.get("lease_duration").map(|v| v.span()).unwrap_or(0..0);
                cx.err(
                    span,
                    format!(
                        "field \"lease_duration\" must be whole seconds from {}s to {}s (the \
                         leases Azure grants), got {d:?}",
                        LEASE_DURATION_RANGE.start(),
                        LEASE_DURATION_RANGE.end()
                    ),
                );
                return None;
            }
            Some(d)
        })
        .unwrap_or(DEFAULT_LEASE_DURATION);

    let metrics_listen = get_str(cx, doc, "metrics_listen", p).and_then(|(s, span)| {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.err(
                    span,
                    format!(
                        "field \"metrics_listen\": invalid socket address \"{s}\"; expected IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\""
                    ),
                );
                None
            }
        }
    });

    let control_socket = match get_nonempty_str(cx, doc, "control_socket", p) {
        Some((s, span)) => {
            if s.len() > MAX_UNIX_SOCKET_PATH {
                cx.err(
                    span,
                    format!("field \"control_socket\": path is longer than {MAX_UNIX_SOCKET_PATH} bytes, the limit for a unix socket"),
                );
            }
            PathBuf::from(s)
        }
        None => {
            let derived = state_dir.join("control.sock");
            if derived.as_os_str().len() > MAX_UNIX_SOCKET_PATH {
                if let Some(v) = doc.get("state_dir") {
                    cx.err(
                        v.span(),
                        format!("field \"state_dir\": the default control socket path \"{}\" is longer than {MAX_UNIX_SOCKET_PATH} bytes, the limit for a unix socket; set control_socket to a shorter path", derived.display()),
                    );
                }
            }
            derived
        }
    };

    let (accounts, account_keys) = build_accounts(cx, doc);
    let azure = build_azure(cx, doc);
    let disks = build_disks(cx, doc, &account_keys);
    let hooks = super::hooks::build_hooks(cx, doc, "");
    let cluster = super::cluster::build_cluster(cx, doc, &account_keys);
    // A managed disk is reached through ARM, which needs the [azure] table's credential.
    if azure.is_none() && !doc.contains_key("azure") {
        for d in disks.iter().filter(|d| d.blob_source().is_none()) {
            let at = cx.offset_of_line(d.line);
            cx.err(
                at..at,
                format!(
                    "disk \"{}\": managed_disk needs an [azure] table (arm_endpoint and a credential; see docs/managed-disks.md)",
                    d.name
                ),
            );
        }
    }

    Config {
        path: path.to_path_buf(),
        state_dir,
        log_format,
        max_concurrent_cycles,
        max_inflight_requests,
        max_buffer_mib,
        shutdown_grace,
        copy_stall_timeout,
        lease_duration,
        metrics_listen,
        control_socket,
        accounts,
        azure,
        disks,
        hooks,
        cluster,
    }
}

/// The `[azure]` table, validated by [`super::azure::AzureConfig::from_table`]; its problems
/// are reported at the table, each naming its `azure.FIELD`.
fn build_azure(cx: &mut Ctx<'_>, doc: &DeTable<'_>) -> Option<super::azure::AzureConfig> {
    let v = doc.get("azure")?;
    let span = v.span();
    if !matches!(v.get_ref(), DeValue::Table(_)) {
        type_err(cx, "", "azure", v, "a table");
        return None;
    }
    // The walk above has already accepted the whole text as TOML, so this parse succeeds;
    // `from_table` works on an owned table.
    let table = toml::from_str::<toml::Table>(cx.text)
        .ok()
        .and_then(|mut t| t.remove("azure"))
        .and_then(|v| match v {
            toml::Value::Table(t) => Some(t),
            _ => None,
        })?;
    match super::azure::AzureConfig::from_table(&table) {
        Ok(a) => Some(a),
        Err(problems) => {
            for p in problems {
                cx.err(span.clone(), p.to_string());
            }
            None
        }
    }
}
