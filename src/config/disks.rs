//! The `[[disks]]` entries: each disk's source (a page blob or a managed disk), backup blob,
//! schedule, copy mode and retention, and the checks across disks (no backup written twice,
//! no backup that is another disk's source). Apart from the accounts, which it refers to only
//! by the keys the accounts' builder collected.

use super::reader::*;
use super::*;
use crate::model::valid_simple_name;

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
