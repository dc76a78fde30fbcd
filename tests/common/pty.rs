//! Runs a command on a pseudo-terminal, as an operator's shell would: `script` (util-linux)
//! gives the child a PTY as stdin/stdout/stderr and copies what it writes to our pipe.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Single-quotes `s` for `sh -c`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `program args...` with its stdio on a PTY (environment inherited, plus `env`);
/// returns what the terminal showed (stdout and stderr interleaved) and the exit status
/// (`script -e` passes the child's on).
pub fn run_on_pty(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let line: Vec<String> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-f", "-c"])
        .arg(line.join(" "))
        .arg("/dev/null")
        .env("SHELL", "/bin/sh")
        // A terminal wide enough that a progress line is not cut.
        .env("COLUMNS", "160");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run script(1) from util-linux")
}

/// Whether `text` holds an ANSI escape sequence (CSI: ESC '[').
pub fn has_escape_codes(text: &str) -> bool {
    text.contains("\u{1b}[")
}
