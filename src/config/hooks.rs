//! The `[hooks]` table (global) and a disk's `hooks` table (its overrides): commands run and
//! a webhook called after each cycle (see `crate::service::hooks` for running them).
//!
//! Kept apart from the rest of the config walk so that hooks stay one concept in one file.

use super::reader::{check_unknown, get_duration, get_str, type_err, Ctx};
use std::net::IpAddr;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use url::{Host, Url};

/// How long a hook command or webhook may take when `timeout` is not set.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// A hook holds a cycle slot while it runs; more than this is a mistake, not a hook.
const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(3600);

const HOOK_FIELDS: &[&str] = &["on_success", "on_failure", "webhook", "timeout"];

/// Hooks as written in one table; `None` fields are not set there. A disk's effective hooks
/// are its own fields over the global ones ([`Hooks::over`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    /// Command (argv, no shell) run after a successful cycle.
    pub on_success: Option<Vec<String>>,
    /// Command (argv, no shell) run after a failed cycle.
    pub on_failure: Option<Vec<String>>,
    /// URL a JSON summary of every cycle is POSTed to.
    pub webhook: Option<Url>,
    /// Limit for each command and for the webhook request.
    pub timeout: Option<Duration>,
}

impl Hooks {
    /// These (a disk's) settings, each falling back to `global`'s.
    pub fn over(&self, global: &Hooks) -> Hooks {
        Hooks {
            on_success: self
                .on_success
                .clone()
                .or_else(|| global.on_success.clone()),
            on_failure: self
                .on_failure
                .clone()
                .or_else(|| global.on_failure.clone()),
            webhook: self.webhook.clone().or_else(|| global.webhook.clone()),
            timeout: self.timeout.or(global.timeout),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }
}

impl super::Config {
    /// The environment variables that hold account keys, SAS tokens or the ARM client secret
    /// (kept from hooks).
    pub fn secret_env_vars(&self) -> Vec<String> {
        use super::azure::{ArmCredentialConfig, SecretSource};
        use super::AuthConfig::{SasTokenEnv, SharedKeyEnv};
        let arm = self.azure.as_ref().and_then(|a| match &a.credential {
            ArmCredentialConfig::ClientSecret {
                secret: SecretSource::Env(v),
                ..
            } => Some(v.clone()),
            _ => None,
        });
        self.accounts
            .values()
            .filter_map(|a| match &a.auth {
                SharedKeyEnv(v) | SasTokenEnv(v) => Some(v.clone()),
                _ => None,
            })
            .chain(arm)
            .collect()
    }
}

/// Reads `t.hooks` (absent: no hooks), reporting every problem.
pub(super) fn build_hooks(cx: &mut Ctx<'_>, t: &DeTable<'_>, prefix: &str) -> Hooks {
    let Some(v) = t.get("hooks") else {
        return Hooks::default();
    };
    let DeValue::Table(h) = v.get_ref() else {
        type_err(
            cx,
            prefix,
            "hooks",
            v,
            "a table such as { on_success = [\"/usr/local/bin/notify\", \"ok\"] }",
        );
        return Hooks::default();
    };
    let prefix = format!("{prefix}hooks: ");
    check_unknown(cx, h, HOOK_FIELDS, &prefix);
    let timeout = get_duration(cx, h, "timeout", &prefix).and_then(|d| {
        if d.is_zero() || d > MAX_HOOK_TIMEOUT {
            let span = h.get("timeout").map(|v| v.span()).unwrap_or(0..0);
            cx.err(
                span,
                format!("{prefix}field \"timeout\" must be more than 0s and at most 1h"),
            );
            return None;
        }
        Some(d)
    });
    Hooks {
        on_success: argv(cx, h, "on_success", &prefix),
        on_failure: argv(cx, h, "on_failure", &prefix),
        webhook: webhook(cx, h, &prefix),
        timeout,
    }
}

/// A command as a non-empty array of strings whose first element (the program) is not empty.
fn argv(cx: &mut Ctx<'_>, t: &DeTable<'_>, key: &str, prefix: &str) -> Option<Vec<String>> {
    let v = t.get(key)?;
    let want = "an array of strings: the program and its arguments, e.g. [\"/usr/local/bin/notify\", \"--quiet\"] (no shell)";
    let DeValue::Array(items) = v.get_ref() else {
        type_err(cx, prefix, key, v, want);
        return None;
    };
    let mut out = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(s) => out.push(s.to_string()),
            _ => {
                type_err(cx, prefix, key, item, want);
                return None;
            }
        }
    }
    if out.first().is_none_or(|p| p.trim().is_empty()) {
        cx.err(
            v.span(),
            format!("{prefix}field \"{key}\" must name a program: its first element is missing or empty"),
        );
        return None;
    }
    Some(out)
}

/// An `https` URL, or `http` to a loopback address (a local relay): a cycle summary names
/// disks and blobs, which should not cross a network in clear text.
fn webhook(cx: &mut Ctx<'_>, t: &DeTable<'_>, prefix: &str) -> Option<Url> {
    let (s, span) = get_str(cx, t, "webhook", prefix)?;
    let url = match Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            cx.err(
                span,
                format!("{prefix}field \"webhook\": invalid URL \"{s}\": {e}"),
            );
            return None;
        }
    };
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => Some(url),
        "http" if loopback => Some(url),
        "http" => {
            cx.err(
                span,
                format!("{prefix}field \"webhook\": \"{s}\" uses http to a non-loopback host; use https (http is allowed only to 127.0.0.1, ::1 or localhost)"),
            );
            None
        }
        other => {
            cx.err(
                span,
                format!("{prefix}field \"webhook\": unsupported scheme \"{other}\" in \"{s}\"; use https"),
            );
            None
        }
    }
}
