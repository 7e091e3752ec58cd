//! Toolchain analysis: who a process really is (Go version and root, conda
//! env or venv, `#!` interpreter), and the rules that turn that into
//! findings with stable codes.
//!
//! Owns: identity lookups (cached by file identity) and every rule.
//! Must not: print (that is `output`) or touch the kernel.

pub mod codes;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use serde::Serialize;

pub mod capture;
pub mod gomod;
pub mod pathres;
pub mod render;
#[cfg(test)]
mod rule_tests;
pub mod rules;
pub mod shims;

use crate::process::pyenv::{self, PyEnv};
use crate::{
    buildinfo::BuildInfo,
    events::Exec,
    finding::Finding,
    process::fsview::{FsView, basename, parent},
    process::table::ProcTable,
};

/// What a binary is, as far as toolchains go.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Identity {
    /// Go version the binary was built with (any Go program).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_version: Option<String>,
    /// For the `go` command itself: the GOROOT it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_root: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_go_command: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pyenv: Option<PyEnv>,
    /// `#!` interpreter of a script.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
}

impl Identity {
    /// Short human label: `go1.22.3, conda env x`.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.go_version {
            parts.push(v.clone());
        }
        if let Some(e) = &self.pyenv {
            parts.push(match e {
                PyEnv::Conda { name, .. } => format!("conda env {name}"),
                PyEnv::Venv { prefix } => format!("venv {prefix}"),
            });
        }
        parts.join(", ")
    }
}

/// Which processes get deep analysis.
#[derive(Clone, Debug)]
pub struct AnalysisConfig {
    /// Command basenames analysed in depth (and their descendants).
    pub tools: Vec<String>,
    /// Analyse every exec (slow on busy machines).
    pub all: bool,
    /// `/proc` (injectable for tests).
    pub proc_root: PathBuf,
    /// Window for `env.diverged`, ns.
    pub env_window_ns: u64,
    /// Pod names from the Kubernetes API (`--k8s-api`), when enabled.
    pub pods: Option<crate::process::k8s::PodDirectory>,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            tools: [
                "go",
                "gofmt",
                "gopls",
                "python",
                "python3",
                "pip",
                "pip3",
                "conda",
                "mamba",
                "micromamba",
                "pipx",
                "uv",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            all: false,
            proc_root: PathBuf::from("/proc"),
            env_window_ns: 10 * 60 * 1_000_000_000,
            pods: None,
        }
    }
}

/// Allow-listed variables that `env.diverged` does not compare: they differ
/// between shells too often to mean anything.
const NOT_COMPARED: &[&str] = &[
    "PATH",
    "HOME",
    "CONDA_SHLVL",
    "CONDA_EXE",
    "LD_LIBRARY_PATH",
    // Version managers export these when a shim runs the real binary.
    "PYENV_VERSION",
    "PYENV_ROOT",
    "GOENV_VERSION",
    "RBENV_VERSION",
    "NODENV_VERSION",
    // Trace context: every instrumented step sets its own.
    "TRACEPARENT",
    "TRACESTATE",
];

/// Is `name` compared by `env.diverged`? (The default allow-list minus NOT_COMPARED.)
fn compared(name: &str) -> bool {
    crate::signal::exec::capture::DEFAULT_ENV_ALLOW.contains(&name) && !NOT_COMPARED.contains(&name)
}

type FileKey = (u64, u64, i64, u64);

struct EnvSeen {
    pid: u32,
    ktime_ns: u64,
    vars: HashMap<String, String>,
    /// The systemd unit its environment came from, if any.
    origin: Option<rules::Origin>,
}

/// The result of analysing one exec.
#[derive(Clone, Debug, Default)]
pub struct ExecAnalysis {
    /// Deep analysis ran (a toolchain process or a descendant of one).
    pub analysed: bool,
    /// The command is a toolchain entry point (not just a descendant).
    pub toolchain: bool,
    pub identity: Identity,
    pub findings: Vec<Finding>,
    /// Working directory when read (racy for short processes).
    pub cwd: Option<String>,
    /// Container and pod, from the cgroup path.
    pub pod: crate::process::k8s::PodInfo,
    /// The command was a version manager's shim: what it picks, and why.
    pub shim: Option<shims::Shim>,
    /// Other files of the same name later on PATH (context, not a finding:
    /// shadowing alone is how PATH works).
    pub shadows: Vec<Shadowed>,
}

impl ExecAnalysis {
    /// Short human label: identity, and what a shim picked and why.
    pub fn label(&self) -> String {
        let mut parts = vec![self.identity.label()];
        if let Some(s) = &self.shim {
            let mut l = format!("{} shim", s.manager);
            if let Some(v) = &s.version {
                l.push_str(&format!(" → {v}"));
            }
            if let Some(b) = &s.set_by {
                l.push_str(&format!(", set by {b}"));
            }
            parts.push(l);
        }
        parts.retain(|p| !p.is_empty());
        parts.join(", ")
    }
}

/// A later PATH candidate the winner hid.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Shadowed {
    pub path: String,
    pub identity: Identity,
}

#[derive(Default)]
pub struct ExecTracker {
    cfg: AnalysisConfig,
    buildinfo: HashMap<FileKey, Option<Arc<BuildInfo>>>,
    /// Identities of host files by path and file, for `IDENTITY_TTL`.
    identities: HashMap<(String, FileKey), (std::time::Instant, Identity)>,
    env_seen: HashMap<(u32, String), EnvSeen>,
    /// `go` processes about to download another toolchain, by pid.
    switching: HashMap<u32, rules::Switch>,
    reported: crate::finding::Dedup,
    /// Roots of the trees `agent trace` sessions of the trace service
    /// follow: every process in them is analysed, as in `agent trace`.
    traced_roots: std::collections::HashSet<u32>,
}

/// The bare command name asked for, when the caller relied on PATH.
pub fn bare_name(e: &Exec) -> Option<&str> {
    let a0 = e.argv.first().map(String::as_str).unwrap_or("");
    if !a0.is_empty() && !a0.contains('/') {
        return Some(a0);
    }
    if !e.filename.is_empty() && !e.filename.contains('/') {
        return Some(&e.filename);
    }
    None
}

fn is_python_name(n: &str) -> bool {
    n == "python" || n.starts_with("python3") || n.starts_with("python2") || n.starts_with("pip")
}

impl ExecTracker {
    pub fn new(cfg: AnalysisConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    /// Analyse every process of `root`'s tree from now on (a served trace).
    pub fn trace_tree(&mut self, root: u32) {
        self.traced_roots.insert(root);
    }

    /// The served trace of `root` is over.
    pub fn untrace_tree(&mut self, root: u32) {
        self.traced_roots.remove(&root);
    }

    fn in_traced_tree(&self, table: &ProcTable, tgid: u32) -> bool {
        !self.traced_roots.is_empty()
            && (self.traced_roots.contains(&tgid)
                || table
                    .ancestors(tgid)
                    .iter()
                    .any(|a| self.traced_roots.contains(a)))
    }

    fn is_tool(&self, e: &Exec) -> bool {
        let exe_base = basename(&e.exe);
        let a0 = e.argv.first().map(|a| basename(a)).unwrap_or("");
        self.cfg
            .tools
            .iter()
            .any(|t| t == exe_base || t == a0 || (t == "python" && is_python_name(exe_base)))
            || exe_base.starts_with("go1.")
    }

    /// Build info of `path` in `fs`, cached by file identity.
    fn go_info(&mut self, fs: &FsView, path: &str) -> Option<Arc<BuildInfo>> {
        let m = fs.stat(path)?;
        if !m.is_file {
            return None;
        }
        let key = (m.dev, m.ino, m.mtime, m.size);
        if let Some(v) = self.buildinfo.get(&key) {
            return v.clone();
        }
        // Headers and the build info only: memory stays bounded whatever
        // the binary's size, and a FIFO swapped in meanwhile is refused.
        let parsed = fs.build_info(path).map(Arc::new);
        if self.buildinfo.len() > 4096 {
            self.buildinfo.clear();
        }
        self.buildinfo.insert(key, parsed.clone());
        parsed
    }

    /// Identity of the binary at `path` as seen in `fs`. On the host it is
    /// remembered for a few seconds by path and file (device, inode, mtime,
    /// size): a build runs the same tools hundreds of times, and working out
    /// an identity takes a read of the file's head and a walk up its
    /// directories.
    pub fn identify(&mut self, fs: &FsView, path: &str) -> Identity {
        const IDENTITY_TTL: std::time::Duration = std::time::Duration::from_secs(5);
        let key = if fs.is_host() {
            fs.stat(path)
                .map(|m| (path.to_string(), (m.dev, m.ino, m.mtime, m.size)))
        } else {
            None
        };
        let now = std::time::Instant::now();
        if let Some(k) = &key
            && let Some((t, id)) = self.identities.get(k)
            && now.duration_since(*t) < IDENTITY_TTL
        {
            return id.clone();
        }
        let id = self.identify_uncached(fs, path);
        if let Some(k) = key {
            if self.identities.len() >= 4096 {
                self.identities.clear();
            }
            self.identities.insert(k, (now, id.clone()));
        }
        id
    }

    fn identify_uncached(&mut self, fs: &FsView, path: &str) -> Identity {
        let mut id = Identity::default();
        if let Some(bi) = self.go_info(fs, path) {
            id.go_version = Some(bi.go_version.clone());
            id.is_go_command = bi.is_go_command();
            if id.is_go_command {
                id.go_root = go_root_of(fs, path);
            }
        }
        id.pyenv = pyenv::env_of(fs, path);
        if id.go_version.is_none() {
            id.interpreter = pyenv::shebang(fs, path).map(|(i, _)| i);
        }
        id
    }

    /// Version of the Go installation at `root` (`VERSION` file or its `bin/go`).
    fn goroot_version(&mut self, fs: &FsView, root: &str) -> Option<String> {
        if let Some(v) = fs.read_to_string(&format!("{root}/VERSION"), 256)
            && let Some(first) = v.lines().next().filter(|l| l.starts_with("go"))
        {
            return Some(first.trim().to_string());
        }
        self.go_info(fs, &format!("{root}/bin/go"))
            .map(|b| b.go_version.clone())
    }

    fn once(&mut self, key: String, now: u64) -> bool {
        self.reported.first(key, now)
    }

    /// Analyse a successful exec (already recorded in `table`).
    pub fn on_exec(&mut self, table: &ProcTable, e: &Arc<Exec>) -> ExecAnalysis {
        let mut out = ExecAnalysis::default();
        if !e.ok() {
            return out;
        }
        let toolchain = self.is_tool(e);
        let descendant = !toolchain
            && table.ancestors(e.tgid).iter().any(|a| {
                table
                    .get(*a)
                    .and_then(|p| p.current())
                    .is_some_and(|x| self.is_tool(x))
            });
        out.toolchain = toolchain;
        out.analysed =
            self.cfg.all || toolchain || descendant || self.in_traced_tree(table, e.tgid);
        if !out.analysed {
            return out;
        }
        let fs = FsView::of_process(&self.cfg.proc_root, e.tgid);
        // The reader read it when the record arrived. Else (a process the
        // kernel did not flag, or gone even then) now, or its parent's: the
        // one it inherited at fork (a shell running `cd m && go build` waits
        // for it), right unless the child changed directory before exec.
        let cwd_of = |pid: u32| crate::events::cwd_of(&self.cfg.proc_root, pid);
        out.cwd = e
            .cwd
            .clone()
            .or_else(|| cwd_of(e.tgid))
            .or_else(|| (e.ppid > 1).then(|| cwd_of(e.ppid)).flatten());
        out.identity = self.identify(&fs, &e.exe);
        out.pod = crate::process::k8s::of_process(&self.cfg.proc_root, e.tgid);
        // The API, when enabled, is authoritative (a pod's hostname can differ).
        if let (Some(dir), Some(uid)) = (&self.cfg.pods, &out.pod.pod_uid)
            && let Some((name, ns)) = dir.get(uid)
        {
            out.pod.pod_name = Some(name);
            out.pod.namespace = Some(ns);
        }
        if !toolchain {
            return out;
        }
        let mut f = Vec::new();
        let path = self.path_context(&fs, e, &mut out);
        let go_lines = if out.identity.is_go_command {
            out.cwd
                .as_deref()
                .map(|cwd| gomod::requirements(&fs, cwd, |k| e.env_var(k).map(str::to_string)))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(p) = &path {
            self.rule_path_shadowed(&fs, e, &out, p, &go_lines, &mut f);
        }
        self.rule_go_version_required(e, &out, path.as_ref(), &go_lines, &mut f);
        self.note_switch(e, &out.identity, &go_lines);
        self.rule_goroot_mismatch(&fs, e, &out.identity, &mut f);
        self.rule_toolchain_switch(table, e, &out.identity, &go_lines, &mut f);
        self.rule_env_mismatch(&fs, e, &out.identity, &mut f);
        self.rule_env_diverged(table, e, &mut f);
        out.findings = f;
        out
    }
}

/// The GOROOT a `go` command binary belongs to: `<root>/bin/go` with
/// `<root>/pkg/tool` or `<root>/src/runtime` present (as cmd/go decides).
pub fn go_root_of(fs: &FsView, exe: &str) -> Option<String> {
    let canon = fs.canonical(exe)?;
    for p in [canon.as_str(), exe] {
        let bin = parent(p)?;
        let root = parent(bin)?;
        if fs.is_dir(&format!("{root}/pkg/tool")) || fs.is_dir(&format!("{root}/src/runtime")) {
            return Some(root.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host file's identity is remembered, and a changed file is not
    /// mistaken for the one remembered.
    #[test]
    fn identities_are_remembered_per_file() {
        let d = crate::process::fsview::tests::tempdir("ident");
        let tool = d.join("tool");
        let p = tool.display().to_string();
        std::fs::write(&tool, "#!/bin/sh\necho\n").unwrap();
        let mut a = ExecTracker::default();
        let fs = FsView::host();
        assert_eq!(a.identify(&fs, &p).interpreter.as_deref(), Some("/bin/sh"));
        assert_eq!(a.identities.len(), 1);
        assert_eq!(a.identify(&fs, &p).interpreter.as_deref(), Some("/bin/sh"));
        std::fs::write(&tool, "#!/usr/bin/python3 -u\nprint()\n").unwrap();
        assert_eq!(
            a.identify(&fs, &p).interpreter.as_deref(),
            Some("/usr/bin/python3")
        );
        // Other roots (containers, tests) are not remembered.
        let view = FsView::new(&d);
        assert_eq!(
            a.identify(&view, "/tool").interpreter.as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(a.identities.len(), 2);
        std::fs::remove_dir_all(d).ok();
    }
}
