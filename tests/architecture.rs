//! The module graph (docs/design.md, "Architecture"). Every path a file of `src/` writes —
//! `crate::…`, `super::…`, `self::…` (and `snapback::…` in the binary: `main.rs` and `cli/`)
//! — is an edge from that file's module to the module it names. The tests hold three rules:
//! - no loop between files (modules), `super::` imports included;
//! - no loop between the folders of `src/` (each top-level module is one folder or file);
//! - no folder imports one on a layer above its own (the layers below, top first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers of the top-level modules, top first. A module may use its own layer's modules and
/// any layer below; modules on one layer may use each other, as long as no loop forms.
const LAYERS: &[(&str, &[&str])] = &[
    ("command line", &["main", "cli"]),
    ("daemon", &["daemon"]),
    ("service: the operations behind the commands", &["service"]),
    ("restore points: restore, verify, retention", &["restore"]),
    ("cycle", &["cycle"]),
    (
        "what a cycle runs on: the disk, its owner, the local state",
        &["source", "ownership", "state"],
    ),
    ("the file contract", &["config"]),
    ("HTTP clients", &["arm", "azure", "throttle"]),
    ("storage traits, typed errors, fakes", &["storage"]),
    ("vocabulary", &["model"]),
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

/// Paths after `root::`, including each item of `use root::x::{a, b}`.
fn referenced_paths(text: &str, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let needle = format!("{root}::");
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find(&needle) {
            // `super::` inside `crate::a::super::…` does not occur; a name ending in the
            // root (`my_crate::`) is not the root.
            let before = rest[..i].chars().last();
            let after = &rest[i + needle.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let path: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':').to_string();
            if after[path.len()..].trim_start_matches(':').starts_with('{') {
                let inner: String = after[path.len()..]
                    .trim_start_matches(':')
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| *c != '}')
                    .collect();
                for item in inner.split(',') {
                    let item = item.trim().split(' ').next().unwrap_or("");
                    if !item.is_empty() && item != "self" {
                        out.push(format!("{path}::{item}"));
                    }
                }
            }
            out.push(path);
        }
    }
    out
}

/// The module a `super::` path starts from: the parent of `module` (a `mod.rs` module's
/// `super` is its own parent too, since `module_of` already dropped the `mod`).
fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_string())
}

fn join(base: &str, rest: &str) -> String {
    if base.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}::{rest}")
    }
}

/// Whether `module` is a file of the binary crate (`main.rs` and the `cli/` it declares),
/// where `snapback::…` names the library and `crate::…` the binary's own modules.
fn in_binary(module: &str) -> bool {
    module == "main" || top(module) == "cli"
}

/// File → the files it names, from the product code (unit tests may reach anywhere: they
/// build worlds; the product may not).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let product = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut paths: Vec<String> = Vec::new();
        paths.extend(referenced_paths(product, "crate"));
        if in_binary(&from) {
            paths.extend(referenced_paths(product, "snapback"));
        }
        if from != "main" {
            let up = parent(&from);
            paths.extend(
                referenced_paths(product, "super")
                    .into_iter()
                    .map(|p| join(&up, &p)),
            );
            paths.extend(
                referenced_paths(product, "self")
                    .into_iter()
                    .map(|p| join(&from, &p)),
            );
        }
        let edges = g.entry(from.clone()).or_default();
        for p in paths {
            if let Some(to) = resolve(&p, &modules) {
                // A module naming its own children (or itself) is no dependency.
                if to != from && !to.starts_with(&format!("{from}::")) && to != "lib" {
                    edges.insert(to);
                }
            }
        }
    }
    g
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, ms)| ms.contains(&top(module)))
        .unwrap_or_else(|| panic!("{module}: its folder `{}` is on no layer", top(module)))
}

/// A loop in `g`, as `a -> b -> … -> a`, if there is one.
fn find_loop(g: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<String> {
        colour.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match colour.get(m.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(l) = visit(m, g, colour, stack) {
                        return Some(l);
                    }
                }
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    return Some(format!("{} -> {m}", stack[at..].join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(n.to_string(), 2);
        None
    }
    let mut colour = BTreeMap::new();
    for n in g.keys() {
        if colour.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(l) = visit(n, g, &mut colour, &mut Vec::new()) {
                return Some(l);
            }
        }
    }
    None
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let g = graph();
    assert!(g.len() > 40, "the scan found the modules: {:?}", g.keys());
    if let Some(l) = find_loop(&g) {
        panic!("module loop: {l}");
    }
}

#[test]
fn no_two_folders_import_each_other_even_through_others() {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph() {
        let entry = folders.entry(top(&from).to_string()).or_default();
        entry.extend(
            tos.iter()
                .map(|t| top(t).to_string())
                .filter(|t| t != top(&from)),
        );
    }
    if let Some(l) = find_loop(&folders) {
        panic!("folder loop: {l}");
    }
}

#[test]
fn no_folder_uses_a_layer_above_its_own() {
    let mut wrong = Vec::new();
    for (from, tos) in graph() {
        if from == "lib" {
            continue; // the crate root only declares the folders
        }
        let lf = layer_of(&from);
        for to in tos {
            let lt = layer_of(&to);
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
        "imports that run up:\n{}",
        wrong.join("\n")
    );
}

/// The scan sees real edges, `super::` ones too (a scanner that sees nothing would pass the
/// tests above).
#[test]
fn the_scan_sees_the_known_edges() {
    let g = graph();
    for (from, to) in [
        ("main", "service"),
        ("main", "cli::daemon_client"),
        ("cli::daemon_client", "daemon::control"),
        ("cli::daemon_client", "cli::print"),
        ("cli::restore", "restore"),
        ("daemon", "service"),
        ("service", "restore"),
        ("cycle::runner", "state"),
        ("cycle::runner", "source"),
        ("cycle::runner", "cycle::tuning"),
        ("config::cluster", "config::reader"),
        ("state", "model::record"),
        ("azure", "storage"),
        ("restore", "model"),
    ] {
        assert!(
            g.get(from).is_some_and(|t| t.contains(to)),
            "{from} -> {to} not seen; {from} -> {:?}",
            g.get(from)
        );
    }
}
