//! The shape of `src/`: the modules' import graph has no cycles.
//!
//! A module depends on another when its code names it (`use crate::a::b`, `super::c::D`, `crate::e::f()`), whatever
//! the feature. A module naming one of its own ancestors is not a dependency here: a child using what its parent
//! defines is how Rust modules are built. Any other cycle (siblings importing each other, or a longer loop) is a
//! failure, printed as the loop of modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/` with its module path (`machine::state`; the crate root is ``).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|file| {
            let relative = file
                .strip_prefix(&src)
                .expect("under src/")
                .with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            (parts.join("::"), file)
        })
        .collect()
}

/// The code of a file without its trailing `#[cfg(test)]` module and without comments.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("a source file is readable");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file's code names: `crate::...` and `super::...` paths, and the items of `use` groups.
fn references(module: &str, code: &str) -> Vec<String> {
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_owned())
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let start_ok = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        let base = if start_ok && rest.starts_with(b"crate::") {
            Some((String::new(), "crate::".len()))
        } else if start_ok && rest.starts_with(b"super::") {
            let mut base = parent(module);
            let mut len = "super::".len();
            while bytes[i + len..].starts_with(b"super::") {
                base = parent(&base);
                len += "super::".len();
            }
            Some((base, len))
        } else {
            None
        };
        let Some((base, len)) = base else {
            i += 1;
            continue;
        };
        // The path that follows: identifiers joined by `::`, possibly ending in a `{...}` group.
        let mut j = i + len;
        let mut segments: Vec<String> = Vec::new();
        loop {
            let k = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            if j > k {
                segments.push(code[k..j].to_owned());
            }
            if bytes[j..].starts_with(b"::") {
                j += 2;
                if bytes[j..].starts_with(b"{") {
                    let end = code[j..].find('}').map_or(code.len(), |e| j + e);
                    for item in code[j + 1..end].split(',') {
                        let item = item.split_whitespace().next().unwrap_or("");
                        let mut path = segments.clone();
                        path.extend(
                            item.split("::")
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned),
                        );
                        out.push(join(&base, &path));
                    }
                    segments.clear();
                    j = end;
                    break;
                }
                continue;
            }
            break;
        }
        if !segments.is_empty() {
            out.push(join(&base, &segments));
        }
        i = j.max(i + 1);
    }
    out
}

fn join(base: &str, segments: &[String]) -> String {
    let mut parts: Vec<&str> = base.split("::").filter(|s| !s.is_empty()).collect();
    parts.extend(segments.iter().map(String::as_str));
    parts.join("::")
}

/// The longest prefix of `path` that is a module.
fn module_of(path: &str, modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

fn is_ancestor(ancestor: &str, of: &str) -> bool {
    ancestor.is_empty() || of.starts_with(&format!("{ancestor}::"))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let edges = graph.entry(module.clone()).or_default();
        for path in references(module, &code(file)) {
            if let Some(target) = module_of(&path, &modules)
                && target != *module
                && !is_ancestor(&target, module)
            {
                edges.insert(target);
            }
        }
    }
    graph
}

/// A cycle through the graph, if any (depth-first search with colours).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn the_import_graph_of_src_has_no_cycles() {
    let graph = graph();
    // The checker itself must see the dependencies it is meant to judge.
    assert!(graph["runtime"].contains("machine"), "{graph:#?}");
    assert!(
        graph["protocol::trust"].contains("protocol::job"),
        "{graph:#?}"
    );
    assert!(graph["cli::demo"].contains("cli::error"), "{graph:#?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let mut graph = graph();
    graph
        .entry("protocol::job".to_owned())
        .or_default()
        .insert("protocol::trust".to_owned());
    let cycle = find_cycle(&graph).expect("a cycle");
    assert!(cycle.contains(&"protocol::trust".to_owned()), "{cycle:?}");
}
