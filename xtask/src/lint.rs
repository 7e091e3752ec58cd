//! Size limits on the product's source, checked by `cargo xtask lint` (a
//! stage of `cargo xtask test`): no non-test module over
//! `MODULE_LINES`, no function over `FN_LINES`. Test code (a file named
//! `*tests.rs`, or what follows a `mod tests` line) is not counted: test
//! tables stay readable in one place.
//!
//! The code is rustfmt-formatted, so a function ends at the first `}` line
//! at its own indentation; no Rust parser is needed for that.

use std::path::{Path, PathBuf};

pub const MODULE_LINES: usize = 600;
pub const FN_LINES: usize = 120;

/// The crates whose source the limits apply to.
pub const CRATES: [&str; 5] = [
    "agent",
    "agent-parse",
    "agent-common",
    "agent-ebpf",
    "xtask",
];

#[derive(Debug, PartialEq, Eq)]
pub struct Oversize {
    pub file: PathBuf,
    /// `None` for the module itself.
    pub function: Option<String>,
    pub line: usize,
    pub lines: usize,
}

/// The name of a function defined on this line (`fn`, `pub fn`, `pub(crate)
/// async fn`…), if one is.
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    loop {
        let before = rest;
        for q in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "async ",
            "const ",
            "unsafe ",
            "extern \"C\" ",
        ] {
            if let Some(r) = rest.strip_prefix(q) {
                rest = r;
            }
        }
        if rest == before {
            break;
        }
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// What in one file's text is over the limits.
pub fn check_text(file: &Path, text: &str) -> Vec<Oversize> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .position(|l| {
            let t = l.trim_start();
            let t = ["pub(crate) ", "pub(super) ", "pub "]
                .iter()
                .find_map(|v| t.strip_prefix(v))
                .unwrap_or(t);
            t.starts_with("mod tests")
        })
        .unwrap_or(lines.len());
    let mut out = Vec::new();
    if end > MODULE_LINES {
        out.push(Oversize {
            file: file.to_path_buf(),
            function: None,
            line: 1,
            lines: end,
        });
    }
    for (i, l) in lines[..end].iter().enumerate() {
        let Some(name) = fn_name(l) else { continue };
        // A declaration without a body (`fn f();` in a trait) has no length.
        if l.trim_end().ends_with(';') {
            continue;
        }
        let ind = indent(l);
        let close = lines[i..end]
            .iter()
            .position(|c| indent(c) == ind && c.trim_start().starts_with('}'))
            .map(|k| i + k);
        let Some(close) = close else { continue };
        let n = close - i + 1;
        if n > FN_LINES {
            out.push(Oversize {
                file: file.to_path_buf(),
                function: Some(name.to_string()),
                line: i + 1,
                lines: n,
            });
        }
    }
    out
}

/// Every `.rs` file of `dir` that is not test code.
fn sources(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if name != "target" && name != "tests" {
                sources(&p, into);
            }
        } else if name.ends_with(".rs") && !name.ends_with("tests.rs") {
            into.push(p);
        }
    }
}

/// Everything over the limits in the workspace at `root`.
pub fn check(root: &Path) -> Vec<Oversize> {
    let mut files = Vec::new();
    for c in CRATES {
        sources(&root.join(c).join("src"), &mut files);
    }
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let rel = f.strip_prefix(root).unwrap_or(f);
            check_text(rel, &text)
        })
        .collect()
}

/// What is still over the limits, at most this size: a ratchet. An entry
/// may not grow, a new oversize item fails, and an entry that has come
/// within the limits must be removed (issue #41 splits the rest).
const DEBT: &[(&str, &str, usize)] = &[
    ("agent-ebpf/src/exec/env.rs", "read_new_env", 170),
    ("agent-ebpf/src/wire.rs", "try_wire", 145),
];

/// The items over the limits that the ratchet does not cover, and the
/// ratchet's entries that are stale (no longer over).
pub fn against_debt(over: &[Oversize]) -> (Vec<&Oversize>, Vec<String>) {
    let key = |o: &Oversize| {
        (
            o.file.to_string_lossy().into_owned(),
            o.function.clone().unwrap_or_default(),
        )
    };
    let new = over
        .iter()
        .filter(|o| {
            let (f, n) = key(o);
            !DEBT
                .iter()
                .any(|(df, dn, max)| *df == f && *dn == n && o.lines <= *max)
        })
        .collect();
    let stale = DEBT
        .iter()
        .filter(|(df, dn, _)| {
            !over
                .iter()
                .any(|o| key(o) == (df.to_string(), dn.to_string()))
        })
        .map(|(df, dn, _)| format!("{df} {dn}"))
        .collect();
    (new, stale)
}

/// `cargo xtask lint` and the test pipeline's stage: what is over, or Ok.
pub fn run(root: &Path) -> anyhow::Result<()> {
    let all = check(root);
    let (over, stale) = against_debt(&all);
    eprintln!(
        "xtask: {} items over the size limits, {} of them known (DEBT in xtask/src/lint.rs)",
        all.len(),
        all.len() - over.len()
    );
    for s in &stale {
        eprintln!("xtask: {s} is within the limits now: remove it from DEBT");
    }
    for o in &over {
        match &o.function {
            Some(f) => eprintln!(
                "{}:{}: fn {f} is {} lines (limit {FN_LINES})",
                o.file.display(),
                o.line,
                o.lines
            ),
            None => eprintln!(
                "{}: {} lines of non-test code (limit {MODULE_LINES})",
                o.file.display(),
                o.lines
            ),
        }
    }
    if !stale.is_empty() {
        anyhow::bail!("stale DEBT entries in xtask/src/lint.rs");
    }
    if !over.is_empty() {
        anyhow::bail!(
            "{} over the size limits: split them by what they do",
            over.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_is_measured_to_its_closing_brace() {
        let body = "    let x = 1;\n".repeat(FN_LINES);
        let text = format!("pub(crate) async fn big() {{\n{body}}}\n\nfn small() {{\n}}\n");
        let got = check_text(Path::new("x.rs"), &text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].function.as_deref(), Some("big"));
        assert_eq!(got[0].lines, FN_LINES + 2);
        let test_only =
            format!("fn a() {{}}\n#[cfg(test)]\nmod tests {{\n    fn big() {{\n{body}    }}\n}}\n");
        assert!(check_text(Path::new("x.rs"), &test_only).is_empty());
    }
}
