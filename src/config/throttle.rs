//! `[accounts.NAME.throttle]`: the request budget of one storage account (see
//! `docs/scaling.md` and [`crate::throttle`]). Kept in its own file so the account section's
//! parsing stays untouched but for one call.

use super::reader::{check_unknown, get_bool, get_int_in, type_err, Ctx};
use toml::de::{DeTable, DeValue};

pub use crate::throttle::options::ThrottleConfig;

const THROTTLE_FIELDS: &[&str] = &[
    "enabled",
    "max_requests_per_second",
    "max_mib_per_second",
    "blob_max_requests_per_second",
    "blob_max_mib_per_second",
    "learn",
];

/// Reads the optional `throttle` sub-table of an account section; problems go to `cx`.
pub(super) fn build_throttle(
    cx: &mut Ctx<'_>,
    account: &DeTable<'_>,
    prefix: &str,
) -> ThrottleConfig {
    let mut out = ThrottleConfig::default();
    let Some(v) = account.get("throttle") else {
        return out;
    };
    let DeValue::Table(t) = v.get_ref() else {
        type_err(
            cx,
            prefix,
            "throttle",
            v,
            "a table ([accounts.NAME.throttle])",
        );
        return out;
    };
    let prefix = format!("{prefix}throttle: ");
    check_unknown(cx, t, THROTTLE_FIELDS, &prefix);
    if let Some((b, _)) = get_bool(cx, t, "enabled", &prefix) {
        out.enabled = b;
    }
    let mut int = |key: &str, field: &mut u32| {
        if let Some(n) = get_int_in(cx, t, key, &prefix, 1, i128::from(u32::MAX)) {
            // In range by the check above.
            *field = n as u32;
        }
    };
    int("max_requests_per_second", &mut out.max_requests_per_second);
    int("max_mib_per_second", &mut out.max_mib_per_second);
    int(
        "blob_max_requests_per_second",
        &mut out.blob_max_requests_per_second,
    );
    int("blob_max_mib_per_second", &mut out.blob_max_mib_per_second);
    if let Some((b, span)) = get_bool(cx, t, "learn", &prefix) {
        out.learn = b;
        if b && !out.enabled {
            cx.err(
                span,
                format!("{prefix}field \"learn\" = true needs enabled = true (learning is part of the budget)"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::{assert_problems_with_one_account, with_one_account as parse};

    #[test]
    fn defaults_are_azure_scale_targets() {
        let c = parse("").unwrap();
        assert_eq!(c.accounts["a"].throttle, ThrottleConfig::default());
        assert_eq!(ThrottleConfig::default().max_requests_per_second, 20_000);
        assert_eq!(ThrottleConfig::default().blob_max_requests_per_second, 500);
        assert_eq!(ThrottleConfig::default().blob_max_mib_per_second, 60);
    }

    #[test]
    fn a_throttle_table_overrides_each_field() {
        let c = parse(
            "[accounts.a.throttle]\nenabled = false\nmax_requests_per_second = 300\nmax_mib_per_second = 100\nblob_max_requests_per_second = 50\nblob_max_mib_per_second = 6\nlearn = false\n",
        )
        .unwrap();
        assert_eq!(
            c.accounts["a"].throttle,
            ThrottleConfig {
                enabled: false,
                max_requests_per_second: 300,
                max_mib_per_second: 100,
                blob_max_requests_per_second: 50,
                blob_max_mib_per_second: 6,
                learn: false,
            }
        );
    }

    #[test]
    fn bad_throttle_fields_are_named_with_their_line() {
        let cases = [
            (
                "[accounts.a.throttle]\nmax_request_per_second = 5\n",
                "snapback.toml:5:1: account \"a\": throttle: unknown field \"max_request_per_second\" (did you mean \"max_requests_per_second\"?)",
            ),
            (
                "[accounts.a.throttle]\nblob_max_mib_per_second = 0\n",
                "snapback.toml:5:27: account \"a\": throttle: field \"blob_max_mib_per_second\" must be at least 1, got 0",
            ),
            (
                "[accounts.a.throttle]\nlearn = \"yes\"\n",
                "snapback.toml:5:9: account \"a\": throttle: field \"learn\" must be true or false, found string",
            ),
            (
                "[accounts.a.throttle]\nenabled = false\nlearn = true\n",
                "snapback.toml:6:9: account \"a\": throttle: field \"learn\" = true needs enabled = true (learning is part of the budget)",
            ),
            (
                "throttle = 5\n",
                "account \"a\": field \"throttle\"",
            ),
        ];
        assert_problems_with_one_account(&cases);
    }
}
