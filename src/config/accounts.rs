//! The `[accounts.KEY]` sections: each storage account's endpoint (a URL, an account name or
//! an emulator's loopback address), how it authenticates (an environment variable or file
//! holding a key or SAS, or managed identity) and its request budget. Apart from the disks
//! because accounts are checked first and disks refer to them only by key.

use super::reader::*;
use super::*;
use crate::model::valid_simple_name;

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

/// Azure storage account names: 3-24 lowercase letters and digits.
pub(super) fn valid_storage_account_name(s: &str) -> bool {
    (3..=24).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
