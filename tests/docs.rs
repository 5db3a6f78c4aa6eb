//! The README and the pages under `docs/` stay linked: every relative link points to a file or
//! folder that exists, every `#anchor` to a heading of the page it names (its anchor computed as
//! GitHub computes it), every page is linked from the README and links back to it.
//!
//! Markdown is read only as far as links need: fenced code blocks and inline code are skipped
//! (a `](` or a `#` in them is no link and no heading), and links to other sites are not
//! followed. Part of the fast tier (`scripts/test --fast`): no network, no server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, every `docs/*.md` and the translations' pages (`docs/zh-CN/*.md`), as paths
/// relative to the repository.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = ["docs", "docs/zh-CN"]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(root().join(dir)).expect("the docs folder exists"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of a page outside fenced code blocks, with inline code spans blanked out but their
/// text kept apart for headings (`` `x` `` in a heading is part of its anchor).
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((index + 1, line.to_owned())),
            _ => {}
        }
    }
    lines
}

/// The line with each inline code span's backticks and contents replaced by spaces.
fn without_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '`' {
            out.push(c);
            continue;
        }
        let mut ticks = 1;
        while chars.peek() == Some(&'`') {
            chars.next();
            ticks += 1;
        }
        let rest: String = chars.clone().collect();
        let closing = "`".repeat(ticks);
        match rest.find(&closing) {
            Some(end) => {
                out.push_str(&" ".repeat(ticks * 2 + rest[..end].chars().count()));
                for _ in 0..rest[..end].chars().count() + ticks {
                    chars.next();
                }
            }
            None => out.push_str(&closing),
        }
    }
    out
}

/// GitHub's anchor for a heading's text: the text as rendered (code spans keep their contents,
/// links their text, emphasis markers go), lower case, every character that is not a letter,
/// a digit, `-`, `_` or a space dropped, each space a `-`.
fn anchor(heading: &str) -> String {
    let mut rendered = String::new();
    let mut rest = heading;
    // [text](target) → text
    while let Some(open) = rest.find('[') {
        rendered.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            after[close + 2..]
                .find(')')
                .map(|end| (close, close + 2 + end))
        }) {
            Some((close, end)) => {
                rendered.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                rendered.push('[');
                rest = after;
            }
        }
    }
    rendered.push_str(rest);
    rendered
        .replace("**", "")
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings; a repeated one gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = anchor(line[hashes..].trim_end_matches('#'));
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// Every link target on a page (`[text](target)`, `![alt](target)`), with its line.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code(&line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            // Targets have no spaces here; a title ("…") after a space is not used in these pages.
            let end = after
                .find(|c: char| c == ')' || c.is_whitespace())
                .unwrap_or(after.len());
            links.push((number, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    links
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(root().join(&page)).unwrap();
        let dir = page.parent().unwrap_or(Path::new(""));
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                page.clone()
            } else {
                normalize(&dir.join(file))
            };
            let path = root().join(&linked);
            if !path.exists() {
                broken.push(format!("{}:{line}: {target}: no such file", page.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let anchors = if path.extension().is_some_and(|ext| ext == "md") {
                    anchors(&std::fs::read_to_string(&path).unwrap())
                } else {
                    BTreeSet::new()
                };
                if !anchors.contains(fragment) {
                    broken.push(format!(
                        "{}:{line}: {target}: no heading #{fragment} in {}",
                        page.display(),
                        linked.display()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 50,
        "only {checked} links found: is the parser still reading them?"
    );
}

#[test]
fn every_page_is_linked_from_the_readme_and_back() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let from_readme: BTreeSet<PathBuf> = links(&readme)
        .into_iter()
        .map(|(_, target)| normalize(Path::new(target.split('#').next().unwrap())))
        .collect();
    let mut missing = Vec::new();
    for page in pages().into_iter().skip(1) {
        if !from_readme.contains(&page) {
            missing.push(format!("{} is not linked from README.md", page.display()));
        }
        let text = std::fs::read_to_string(root().join(&page)).unwrap();
        let dir = page.parent().unwrap_or(Path::new(""));
        if !links(&text)
            .iter()
            .any(|(_, target)| normalize(&dir.join(target)) == Path::new("README.md"))
        {
            missing.push(format!("{} has no link back to README.md", page.display()));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// `docs/../config/x.toml` → `config/x.toml` (the paths stay inside the repository).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn anchors_are_computed_as_on_github() {
    assert_eq!(
        anchor("Late replies: `late_replies = \"customer_service\"`"),
        "late-replies-late_replies--customer_service"
    );
    assert_eq!(
        anchor("Pipelined targets (`pipelining = true`)"),
        "pipelined-targets-pipelining--true"
    );
    assert_eq!(anchor("Only WeChat's addresses"), "only-wechats-addresses");
    assert_eq!(
        anchor("This build beside the build before (one run, 2026-11-26)"),
        "this-build-beside-the-build-before-one-run-2026-11-26"
    );
    assert_eq!(
        anchor("Open platform (third-party platforms)"),
        "open-platform-third-party-platforms"
    );
    let page = "# A\n## B\n```\n# not a heading\n```\n## B\n";
    assert_eq!(
        anchors(page),
        BTreeSet::from(["a".into(), "b".into(), "b-1".into()])
    );
    assert_eq!(
        links("[a](x.md) `[b](y.md)` ![c](z.png)\n```\n[d](w.md)\n```"),
        vec![(1, "x.md".into()), (1, "z.png".into())]
    );
}
