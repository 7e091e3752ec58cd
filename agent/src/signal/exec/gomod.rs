//! What a Go module asks of the toolchain: the `go` and `toolchain` lines of
//! the go.work and go.mod that `go` would use from a working directory, and
//! Go version order.
//!
//! Owns: finding the files as cmd/go does (upward from the working
//! directory; `GOWORK`, `GO111MODULE=off`), parsing those two lines, version
//! comparison. Must not: read anything but those files (bounded).

use std::cmp::Ordering;

use serde::Serialize;

use crate::process::fsview::FsView;

/// A Go release: `1.22`, `1.22.3`, `1.23rc1`. Pre-releases order before
/// the release (`1.23rc1 < 1.23.0`); a bare `1.22` is the language version,
/// which `1.22rc1` and later satisfy, as cmd/go orders them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    /// `None` for a language version (`1.22`).
    pub patch: Option<u32>,
    /// `rc1` / `beta2`, if a pre-release.
    pub pre: Option<String>,
}

impl GoVersion {
    /// `go1.22.3`, `1.22`, `go1.23rc1`, `go1.27.3 X:boringcrypto` (first word).
    pub fn parse(s: &str) -> Option<GoVersion> {
        let s = s.split_whitespace().next()?;
        let s = s.strip_prefix("go").unwrap_or(s);
        let (num, pre) = match s.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => (&s[..i], Some(s[i..].to_string())),
            None => (s, None),
        };
        let mut it = num.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
        let patch = match it.next() {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        if it.next().is_some() {
            return None;
        }
        if let Some(p) = &pre
            && !(p.starts_with("rc") || p.starts_with("beta"))
        {
            return None;
        }
        Some(GoVersion {
            major,
            minor,
            patch,
            pre,
        })
    }

    /// Sort key: language version < beta < rc < release, as cmd/go's gover.
    fn key(&self) -> (u32, u32, u8, u32, u32) {
        let pre_n = |p: &str, tag: &str| p.strip_prefix(tag).and_then(|n| n.parse().ok());
        match (&self.pre, self.patch) {
            (Some(p), _) if p.starts_with("beta") => {
                (self.major, self.minor, 1, 0, pre_n(p, "beta").unwrap_or(0))
            }
            (Some(p), _) => (self.major, self.minor, 2, 0, pre_n(p, "rc").unwrap_or(0)),
            (None, None) => (self.major, self.minor, 0, 0, 0),
            (None, Some(patch)) => (self.major, self.minor, 3, patch, 0),
        }
    }
}

impl Ord for GoVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for GoVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        if let Some(p) = &self.pre {
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// One line of a go.mod / go.work that constrains the toolchain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    /// `go` (the minimum: older toolchains refuse or switch) or `toolchain`
    /// (the preferred toolchain: older ones switch to it).
    pub directive: &'static str,
    pub version: GoVersion,
    /// The line as written (`go 1.22`, `toolchain go1.22.1`).
    pub text: String,
    /// The file it is in.
    pub file: String,
}

impl Line {
    /// `go 1.22 in /src/x/go.mod`.
    pub fn describe(&self) -> String {
        format!("{} in {}", self.text, self.file)
    }
}

/// The `go` and `toolchain` lines of one file's text.
pub fn parse(text: &str, file: &str) -> Vec<Line> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let l = raw.split("//").next().unwrap_or("").trim();
        let mut w = l.split_whitespace();
        let (Some(d), Some(v), None) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let directive = match d {
            "go" => "go",
            // `toolchain default` names no version.
            "toolchain" if v.starts_with("go1") => "toolchain",
            _ => continue,
        };
        if let Some(version) = GoVersion::parse(v) {
            out.push(Line {
                directive,
                version,
                text: format!("{d} {v}"),
                file: file.to_string(),
            });
        }
    }
    out
}

/// Largest file read (go.mod of big modules is tens of KiB).
const MAX_FILE: usize = 256 * 1024;

/// The lines that constrain a `go` command started in `cwd` with the
/// environment `env` (go.work's, then go.mod's), as cmd/go finds the files.
pub fn requirements(fs: &FsView, cwd: &str, env: impl Fn(&str) -> Option<String>) -> Vec<Line> {
    if env("GO111MODULE").as_deref() == Some("off") {
        return Vec::new();
    }
    let mut files = Vec::new();
    // go.work and go.mod found in one question to the file workers.
    let mut found = fs.find_up_each(cwd, &["go.work", "go.mod"]).into_iter();
    let (work, module) = (found.next().flatten(), found.next().flatten());
    match env("GOWORK").as_deref() {
        Some("off") => {}
        Some(p) if p.starts_with('/') => files.push(p.to_string()),
        _ => files.extend(work),
    }
    files.extend(module);
    let mut out = Vec::new();
    for f in files {
        if let Some(text) = fs.read_to_string(&f, MAX_FILE) {
            out.extend(parse(&text, &f));
        }
    }
    out
}

/// The strictest line of each directive: (`go` minimum, `toolchain` preference).
pub fn strictest(lines: &[Line]) -> (Option<&Line>, Option<&Line>) {
    let max = |d: &str| {
        lines
            .iter()
            .filter(|l| l.directive == d)
            .max_by(|a, b| a.version.cmp(&b.version))
    };
    (max("go"), max("toolchain"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::fsview::tests::tempdir;

    fn v(s: &str) -> GoVersion {
        GoVersion::parse(s).unwrap_or_else(|| panic!("parse {s}"))
    }

    #[test]
    fn versions_order_as_cmd_go_orders_them() {
        assert!(v("go1.19.8") < v("1.22"));
        assert!(v("1.22") < v("go1.22rc1"));
        assert!(v("1.22beta1") < v("1.22rc1"));
        assert!(v("1.22rc1") < v("1.22rc2"));
        assert!(v("1.22rc2") < v("1.22.0"));
        assert!(v("1.22.0") < v("1.22.10"));
        assert!(v("1.9.1") < v("1.10"));
        assert_eq!(v("go1.27.3 X:boringcrypto"), v("1.27.3"));
        assert_eq!(v("go1.22.3").to_string(), "1.22.3");
        for bad in ["devel +abc", "go", "1.x", "1.2.3.4", "1.22foo", ""] {
            assert_eq!(GoVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_are_parsed_with_comments_and_blocks_ignored() {
        let t = "module x // go 1.99\n\ngo 1.22 // min\ntoolchain go1.22.1\ntoolchain default\nrequire (\n\tgo.example v1.0.0\n)\ngo\n";
        let l = parse(t, "/m/go.mod");
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[0].text, "go 1.22");
        assert_eq!(l[0].describe(), "go 1.22 in /m/go.mod");
        assert_eq!(l[1].directive, "toolchain");
        assert_eq!(l[1].version, v("1.22.1"));
    }

    #[test]
    fn files_are_found_upward_and_gowork_and_modules_off_respected() {
        let d = tempdir("gomod");
        std::fs::create_dir_all(d.join("ws/mod/sub")).unwrap();
        std::fs::write(d.join("ws/go.work"), "go 1.23\n").unwrap();
        std::fs::write(
            d.join("ws/mod/go.mod"),
            "module m\ngo 1.21\ntoolchain go1.22.4\n",
        )
        .unwrap();
        let fs = FsView::host();
        let cwd = d.join("ws/mod/sub").display().to_string();
        let none = |_: &str| None;
        let l = requirements(&fs, &cwd, none);
        assert_eq!(l.len(), 3, "{l:?}");
        let (go, tc) = strictest(&l);
        assert_eq!(go.map(|g| g.version.clone()), Some(v("1.23")));
        assert!(go.is_some_and(|g| g.file.ends_with("ws/go.work")));
        assert_eq!(tc.map(|g| g.version.clone()), Some(v("1.22.4")));
        let off = |k: &str| (k == "GOWORK").then(|| "off".to_string());
        assert_eq!(requirements(&fs, &cwd, off).len(), 2);
        let gopath = |k: &str| (k == "GO111MODULE").then(|| "off".to_string());
        assert!(requirements(&fs, &cwd, gopath).is_empty());
        // Nothing above: nothing required.
        assert!(requirements(&fs, &d.display().to_string(), none).is_empty());
        // A FIFO named go.mod is not read (and does not block).
        let f = d.join("fifo");
        std::fs::create_dir_all(&f).unwrap();
        crate::test_util::mkfifo(f.join("go.mod"));
        assert!(requirements(&fs, &f.display().to_string(), none).is_empty());
        std::fs::remove_dir_all(d).ok();
    }
}
