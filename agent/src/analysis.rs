//! Toolchain analysis: who a process really is (Go version and root, conda
//! env or venv, `#!` interpreter), and the rules that turn that into
//! findings with stable codes.
//!
//! Owns: identity lookups (cached by file identity) and every rule.
//! Must not: print (that is `output`) or touch the kernel.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    buildinfo::{self, BuildInfo},
    event::{Exec, Exit},
    fsview::{FsView, basename, parent},
    pathres::{self, CandState},
    proctable::ProcTable,
    pyenv::{self, PyEnv},
    scrub::url::redact_urls,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Reports each key at most once per minute (bounded memory).
#[derive(Default)]
pub struct Dedup(HashMap<String, u64>);

impl Dedup {
    const WINDOW_NS: u64 = 60_000_000_000;

    /// True when `key` was not reported in the last minute before `now` (ns).
    pub fn first(&mut self, key: String, now: u64) -> bool {
        if self.0.len() > 10_000 {
            self.0
                .retain(|_, t| now.saturating_sub(*t) < Self::WINDOW_NS);
        }
        match self.0.get(&key) {
            Some(t) if now.saturating_sub(*t) < Self::WINDOW_NS => false,
            _ => {
                self.0.insert(key, now);
                true
            }
        }
    }
}

/// A diagnosis.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Stable code, e.g. `path.shadowed` (documented in docs/findings.md).
    pub code: &'static str,
    pub severity: Severity,
    /// The process it concerns.
    pub pid: u32,
    /// One line a person can act on.
    pub summary: String,
    /// Structured evidence.
    pub evidence: Map<String, Value>,
}

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

    fn differs(&self, other: &Identity) -> bool {
        self.go_version != other.go_version
            || self.pyenv.as_ref().map(PyEnv::prefix) != other.pyenv.as_ref().map(PyEnv::prefix)
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
    pub pods: Option<crate::k8s::PodDirectory>,
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
];

/// Is `name` compared by `env.diverged`? (The default allow-list minus NOT_COMPARED.)
fn compared(name: &str) -> bool {
    crate::collector::DEFAULT_ENV_ALLOW.contains(&name) && !NOT_COMPARED.contains(&name)
}

type FileKey = (u64, u64, i64, u64);

struct EnvSeen {
    pid: u32,
    ktime_ns: u64,
    vars: HashMap<String, String>,
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
    pub pod: crate::k8s::PodInfo,
}

#[derive(Default)]
pub struct Analyzer {
    cfg: AnalysisConfig,
    buildinfo: HashMap<FileKey, Option<Arc<BuildInfo>>>,
    /// Identities of host files by path and file, for `IDENTITY_TTL`.
    identities: HashMap<(String, FileKey), (std::time::Instant, Identity)>,
    env_seen: HashMap<(u32, String), EnvSeen>,
    reported: crate::analysis::Dedup,
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

fn ev(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

impl Analyzer {
    pub fn new(cfg: AnalysisConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
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
        let parsed = fs
            .open(path)
            .and_then(|(f, size)| buildinfo::read_image(&f, size, buildinfo::BUILDINFO_SECTIONS))
            .and_then(|b| buildinfo::parse(&b).ok())
            .map(Arc::new);
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
        out.analysed = self.cfg.all || toolchain || descendant;
        if !out.analysed {
            return out;
        }
        let fs = FsView::of_process(&self.cfg.proc_root, e.tgid);
        out.cwd = std::fs::read_link(self.cfg.proc_root.join(e.tgid.to_string()).join("cwd"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        out.identity = self.identify(&fs, &e.exe);
        out.pod = crate::k8s::of_process(&self.cfg.proc_root, e.tgid);
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
        self.rule_path_shadowed(&fs, e, &out, &mut f);
        self.rule_goroot_mismatch(&fs, e, &out.identity, &mut f);
        self.rule_toolchain_switch(&fs, table, e, &out.identity, &mut f);
        self.rule_conda_env_mismatch(&fs, e, &out.identity, &mut f);
        self.rule_env_diverged(table, e, &mut f);
        out.findings = f;
        out
    }

    /// `path.shadowed`.
    fn rule_path_shadowed(
        &mut self,
        fs: &FsView,
        e: &Exec,
        a: &ExecAnalysis,
        out: &mut Vec<Finding>,
    ) {
        let Some(name) = bare_name(e) else { return };
        let Some(path_var) = e.env_var("PATH") else {
            return;
        };
        let cands = pathres::candidates(fs, name, path_var, a.cwd.as_deref());
        let Some(w) = pathres::winner(fs, &cands, &e.exe) else {
            return;
        };
        let win = &cands[w];
        // Activation is meant to shadow: the active env's own bin/ winning is not a finding.
        let active: Vec<&str> = ["CONDA_PREFIX", "VIRTUAL_ENV"]
            .iter()
            .filter_map(|v| e.env_var(v))
            .map(|p| p.trim_end_matches('/'))
            .collect();
        if a.identity
            .pyenv
            .as_ref()
            .is_some_and(|env| active.contains(&env.prefix()))
        {
            return;
        }
        let mut shadowed = Vec::new();
        for c in &cands[w + 1..] {
            if c.state != CandState::Executable
                || c.file_id == win.file_id
                || c.canonical == win.canonical
            {
                continue;
            }
            let id = self.identify(fs, &c.path);
            shadowed.push((c.clone(), id));
        }
        if shadowed.is_empty() {
            return;
        }
        let differs = shadowed.iter().any(|(_, id)| id.differs(&a.identity));
        let key = format!(
            "path.shadowed|{}|{}|{}",
            e.uid, win.path, shadowed[0].0.path
        );
        if !self.once(key, e.ktime_ns) {
            return;
        }
        let (first, first_id) = &shadowed[0];
        let mut summary = format!(
            "`{name}` ran {}{}, which shadows {}{} on PATH",
            win.path,
            paren(&a.identity.label()),
            first.path,
            paren(&first_id.label()),
        );
        if let Some(goroot) = e.env_var("GOROOT") {
            let goroot = goroot.trim_end_matches('/');
            if first_id.go_root.as_deref() == Some(goroot)
                && a.identity.go_root.as_deref() != Some(goroot)
            {
                summary.push_str("; GOROOT points at the latter");
            }
        }
        let list: Vec<Value> = shadowed
            .iter()
            .map(|(c, id)| json!({"path": c.path, "identity": id}))
            .collect();
        out.push(Finding {
            code: "path.shadowed",
            severity: if differs {
                Severity::Warning
            } else {
                Severity::Info
            },
            pid: e.tgid,
            summary,
            evidence: ev(&[
                ("name", json!(name)),
                ("ran", json!({"path": win.path, "identity": a.identity})),
                ("shadowed", Value::Array(list)),
                (
                    "path_order",
                    json!(cands.iter().map(|c| &c.path).collect::<Vec<_>>()),
                ),
                ("PATH", json!(path_var)),
            ]),
        });
    }

    /// `go.goroot_mismatch`.
    fn rule_goroot_mismatch(
        &mut self,
        fs: &FsView,
        e: &Exec,
        id: &Identity,
        out: &mut Vec<Finding>,
    ) {
        if !id.is_go_command {
            return;
        }
        let (Some(own), Some(goroot)) = (id.go_root.clone(), e.env_var("GOROOT")) else {
            return;
        };
        if goroot.is_empty() {
            return;
        }
        let goroot_c = fs
            .canonical(goroot)
            .unwrap_or_else(|| goroot.trim_end_matches('/').to_string());
        if goroot_c == own {
            return;
        }
        let theirs = self.goroot_version(fs, &goroot_c);
        let mine = id.go_version.clone().unwrap_or_default();
        if !self.once(
            format!("go.goroot_mismatch|{}|{}|{}", e.uid, own, goroot_c),
            e.ktime_ns,
        ) {
            return;
        }
        let severity = if theirs.as_deref().is_some_and(|t| t != mine) {
            Severity::Error
        } else {
            Severity::Warning
        };
        out.push(Finding {
            code: "go.goroot_mismatch",
            severity,
            pid: e.tgid,
            summary: format!(
                "go {} ({}) belongs to {own}, but GOROOT={goroot}{}: it will build with another standard library",
                mine,
                e.exe,
                theirs.as_deref().map(|t| format!(" ({t})")).unwrap_or_else(|| " (not a Go installation)".into()),
            ),
            evidence: ev(&[
                ("exe", json!(e.exe)),
                ("go_version", json!(mine)),
                ("toolchain_root", json!(own)),
                ("GOROOT", json!(goroot)),
                ("goroot_version", json!(theirs)),
            ]),
        });
    }

    /// `go.toolchain_switch`.
    fn rule_toolchain_switch(
        &mut self,
        _fs: &FsView,
        table: &ProcTable,
        e: &Exec,
        id: &Identity,
        out: &mut Vec<Finding>,
    ) {
        if !id.is_go_command {
            return;
        }
        let Some(to) = id.go_version.clone() else {
            return;
        };
        // `go` switches with exec(2) in the same process (Go >= 1.21); a parent `go`
        // running a child `go` of another version is reported the same way.
        let p = table.get(e.tgid);
        let prev_same = p.and_then(|p| {
            let n = p.execs.len();
            (n >= 2).then(|| p.execs[n - 2].clone())
        });
        let prev = prev_same.or_else(|| {
            p.and_then(|p| table.get(p.ppid))
                .and_then(|pp| pp.execs.last().cloned())
        });
        let Some(prev) = prev else { return };
        if prev.exe == e.exe {
            return;
        }
        let fs_prev = FsView::of_process(&self.cfg.proc_root, prev.tgid);
        let prev_id = self.identify(&fs_prev, &prev.exe);
        if !prev_id.is_go_command {
            return;
        }
        let Some(from) = prev_id.go_version.clone() else {
            return;
        };
        if from == to {
            return;
        }
        let why = match (e.env_var("GOTOOLCHAIN"), prev.env_var("GOTOOLCHAIN")) {
            (_, Some(t)) | (Some(t), None) if !t.is_empty() && t != "local" => {
                format!("GOTOOLCHAIN={t}")
            }
            _ => "a go/toolchain line in go.mod or go.work".to_string(),
        };
        out.push(Finding {
            code: "go.toolchain_switch",
            severity: Severity::Info,
            pid: e.tgid,
            summary: format!(
                "go {from} ({}) re-executed go {to} ({}) because of {why}",
                prev.exe, e.exe
            ),
            evidence: ev(&[
                ("from_version", json!(from)),
                ("from_exe", json!(prev.exe)),
                ("to_version", json!(to)),
                ("to_exe", json!(e.exe)),
                ("GOTOOLCHAIN", json!(prev.env_var("GOTOOLCHAIN"))),
                ("reason", json!(why)),
            ]),
        });
    }

    /// `conda.env_mismatch`.
    fn rule_conda_env_mismatch(
        &mut self,
        fs: &FsView,
        e: &Exec,
        id: &Identity,
        out: &mut Vec<Finding>,
    ) {
        let name = basename(&e.exe).to_string();
        // An entry point whose `#!` interpreter lives in another env.
        if let (Some(interp), Some(env)) = (&id.interpreter, &id.pyenv) {
            let ienv = pyenv::env_of(fs, interp);
            if ienv.as_ref().map(PyEnv::prefix) != Some(env.prefix())
                && is_python_name(basename(interp))
                && self.once(format!("conda.shebang|{}|{interp}", e.exe), e.ktime_ns)
            {
                out.push(Finding {
                    code: "conda.env_mismatch",
                    severity: Severity::Warning,
                    pid: e.tgid,
                    summary: format!(
                        "{name} belongs to {} but its #! interpreter {interp} is {}",
                        env.label(),
                        ienv.as_ref()
                            .map(PyEnv::label)
                            .unwrap_or_else(|| "outside any env".into())
                    ),
                    evidence: ev(&[
                        ("exe", json!(e.exe)),
                        ("env", json!(env)),
                        ("interpreter", json!(interp)),
                        ("interpreter_env", json!(ienv)),
                    ]),
                });
                return;
            }
        }
        let Some(PyEnv::Conda {
            prefix,
            name: env_name,
        }) = &id.pyenv
        else {
            return;
        };
        let active = e.env_var("CONDA_PREFIX").filter(|s| !s.is_empty());
        let active_c = active.map(|a| {
            fs.canonical(a)
                .unwrap_or_else(|| a.trim_end_matches('/').to_string())
        });
        let prefix_c = fs.canonical(prefix).unwrap_or_else(|| prefix.clone());
        if active_c.as_deref() == Some(prefix_c.as_str()) {
            return;
        }
        // The base env running with nothing active is how conda is used without envs.
        if active.is_none() && env_name == "base" {
            return;
        }
        if !self.once(format!("conda.env|{}|{:?}", e.exe, active), e.ktime_ns) {
            return;
        }
        let summary = match active {
            Some(a) => format!(
                "{name} ran {} from conda env {env_name}, but the active env is {} (CONDA_PREFIX={a})",
                e.exe,
                e.env_var("CONDA_DEFAULT_ENV").unwrap_or(basename(a)),
            ),
            None => format!(
                "{name} ran {} from conda env {env_name}, but no conda env is active (CONDA_PREFIX unset)",
                e.exe
            ),
        };
        out.push(Finding {
            code: "conda.env_mismatch",
            severity: Severity::Warning,
            pid: e.tgid,
            summary,
            evidence: ev(&[
                ("exe", json!(e.exe)),
                ("env", json!(id.pyenv)),
                ("CONDA_PREFIX", json!(active)),
                ("CONDA_DEFAULT_ENV", json!(e.env_var("CONDA_DEFAULT_ENV"))),
            ]),
        });
    }

    /// `env.diverged`: compare with the last run of the same toolchain by the same user.
    fn rule_env_diverged(&mut self, table: &ProcTable, e: &Exec, out: &mut Vec<Finding>) {
        // Only user-initiated runs: not a toolchain re-running itself.
        if let Some(parent) = table.get(e.ppid).and_then(|p| p.current())
            && basename(&parent.exe) == basename(&e.exe)
        {
            return;
        }
        let vars: HashMap<String, String> =
            e.env.iter().filter(|(k, _)| compared(k)).cloned().collect();
        let key = (e.uid, e.exe.clone());
        if e.env_truncated {
            return;
        }
        if let Some(prev) = self.env_seen.remove(&key)
            && e.ktime_ns.saturating_sub(prev.ktime_ns) <= self.cfg.env_window_ns
            && prev.pid != e.tgid
        {
            let mut names: Vec<&str> = crate::collector::DEFAULT_ENV_ALLOW
                .iter()
                .copied()
                .filter(|v| compared(v) && prev.vars.get(*v) != vars.get(*v))
                .collect();
            names.sort();
            for var in names {
                let before = prev.vars.get(var).map(|s| redact_urls(s));
                let now = vars.get(var).map(|s| redact_urls(s));
                let k = format!("env.diverged|{}|{var}|{before:?}|{now:?}", e.exe);
                if !self.once(k, e.ktime_ns) {
                    continue;
                }
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
                out.push(Finding {
                        code: "env.diverged",
                        severity: Severity::Warning,
                        pid: e.tgid,
                        summary: format!(
                            "{} ran with {var}={} but pid {} of the same user ran it with {var}={} {}s earlier",
                            basename(&e.exe),
                            show(&now),
                            prev.pid,
                            show(&before),
                            e.ktime_ns.saturating_sub(prev.ktime_ns) / 1_000_000_000,
                        ),
                        evidence: ev(&[
                            ("exe", json!(e.exe)),
                            ("variable", json!(var)),
                            ("value", json!(now)),
                            ("previous_value", json!(before)),
                            ("previous_pid", json!(prev.pid)),
                        ]),
                    });
            }
        }
        if self.env_seen.len() > 4096 {
            self.env_seen.clear();
        }
        self.env_seen.insert(
            key,
            EnvSeen {
                pid: e.tgid,
                ktime_ns: e.ktime_ns,
                vars,
            },
        );
    }

    /// At exit: a process whose exec attempts all failed gets `exec.not_found`.
    pub fn on_exit(&mut self, table: &ProcTable, x: &Exit) -> Vec<Finding> {
        let Some(p) = table.get(x.tgid) else {
            return Vec::new();
        };
        // Attempts after the last successful exec.
        let last_ok = p.execs.last().map(|e| e.ktime_ns).unwrap_or(0);
        let failed: Vec<&Arc<Exec>> = p.failed.iter().filter(|f| f.ktime_ns > last_ok).collect();
        let Some(last) = failed.last() else {
            return Vec::new();
        };
        let name = basename(&last.filename).to_string();
        let tried: Vec<Value> = failed
            .iter()
            .filter(|f| basename(&f.filename) == name)
            .map(|f| json!({"path": f.filename, "errno": errno_name(f.errno)}))
            .collect();
        let all_enoent = failed.iter().all(|f| f.errno == libc::ENOENT);
        let summary = if all_enoent {
            format!(
                "`{name}` not found: {} PATH candidate{} tried, none exists",
                tried.len(),
                if tried.len() == 1 { "" } else { "s" }
            )
        } else {
            let reasons: Vec<String> = failed
                .iter()
                .filter(|f| f.errno != libc::ENOENT)
                .map(|f| format!("{} ({})", f.filename, errno_name(f.errno)))
                .collect();
            format!("`{name}` could not be run: {}", reasons.join(", "))
        };
        vec![Finding {
            code: "exec.not_found",
            severity: Severity::Error,
            pid: x.tgid,
            summary,
            evidence: ev(&[
                ("name", json!(name)),
                ("tried", Value::Array(tried)),
                ("PATH", json!(last.env_var("PATH"))),
                ("caller", json!(last.comm)),
            ]),
        }]
    }
}

fn paren(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
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

/// `ENOENT`-style name of an errno.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::ENOENT => "ENOENT".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOEXEC => "ENOEXEC".into(),
        libc::EPERM => "EPERM".into(),
        libc::ENOTDIR => "ENOTDIR".into(),
        libc::E2BIG => "E2BIG".into(),
        libc::ETXTBSY => "ETXTBSY".into(),
        libc::ELOOP => "ELOOP".into(),
        libc::ENAMETOOLONG => "ENAMETOOLONG".into(),
        libc::EISDIR => "EISDIR".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EROFS => "EROFS".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ECONNABORTED => "ECONNABORTED".into(),
        other => format!("errno {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host file's identity is remembered, and a changed file is not
    /// mistaken for the one remembered.
    #[test]
    fn identities_are_remembered_per_file() {
        let d = crate::fsview::tests::tempdir("ident");
        let tool = d.join("tool");
        let p = tool.display().to_string();
        std::fs::write(&tool, "#!/bin/sh\necho\n").unwrap();
        let mut a = Analyzer::default();
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
