//! The house's rules, checked on the source so that they keep holding: a folder per layer,
//! imports only downward, no circle of imports between files, a pure protocol, short files that
//! say why they exist. See the README's Layout section for the tree and the order.
//!
//! It reads every file under `src/` and the paths it names (`use crate::…`, `crate::…`,
//! `super::…`, `self::…`, braces expanded), resolves each to the file that defines it, and
//! fails with every rule broken, each with the file and the path. Test code (`#[cfg(test)]`
//! modules, `tests.rs` files) may reach anything it tests, and is left out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest first: a module may import only modules before it in this
/// order, never one after it, and never one of its own rank (peers: `config` and `outbound`;
/// `delivery`, `ingress` and `cmd`, which reach each other only through the stored job).
const LAYERS: &[&[&str]] = &[
    &["clock"],
    &["cidr"],
    &["error"],
    &["escape"],
    &["privacy"],
    &["shutdown"],
    &["metrics"],
    &["http"],
    &["events"],
    &["telemetry"],
    &["wechat"],
    &["config", "outbound"],
    &["store"],
    &["routing"],
    &["attempt"],
    &["delivery", "ingress", "cmd"],
    &["admin"],
    &["app"],
    &["crate"],
    &["main"],
];

/// What the protocol never does: read a clock, draw randomness, or touch the world.
const IMPURE: &[&str] = &[
    "SystemTime::now",
    "Instant::now",
    "rand::",
    "std::fs",
    "std::net",
    "tokio::",
    "crate::clock",
    "std::env",
];

/// Lines of code (not blank, not a comment) a file may have outside its test modules.
const MAX_LINES_OF_CODE: usize = 800;
/// Entries directly under `src/`.
const MAX_SRC_ENTRIES: usize = 24;

/// One source file: its module path (`["ingress", "accept"]`; the crate root is `[]`), and its
/// text without comments and without test modules.
struct Source {
    path: PathBuf,
    module: Vec<String>,
    code: String,
    /// Opens with a `//!` paragraph.
    documented: bool,
}

#[test]
fn the_house_rules_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_sources(&root);
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut broken = Vec::new();

    let entries = std::fs::read_dir(&root).unwrap().count();
    if entries > MAX_SRC_ENTRIES {
        broken.push(format!(
            "src/ has {entries} entries, more than {MAX_SRC_ENTRIES}"
        ));
    }
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (i, source) in sources.iter().enumerate() {
        let shown = source.path.strip_prefix(&root).unwrap().display();
        if !source.documented {
            broken.push(format!("{shown}: does not open with a //! paragraph"));
        }
        let lines = source.code.lines().filter(|l| !l.trim().is_empty()).count();
        if lines > MAX_LINES_OF_CODE {
            broken.push(format!(
                "{shown}: {lines} lines of code, more than {MAX_LINES_OF_CODE}"
            ));
        }
        let top = top_of(&source.module, &source.path);
        if top == "wechat" {
            for word in IMPURE {
                if source.code.contains(word) {
                    broken.push(format!(
                        "{shown}: the protocol is pure, but it names {word}"
                    ));
                }
            }
        }
        for (reference, reexport) in references(source) {
            let Some(target) = resolve(&reference, &modules) else {
                continue;
            };
            let Some(j) = sources.iter().position(|s| s.module == target) else {
                continue;
            };
            if j == i {
                continue;
            }
            let to = top_of(&target, &sources[j].path);
            if to != top && !below(&to, &top) {
                broken.push(format!(
                    "{shown}: `{top}` may not import `{to}` ({})",
                    reference.join("::")
                ));
            }
            if top != "wechat" && to == "wechat" && target.len() > 1 {
                broken.push(format!(
                    "{shown}: reaches into the protocol past its door ({}); re-export it from \
                     wechat/mod.rs",
                    reference.join("::")
                ));
            }
            // A module's door (`pub use child::Item`) is not a use of its child.
            let door = reexport && target.starts_with(&source.module);
            if !door {
                edges.entry(i).or_default().insert(j);
            }
        }
    }
    for circle in circles(sources.len(), &edges) {
        let names: Vec<String> = circle
            .iter()
            .map(|&k| {
                sources[k]
                    .path
                    .strip_prefix(&root)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        broken.push(format!("a circle of imports: {}", names.join(" → ")));
    }
    broken.dedup();
    assert!(
        broken.is_empty(),
        "{} rule(s) of the house broken:\n  {}",
        broken.len(),
        broken.join("\n  ")
    );
}

/// The top-level module a file belongs to (`crate` for lib.rs, `main` for main.rs).
fn top_of(module: &[String], path: &Path) -> String {
    match module.first() {
        Some(first) => first.clone(),
        None if path.ends_with("main.rs") => "main".to_owned(),
        None => "crate".to_owned(),
    }
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Whether `to` is a layer below `from`.
fn below(to: &str, from: &str) -> bool {
    match (rank(to), rank(from)) {
        (Some(to), Some(from)) => to < from,
        // A module the order does not name is a broken rule of its own.
        _ => false,
    }
}

fn read_sources(root: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    walk(root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|path| !path.ends_with("tests.rs"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut module: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            Source {
                documented: text.trim_start().starts_with("//!"),
                code: without_tests(&without_comments(&text)),
                path,
                module,
            }
        })
        .collect()
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The text without `//` and `/* */` comments (string contents are kept: a `//` inside a
/// string would cut a line short, which only makes the check miss, never invent, a path).
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |end| &after[end + 2..]);
        } else if rest.starts_with("//") {
            rest = rest.find('\n').map_or("", |end| &rest[end..]);
        } else if let Some(end) = raw_string_end(rest) {
            // A raw string's contents (Lua, TOML) are no code: kept out whole.
            out.push_str("\"\"");
            rest = &rest[end..];
        } else if rest.starts_with('"') {
            // A string literal's contents are no code either: a `//` in a URL is not a comment,
            // and a `use` in a message is no import.
            let end = string_end(rest);
            out.push_str("\"\"");
            rest = &rest[end..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The length of the raw string literal (`r"…"`, `r#"…"#`) `text` starts with, if it does.
fn raw_string_end(text: &str) -> Option<usize> {
    let after_r = text.strip_prefix('r')?;
    let hashes = after_r.len() - after_r.trim_start_matches('#').len();
    let body = after_r[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&close)?;
    Some(1 + hashes + 1 + end + close.len())
}

/// The length of the string literal `text` starts with (its quotes included).
fn string_end(text: &str) -> usize {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return i + 1,
            _ => escaped = false,
        }
    }
    text.len()
}

/// The text without `#[cfg(test)]` items (a test module, or a test-only function).
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends with `;` (`mod tests;`) or with its braces' close.
        let semi = item.find(';');
        let open = item.find('{');
        let end = match (semi, open) {
            (Some(s), Some(o)) if s < o => s + 1,
            (_, Some(o)) => o + matching_brace(&item[o..]),
            (Some(s), None) => s + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Where the brace `text` starts with is closed (one past it).
fn matching_brace(text: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// Every path a file names, absolute (from the crate root), and whether it was named by a
/// re-export (`pub use …`).
fn references(source: &Source) -> Vec<(Vec<String>, bool)> {
    let mut found = Vec::new();
    let code = &source.code;
    // `use` statements, braces expanded.
    let mut at = 0;
    while let Some(start) = find_word(&code[at..], "use").map(|i| at + i) {
        let Some(end) = code[start..].find(';').map(|i| start + i) else {
            break;
        };
        let before = code[..start].trim_end();
        let reexport = before.ends_with("pub") || before.ends_with(')');
        let tree = code[start + 3..end].trim();
        for path in expand(tree) {
            if let Some(absolute) = absolute(&path, &source.module) {
                found.push((absolute, reexport));
            }
        }
        at = end;
    }
    // Paths written inline: `crate::a::b`, `super::x`.
    for prefix in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(prefix) {
            let start = at + i;
            at = start + prefix.len();
            let preceded = code[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if preceded {
                continue;
            }
            let path = path_at(&code[start..]);
            if let Some(absolute) = absolute(&path, &source.module) {
                found.push((absolute, false));
            }
        }
    }
    found
}

/// The path `text` starts with: identifiers joined by `::`, up to the first other character.
fn path_at(text: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut rest = text;
    loop {
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        path.push(rest[..len].to_owned());
        match rest[len..].strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    path
}

/// Where the word `word` occurs as a keyword (not inside another identifier).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = text[at..].find(word) {
        let start = at + i;
        let before = text[..start].chars().next_back();
        let after = text[start + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !ident(before) && !ident(after) {
            return Some(start);
        }
        at = start + word.len();
    }
    None
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (each as segments, `as` renames dropped).
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        return vec![path.split("::").map(|s| s.trim().to_owned()).collect()];
    };
    let prefix: Vec<String> = tree[..open]
        .trim_end_matches("::")
        .split("::")
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().to_owned())
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0usize, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|tail| {
            let mut path = prefix.clone();
            // `self` in braces names the prefix itself.
            path.extend(tail.into_iter().filter(|s| s != "self"));
            path
        })
        .collect()
}

/// A path as named from `module`, from the crate root; `None` for other crates' paths.
fn absolute(path: &[String], module: &[String]) -> Option<Vec<String>> {
    let mut current: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            current.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                current.pop()?;
                rest = &rest[1..];
            }
        }
        // A child module named as a bare path (`use resends::Resends` from ingress/mod.rs).
        Some(_) => {}
        None => return None,
    }
    current.extend(rest.iter().cloned());
    Some(current)
}

/// The module (file) that defines what `path` names: its longest prefix that is a file.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
}

/// The strongly connected components of more than one file (Tarjan's algorithm).
fn circles(n: usize, edges: &BTreeMap<usize, BTreeSet<usize>>) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a BTreeMap<usize, BTreeSet<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    fn visit(v: usize, s: &mut State<'_>) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        let targets: Vec<usize> = s.edges.get(&v).into_iter().flatten().copied().collect();
        for w in targets {
            match s.index[w] {
                None => {
                    visit(w, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(index) if s.on_stack[w] => s.low[v] = s.low[v].min(index),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.reverse();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(v, &mut state);
        }
    }
    state.found
}

/// The checker itself, on literal inputs: a rule it cannot see broken is no rule.
#[test]
fn the_checker_sees_paths_tests_and_circles() {
    assert_eq!(
        expand("crate::{a::b, c::{self, d as e}}"),
        vec![
            vec!["crate", "a", "b"],
            vec!["crate", "c"],
            vec!["crate", "c", "d"],
        ]
    );
    let module = vec!["ingress".to_owned(), "accept".to_owned()];
    let path = |p: &str| p.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        absolute(&path("super::resends::Leader"), &module),
        Some(path("ingress::resends::Leader"))
    );
    assert_eq!(
        absolute(&path("crate::store::Job"), &module),
        Some(path("store::Job"))
    );
    let code = "use a::b;\n#[cfg(test)]\nmod tests {\n use crate::x::y;\n}\nfn f() {}\n";
    assert!(!without_tests(code).contains("crate::x"));
    assert!(without_tests(code).contains("fn f()"));
    assert_eq!(
        without_comments("a // crate::x\n\"//\" /* b */ c r#\"use \"x\" y\"# d"),
        "a \n\"\"  c \"\" d"
    );
    let mut edges = BTreeMap::new();
    edges.insert(0, BTreeSet::from([1]));
    edges.insert(1, BTreeSet::from([2]));
    edges.insert(2, BTreeSet::from([0]));
    edges.insert(3, BTreeSet::from([0]));
    assert_eq!(circles(4, &edges), vec![vec![0, 1, 2]]);
    assert_eq!(
        path_at("crate::wechat::authorizer::split(&q)::x"),
        path("crate::wechat::authorizer::split")
    );
    assert!(below("store", "routing") && !below("ingress", "delivery"));
    assert!(!below("config", "outbound") && !below("outbound", "config"));
}
