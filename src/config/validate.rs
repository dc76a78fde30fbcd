//! The hand-written walk over the parsed TOML document: every field checked, every problem
//! collected with its position (see the module docs of `config`).

use super::reader::*;
use super::*;
use crate::model::valid_simple_name;

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

/// Returns the valid accounts, plus the keys of *all* account sections (even
/// invalid ones), so that disks referring to a broken account do not get a
/// misleading "unknown account" error on top.
pub(super) fn build_accounts(
    cx: &mut Ctx<'_>,
    doc: &DeTable<'_>,
) -> (BTreeMap<String, AccountConfig>, Vec<String>) {
    let mut accounts = BTreeMap::new();
    let mut keys = Vec::new();
    let Some(v) = doc.get("accounts") else {
        return (accounts, keys);
    };
    let DeValue::Table(table) = v.get_ref() else {
        type_err(cx, "", "accounts", v, "a table of [accounts.NAME] sections");
        return (accounts, keys);
    };
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        keys.push(name.to_string());
        let prefix = format!("account \"{name}\": ");
        if !valid_simple_name(name) {
            cx.err(
                key.span(),
                format!("{prefix}invalid account key; {} (it is used in \"account/container/blob\" paths)", crate::model::SIMPLE_NAME_RULE),
            );
        }
        let DeValue::Table(t) = value.get_ref() else {
            cx.err(
                value.span(),
                format!(
                    "{prefix}must be a table ([accounts.{name}]), found {}",
                    value.get_ref().type_str()
                ),
            );
            continue;
        };
        if let Some(acct) = build_account(cx, name, t, value.span(), &prefix) {
            accounts.insert(name.to_string(), acct);
        }
    }
    (accounts, keys)
}

pub(super) fn build_account(
    cx: &mut Ctx<'_>,
    key: &str,
    t: &DeTable<'_>,
    header: Range<usize>,
    prefix: &str,
) -> Option<AccountConfig> {
    check_unknown(cx, t, ACCOUNT_FIELDS, prefix);
    let throttle = throttle::build_throttle(cx, t, prefix);

    // Authentication: exactly one method.
    let mut methods: Vec<(&str, Range<usize>, AuthConfig)> = Vec::new();
    if let Some((s, span)) = get_nonempty_str(cx, t, "shared_key_env", prefix) {
        if check_env_name(cx, s, span.clone(), "shared_key_env", prefix) {
            methods.push((
                "shared_key_env",
                span,
                AuthConfig::SharedKeyEnv(s.to_string()),
            ));
        }
    }
    if let Some((s, span)) = get_nonempty_str(cx, t, "shared_key_file", prefix) {
        methods.push((
            "shared_key_file",
            span,
            AuthConfig::SharedKeyFile(PathBuf::from(s)),
        ));
    }
    if let Some((s, span)) = get_nonempty_str(cx, t, "sas_token_env", prefix) {
        if check_env_name(cx, s, span.clone(), "sas_token_env", prefix) {
            methods.push((
                "sas_token_env",
                span,
                AuthConfig::SasTokenEnv(s.to_string()),
            ));
        }
    }
    if let Some((s, span)) = get_nonempty_str(cx, t, "sas_token_file", prefix) {
        methods.push((
            "sas_token_file",
            span,
            AuthConfig::SasTokenFile(PathBuf::from(s)),
        ));
    }
    let client_id = get_nonempty_str(cx, t, "client_id", prefix);
    let managed = get_bool(cx, t, "managed_identity", prefix);
    if let Some((true, span)) = managed {
        methods.push((
            "managed_identity",
            span,
            AuthConfig::ManagedIdentity {
                client_id: client_id.as_ref().map(|(s, _)| s.to_string()),
            },
        ));
    } else if let Some((_, span)) = &client_id {
        cx.err(
            span.clone(),
            format!("{prefix}\"client_id\" is only valid with managed_identity = true"),
        );
    }
    // Presence counts even when the value itself was bad, so a typo in the
    // value does not also trigger "no authentication method".
    let auth_keys = [
        "shared_key_env",
        "shared_key_file",
        "sas_token_env",
        "sas_token_file",
    ];
    let any_auth_present = auth_keys.iter().any(|k| t.contains_key(*k))
        || matches!(t.get("managed_identity").map(|v| v.get_ref()), Some(v) if !matches!(v, DeValue::Boolean(false)));
    let auth = match methods.len() {
        0 => {
            if !any_auth_present {
                cx.err(
                    header.clone(),
                    format!("{prefix}no authentication method; set exactly one of shared_key_env, shared_key_file, sas_token_env, sas_token_file, managed_identity = true"),
                );
            }
            None
        }
        1 => methods.pop().map(|(_, _, a)| a),
        _ => {
            let names: Vec<&str> = methods.iter().map(|(n, _, _)| *n).collect();
            let span = methods[1].1.clone();
            cx.err(
                span,
                format!(
                    "{prefix}only one authentication method may be set, found {}",
                    names.join(" and ")
                ),
            );
            None
        }
    };

    let name_override = get_nonempty_str(cx, t, "account_name", prefix);
    let allow_http = get_bool(cx, t, "allow_insecure_http", prefix).is_some_and(|(b, _)| b);
    let endpoint = match get_nonempty_str(cx, t, "endpoint", prefix) {
        Some((raw, span)) => match resolve_endpoint(raw) {
            Ok(e) if e.0.scheme() == "http" && !allow_http && !is_loopback(&e.0) => {
                cx.err(
                    span,
                    format!(
                        "{prefix}field \"endpoint\": \"{raw}\" is plain http to a host that is \
                         not loopback: the credentials and the disk data would cross the network \
                         in clear text; use https, or set allow_insecure_http = true in \
                         [accounts.{key}] if the network is trusted"
                    ),
                );
                None
            }
            Ok(e) => Some((e, span)),
            Err(msg) => {
                cx.err(span, format!("{prefix}field \"endpoint\": {msg}"));
                None
            }
        },
        None => {
            if !t.contains_key("endpoint") {
                cx.err(
                    header,
                    format!("{prefix}missing required field \"endpoint\" (e.g. \"https://ACCOUNT.blob.core.windows.net\")"),
                );
            }
            None
        }
    };

    let ((url, derived, path_style), ep_span) = endpoint?;
    let (account_name, name_span, derived_note) = match name_override {
        Some((s, span)) => (s.to_string(), span, ""),
        None => (
            derived,
            ep_span,
            " (derived from endpoint; set account_name to override)",
        ),
    };
    if !valid_storage_account_name(&account_name) {
        cx.err(
            name_span,
            format!("{prefix}\"{account_name}\" is not a valid storage account name{derived_note}: use 3-24 lowercase letters and digits"),
        );
        return None;
    }
    Some(AccountConfig {
        key: key.to_string(),
        endpoint: url,
        account_name,
        path_style,
        auth: auth?,
        throttle,
    })
}

pub(super) fn check_env_name(
    cx: &mut Ctx<'_>,
    s: &str,
    span: Range<usize>,
    key: &str,
    prefix: &str,
) -> bool {
    let mut chars = s.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        cx.err(
            span,
            format!("{prefix}field \"{key}\" must be the *name* of an environment variable (letters, digits, _), got \"{s}\""),
        );
    }
    ok
}

/// Whether `url`'s host is this machine: 127.0.0.0/8, ::1 or `localhost` (an emulator, a
/// local proxy); plain http to it never crosses a network.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Turns an endpoint URL into (service root, derived account name,
/// path_style).
pub(super) fn resolve_endpoint(raw: &str) -> Result<(Url, String, bool), String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("invalid URL \"{raw}\": {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "URL scheme must be http or https, got \"{}\"",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials must not be embedded in the endpoint URL; use the account's auth fields"
                .to_string(),
        );
    }
    if url.query().is_some() {
        return Err("endpoint must not have a query string; a SAS token belongs in sas_token_env or sas_token_file".to_string());
    }
    if url.fragment().is_some() {
        return Err("endpoint must not have a #fragment".to_string());
    }
    let host = url
        .host()
        .ok_or_else(|| format!("URL \"{raw}\" has no host"))?;
    let host_is_local = match &host {
        Host::Ipv4(_) | Host::Ipv6(_) => true,
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    };
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    let path_style = !segments.is_empty() || host_is_local;
    if path_style {
        let Some(first) = segments.first() else {
            return Err(format!(
                "path-style endpoint \"{raw}\" needs the account name as its first path segment, e.g. \"http://127.0.0.1:10000/devstoreaccount1\""
            ));
        };
        if segments.len() > 1 {
            return Err(format!(
                "endpoint \"{raw}\" must be the service root (\"scheme://host[:port]/ACCOUNT\" for path-style); container and blob go in the disk's source/backup"
            ));
        }
        let account = first.to_string();
        let mut root = url.clone();
        root.set_path(&format!("/{first}"));
        Ok((root, account, true))
    } else {
        let account = match host {
            Host::Domain(d) => d.split('.').next().unwrap_or_default().to_ascii_lowercase(),
            // IP hosts are always path-style, handled above.
            Host::Ipv4(_) | Host::Ipv6(_) => String::new(),
        };
        let mut root = url.clone();
        root.set_path("/");
        Ok((root, account, false))
    }
}

pub(super) fn build_disks(
    cx: &mut Ctx<'_>,
    doc: &DeTable<'_>,
    account_keys: &[String],
) -> Vec<DiskConfig> {
    let mut disks = Vec::new();
    let Some(v) = doc.get("disk") else {
        return disks;
    };
    let DeValue::Array(entries) = v.get_ref() else {
        cx.err(
            v.span(),
            format!("\"disk\" must be an array of tables: write each disk as a [[disk]] section (found {})", v.get_ref().type_str()),
        );
        return disks;
    };
    // name -> line of its first definition
    let mut seen: HashMap<String, usize> = HashMap::new();
    // Valid disks with the span of their `backup` value, for the overlap checks.
    let mut valid: Vec<(DiskConfig, Range<usize>)> = Vec::new();
    for (idx, entry) in entries.iter().enumerate() {
        let DeValue::Table(t) = entry.get_ref() else {
            cx.err(
                entry.span(),
                format!(
                    "disk #{}: must be a table, found {}",
                    idx + 1,
                    entry.get_ref().type_str()
                ),
            );
            continue;
        };
        let line = cx.line(entry.span().start);
        if let Some(d) = build_disk(cx, t, entry.span(), idx, line, account_keys, &mut seen) {
            valid.push(d);
        }
    }
    check_blob_overlaps(cx, &valid);
    disks.extend(valid.into_iter().map(|(d, _)| d));
    disks
}

/// A backup blob written by two disks, or a backup that is some disk's
/// source, would silently destroy data, so it is rejected up front.
pub(super) fn check_blob_overlaps(cx: &mut Ctx<'_>, disks: &[(DiskConfig, Range<usize>)]) {
    for (i, (d, span)) in disks.iter().enumerate() {
        for (other, _) in &disks[..i] {
            if other.backup == d.backup {
                cx.err(
                    span.clone(),
                    format!(
                        "disk \"{}\": backup {} is already the backup of disk \"{}\" (line {})",
                        d.name, d.backup, other.name, other.line
                    ),
                );
            }
        }
        for (j, (other, _)) in disks.iter().enumerate() {
            if j != i && other.blob_source() == Some(&d.backup) {
                cx.err(
                    span.clone(),
                    format!(
                        "disk \"{}\": backup {} is the source of disk \"{}\" (line {}); a backup must never overwrite a source",
                        d.name, d.backup, other.name, other.line
                    ),
                );
            }
        }
    }
}

pub(super) fn build_disk(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    header: Range<usize>,
    idx: usize,
    line: usize,
    account_keys: &[String],
    seen: &mut HashMap<String, usize>,
) -> Option<(DiskConfig, Range<usize>)> {
    // Name first, so every other message for this disk can say which one.
    let raw_name = match t.get("name").map(|v| v.get_ref()) {
        Some(DeValue::String(s)) => Some(s.to_string()),
        _ => None,
    };
    let prefix = match &raw_name {
        Some(n) => format!("disk \"{n}\": "),
        None => format!("disk #{}: ", idx + 1),
    };
    check_unknown(cx, t, DISK_FIELDS, &prefix);
    let before = cx.problems.len();

    let name = match get_str(cx, t, "name", &prefix) {
        Some((s, span)) => {
            if !valid_simple_name(s) {
                cx.err(
                    span,
                    format!("{prefix}invalid name; {}", crate::model::SIMPLE_NAME_RULE),
                );
            } else if let Some(first) = seen.get(s) {
                cx.err(
                    span,
                    format!("{prefix}duplicate disk name (first defined at line {first})"),
                );
            } else {
                seen.insert(s.to_string(), line);
            }
            Some(s.to_string())
        }
        None => {
            if !t.contains_key("name") {
                cx.err(
                    header.clone(),
                    format!("{prefix}missing required field \"name\""),
                );
            }
            None
        }
    };

    let blob = |cx: &mut Ctx<'_>, key: &str| -> Option<(BlobRef, Range<usize>)> {
        let Some((s, span)) = get_str(cx, t, key, &prefix) else {
            if !t.contains_key(key) {
                cx.err(
                    header.clone(),
                    format!(
                        "{prefix}missing required field \"{key}\" (\"account/container/blob\")"
                    ),
                );
            }
            return None;
        };
        match s.parse::<BlobRef>() {
            Ok(b) => {
                if !account_keys.contains(&b.account) {
                    let known: Vec<&str> = account_keys.iter().map(String::as_str).collect();
                    let hint = match closest(&b.account, &known) {
                        Some(c) => format!(" (did you mean \"{c}\"?)"),
                        None if known.is_empty() => {
                            " (no [accounts.NAME] sections are defined)".to_string()
                        }
                        None => format!(" (defined accounts: {})", known.join(", ")),
                    };
                    cx.err(
                        span,
                        format!(
                            "{prefix}{key} refers to unknown account \"{}\"{hint}",
                            b.account
                        ),
                    );
                    return None;
                }
                Some((b, span))
            }
            Err(e) => {
                cx.err(span, format!("{prefix}field \"{key}\": {e}"));
                None
            }
        }
    };
    let source = match (t.contains_key("source"), t.contains_key("managed_disk")) {
        (true, true) => {
            let span = t.get("managed_disk").map_or(header.clone(), |v| v.span());
            cx.err(
                span,
                format!("{prefix}give either \"source\" (a page blob) or \"managed_disk\" (a managed disk's resource id), not both"),
            );
            None
        }
        (false, true) => managed_disk(cx, t, &prefix).map(|m| (m, header.clone())),
        (false, false) => {
            cx.err(
                header.clone(),
                format!("{prefix}missing required field \"source\" (a page blob \"account/container/blob\") or \"managed_disk\" (a managed disk's resource id)"),
            );
            None
        }
        (true, false) => blob(cx, "source").map(|(b, span)| (DiskSource::Blob(b), span)),
    };
    if t.contains_key("snapshot_resource_group") && !t.contains_key("managed_disk") {
        let span = t
            .get("snapshot_resource_group")
            .map_or(header.clone(), |v| v.span());
        cx.err(
            span,
            format!("{prefix}snapshot_resource_group applies to a managed_disk only"),
        );
    }
    let backup = blob(cx, "backup");
    if let (Some((DiskSource::Blob(s), _)), Some((b, span))) = (&source, &backup) {
        if s == b {
            cx.err(
                span.clone(),
                format!("{prefix}backup must be a different blob than source ({s})"),
            );
        }
    }

    let schedule =
        get_str(cx, t, "schedule", &prefix).and_then(|(s, span)| match Schedule::parse(s) {
            Ok(s) => Some(s),
            Err(e) => {
                cx.err(span, format!("{prefix}field \"schedule\": {e}"));
                None
            }
        });
    let tz = match get_str(cx, t, "tz", &prefix) {
        Some((s, span)) => match s.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                cx.err(
                    span,
                    format!("{prefix}field \"tz\": \"{s}\" is not a time zone name; use an IANA name such as \"UTC\" or \"Europe/Paris\""),
                );
                DEFAULT_TZ
            }
        },
        None => DEFAULT_TZ,
    };
    let jitter = get_duration(cx, t, "jitter", &prefix);
    let window =
        get_str(cx, t, "window", &prefix).and_then(|(s, span)| match s.parse::<Window>() {
            Ok(w) => Some(w),
            Err(e) => {
                cx.err(span, format!("{prefix}field \"window\": {e}"));
                None
            }
        });
    let concurrency = get_int_in(
        cx,
        t,
        "concurrency",
        &prefix,
        1,
        MAX_DISK_CONCURRENCY as i128,
    )
    .map_or(DEFAULT_DISK_CONCURRENCY, |n| n as usize);
    let copy_mode = get_choice(
        cx,
        t,
        "copy_mode",
        &prefix,
        &[
            ("client", CopyMode::Client),
            ("server", CopyMode::Server),
            ("auto", CopyMode::Auto),
        ],
    )
    .unwrap_or_default();
    let adopt_existing_backup =
        get_bool(cx, t, "adopt_existing_backup", &prefix).is_some_and(|(b, _)| b);
    let verify = get_choice(
        cx,
        t,
        "verify",
        &prefix,
        &[
            ("never", VerifyMode::Never),
            ("after-cycle", VerifyMode::AfterCycle),
        ],
    )
    .unwrap_or_default();
    let retention = build_retention(cx, t, &prefix);
    let hooks = super::hooks::build_hooks(cx, t, &prefix);

    if cx.problems.len() != before {
        return None;
    }
    let (source, _) = source?;
    let (backup, backup_span) = backup?;
    Some((
        DiskConfig {
            name: name?,
            source,
            backup,
            schedule,
            tz,
            jitter,
            window,
            concurrency,
            copy_mode,
            adopt_existing_backup,
            verify,
            retention,
            hooks,
            line,
        },
        backup_span,
    ))
}

/// `managed_disk` (a disk's resource id) and `snapshot_resource_group` (a group name in the
/// disk's subscription, default the disk's group).
fn managed_disk(cx: &mut Ctx<'_>, t: &DeTable<'_>, prefix: &str) -> Option<DiskSource> {
    use crate::arm::id::{ResourceGroup, ResourceId, ResourceKind};
    let (s, span) = get_str(cx, t, "managed_disk", prefix)?;
    let disk = match s.parse::<ResourceId>() {
        Ok(id) if id.kind == ResourceKind::Disk => id,
        Ok(_) => {
            cx.err(
                span,
                format!("{prefix}field \"managed_disk\": '{s}' is not a disk (expected …/providers/Microsoft.Compute/disks/NAME)"),
            );
            return None;
        }
        Err(e) => {
            cx.err(span, format!("{prefix}field \"managed_disk\": {e}"));
            return None;
        }
    };
    let snapshot_group = match get_str(cx, t, "snapshot_resource_group", prefix) {
        Some((g, span)) => {
            let group = ResourceGroup {
                subscription: disk.group.subscription.clone(),
                name: g.to_string(),
            };
            // Validated as the group part of a snapshot id in it.
            if let Err(e) = ResourceId::snapshot_in(&group, "x") {
                cx.err(
                    span,
                    format!("{prefix}field \"snapshot_resource_group\": {}", e.reason),
                );
                return None;
            }
            group
        }
        None => disk.group.clone(),
    };
    Some(DiskSource::Managed {
        disk,
        snapshot_group,
    })
}

pub(super) fn build_retention(cx: &mut Ctx<'_>, t: &DeTable<'_>, prefix: &str) -> Retention {
    let Some(v) = t.get("retention") else {
        return Retention::default();
    };
    let DeValue::Table(r) = v.get_ref() else {
        type_err(
            cx,
            prefix,
            "retention",
            v,
            "a table such as { keep_last = 3, daily = 7 }",
        );
        return Retention::default();
    };
    let prefix = format!("{prefix}retention: ");
    check_unknown(cx, r, RETENTION_FIELDS, &prefix);
    let mut get =
        |key: &str| get_int_in(cx, r, key, &prefix, 0, i128::from(u32::MAX)).map(|n| n as u32);
    Retention {
        keep_last: get("keep_last"),
        hourly: get("hourly"),
        daily: get("daily"),
        weekly: get("weekly"),
        monthly: get("monthly"),
    }
}

/// Azure storage account names: 3-24 lowercase letters and digits.
pub(super) fn valid_storage_account_name(s: &str) -> bool {
    (3..=24).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
