//! Property tests of the parsers that read outside input: the config file (TOML) and the
//! Get Page Ranges answer (XML). Whatever the bytes, they return a value or an error, never
//! panic; every config error names a line; what a valid generator wrote parses back to exactly
//! what it generated.
//!
//! 256 cases per property by default (fast enough for every run); `PROPTEST_CASES=100000
//! cargo test --test properties` runs longer (proptest reads the variable itself).

use proptest::prelude::*;
use snapback::azure::page_list;
use snapback::config::{AuthConfig, Config, ConfigError, CopyMode, VerifyMode};
use snapback::model::pages::{ByteRange, PageItem, PAGE_SIZE};
use std::path::Path;

// -------------------------------------------------------------- config --

const PATH: &str = "/etc/snapback/prop.toml";

#[derive(Clone, Debug)]
enum Auth {
    KeyEnv(String),
    KeyFile(String),
    SasEnv(String),
    SasFile(String),
    Identity(Option<String>),
}

#[derive(Clone, Debug)]
struct Account {
    key: String,
    name: String,
    path_style: bool,
    auth: Auth,
}

#[derive(Clone, Debug)]
struct Disk {
    name: String,
    source: String,
    backup: String,
    schedule: Option<String>,
    tz: Option<String>,
    window: Option<(u16, u16)>,
    concurrency: Option<usize>,
    copy_mode: Option<CopyMode>,
    verify: Option<VerifyMode>,
    keep_last: Option<u32>,
    daily: Option<u32>,
}

#[derive(Clone, Debug)]
struct Generated {
    max_concurrent_cycles: Option<usize>,
    max_inflight_requests: Option<usize>,
    max_buffer_mib: Option<u64>,
    grace_s: Option<u64>,
    accounts: Vec<Account>,
    disks: Vec<Disk>,
}

fn auth() -> impl Strategy<Value = Auth> {
    let var = "[A-Z][A-Z0-9_]{0,15}";
    let file = "/run/credentials/[a-z]{1,10}";
    prop_oneof![
        var.prop_map(Auth::KeyEnv),
        file.prop_map(Auth::KeyFile),
        var.prop_map(Auth::SasEnv),
        file.prop_map(Auth::SasFile),
        proptest::option::of("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
            .prop_map(Auth::Identity),
    ]
}

fn accounts() -> impl Strategy<Value = Vec<Account>> {
    proptest::collection::btree_map(
        "[a-z][a-z0-9_]{0,10}",
        ("[a-z][a-z0-9]{2,23}", any::<bool>(), auth()),
        1..4,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(key, (name, path_style, auth))| Account {
                key,
                name,
                path_style,
                auth,
            })
            .collect()
    })
}

fn blob_name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[A-Za-z0-9._-]{1,12}", 1..4).prop_map(|s| s.join("/"))
}

fn disk(accounts: Vec<String>) -> impl Strategy<Value = Disk> {
    let n = accounts.len();
    (
        (
            "[A-Za-z0-9._-]{1,20}",
            0..n,
            0..n,
            "[a-z0-9]{3,12}",
            blob_name(),
            proptest::option::of(prop_oneof![
                Just("0 */12 * * *".to_string()),
                Just("*/5 * * * *".to_string()),
                Just("30 0 3 * * *".to_string()),
            ]),
            proptest::option::of(prop_oneof![
                Just("UTC".to_string()),
                Just("Europe/Paris".to_string()),
                Just("America/New_York".to_string()),
            ]),
        ),
        (
            proptest::option::of(
                (0u16..1440, 0u16..1440).prop_filter("start != end", |(a, b)| a != b),
            ),
            proptest::option::of(1usize..=64),
            proptest::option::of(prop_oneof![
                Just(CopyMode::Client),
                Just(CopyMode::Server),
                Just(CopyMode::Auto)
            ]),
            proptest::option::of(prop_oneof![
                Just(VerifyMode::Never),
                Just(VerifyMode::AfterCycle)
            ]),
            proptest::option::of(0u32..100),
            proptest::option::of(0u32..100),
        ),
    )
        .prop_map(
            move |(
                (name, sa, ba, container, blob, schedule, tz),
                (window, concurrency, copy_mode, verify, keep_last, daily),
            )| Disk {
                source: format!("{}/{container}/src/{blob}", accounts[sa]),
                backup: format!("{}/{container}/bak/{blob}", accounts[ba]),
                name,
                schedule,
                tz,
                window,
                concurrency,
                copy_mode,
                verify,
                keep_last,
                daily,
            },
        )
}

fn generated() -> impl Strategy<Value = Generated> {
    accounts()
        .prop_flat_map(|accounts| {
            let keys: Vec<String> = accounts.iter().map(|a| a.key.clone()).collect();
            (
                Just(accounts),
                proptest::collection::vec(disk(keys), 0..5),
                proptest::option::of(1usize..100),
                proptest::option::of(1usize..=1024),
                proptest::option::of(4u64..=65536),
                proptest::option::of(0u64..3600),
            )
        })
        .prop_map(|(accounts, mut disks, mcc, mir, mbm, grace)| {
            // Names must be unique; a suffix keeps the generated ones so.
            for (i, d) in disks.iter_mut().enumerate() {
                d.name = format!("{}-{i}", d.name);
                d.source = format!("{}{i}", d.source);
                d.backup = format!("{}{i}", d.backup);
            }
            Generated {
                max_concurrent_cycles: mcc,
                max_inflight_requests: mir,
                max_buffer_mib: mbm,
                grace_s: grace,
                accounts,
                disks,
            }
        })
}

fn copy_mode_name(m: CopyMode) -> &'static str {
    match m {
        CopyMode::Client => "client",
        CopyMode::Server => "server",
        CopyMode::Auto => "auto",
    }
}

fn render(g: &Generated) -> String {
    let mut t = String::from("state_dir = \"/var/lib/snapback-prop\"\n");
    if let Some(v) = g.max_concurrent_cycles {
        t += &format!("max_concurrent_cycles = {v}\n");
    }
    if let Some(v) = g.max_inflight_requests {
        t += &format!("max_inflight_requests = {v}\n");
    }
    if let Some(v) = g.max_buffer_mib {
        t += &format!("max_buffer_mib = {v}\n");
    }
    if let Some(v) = g.grace_s {
        t += &format!("shutdown_grace = \"{v}s\"\n");
    }
    for a in &g.accounts {
        t += &format!("\n[accounts.{}]\n", a.key);
        if a.path_style {
            t += &format!("endpoint = \"http://127.0.0.1:10000/{}\"\n", a.name);
        } else {
            t += &format!("endpoint = \"https://{}.blob.core.windows.net\"\n", a.name);
        }
        t += &match &a.auth {
            Auth::KeyEnv(v) => format!("shared_key_env = \"{v}\"\n"),
            Auth::KeyFile(v) => format!("shared_key_file = \"{v}\"\n"),
            Auth::SasEnv(v) => format!("sas_token_env = \"{v}\"\n"),
            Auth::SasFile(v) => format!("sas_token_file = \"{v}\"\n"),
            Auth::Identity(None) => "managed_identity = true\n".to_string(),
            Auth::Identity(Some(id)) => format!("managed_identity = true\nclient_id = \"{id}\"\n"),
        };
    }
    for d in &g.disks {
        t += &format!(
            "\n[[disk]]\nname = \"{}\"\nsource = \"{}\"\nbackup = \"{}\"\n",
            d.name, d.source, d.backup
        );
        if let Some(s) = &d.schedule {
            t += &format!("schedule = \"{s}\"\n");
        }
        if let Some(s) = &d.tz {
            t += &format!("tz = \"{s}\"\n");
        }
        if let Some((a, b)) = d.window {
            t += &format!(
                "window = \"{:02}:{:02}-{:02}:{:02}\"\n",
                a / 60,
                a % 60,
                b / 60,
                b % 60
            );
        }
        if let Some(c) = d.concurrency {
            t += &format!("concurrency = {c}\n");
        }
        if let Some(m) = d.copy_mode {
            t += &format!("copy_mode = \"{}\"\n", copy_mode_name(m));
        }
        if let Some(v) = d.verify {
            let v = match v {
                VerifyMode::Never => "never",
                VerifyMode::AfterCycle => "after-cycle",
            };
            t += &format!("verify = \"{v}\"\n");
        }
        let mut retention = Vec::new();
        if let Some(n) = d.keep_last {
            retention.push(format!("keep_last = {n}"));
        }
        if let Some(n) = d.daily {
            retention.push(format!("daily = {n}"));
        }
        if !retention.is_empty() {
            t += &format!("retention = {{ {} }}\n", retention.join(", "));
        }
    }
    t
}

/// Each problem of an invalid config starts with `PATH:LINE:COL: ` inside the text.
fn assert_problems_name_a_line(text: &str, err: &ConfigError) -> Result<(), TestCaseError> {
    let ConfigError::Invalid { problems, .. } = err else {
        return Err(TestCaseError::fail(format!("not an Invalid error: {err}")));
    };
    prop_assert!(!problems.is_empty());
    let lines = text.split('\n').count();
    for p in problems {
        let rest = p.strip_prefix(&format!("{PATH}:"));
        let line = rest
            .and_then(|r| r.split(':').next())
            .and_then(|l| l.parse::<usize>().ok());
        prop_assert!(
            line.is_some_and(|l| l >= 1 && l <= lines),
            "problem without a line inside the file: {p:?}"
        );
    }
    Ok(())
}

/// Byte-level edits of a valid config: delete, insert TOML-ish text, duplicate a line.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut t = text.to_string();
    let at = |t: &str, i: usize| {
        let mut i = i % (t.len() + 1);
        while !t.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    for e in edits {
        match e {
            Edit::Delete(i, n) => {
                let a = at(&t, *i);
                let b = at(&t, a + n);
                t.replace_range(a..b.max(a), "");
            }
            Edit::Insert(i, s) => {
                let a = at(&t, *i);
                t.insert_str(a, s);
            }
            Edit::DuplicateLine(i) => {
                let lines: Vec<&str> = t.lines().collect();
                if !lines.is_empty() {
                    let l = lines[i % lines.len()].to_string();
                    t = format!("{t}\n{l}\n");
                }
            }
        }
    }
    t
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 1usize..20).prop_map(|(i, n)| Edit::Delete(i, n)),
            (
                any::<usize>(),
                "[\\[\\]{}=\"'.,#:a-z0-9_ \n-]{1,8}|\u{0}|\u{feff}|é"
            )
                .prop_map(|(i, s)| Edit::Insert(i, s)),
            any::<usize>().prop_map(Edit::DuplicateLine),
        ],
        1..6,
    )
}

proptest! {
    #[test]
    fn valid_generated_configs_parse_back_to_what_was_generated(g in generated()) {
        let text = render(&g);
        let cfg = Config::parse(&text, Path::new(PATH))
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- config ---\n{text}")))?;
        prop_assert_eq!(cfg.accounts.len(), g.accounts.len());
        for a in &g.accounts {
            let got = &cfg.accounts[&a.key];
            prop_assert_eq!(&got.account_name, &a.name);
            prop_assert_eq!(got.path_style, a.path_style);
            let want = match &a.auth {
                Auth::KeyEnv(v) => AuthConfig::SharedKeyEnv(v.clone()),
                Auth::KeyFile(v) => AuthConfig::SharedKeyFile(v.into()),
                Auth::SasEnv(v) => AuthConfig::SasTokenEnv(v.clone()),
                Auth::SasFile(v) => AuthConfig::SasTokenFile(v.into()),
                Auth::Identity(id) => AuthConfig::ManagedIdentity { client_id: id.clone() },
            };
            prop_assert_eq!(&got.auth, &want);
        }
        if let Some(v) = g.max_concurrent_cycles {
            prop_assert_eq!(cfg.max_concurrent_cycles, v);
        }
        if let Some(v) = g.max_inflight_requests {
            prop_assert_eq!(cfg.max_inflight_requests, v);
        }
        if let Some(v) = g.max_buffer_mib {
            prop_assert_eq!(cfg.max_buffer_mib, v);
        }
        if let Some(v) = g.grace_s {
            prop_assert_eq!(cfg.shutdown_grace.as_secs(), v);
        }
        prop_assert_eq!(cfg.disks.len(), g.disks.len());
        for (got, d) in cfg.disks.iter().zip(&g.disks) {
            prop_assert_eq!(&got.name, &d.name);
            prop_assert_eq!(got.source.to_string(), d.source.clone());
            prop_assert_eq!(got.backup.to_string(), d.backup.clone());
            prop_assert_eq!(got.schedule.as_ref().map(|s| s.expr()), d.schedule.as_deref());
            prop_assert_eq!(got.tz.name(), d.tz.as_deref().unwrap_or("UTC"));
            prop_assert_eq!(got.window.map(|w| (w.start_minute, w.end_minute)), d.window);
            prop_assert_eq!(got.concurrency, d.concurrency.unwrap_or(8));
            prop_assert_eq!(got.copy_mode, d.copy_mode.unwrap_or_default());
            prop_assert_eq!(got.verify, d.verify.unwrap_or_default());
            prop_assert_eq!(got.retention.keep_last, d.keep_last);
            prop_assert_eq!(got.retention.daily, d.daily);
        }
    }

    #[test]
    fn mutated_configs_never_panic_and_every_error_names_a_line(
        g in generated(),
        e in edits(),
    ) {
        let text = apply(&render(&g), &e);
        if let Err(err) = Config::parse(&text, Path::new(PATH)) {
            assert_problems_name_a_line(&text, &err)?;
        }
    }

    #[test]
    fn arbitrary_text_never_panics_and_every_error_names_a_line(
        text in prop_oneof![
            any::<String>(),
            "[\\[\\]{}=\"'.,#:a-z0-9_ \n-]{0,200}",
        ]
    ) {
        if let Err(err) = Config::parse(&text, Path::new(PATH)) {
            assert_problems_name_a_line(&text, &err)?;
        }
    }
}

// ------------------------------------------------------------ page list --

/// A listing Azure could send: ascending, disjoint, page-aligned items (a gap or none between
/// them) and maybe a continuation marker.
fn listing() -> impl Strategy<Value = (Vec<PageItem>, Option<String>)> {
    (
        proptest::collection::vec((any::<bool>(), 0u64..1000, 1u64..10_000), 0..60),
        proptest::option::of("[A-Za-z0-9+/=!]{1,40}"),
    )
        .prop_map(|(raw, marker)| {
            let mut at = 0;
            let items = raw
                .into_iter()
                .map(|(changed, gap, pages)| {
                    let r = ByteRange::new(at + gap * PAGE_SIZE, at + (gap + pages) * PAGE_SIZE);
                    at = r.end;
                    if changed {
                        PageItem::Changed(r)
                    } else {
                        PageItem::Cleared(r)
                    }
                })
                .collect();
            (items, marker)
        })
}

fn render_listing(items: &[PageItem], marker: Option<&str>, pretty: bool) -> String {
    let nl = if pretty { "\n  " } else { "" };
    let mut x = String::from("\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<PageList>");
    for it in items {
        let (tag, r) = match it {
            PageItem::Changed(r) => ("PageRange", r),
            PageItem::Cleared(r) => ("ClearRange", r),
        };
        x += &format!(
            "{nl}<{tag}><Start>{}</Start>{nl}<End>{}</End></{tag}>",
            r.start,
            r.end - 1
        );
    }
    match marker {
        Some(m) => x += &format!("{nl}<NextMarker>{m}</NextMarker>"),
        None => x += "<NextMarker />",
    }
    x + "</PageList>"
}

proptest! {
    #[test]
    fn generated_listings_parse_to_exactly_their_items_in_order(
        (items, marker) in listing(),
        pretty in any::<bool>(),
    ) {
        let body = render_listing(&items, marker.as_deref(), pretty);
        let got = page_list::parse(body.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?;
        prop_assert_eq!(got.items, items);
        prop_assert_eq!(got.next_marker, marker);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_page_list_parser(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            "(<PageList>|<PageRange>|</PageRange>|<ClearRange>|</ClearRange>|<Start>|</Start>|<End>|</End>|<NextMarker>|</NextMarker>|[0-9]{1,4}| |&amp;|<!--x-->){0,40}"
                .prop_map(String::into_bytes),
        ]
    ) {
        let _ = page_list::parse(&body);
    }
}

proptest! {
    /// Numbers at the edges of u64 in Start/End: an error or a value, never an overflow panic.
    #[test]
    fn extreme_offsets_never_panic_the_page_list_parser(
        start in prop_oneof![Just(0u64), Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()],
        end in prop_oneof![Just(0u64), Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()],
    ) {
        let body = format!(
            "<PageList><PageRange><Start>{start}</Start><End>{end}</End></PageRange></PageList>"
        );
        let _ = page_list::parse(body.as_bytes());
    }
}
