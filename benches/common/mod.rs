//! What the benches share: the `main` of a bench made of parts, environment knobs, the
//! process meters, the synthetic store, and the test harness's Azurite.
#![allow(dead_code)]

#[path = "../../tests/common/azurite.rs"]
pub mod azurite;
#[path = "../../tests/common/http.rs"]
pub mod http;
pub mod meter;
#[path = "../../tests/common/process.rs"]
pub mod process;
pub mod synthetic;

/// `name` from the environment as a number, else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `main` of a bench made of `parts`. Under `cargo test` (no `--bench` argument) it only
/// says it skipped. With `--only=PART` it runs that part: `run(part, runtime)` on a fresh
/// multi-threaded tokio runtime. Without, it runs every part in order, each in its own
/// process, so one part's heap does not inflate the next one's peak RSS.
pub fn main(bench: &str, parts: &[&str], run: impl FnOnce(&str, &tokio::runtime::Runtime)) {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("{bench} bench: skipped (run it with `cargo bench --bench {bench}`)");
        return;
    }
    let Some(part) = args.iter().find_map(|a| a.strip_prefix("--only=")) else {
        let exe = std::env::current_exe().expect("bench executable");
        for part in parts {
            let status = std::process::Command::new(&exe)
                .args(["--bench", &format!("--only={part}")])
                .status()
                .expect("bench part runs");
            assert!(status.success(), "part {part} failed");
        }
        return;
    };
    assert!(
        parts.contains(&part),
        "unknown part {part}: one of {}",
        parts.join(", ")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "[{part}] baseline RSS of the bench process: {:.1} MiB",
        meter::rss_mib()
    );
    run(part, &rt);
}
