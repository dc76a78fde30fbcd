//! Reading the parsed TOML document: the problem collector (`Ctx`, positions turned into
//! `file:line:col`) and the typed getters every section's builder uses. Kept apart from the
//! builders so each section's file (`validate`, `cluster`, `hooks`, `throttle`) imports the
//! reader and none imports another builder's file back.

use super::*;

/// Collects problems with their byte offsets; turned into `file:line:col`
/// messages, sorted in file order, at the end.
pub(super) struct Ctx<'a> {
    path: &'a Path,
    pub(super) text: &'a str,
    line_starts: Vec<usize>,
    pub(super) problems: Vec<(usize, String)>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(text: &'a str, path: &'a Path) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            path,
            text,
            line_starts,
            problems: Vec::new(),
        }
    }

    pub(super) fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.problems.push((span.start, msg.into()));
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_idx = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line_idx];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line_idx + 1, col + 1)
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }

    /// Byte offset where 1-based `line` starts (to point a message at a `[[disk]]` found
    /// valid on its own but not with the rest of the file).
    pub(super) fn offset_of_line(&self, line: usize) -> usize {
        self.line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn into_error(mut self) -> ConfigError {
        self.problems.sort_by_key(|(off, _)| *off);
        let problems = self
            .problems
            .iter()
            .map(|(off, msg)| {
                let (line, col) = self.line_col(*off);
                format!("{}:{line}:{col}: {msg}", self.path.display())
            })
            .collect();
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            problems,
        }
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// Reports every key of `table` not in `known`, with a "did you mean" for
/// near misses and a pointer to the supported alternatives for inline
/// secrets.
pub(super) fn check_unknown(cx: &mut Ctx<'_>, table: &DeTable<'_>, known: &[&str], prefix: &str) {
    for (key, _) in table.iter() {
        let k: &str = key.get_ref();
        if known.contains(&k) {
            continue;
        }
        let mut msg = format!("{prefix}unknown field \"{k}\"");
        if let Some(hint) = secret_hint(k) {
            msg.push_str(&format!(
                "; secrets must not be stored in the config file, {hint}"
            ));
        } else if let Some(s) = closest(k, known) {
            msg.push_str(&format!(" (did you mean \"{s}\"?)"));
        } else {
            msg.push_str(&format!(" (expected one of: {})", known.join(", ")));
        }
        cx.err(key.span(), msg);
    }
}

pub(super) fn secret_hint(key: &str) -> Option<&'static str> {
    let k = key.to_ascii_lowercase().replace('-', "_");
    match k.as_str() {
        "shared_key" | "key" | "account_key" | "access_key" | "storage_key" | "secret"
        | "password" | "connection_string" => {
            Some("use shared_key_env or shared_key_file (or sas_token_env / sas_token_file, or managed_identity = true)")
        }
        "sas_token" | "sas" | "token" => Some("use sas_token_env or sas_token_file"),
        "client_secret" => Some("use managed_identity = true (with client_id for a user-assigned identity)"),
        _ => None,
    }
}

/// Closest known name within edit distance 2, if any.
pub(super) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, case-insensitive.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Typed field accessors: each reports a type error and returns None.
// ---------------------------------------------------------------------------

pub(super) fn type_err(cx: &mut Ctx<'_>, prefix: &str, key: &str, v: &Value<'_>, want: &str) {
    cx.err(
        v.span(),
        format!(
            "{prefix}field \"{key}\" must be {want}, found {}",
            v.get_ref().type_str()
        ),
    );
}

pub(super) fn get_str<'t>(
    cx: &mut Ctx<'_>,
    t: &'t DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(&'t str, Range<usize>)> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::String(s) => Some((s.as_ref(), v.span())),
        _ => {
            type_err(cx, prefix, key, v, "a string");
            None
        }
    }
}

/// A string that must not be empty (paths, names, env vars).
pub(super) fn get_nonempty_str<'t>(
    cx: &mut Ctx<'_>,
    t: &'t DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(&'t str, Range<usize>)> {
    let (s, span) = get_str(cx, t, key, prefix)?;
    if s.trim().is_empty() {
        cx.err(span, format!("{prefix}field \"{key}\" must not be empty"));
        return None;
    }
    Some((s, span))
}

pub(super) fn get_int(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(i128, Range<usize>)> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::Integer(i) => {
            let digits: String = i
                .as_str()
                .chars()
                .filter(|&c| c != '_' && c != '+')
                .collect();
            match i128::from_str_radix(&digits, i.radix()) {
                Ok(n) => Some((n, v.span())),
                Err(_) => {
                    cx.err(v.span(), format!("{prefix}field \"{key}\" is out of range"));
                    None
                }
            }
        }
        _ => {
            type_err(cx, prefix, key, v, "an integer");
            None
        }
    }
}

pub(super) fn get_int_in(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
    min: i128,
    max: i128,
) -> Option<i128> {
    let (n, span) = get_int(cx, t, key, prefix)?;
    if n < min || n > max {
        let range = if max == i128::from(u32::MAX) || max == usize::MAX as i128 {
            format!("at least {min}")
        } else {
            format!("between {min} and {max}")
        };
        cx.err(
            span,
            format!("{prefix}field \"{key}\" must be {range}, got {n}"),
        );
        return None;
    }
    Some(n)
}

pub(super) fn get_bool(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(bool, Range<usize>)> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::Boolean(b) => Some((*b, v.span())),
        _ => {
            type_err(cx, prefix, key, v, "true or false");
            None
        }
    }
}

pub(super) fn get_duration(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<Duration> {
    let v = t.get(key)?;
    let DeValue::String(s) = v.get_ref() else {
        type_err(
            cx,
            prefix,
            key,
            v,
            "a duration string such as \"30s\" or \"5m\"",
        );
        return None;
    };
    match parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(v.span(), format!("{prefix}field \"{key}\": {e}"));
            None
        }
    }
}

/// A string field restricted to a fixed set of spellings.
pub(super) fn get_choice<T: Copy>(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let (s, span) = get_str(cx, t, key, prefix)?;
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
        return Some(*v);
    }
    let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    cx.err(
        span,
        format!(
            "{prefix}field \"{key}\" must be one of {}, got \"{s}\"",
            names.join(", ")
        ),
    );
    None
}

// ---------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------
