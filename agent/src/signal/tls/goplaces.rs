//! Where the Go toolchains a user runs live, found ahead of their first run
//! so the crypto/tls probe is in place before their first handshake: the
//! `go` in every PATH entry, `$GOROOT/bin`, the toolchains `go` switches to
//! in the module cache (`<GOMODCACHE>/golang.org/toolchain@*/bin`), the ones
//! `golang.org/dl` installs (`~/sdk/go*/bin`), and conda envs' `bin/`.
//!
//! A uprobe attach waits for the kernel (5–70 ms measured on 6.18) while a
//! Go command reaches its first handshake in 12–19 ms: a toolchain probed
//! only when its exec is seen loses that race on a warm page cache. So the
//! places are learnt from every environment the agent sees (the processes
//! running at start-up, each tool's exec, the variables a traced command's
//! shell string assigns), and the roots where new toolchains appear are
//! looked at again on the agent's tick.
//!
//! Owns: turning variables into directories and the bounded memory of what
//! was looked at. Must not: attach (`probes` does) or read file contents.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Directories looked at at most (then new ones are counted, not looked at).
const MAX_DIRS: usize = 4096;
/// Roots (module caches' `golang.org/`, homes' `sdk/`) watched at most.
const MAX_ROOTS: usize = 256;
/// Entries read from one root at most.
const MAX_PER_ROOT: usize = 256;
/// PATH entries taken from one value at most.
const MAX_PATH_ENTRIES: usize = 64;

/// The variables that say where a process's Go toolchains are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoVars {
    pub path: Vec<PathBuf>,
    pub goroot: Vec<PathBuf>,
    pub modcache: Vec<PathBuf>,
    pub home: Vec<PathBuf>,
}

/// Entries of one kind kept at most (every process's PATH at start-up).
const MAX_ENTRIES: usize = 512;

fn push(v: &mut Vec<PathBuf>, p: PathBuf) {
    if v.len() < MAX_ENTRIES && !v.contains(&p) {
        v.push(p);
    }
}

impl GoVars {
    /// One variable (others are ignored). Only absolute paths count; a
    /// value holding `$` (an expansion a shell string has not done) keeps
    /// its absolute entries.
    pub fn add(&mut self, name: &str, value: &str) {
        let abs = |s: &str| (s.starts_with('/') && !s.contains('$')).then(|| PathBuf::from(s));
        match name {
            "PATH" => {
                for d in value.split(':').filter_map(abs).take(MAX_PATH_ENTRIES) {
                    push(&mut self.path, d);
                }
            }
            "GOROOT" => {
                if let Some(r) = abs(value) {
                    push(&mut self.goroot, r);
                }
            }
            "GOMODCACHE" => {
                if let Some(m) = abs(value) {
                    push(&mut self.modcache, m);
                }
            }
            // Its first entry's pkg/mod is the default module cache.
            "GOPATH" => {
                if let Some(g) = value.split(':').next().and_then(abs) {
                    push(&mut self.modcache, g.join("pkg/mod"));
                }
            }
            "HOME" => {
                if let Some(h) = abs(value) {
                    // GOPATH defaults to ~/go.
                    push(&mut self.modcache, h.join("go/pkg/mod"));
                    push(&mut self.home, h);
                }
            }
            _ => {}
        }
    }

    pub fn from_env(env: &[(String, String)]) -> GoVars {
        let mut v = GoVars::default();
        for (k, val) in env {
            v.add(k, val);
        }
        v
    }

    /// `NAME=value` words of a command line, shell strings included
    /// (`sh -c 'env -i PATH=/opt/go/bin:/usr/bin go build'`): a shell
    /// string's own assignments reach the programs it runs, so their
    /// toolchains are probed before it starts.
    pub fn add_assignments(&mut self, argv: &[String]) {
        for w in argv
            .iter()
            .flat_map(|a| a.split(|c: char| c.is_whitespace() || ";|&()`".contains(c)))
            .take(4096)
        {
            let w = w.trim_matches(['"', '\'']);
            if let Some((name, value)) = w.split_once('=') {
                self.add(name, value.trim_matches(['"', '\'']));
            }
        }
    }

    /// Directories that may hold a `go` now: PATH entries, `$GOROOT/bin`.
    pub fn bin_dirs(&self) -> Vec<PathBuf> {
        let mut v = self.path.clone();
        for r in &self.goroot {
            push(&mut v, r.join("bin"));
        }
        v
    }

    /// Where new toolchains appear: module caches' `golang.org/` (the
    /// `toolchain@…` modules `go` switches to) and homes' `sdk/`.
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.modcache.iter().map(|m| m.join("golang.org")).collect();
        for h in &self.home {
            push(&mut v, h.join("sdk"));
        }
        v
    }
}

/// The `bin/` directories of the toolchains under `root`: `toolchain@*`
/// entries of a module cache's `golang.org/`, `go*` entries of an `sdk/`
/// (bounded; a missing root has none).
pub fn toolchains_under(root: &Path) -> Vec<PathBuf> {
    let prefix = if root.ends_with("golang.org") {
        "toolchain@"
    } else {
        "go"
    };
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .take(MAX_PER_ROOT)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join("bin"))
        .collect();
    v.sort();
    v
}

/// What pre-attaching did, cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PreAttachStats {
    /// Go programs probed ahead of their first run (start-up, learnt
    /// places, new toolchains under a watched root).
    pub pre_attached: u64,
    /// Directories looked at for a `go`.
    pub dirs_looked_at: u64,
    /// Roots where new toolchains appear, watched.
    pub roots_watched: u64,
    /// Directories or roots not looked at: past the bounds.
    pub over_budget: u64,
}

/// The places looked at so far and the roots watched.
#[derive(Debug, Default)]
pub struct GoPlaces {
    dirs: HashSet<PathBuf>,
    roots: Vec<PathBuf>,
    pub stats: PreAttachStats,
}

impl GoPlaces {
    /// The directories of `vars` (and the toolchains under its roots) not
    /// looked at before, to look for a `go` in; its roots are watched from
    /// now on.
    pub fn learn(&mut self, vars: &GoVars) -> Vec<PathBuf> {
        let mut new = Vec::new();
        for r in vars.roots() {
            if self.roots.contains(&r) {
                continue;
            }
            if self.roots.len() >= MAX_ROOTS {
                self.stats.over_budget += 1;
                continue;
            }
            self.roots.push(r.clone());
            self.stats.roots_watched += 1;
            new.extend(self.fresh(toolchains_under(&r)));
        }
        new.extend(self.fresh(vars.bin_dirs()));
        new
    }

    /// Toolchains that appeared under the watched roots since last looked.
    pub fn rescan(&mut self) -> Vec<PathBuf> {
        let found: Vec<PathBuf> = self
            .roots
            .iter()
            .flat_map(|r| toolchains_under(r))
            .collect();
        self.fresh(found)
    }

    /// Directories not looked at yet (marked now), within the bound.
    fn fresh(&mut self, dirs: Vec<PathBuf>) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in dirs {
            if self.dirs.contains(&d) {
                continue;
            }
            if self.dirs.len() >= MAX_DIRS {
                self.stats.over_budget += 1;
                continue;
            }
            self.dirs.insert(d.clone());
            self.stats.dirs_looked_at += 1;
            out.push(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_shell_strings_assignments_are_places() {
        let mut v = GoVars::default();
        v.add_assignments(&s(&[
            "sh",
            "-c",
            "cd proj && env -i HOME=/w PATH=/opt/go/bin:$PATH:/usr/bin GOMODCACHE='/w/mc' GOROOT=$X go mod download",
        ]));
        assert_eq!(
            v.path,
            vec![PathBuf::from("/opt/go/bin"), PathBuf::from("/usr/bin")]
        );
        assert!(v.goroot.is_empty(), "an unexpanded $X is no place");
        assert_eq!(
            v.modcache,
            vec![PathBuf::from("/w/go/pkg/mod"), PathBuf::from("/w/mc")]
        );
        assert_eq!(
            v.roots(),
            vec![
                PathBuf::from("/w/go/pkg/mod/golang.org"),
                PathBuf::from("/w/mc/golang.org"),
                PathBuf::from("/w/sdk")
            ]
        );
    }

    #[test]
    fn places_are_looked_at_once_and_new_toolchains_are_found_on_rescan() {
        let d = std::env::temp_dir().join(format!("goplaces-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let tc = d.join("mc/golang.org");
        std::fs::create_dir_all(tc.join("toolchain@v0.0.1-go1.22.0.linux-amd64/bin")).expect("dir");
        std::fs::create_dir_all(tc.join("x@v1.0.0")).expect("dir");
        std::fs::create_dir_all(d.join("home/sdk/go1.21.0/bin")).expect("dir");
        let env = vec![
            ("GOMODCACHE".to_string(), d.join("mc").display().to_string()),
            ("HOME".to_string(), d.join("home").display().to_string()),
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
        ];
        let mut p = GoPlaces::default();
        let got = p.learn(&GoVars::from_env(&env));
        assert!(got.contains(&tc.join("toolchain@v0.0.1-go1.22.0.linux-amd64/bin")));
        assert!(got.contains(&d.join("home/sdk/go1.21.0/bin")));
        assert!(got.contains(&PathBuf::from("/usr/bin")));
        assert!(!got.iter().any(|g| g.starts_with(tc.join("x@v1.0.0"))));
        assert!(p.learn(&GoVars::from_env(&env)).is_empty(), "once");
        assert!(p.rescan().is_empty());
        std::fs::create_dir_all(tc.join("toolchain@v0.0.1-go1.23.1.linux-amd64/bin")).expect("dir");
        assert_eq!(
            p.rescan(),
            vec![tc.join("toolchain@v0.0.1-go1.23.1.linux-amd64/bin")]
        );
        assert_eq!(p.stats.roots_watched, 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_bounds_hold_and_are_counted() {
        let mut p = GoPlaces::default();
        for i in 0..MAX_DIRS + 10 {
            let mut v = GoVars::default();
            v.add("PATH", &format!("/nonexistent/{i}"));
            p.learn(&v);
        }
        assert_eq!(p.dirs.len(), MAX_DIRS);
        assert_eq!(p.stats.over_budget, 10);
    }
}
