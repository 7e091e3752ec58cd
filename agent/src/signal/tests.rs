//! The finding catalogue against the code and the docs generated from it.

use std::path::{Path, PathBuf};

use super::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `AGENT_BLESS=1` (what `cargo xtask docs` sets) writes the generated file;
/// otherwise it must already say what the code generates.
pub(crate) fn generated(rel: &str, want: &str) {
    let p = root().join(rel);
    if std::env::var_os("AGENT_BLESS").is_some() {
        std::fs::write(&p, want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&p).unwrap_or_default();
    assert!(
        have == want,
        "{rel} is not what the code generates (the finding catalogue, the clap definition): run `cargo xtask docs`"
    );
}

#[test]
fn docs_findings_md_is_generated_from_the_catalogue() {
    generated("docs/findings.md", &findings_md());
}

#[test]
fn readme_table_of_codes_is_generated_from_the_catalogue() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let want = with_readme_codes(&readme).expect("README has the codes markers");
    generated("README.md", &want);
}

#[test]
fn every_code_is_unique_documented_and_has_a_meaning() {
    let mut seen = std::collections::HashSet::new();
    for sig in CATALOG {
        for c in sig.codes {
            assert!(seen.insert(c.code), "{} listed twice", c.code);
            assert!(
                !c.means.is_empty() && !c.severities.is_empty(),
                "{}",
                c.code
            );
            assert!(
                sig.doc.contains(&format!("`{}`", c.code)),
                "{} has no text in its signal's findings.md",
                c.code
            );
        }
    }
}

/// Code-shaped string literals outside a signal's `codes.rs` (tests and
/// comments aside): each must be a catalogue code spelt through its const.
#[test]
fn codes_are_spelt_only_in_the_catalogue() {
    const PREFIXES: [&str; 9] = [
        "path.", "go.", "conda.", "exec.", "env.", "net.", "tls.", "http.", "fs.",
    ];
    // File names and attribute keys of that shape that are not codes.
    const NOT_CODES: [&str; 2] = ["go.mod", "go.work"];
    let mut stray = Vec::new();
    let mut stack = vec![root().join("agent/src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".rs") || name == "codes.rs" || name.contains("tests") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("mod tests") {
                    break;
                }
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for lit in line.split('"').skip(1).step_by(2) {
                    let shaped = PREFIXES.iter().any(|p| {
                        lit.strip_prefix(p).is_some_and(|rest| {
                            !rest.is_empty()
                                && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        })
                    });
                    if shaped && !NOT_CODES.contains(&lit) {
                        stray.push(format!("{}:{}: \"{lit}\"", p.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(
        stray.is_empty(),
        "finding codes spelt outside codes.rs (use the const):\n{}",
        stray.join("\n")
    );
}
