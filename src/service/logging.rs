//! Log output on stderr: human lines or JSON, coloured only where colour is read by a person.
//!
//! Colour escape codes are for a terminal. Written to a file or to the journal (systemd
//! captures stderr through a pipe) they turn into `^[[2m` noise, so colour is on only when
//! stderr is a terminal, and never when `NO_COLOR` is set to a non-empty value
//! (<https://no-color.org>). JSON lines never carry colour.

use std::io::{IsTerminal, Write};

/// Whether log lines on stderr get ANSI colour: a terminal, and `no_color` (the value of
/// `NO_COLOR`) unset or empty.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: `SNAPBACK_LOG` filters (default `info`), JSON or text.
pub fn init(json: bool) {
    // The SDK logs every failed try at info; ours say what failed and why, once.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNAPBACK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,typespec_client_core=warn,azure_core=warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let terminal = std::io::stderr().is_terminal();
    let ansi = colour(terminal, std::env::var_os("NO_COLOR").as_deref());
    match (json, terminal) {
        (true, true) => builder
            .json()
            .with_ansi(false)
            .with_writer(|| AboveBars)
            .init(),
        (true, false) => builder
            .json()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init(),
        (false, true) => builder.with_ansi(ansi).with_writer(|| AboveBars).init(),
        (false, false) => builder.with_ansi(false).with_writer(std::io::stderr).init(),
    }
}

/// stderr on a terminal: each log line is written above the progress bars, not through them
/// (the formatter writes one event per `write`).
struct AboveBars;

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::service::terminal::suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
