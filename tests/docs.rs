//! The documentation's links hold. Every relative link or image in the README, the book
//! (`docs/src`, built by mdBook), the guest guide, the code map, the benchmark results and the
//! markdown under `models/` and `deploy/` names a file or folder that exists, and an anchor into
//! a markdown file names one of its headings; the book's `SUMMARY.md` lists every page, and only
//! pages that exist. Markdown is read as GitHub and mdBook read it: nothing in a fenced code
//! block or an inline code span is a link or a heading.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

/// The markdown files checked, relative to the repository root: these files...
const FILES: [&str; 4] = ["README.md", "guest/README.md", "host/README.md", "benches/RESULTS.md"];
/// ...and every `.md` file under these folders...
const FOLDERS: [&str; 3] = ["docs/src", "models", "deploy"];
/// ...except in folders of these names (installed packages, build outputs).
const SKIPPED: [&str; 2] = ["node_modules", "target"];

/// The book's pages, and its table of contents.
const BOOK: &str = "docs/src";
const SUMMARY: &str = "docs/src/SUMMARY.md";

/// Link targets that are not files of the repository.
const EXTERNAL: [&str; 3] = ["http://", "https://", "mailto:"];

/// What a link's path names.
enum Entry {
    Missing,
    /// A folder, or a file other than markdown: only its existence is checked.
    Other,
    /// A markdown file's text, in whose headings a link's anchor must be.
    Markdown(String),
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The text of `path`, relative to the repository root.
fn read(path: &Path) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// What `path`, relative to the repository root, names on disk.
fn on_disk(path: &Path) -> Entry {
    let full = root().join(path);
    if full.is_dir() {
        Entry::Other
    } else if !full.is_file() {
        Entry::Missing
    } else if path.extension().is_some_and(|extension| extension == "md") {
        Entry::Markdown(read(path))
    } else {
        Entry::Other
    }
}

/// Every `.md` file under `folder` (relative to the repository root), in name order.
fn markdown_under(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root().join(folder)) else { return Vec::new() };
    let mut names: Vec<_> = entries.map(|entry| entry.unwrap().file_name()).collect();
    names.sort();
    let mut found = Vec::new();
    for name in names {
        let path = folder.join(&name);
        if root().join(&path).is_dir() {
            if !name.to_str().is_some_and(|name| SKIPPED.contains(&name)) {
                found.extend(markdown_under(&path));
            }
        } else if path.extension().is_some_and(|extension| extension == "md") {
            found.push(path);
        }
    }
    found
}

/// The documentation: each file's path, relative to the repository root, and its text.
fn documentation() -> Vec<(PathBuf, String)> {
    let mut paths: Vec<PathBuf> = FILES.iter().map(PathBuf::from).collect();
    paths.extend(FOLDERS.iter().flat_map(|folder| markdown_under(Path::new(folder))));
    paths
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

/// The character and length of the fence (three or more backticks or tildes) that `line` opens
/// or closes, if it is one.
fn fence(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start();
    let mark = trimmed.chars().next().filter(|&c| matches!(c, '`' | '~'))?;
    let run = trimmed.chars().take_while(|&c| c == mark).count();
    (run >= 3).then_some((mark, run))
}

/// Each line of `text`, or `None` for a fence and the lines of code it holds.
fn prose_lines(text: &str) -> Vec<Option<&str>> {
    let mut open: Option<(char, usize)> = None;
    text.lines()
        .map(|line| match (open, fence(line)) {
            (None, None) => Some(line),
            (None, opening) => {
                open = opening;
                None
            }
            (Some((mark, run)), Some((closing, length)))
                if closing == mark && length >= run && line.trim().len() == length =>
            {
                open = None;
                None
            }
            _ => None,
        })
        .collect()
}

/// The prose of `text` in blocks, split at blank lines and at fenced code: an inline code span
/// never crosses the end of a block.
fn blocks(text: &str) -> Vec<String> {
    prose_lines(text)
        .split(|line| line.is_none_or(|line| line.trim().is_empty()))
        .filter(|block| !block.is_empty())
        .map(|block| block.iter().flatten().copied().collect::<Vec<&str>>().join("\n"))
        .collect()
}

/// The length of the run of backticks that `text` starts with.
fn backticks(text: &str) -> usize {
    text.len() - text.trim_start_matches('`').len()
}

/// Where in `text` the first run of exactly `run` backticks starts.
fn closing_run(text: &str, run: usize) -> Option<usize> {
    let mut at = 0;
    while let Some(found) = text[at..].find('`') {
        let start = at + found;
        let length = backticks(&text[start..]);
        if length == run {
            return Some(start);
        }
        at = start + length;
    }
    None
}

/// `block` with each inline code span replaced by a space: a run of backticks opens one and the
/// next run of the same length closes it; a run that nothing closes is text.
fn without_code_spans(block: &str) -> String {
    let mut prose = String::new();
    let mut rest = block;
    while let Some(start) = rest.find('`') {
        prose.push_str(&rest[..start]);
        let run = backticks(&rest[start..]);
        let after = &rest[start + run..];
        match closing_run(after, run) {
            Some(end) => {
                prose.push(' ');
                rest = &after[end + run..];
            }
            None => {
                prose.push_str(&rest[start..start + run]);
                rest = after;
            }
        }
    }
    prose.push_str(rest);
    prose
}

/// Where the parenthesis that closes a link's `(` is in `text`, nested pairs skipped; `None` if
/// the line ends first.
fn closing_parenthesis(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (at, c) in text.char_indices() {
        match c {
            '\n' => return None,
            '(' => depth += 1,
            ')' if depth == 0 => return Some(at),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// A link's destination, from what stands in its parentheses: `<target>` or `target "title"`.
fn destination(inside: &str) -> &str {
    let inside = inside.trim();
    match inside.strip_prefix('<').and_then(|rest| rest.split_once('>')) {
        Some((target, _)) => target,
        None => inside.split_whitespace().next().unwrap_or(""),
    }
}

/// The targets of the inline links and images in `text` (`[text](target)`, `![alt](target)`),
/// outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for block in blocks(text) {
        let prose = without_code_spans(&block);
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = closing_parenthesis(rest) else { continue };
            targets.push(destination(&rest[..end]).to_string());
            rest = &rest[end + 1..];
        }
    }
    targets
}

/// The text of an ATX heading (`#` to `######`, at most three spaces in), without a closing
/// sequence of `#`s.
fn heading(line: &str) -> Option<&str> {
    let trimmed = line.trim_start_matches(' ');
    let rest = trimmed.trim_start_matches('#');
    let level = trimmed.len() - rest.len();
    if line.len() - trimmed.len() > 3 || !(1..=6).contains(&level) {
        return None;
    }
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let title = rest.trim();
    let unclosed = title.trim_end_matches('#');
    Some(if unclosed.is_empty() || unclosed.ends_with([' ', '\t']) { unclosed.trim_end() } else { title })
}

/// A heading's anchor, as GitHub and mdBook make it: lowercase, with only letters, digits,
/// spaces, `-` and `_` kept, and spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of the headings in `text`, outside fenced code: a repeated heading gets `-1`,
/// `-2`, ... after the first.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for title in prose_lines(text).into_iter().flatten().filter_map(heading) {
        let base = slug(title);
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(if *count == 0 { base } else { format!("{base}-{count}") });
        *count += 1;
    }
    anchors
}

/// `path` with `.` and `..` resolved, or `None` if it leaves the repository.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return None;
                }
            }
            Component::Normal(part) => normal.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(normal)
}

/// Every broken link in `files` (each a path relative to the repository root, and its text), as
/// `file: target`. `lookup` says what a path relative to the root names. A target's path is
/// taken from its file's folder; an empty one is the file itself.
fn broken_links(files: &[(PathBuf, String)], lookup: impl Fn(&Path) -> Entry) -> Vec<String> {
    let mut broken = Vec::new();
    for (file, text) in files {
        for target in link_targets(text) {
            if EXTERNAL.iter().any(|scheme| target.starts_with(scheme)) {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let resolved = match path {
                "" => Some(file.clone()),
                path => normalize(&file.parent().unwrap_or(Path::new("")).join(path)),
            };
            let holds = resolved.is_some_and(|resolved| match lookup(resolved.as_path()) {
                Entry::Missing => false,
                Entry::Other => true,
                Entry::Markdown(linked) => anchor.is_empty() || anchors(&linked).contains(anchor),
            });
            if !holds {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    broken
}

#[test]
fn every_link_in_the_documentation_holds() {
    let broken = broken_links(&documentation(), on_disk);
    assert!(broken.is_empty(), "{} broken links (file: target):\n{}", broken.len(), broken.join("\n"));
}

#[test]
fn the_summary_lists_every_page_of_the_book_and_only_pages() {
    let entries: Vec<(String, Option<PathBuf>)> = link_targets(&read(Path::new(SUMMARY)))
        .into_iter()
        .map(|target| {
            let path = target.split_once('#').map_or(target.as_str(), |(path, _)| path);
            let page = normalize(&Path::new(BOOK).join(path));
            (target, page)
        })
        .collect();
    let mut problems: Vec<String> = entries
        .iter()
        .filter(|(_, page)| !page.as_ref().is_some_and(|page| root().join(page).is_file()))
        .map(|(target, _)| format!("{SUMMARY}: {target}"))
        .collect();
    let listed: BTreeSet<&PathBuf> = entries.iter().filter_map(|(_, page)| page.as_ref()).collect();
    problems.extend(
        markdown_under(Path::new(BOOK))
            .into_iter()
            .filter(|page| page != Path::new(SUMMARY) && !listed.contains(page))
            .map(|page| format!("{SUMMARY}: {} is not listed", page.display())),
    );
    assert!(problems.is_empty(), "the book's table of contents (file: target):\n{}", problems.join("\n"));
}

#[test]
fn the_checker_reports_broken_links_and_only_those() {
    let files = [
        (
            "docs/a.md",
            "# A\n\n## Part\n\n[fine](b.md#b-title), [here](#part), [a file](missing.md), \
             [an anchor](b.md#nowhere), ![image](missing.png \"title\"), [web](https://example.com/x)\n\n\
             ```md\n[in a code block](missing.md)\n```\n\n`[in a code span](missing.md)`\n",
        ),
        ("docs/b.md", "# B title\n\n## Part\n\n## Part\n\n[the second](#part-1), [up](../README.md)\n"),
        ("README.md", "```sh\n# not a heading\n```\n\n[into code](#not-a-heading), [out](../outside.md)\n"),
    ]
    .map(|(path, text)| (PathBuf::from(path), text.to_string()));
    let lookup = |path: &Path| match files.iter().find(|(file, _)| file == path) {
        Some((_, text)) => Entry::Markdown(text.clone()),
        None => Entry::Missing,
    };
    assert_eq!(
        broken_links(&files, lookup),
        [
            "docs/a.md: missing.md",
            "docs/a.md: b.md#nowhere",
            "docs/a.md: missing.png",
            "README.md: #not-a-heading",
            "README.md: ../outside.md",
        ]
    );
}
