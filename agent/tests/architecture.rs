//! The shape of agent/src, checked from its own `use` lines and paths (no build, no tools):
//!
//! - no two modules import each other, directly or through others (a file-level cycle), and no
//!   two components do either (`transforms::correlate` ↔ `transforms::detect`, say);
//! - the data path runs one way: `shared` imports no stage; `sources`, `transforms` and `sinks`
//!   import only themselves and `shared`; `http` reads `sinks` and `shared`; only `config` and
//!   `topology` (and `lib.rs`, which declares the modules) see the stages.
//!
//! See agent/README.md, "Architecture", for the picture these rules keep true.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Which top-level modules each top-level module may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("shared", &[]),
    ("sources", &["shared"]),
    ("transforms", &["shared"]),
    ("sinks", &["shared"]),
    ("http", &["sinks", "shared"]),
    ("config", &["sources", "transforms", "sinks", "shared"]),
    (
        "topology",
        &["config", "http", "sources", "transforms", "sinks", "shared"],
    ),
];

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn modules_form_no_cycle_and_stages_import_only_what_the_data_path_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = check(&src);
    assert!(
        problems.is_empty(),
        "agent/src breaks its architecture:\n  {}",
        problems.join("\n  ")
    );
}

/// The checker must see what it is meant to catch: a cycle, a stage importing another stage,
/// and imports written in each form the code uses.
#[test]
fn the_checker_finds_cycles_and_stray_imports() {
    let dir = std::env::temp_dir().join(format!("ks-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files: &[(&str, &str)] = &[
        (
            "lib.rs",
            "pub mod shared;\npub mod sinks;\npub mod sources;\n",
        ),
        ("shared/mod.rs", "pub mod a;\npub mod b;\n"),
        // a -> b through a nested use tree, b -> a through an inline path: a cycle.
        (
            "shared/a.rs",
            "use crate::shared::{b::{self, B}};\npub struct A;\n",
        ),
        (
            "shared/b.rs",
            "// crate::sinks::x in a comment is no import\npub struct B(pub super::a::A);\n",
        ),
        ("sinks/mod.rs", "pub mod x;\n"),
        (
            "sinks/x.rs",
            "pub fn f() -> crate::shared::a::A { todo!() }\n",
        ),
        ("sources/mod.rs", "pub mod y;\n"),
        (
            "sources/y.rs",
            "pub fn g() { let _ = \"crate::http::z\"; crate::sinks::x::f(); }\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
    ];
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let problems = check(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("cycle") && p.contains("shared::a") && p.contains("shared::b")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("sources::y") && p.contains("sinks::x")),
        "{problems:#?}"
    );
    // The file cycle is a component cycle too (each file is a component here); nothing else:
    // comments and strings are not imports, and a test module's `super` is its own file.
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

fn check(src: &Path) -> Vec<String> {
    let modules = modules(src);
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut files: Graph = BTreeMap::new();
    for (module, path) in &modules {
        let text = std::fs::read_to_string(path).unwrap();
        let targets = files.entry(module.clone()).or_default();
        for target in imports(module, &strip(&text)) {
            if let Some(m) = resolve(&known, &target)
                && &m != module
            {
                targets.insert(m);
            }
        }
    }
    let mut problems = Vec::new();
    for (from, tos) in &files {
        let stage = top(from);
        for to in tos {
            let target = top(to);
            // lib.rs only declares the modules.
            if target == stage || stage == "crate" || target == "crate" {
                continue;
            }
            let allowed = ALLOWED
                .iter()
                .find(|(s, _)| *s == stage)
                .is_some_and(|(_, ok)| ok.contains(&target.as_str()));
            if !allowed {
                problems.push(format!(
                    "{from} imports {to}: {stage} may not import {target}"
                ));
            }
        }
    }
    for cycle in cycles(&files) {
        problems.push(format!(
            "import cycle between files: {}",
            cycle.join(" -> ")
        ));
    }
    // Components: the first two levels (`transforms::correlate`), whatever file inside.
    let mut parts: Graph = BTreeMap::new();
    for (from, tos) in &files {
        for to in tos {
            let (a, b) = (component(from), component(to));
            if a != b {
                parts.entry(a).or_default().insert(b);
            }
        }
    }
    for cycle in cycles(&parts) {
        problems.push(format!(
            "import cycle between components: {}",
            cycle.join(" -> ")
        ));
    }
    problems
}

/// Module path (`shared::event`) → file, for every .rs file under `src` (lib.rs is `crate`).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match parts.last().map(String::as_str) {
                // The binary is its own crate; it reaches the library as `agent::`.
                Some("main") if parts.len() == 1 => continue,
                Some("lib") if parts.len() == 1 => parts.clear(),
                Some("mod") => {
                    parts.pop();
                }
                _ => {}
            }
            let name = if parts.is_empty() {
                "crate".to_owned()
            } else {
                parts.join("::")
            };
            out.insert(name, path);
        }
    }
    out
}

/// The source without comments, string and character literals (so neither counts as a path).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if b.get(i + 1).is_some_and(|&c| c == b'"' || c == b'#')
                && (i == 0 || !is_ident(b[i - 1])) =>
            {
                // Raw string: r"…", r#"…"#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n', '"'), not a lifetime ('a).
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("' '");
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every path the module names that starts at `crate`, `super` or `self`, made absolute; `use`
/// trees are expanded. Inline modules (`mod tests { … }`) shift what `super` and `self` mean.
fn imports(module: &str, code: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let base: Vec<String> = if module == "crate" {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    };
    // The inline modules we are in, each with the brace depth at which it closes.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((tokens[i + 1].clone(), depth));
            }
            "use" => {
                let end = tokens[i..]
                    .iter()
                    .position(|t| t == ";")
                    .map_or(tokens.len(), |p| i + p);
                for path in expand(&tokens[i + 1..end]) {
                    if let Some(abs) = absolute(&here(&base, &inline), &path) {
                        out.push(abs);
                    }
                }
                i = end;
            }
            "crate" | "super" | "self" if tokens.get(i + 1).map(String::as_str) == Some("::") => {
                let mut path = vec![tokens[i].clone()];
                let mut j = i + 1;
                while tokens.get(j).map(String::as_str) == Some("::")
                    && tokens.get(j + 1).is_some_and(|t| t.bytes().all(is_ident))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                if let Some(abs) = absolute(&here(&base, &inline), &path) {
                    out.push(abs);
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn here(base: &[String], inline: &[(String, usize)]) -> Vec<String> {
    let mut m = base.to_vec();
    m.extend(inline.iter().map(|(n, _)| n.clone()));
    m
}

fn tokenize(code: &str) -> Vec<String> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_ident(c) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push(code[s..i].to_owned());
        } else if b[i..].starts_with(b"::") {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_ascii_whitespace() {
                out.push((c as char).to_string());
            }
            i += 1;
        }
    }
    out
}

/// `a::{b, c::{d, self}}` → `a::b`, `a::c::d`, `a::c`.
fn expand(tokens: &[String]) -> Vec<Vec<String>> {
    fn tree(t: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        while *i < t.len() {
            match t[*i].as_str() {
                "::" => *i += 1,
                "{" => {
                    *i += 1;
                    loop {
                        tree(t, i, &path, out);
                        match t.get(*i).map(String::as_str) {
                            Some(",") => *i += 1,
                            Some("}") => {
                                *i += 1;
                                break;
                            }
                            _ => break,
                        }
                        if t.get(*i).map(String::as_str) == Some("}") {
                            *i += 1;
                            break;
                        }
                    }
                    return;
                }
                "," | "}" => break,
                "as" => *i += 2,
                "*" => *i += 1,
                "self" if !path.is_empty() => *i += 1,
                "pub" | "(" | ")" => *i += 1,
                seg => {
                    path.push(seg.to_owned());
                    *i += 1;
                }
            }
        }
        out.push(path);
    }
    let mut out = Vec::new();
    let mut i = 0;
    tree(tokens, &mut i, &[], &mut out);
    out
}

/// `super::x` in module `a::b` → `a::x`; `crate::x` → `x`; other roots are other crates.
fn absolute(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut abs = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => here.to_vec(),
        _ => return None,
    };
    let mut rest = path;
    if rest[0] == "crate" || rest[0] == "self" {
        rest = &rest[1..];
    }
    while rest.first().map(String::as_str) == Some("super") {
        abs.pop();
        rest = &rest[1..];
    }
    abs.extend(rest.iter().cloned());
    Some(abs)
}

/// The longest prefix of `path` that is a module file.
fn resolve(known: &BTreeSet<String>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains(m))
        .or_else(|| known.contains("crate").then(|| "crate".to_owned()))
}

fn top(module: &str) -> String {
    module.split("::").next().unwrap_or(module).to_owned()
}

fn component(module: &str) -> String {
    module.split("::").take(2).collect::<Vec<_>>().join("::")
}

/// Each strongly connected set of more than one node, as a path through it.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm.
    struct St<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.reverse();
                comp.push(comp[0].clone());
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}
