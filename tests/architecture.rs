//! The module graph (docs/design.md, "Architecture"): every `crate::…` path in `src/` is an
//! edge from the module that writes it to the module it names; the graph has no cycles, and
//! no module reaches above its layer (CLI → daemon → service → engine → storage, state, model).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, top first. A module may use its own layer's modules and any layer below.
const LAYERS: &[(&str, &[&str])] = &[
    ("cli", &["main", "logging"]),
    ("daemon", &["daemon"]),
    // `check` and the hooks are operations of their own beside the service's; the terminal's
    // progress bars watch the engine's progress.
    ("service", &["service", "check", "hooks", "terminal"]),
    (
        "engine",
        &[
            "cycle::runner",
            "cycle::metered",
            "cycle::progress",
            "cycle",
            "restore",
            "verify",
            "retention",
            "copy",
            "source",
            "managed",
            "managed_access",
            "managed_props",
            "managed_restore",
            "ownership",
        ],
    ),
    (
        "storage and state",
        &[
            "azure",
            "arm",
            "throttle",
            "fake",
            "state",
            "lock",
            "config",
            "cycle::machine",
        ],
    ),
    (
        "storage trait",
        &["blobs", "blob_error", "secrets", "lease", "snapshot_limits"],
    ),
    ("model", &["model", "pages", "vhd", "tls", "assign"]),
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/cycle/runner.rs` → `cycle::runner`; `src/state/mod.rs` → `state`; `src/main.rs` → `main`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| c != "mod")
        .collect();
    parts.join("::")
}

/// The longest known module that `path` (`a::b::Item`) starts with.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Paths after `crate::` (or `snapback::` in the binary), including `use crate::x::{a, b}`.
fn referenced_paths(text: &str, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let needle = format!("{root}::");
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            let path: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':').to_string();
            // `crate::x::{a, b::c}`: each item, prefixed.
            if after[path.len()..].trim_start_matches(':').starts_with('{') {
                let inner: String = after[path.len()..]
                    .trim_start_matches(':')
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| *c != '}')
                    .collect();
                for item in inner.split(',') {
                    let item = item.trim().split(' ').next().unwrap_or("");
                    if !item.is_empty() {
                        out.push(format!("{path}::{item}"));
                    }
                }
            }
            out.push(path);
            rest = &after[1..];
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may reach anywhere (they build worlds); the product may not.
        let product = text.split("#[cfg(test)]").next().unwrap_or("");
        let root = if from == "main" { "snapback" } else { "crate" };
        let edges = g.entry(from.clone()).or_default();
        for p in referenced_paths(product, root) {
            if let Some(to) = resolve(&p, &modules) {
                if to != from && !from.starts_with(&format!("{to}::")) {
                    edges.insert(to);
                }
            }
        }
    }
    g
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, ms)| {
            ms.iter()
                .any(|m| module == *m || module.starts_with(&format!("{m}::")))
        })
        .map(|i| {
            // The most specific entry wins (cycle::machine is not engine).
            LAYERS
                .iter()
                .enumerate()
                .filter_map(|(j, (_, ms))| {
                    ms.iter()
                        .filter(|m| module == **m || module.starts_with(&format!("{m}::")))
                        .map(|m| (m.len(), j))
                        .max()
                })
                .max()
                .map_or(i, |(_, j)| j)
        })
}

#[test]
fn the_module_graph_has_no_cycles() {
    let g = graph();
    // Depth-first search with colours; a grey node reached again closes a cycle.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) {
        colour.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match colour.get(m.as_str()).copied().unwrap_or(0) {
                0 => visit(m, g, colour, stack),
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    panic!("module cycle: {} -> {m}", stack[at..].join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(n.to_string(), 2);
    }
    let mut colour = BTreeMap::new();
    for n in g.keys() {
        if colour.get(n.as_str()).copied().unwrap_or(0) == 0 {
            visit(n, &g, &mut colour, &mut Vec::new());
        }
    }
    assert!(g.len() > 20, "the scan found the modules: {:?}", g.keys());
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        let Some(lf) = layer_of(from) else {
            // The crate root only declares modules.
            assert_eq!(from, "lib", "module {from} is in no layer");
            continue;
        };
        for to in tos {
            let lt = layer_of(to).unwrap_or_else(|| panic!("module {to} is in no layer"));
            if lt < lf {
                wrong.push(format!(
                    "{from} ({}) uses {to} ({})",
                    LAYERS[lf].0, LAYERS[lt].0
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

/// The scan sees real edges (a scanner that sees nothing would pass the tests above).
#[test]
fn the_scan_sees_the_known_edges() {
    let g = graph();
    for (from, to) in [
        ("main", "service"),
        ("daemon", "service"),
        ("service", "restore"),
        ("cycle::runner", "state"),
        ("cycle::runner", "source"),
        ("state", "cycle::machine"),
        ("azure", "blobs"),
        ("restore", "model"),
    ] {
        assert!(
            g.get(from).is_some_and(|t| t.contains(to)),
            "{from} -> {to} not seen; {from} -> {:?}",
            g.get(from)
        );
    }
}
