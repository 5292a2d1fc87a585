//! The crate's internal imports have no cycle: every module reaches only
//! modules that do not reach back (a parent declaring or re-exporting its
//! children aside); and they run down the layers (see [`LAYERS`]). Read
//! from the source text, as `use crate::…`, `crate::…::` paths and
//! `super::…` paths outside comments.
//!
//! Run alone with `cargo test --test layout`; a failure names the cycle,
//! or the import that runs up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its module path (`two_phase::gid`;
/// the crate root is the empty path).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).expect("read src/");
        for entry in entries {
            let path = entry.expect("a directory entry").path();
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
        .map(|file| {
            let relative = file.strip_prefix(&src).expect("under src/");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            (parts.join("::"), file)
        })
        .collect()
}

/// The text of `file` without comments (doc links are not imports) and
/// string literals.
fn code(file: &Path) -> String {
    // A quote as a char literal is not the start of a string.
    let text = std::fs::read_to_string(file)
        .expect("read a source file")
        .replace("'\"'", "' '")
        .replace("'\\\"'", "' '");
    let mut out = String::with_capacity(text.len());
    // Strings may go on over several lines.
    let (mut in_string, mut escaped) = (false, false);
    for line in text.lines() {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (in_string, c) {
                (true, '\\') if !escaped => escaped = true,
                (true, '"') if !escaped => in_string = false,
                (true, _) => escaped = false,
                (false, '"') => in_string = true,
                (false, '/') if chars.peek() == Some(&'/') => break,
                (false, c) => out.push(c),
            }
        }
        escaped = false;
        out.push('\n');
    }
    out
}

/// The paths named after each `prefix` (`crate::`, `super::`) in `code`,
/// use-tree groups (`crate::{a, b::{c, d}}`) spelled out.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    fn tree(s: &[u8], at: &mut usize, base: &str, out: &mut Vec<String>) {
        let skip_space = |at: &mut usize| {
            while *at < s.len() && s[*at].is_ascii_whitespace() {
                *at += 1;
            }
        };
        skip_space(at);
        if s.get(*at) == Some(&b'{') {
            *at += 1;
            loop {
                skip_space(at);
                match s.get(*at) {
                    Some(b'}') | None => {
                        *at += 1;
                        return;
                    }
                    Some(b',') => *at += 1,
                    _ => tree(s, at, base, out),
                }
            }
        }
        let start = *at;
        while *at < s.len() && (s[*at].is_ascii_alphanumeric() || s[*at] == b'_') {
            *at += 1;
        }
        let segment = String::from_utf8_lossy(&s[start..*at]).into_owned();
        if segment.is_empty() {
            *at += 1;
            return;
        }
        let path = if base.is_empty() {
            segment
        } else {
            format!("{base}::{segment}")
        };
        if s[*at..].starts_with(b"::") {
            *at += 2;
            tree(s, at, &path, out);
        } else {
            out.push(path);
        }
    }
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find(prefix) {
        let begin = from + found;
        let boundary = begin == 0 || {
            let before = bytes[begin - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
        };
        let mut at = begin + prefix.len();
        if boundary {
            tree(bytes, &mut at, "", &mut out);
        }
        from = at.max(begin + prefix.len());
    }
    out
}

/// The longest module that `path` (relative to the crate root) names.
fn resolve<'m>(path: &str, modules: &'m BTreeMap<String, PathBuf>) -> Option<&'m str> {
    let mut candidate = path.to_owned();
    loop {
        if let Some((name, _)) = modules.get_key_value(&candidate) {
            return Some(name);
        }
        let (parent, _) = candidate.rsplit_once("::")?;
        candidate = parent.to_owned();
    }
}

fn is_within(module: &str, ancestor: &str) -> bool {
    ancestor.is_empty() || module == ancestor || module.starts_with(&format!("{ancestor}::"))
}

/// Module -> the modules it imports (not its own descendants).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let code = code(file);
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p).to_owned();
        let mut named: Vec<String> = paths_after(&code, "crate::");
        named.extend(paths_after(&code, "super::").into_iter().map(|p| {
            if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            }
        }));
        let edges: BTreeSet<String> = named
            .iter()
            .filter_map(|p| resolve(p, &modules))
            .filter(|target| !is_within(target, module))
            .map(str::to_owned)
            .collect();
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A cycle through the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, graph, state, path) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0
            && let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_crates_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    assert!(graph.len() > 20, "read the modules: {:?}", graph.keys());
    assert!(
        graph["conn::session"].contains("machine::track"),
        "imports are read: {:?}",
        graph["conn::session"]
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

/// The layers, lowest first, by module path prefix: a module may import
/// modules of its own layer and of the layers below. `error` stands aside
/// (every layer reports errors, and the error type names what it carries);
/// the crate root declares and re-exports everything.
const LAYERS: [(&str, &[&str]); 6] = [
    (
        "vocabulary",
        &["state", "statements", "user_code", "pipeline"],
    ),
    ("pure decisions", &["machine"]),
    ("settings", &["config"]),
    ("connecting", &["connect"]),
    ("async core", &["conn"]),
    ("blocking shell", &["blocking"]),
];

/// The layer of `module`: its index in [`LAYERS`], or above them all (the
/// public blocking handles).
fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, prefixes)| prefixes.iter().any(|p| is_within(module, p)))
        .unwrap_or(LAYERS.len())
}

/// Every import that runs up a layer, as "a (layer) -> b (layer)".
fn imports_running_up(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let name = |layer: usize| LAYERS.get(layer).map_or("public handles", |(n, _)| n);
    let mut up = Vec::new();
    for (from, targets) in graph {
        if from.is_empty() || from == "error" {
            continue;
        }
        for to in targets {
            if to == "error" || layer(to) <= layer(from) {
                continue;
            }
            up.push(format!(
                "{from} ({}) -> {to} ({})",
                name(layer(from)),
                name(layer(to))
            ));
        }
    }
    up
}

#[test]
fn imports_run_down_the_layers() {
    let graph = imports();
    assert_eq!(layer("conn::session"), 4);
    assert_eq!(layer("machine"), 1);
    assert_eq!(layer("manager"), LAYERS.len());
    let up = imports_running_up(&graph);
    assert!(up.is_empty(), "imports that run up:\n{}", up.join("\n"));
}

#[test]
fn only_the_blocking_shell_blocks_and_only_its_runtime_module_makes_runtimes() {
    let shell = LAYERS
        .iter()
        .position(|(name, _)| *name == "blocking shell")
        .expect("a blocking shell layer");
    let mut found = Vec::new();
    for (module, file) in modules() {
        let code = code(&file);
        if layer(&module) < shell && code.contains("block_on") {
            found.push(format!(
                "{module} blocks (block_on) below the blocking shell"
            ));
        }
        // The blocking shell's one runtime module makes runtimes; the async
        // front's one runtime module names the caller's runtime, to spawn
        // the few tasks that front runs. Nothing else touches runtimes.
        let names_runtime = code.contains("tokio::runtime");
        let makes_runtime = code.contains("runtime::Builder") || code.contains("Runtime::new");
        if module != "blocking::driver" && makes_runtime {
            found.push(format!("{module} makes a runtime"));
        }
        if !["blocking::driver", "aio::runtime"].contains(&module.as_str()) && names_runtime {
            found.push(format!("{module} names a runtime"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_two_fronts_stand_side_by_side_on_the_core() {
    let graph = imports();
    let mut crossing = Vec::new();
    for (from, targets) in &graph {
        for to in targets {
            let (a, b) = (is_within(from, "aio"), is_within(to, "aio"));
            let (c, d) = (is_within(from, "blocking"), is_within(to, "blocking"));
            if (a && d) || (c && b) {
                crossing.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        graph.keys().any(|m| is_within(m, "aio")),
        "the async front is among the modules read"
    );
    assert!(
        crossing.is_empty(),
        "one front imports the other:\n{}",
        crossing.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_the_reader_spells_out_groups() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.insert("a".into(), ["b".into()].into());
    graph.insert("b".into(), ["c".into()].into());
    graph.insert("c".into(), ["a".into()].into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    graph.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);

    let code = "use crate::{error::{Error, Result}, wire::Tap};\nlet x = crate::lease::Ticket::new(1);\nnotcrate::x";
    assert_eq!(
        paths_after(code, "crate::"),
        [
            "error::Error",
            "error::Result",
            "wire::Tap",
            "lease::Ticket::new"
        ]
    );
}
