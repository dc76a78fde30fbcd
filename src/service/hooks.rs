//! Hooks: after each cycle, the disk's `on_success` or `on_failure` command and its webhook.
//!
//! A hook reports; it never decides. It runs after the cycle's result is persisted, each
//! command and request is bounded by the hook `timeout` (a command is killed with its whole
//! process group when it runs over), and whatever a hook does (fail, hang, not exist) ends as
//! a warning in the log: the cycle's result and exit code stay what they were.

use crate::config::Hooks;
use crate::cycle::error::CycleError;
use crate::model::record::CycleRecord;
use serde::Serialize;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use url::Url;

/// Bytes of a command's stdout or stderr kept for the log; the rest is read and dropped.
const OUTPUT_CAP: usize = 64 * 1024;
/// How long to wait for a finished command's output pipes to close (a background
/// grandchild may hold them open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// What a hook is told about a cycle: the environment of a command (`SNAPBACK_*`) and the
/// JSON body of the webhook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookEvent {
    /// `success` or `failure`.
    pub event: &'static str,
    pub disk: String,
    /// `seed` or `incremental` (success only).
    pub kind: Option<&'static str>,
    /// The new restore point (success only).
    pub restore_point: Option<String>,
    pub source_snapshot: Option<String>,
    pub bytes_written: u64,
    pub bytes_cleared: u64,
    pub duration_seconds: f64,
    /// Why the cycle failed (failure only).
    pub error: Option<String>,
    /// What the failure asks for (failure only; `cycle::policy`): `needs_operator` (act now:
    /// the daemon retries slowly, up to hourly), `transient` (retried soon) or `retry_after`
    /// (retried after the wait the service named).
    pub error_class: Option<&'static str>,
}

impl HookEvent {
    pub fn from_cycle(
        disk: &str,
        seconds: f64,
        result: &Result<CycleRecord, CycleError>,
    ) -> HookEvent {
        match result {
            Ok(rec) => {
                let point = rec.phase.restore_point();
                HookEvent {
                    event: "success",
                    disk: disk.to_string(),
                    kind: Some(rec.kind.label()),
                    restore_point: point.map(|(b, _)| b.to_string()),
                    source_snapshot: point.map(|(_, s)| s.to_string()),
                    bytes_written: rec.stats.bytes_written,
                    bytes_cleared: rec.stats.bytes_cleared,
                    duration_seconds: seconds,
                    error: None,
                    error_class: None,
                }
            }
            Err(e) => HookEvent {
                event: "failure",
                disk: disk.to_string(),
                kind: None,
                restore_point: None,
                source_snapshot: None,
                bytes_written: 0,
                bytes_cleared: 0,
                duration_seconds: seconds,
                error: Some(e.to_string()),
                error_class: Some(e.class().label()),
            },
        }
    }

    fn success(&self) -> bool {
        self.event == "success"
    }

    /// The command's environment (added to snapback's own); unknown values are empty.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("SNAPBACK_EVENT", self.event.to_string()),
            ("SNAPBACK_DISK", self.disk.clone()),
            ("SNAPBACK_KIND", self.kind.unwrap_or_default().to_string()),
            ("SNAPBACK_RESTORE_POINT", opt(&self.restore_point)),
            ("SNAPBACK_SOURCE_SNAPSHOT", opt(&self.source_snapshot)),
            ("SNAPBACK_BYTES_WRITTEN", self.bytes_written.to_string()),
            ("SNAPBACK_BYTES_CLEARED", self.bytes_cleared.to_string()),
            (
                "SNAPBACK_DURATION_SECONDS",
                format!("{:.3}", self.duration_seconds),
            ),
            ("SNAPBACK_ERROR", opt(&self.error)),
            (
                "SNAPBACK_ERROR_CLASS",
                self.error_class.unwrap_or_default().to_string(),
            ),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {hook}: cannot start {program}: {source}")]
    Spawn {
        hook: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {hook}: {program} ran longer than {secs:.1}s and was killed")]
    Timeout {
        hook: &'static str,
        program: String,
        secs: f64,
    },
    #[error("hook {hook}: {program} exited with {status}")]
    Failed {
        hook: &'static str,
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("webhook {url}: {reason}")]
    Webhook { url: String, reason: String },
}

/// Runs the hooks for `event` (the command and the webhook at once) and logs what they did;
/// returns each one's failure (already logged as a warning). `secret_vars` (the variables
/// holding account keys and SAS tokens) are removed from the command's environment: a
/// notification script has no business with storage credentials.
pub async fn run(hooks: &Hooks, event: &HookEvent, secret_vars: &[String]) -> Vec<HookError> {
    let (hook, argv) = if event.success() {
        ("on_success", &hooks.on_success)
    } else {
        ("on_failure", &hooks.on_failure)
    };
    let timeout = hooks.timeout();
    let command = async {
        match argv {
            Some(argv) => run_command(hook, argv, event, secret_vars, timeout)
                .await
                .err(),
            None => None,
        }
    };
    let webhook = async {
        match &hooks.webhook {
            Some(url) => post(url, event, timeout).await.err(),
            None => None,
        }
    };
    let (a, b) = futures::join!(command, webhook);
    let errors: Vec<HookError> = a.into_iter().chain(b).collect();
    for e in &errors {
        tracing::warn!(disk = %event.disk, error = %e, "hook failed; the cycle's result stands");
    }
    errors
}

/// Runs `argv` (no shell) with the event in its environment, in its own process group so
/// that a timeout kills whatever it started too; logs its output.
async fn run_command(
    hook: &'static str,
    argv: &[String],
    event: &HookEvent,
    secret_vars: &[String],
    timeout: Duration,
) -> Result<(), HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Spawn {
            hook,
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"),
        });
    };
    let program = program.clone();
    let mut command = tokio::process::Command::new(&program);
    for var in secret_vars {
        command.env_remove(var);
    }
    let mut child = command
        .args(args)
        .envs(event.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            hook,
            program: program.clone(),
            source,
        })?;
    let pid = child.id();
    let stdout = tokio::spawn(read_capped(child.stdout.take()));
    let stderr = tokio::spawn(read_capped(child.stderr.take()));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(|source| HookError::Spawn {
            hook,
            program: program.clone(),
            source,
        })?,
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a negative pid signals the process group the child
                // leads (process_group(0) above); it touches no memory of ours.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            stdout.abort();
            stderr.abort();
            return Err(HookError::Timeout {
                hook,
                program,
                secs: timeout.as_secs_f64(),
            });
        }
    };
    for (stream, task) in [("stdout", stdout), ("stderr", stderr)] {
        let text = match tokio::time::timeout(OUTPUT_GRACE, task).await {
            Ok(Ok(t)) => t,
            _ => continue,
        };
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::info!(disk = %event.disk, hook, program = %program, stream, output = %text, "hook output");
        }
    }
    if status.success() {
        tracing::info!(disk = %event.disk, hook, program = %program, "hook ran");
        Ok(())
    } else {
        Err(HookError::Failed {
            hook,
            program,
            status,
        })
    }
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_CAP`] bytes as (lossy) text.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// POSTs the event as JSON; a non-2xx answer is a failure.
async fn post(url: &Url, event: &HookEvent, timeout: Duration) -> Result<(), HookError> {
    let fail = |reason: String| HookError::Webhook {
        url: url.to_string(),
        reason,
    };
    crate::azure::tls::install_provider();
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if url.scheme() == "http" {
        // Only loopback is allowed for http (config); a proxy from the environment would
        // carry the body off the machine in clear text.
        builder = builder.no_proxy();
    }
    let client = builder.build().map_err(|e| fail(e.to_string()))?;
    let body = serde_json::to_vec(event).map_err(|e| fail(e.to_string()))?;
    let resp = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            fail(if e.is_timeout() {
                format!("no answer within {:.1}s", timeout.as_secs_f64())
            } else {
                format!("{e}")
            })
        })?;
    if !resp.status().is_success() {
        return Err(fail(format!("answered {}", resp.status())));
    }
    tracing::info!(disk = %event.disk, url = %url, "webhook called");
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Hooks};
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str =
        "[accounts.a]\nendpoint = \"https://acct.blob.core.windows.net\"\nshared_key_env = \"K\"\n";
    const DISK: &str = "[[disk]]\nname = \"d\"\nsource = \"a/vhds/src\"\nbackup = \"a/vhds/bak\"\n";

    fn problems(text: &str) -> String {
        Config::parse(text, Path::new("h.toml"))
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn a_disk_overrides_global_hooks_field_by_field() {
        let text = format!(
            "[hooks]\non_success = [\"/bin/g\"]\non_failure = [\"/bin/gf\", \"x\"]\nwebhook = \"https://example.org/h\"\n\n{BASE}{DISK}hooks = {{ on_success = [\"/bin/d\"], timeout = \"5s\" }}\n"
        );
        let c = Config::parse(&text, Path::new("h.toml")).unwrap();
        let h = c.hooks_for(&c.disks[0]);
        assert_eq!(h.on_success, Some(vec!["/bin/d".to_string()]));
        assert_eq!(h.on_failure, Some(vec!["/bin/gf".to_string(), "x".into()]));
        assert_eq!(
            h.webhook.as_ref().unwrap().as_str(),
            "https://example.org/h"
        );
        assert_eq!(h.timeout(), Duration::from_secs(5));
        assert_eq!(Hooks::default().timeout(), Duration::from_secs(60));
    }

    #[test]
    fn hook_mistakes_are_named_with_file_and_line() {
        let text = format!(
            "{BASE}[hooks]\non_success = []\non_failur = [\"/bin/x\"]\nwebhook = \"http://hooks.example.org/x\"\ntimeout = \"0s\"\n\n{DISK}hooks = {{ on_failure = \"/bin/x --flag\", webhook = \"not a url\" }}\n"
        );
        let e = problems(&text);
        assert!(
            e.contains("h.toml:5:14: hooks: field \"on_success\" must name a program"),
            "{e}"
        );
        assert!(
            e.contains(
                "h.toml:6:1: hooks: unknown field \"on_failur\" (did you mean \"on_failure\"?)"
            ),
            "{e}"
        );
        assert!(
            e.contains("h.toml:7:11: hooks: field \"webhook\"") && e.contains("use https"),
            "{e}"
        );
        assert!(
            e.contains("h.toml:8:11: hooks: field \"timeout\" must be more than 0s"),
            "{e}"
        );
        assert!(
            e.contains(
                "h.toml:14:24: disk \"d\": hooks: field \"on_failure\" must be an array of strings"
            ),
            "{e}"
        );
        assert!(
            e.contains("disk \"d\": hooks: field \"webhook\": invalid URL \"not a url\""),
            "{e}"
        );
    }

    #[test]
    fn http_webhooks_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:9/x",
            "http://[::1]:9/x",
            "http://localhost/x",
            "https://h.example.org/x",
        ] {
            let text = format!("{BASE}[hooks]\nwebhook = \"{ok}\"\n");
            assert!(Config::parse(&text, Path::new("h.toml")).is_ok(), "{ok}");
        }
        let e = problems(&format!("{BASE}[hooks]\nwebhook = \"ftp://127.0.0.1/x\"\n"));
        assert!(e.contains("unsupported scheme \"ftp\""), "{e}");
    }
}
