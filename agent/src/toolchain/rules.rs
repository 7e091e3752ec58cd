//! The toolchain rules. Each makes a finding only with evidence that
//! something is wrong or about to be (a setting the winner contradicts, a
//! requirement it cannot meet), and says which setting decided it and what
//! to type.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};

use super::{
    Analyzer, EnvSeen, ExecAnalysis, Identity, Shadowed, bare_name, compared, gomod,
    gomod::GoVersion,
    is_python_name,
    pathres::{self, CandState, Candidate},
    pyenv::{self, PyEnv},
    shims,
};
use crate::{
    event::{Exec, Exit},
    finding::{Finding, Severity, errno_name, evidence as ev},
    fsview::{FsView, basename, parent},
    proctable::ProcTable,
    scrub::url::redact_urls,
};

/// What PATH resolution found for a bare command name.
pub(super) struct PathContext {
    name: String,
    path_var: String,
    cands: Vec<Candidate>,
    winner: usize,
    /// Executable later candidates that are other files, with identities.
    shadowed: Vec<(Candidate, Identity)>,
}

impl PathContext {
    /// (1-based PATH entry, number of entries) of `path`'s directory.
    fn entry(&self, path: &str) -> Option<(usize, usize)> {
        let dir = parent(path).unwrap_or("/");
        let entries: Vec<&str> = self.path_var.split(':').collect();
        entries
            .iter()
            .position(|e| e.trim_end_matches('/') == dir)
            .map(|i| (i + 1, entries.len()))
    }

    /// `PATH entry 1 of 7 (/usr/bin) comes before entry 3 (/usr/local/go/bin)`.
    fn order(&self, winner: &str, later: &str) -> String {
        let dir = |p: &str| parent(p).unwrap_or("/").to_string();
        match (self.entry(winner), self.entry(later)) {
            (Some((w, n)), Some((l, _))) => format!(
                "PATH entry {w} of {n} ({}) comes before entry {l} ({})",
                dir(winner),
                dir(later)
            ),
            _ => format!("{} comes before {} on PATH", dir(winner), dir(later)),
        }
    }
}

fn paren(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

fn go_version_of(id: &Identity) -> Option<GoVersion> {
    id.go_version.as_deref().and_then(GoVersion::parse)
}

/// `go` switches toolchains itself from Go 1.21 on, unless GOTOOLCHAIN=local.
fn can_switch(have: &GoVersion, e: &Exec) -> bool {
    e.env_var("GOTOOLCHAIN") != Some("local")
        && GoVersion::parse("1.21").is_some_and(|min| *have >= min)
}

/// The active Python environment: `VIRTUAL_ENV` (it wins inside a conda
/// env), else `CONDA_PREFIX`; (variable, value as set, canonical prefix).
fn active_env(fs: &FsView, e: &Exec) -> Option<(&'static str, String, String)> {
    ["VIRTUAL_ENV", "CONDA_PREFIX"].into_iter().find_map(|var| {
        let v = e.env_var(var).filter(|v| !v.is_empty())?;
        let c = fs
            .canonical(v)
            .unwrap_or_else(|| v.trim_end_matches('/').to_string());
        Some((var, v.to_string(), c))
    })
}

fn canonical_prefix(fs: &FsView, env: &PyEnv) -> String {
    fs.canonical(env.prefix())
        .unwrap_or_else(|| env.prefix().to_string())
}

/// How a PATH fix is typed.
fn path_fix(dir: &str) -> String {
    format!("export PATH={dir}:$PATH")
}

/// Where a process's environment came from, when not a login shell: the
/// systemd unit its cgroup names (system or `--user`). `None` for a login
/// session, a terminal, or when unknown.
pub fn environment_origin(proc_root: &std::path::Path, pid: u32) -> Option<Origin> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    origin_of_cgroup(&text)
}

/// A systemd unit an environment came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub unit: String,
    /// A `systemctl --user` unit.
    pub user: bool,
}

impl Origin {
    pub fn describe(&self) -> String {
        if self.user {
            format!("systemd user unit {}", self.unit)
        } else {
            format!("systemd unit {}", self.unit)
        }
    }
}

/// The unit in a `/proc/<pid>/cgroup` text (v2 `0::` line, or the v1
/// `name=systemd` hierarchy of a hybrid set-up). Login sessions
/// (`session-N.scope`) and the user manager itself are not units that set
/// an environment of their own.
pub fn origin_of_cgroup(text: &str) -> Option<Origin> {
    let path = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            (ctrl.is_empty() || ctrl == "name=systemd").then_some(path)
        })
        .find(|p| p.contains(".service"))?;
    let user = path.contains("/user@");
    let unit = path
        .split('/')
        .rfind(|c| c.ends_with(".service") && !c.starts_with("user@"))?;
    Some(Origin {
        unit: unit.to_string(),
        user,
    })
}

/// A `go` that will switch to another toolchain, and why.
#[derive(Clone, Debug)]
pub struct Switch {
    /// `go1.99.0`.
    pub to: String,
    /// `go 1.99 in /src/m/go.mod`, `GOTOOLCHAIN=go1.99.0 in the environment`.
    pub because: String,
    /// The running toolchain's version.
    pub from: String,
}

impl Analyzer {
    /// Remember a `go` that will download another toolchain (Go >= 1.21
    /// switching for its go.mod / go.work or GOTOOLCHAIN), so a failed
    /// fetch from GOPROXY is explained as that download.
    pub(super) fn note_switch(&mut self, e: &Exec, id: &Identity, go_lines: &[gomod::Line]) {
        let (true, Some(have)) = (id.is_go_command, go_version_of(id)) else {
            return;
        };
        let forced = e
            .env_var("GOTOOLCHAIN")
            .map(|t| t.split('+').next().unwrap_or(t))
            .filter(|t| t.starts_with("go1"))
            .and_then(|t| GoVersion::parse(t).map(|v| (t.to_string(), v)));
        let sw = match forced {
            Some((t, v)) if v != have => Some(Switch {
                to: t.clone(),
                because: format!("GOTOOLCHAIN={t} in the environment"),
                from: id.go_version.clone().unwrap_or_default(),
            }),
            Some(_) => None,
            None if can_switch(&have, e) => {
                let (go, tc) = gomod::strictest(go_lines);
                [go, tc]
                    .into_iter()
                    .flatten()
                    .filter(|l| l.version > have)
                    .max_by(|a, b| a.version.cmp(&b.version))
                    .map(|l| Switch {
                        to: format!("go{}", l.version),
                        because: l.describe(),
                        from: id.go_version.clone().unwrap_or_default(),
                    })
            }
            None => None,
        };
        if self.switching.len() >= 4096 {
            self.switching.clear();
        }
        match sw {
            Some(s) => {
                self.switching.insert(e.tgid, s);
            }
            None => {
                self.switching.remove(&e.tgid);
            }
        }
    }

    /// `go.toolchain_download_failed`: a network or TLS failure of a `go`
    /// that was switching toolchains, towards its GOPROXY.
    pub fn toolchain_download_failed(&mut self, f: &Finding, now: u64) -> Option<Finding> {
        if !(f.code.starts_with("net.") || f.code.starts_with("tls."))
            || f.severity < Severity::Error
        {
            return None;
        }
        let sw = self.switching.get(&f.pid)?.clone();
        let src = f.evidence.get("endpoint_from")?;
        if src.get("variable").and_then(Value::as_str) != Some("GOPROXY") {
            return None;
        }
        let proxy = src
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        if !self.once(
            format!("go.toolchain_download_failed|{}|{}", f.pid, sw.to),
            now,
        ) {
            return None;
        }
        Some(Finding {
            code: "go.toolchain_download_failed",
            severity: Severity::Error,
            pid: f.pid,
            summary: format!(
                "go {} tried to switch to {} (because of {}) and the download from GOPROXY {proxy} failed: {}",
                sw.from, sw.to, sw.because, f.summary
            ),
            cause: format!("{}; {}", sw.because, f.cause),
            fix: format!(
                "point GOPROXY at a proxy that serves golang.org/toolchain (go env -w GOPROXY=https://proxy.golang.org,direct), or install {} and put it first on PATH",
                sw.to
            ),
            evidence: ev(&[
                ("from_version", json!(sw.from)),
                ("to_version", json!(sw.to)),
                ("reason", json!(sw.because)),
                ("GOPROXY", json!(proxy)),
                ("network_finding", json!(f.code)),
            ]),
        })
    }

    /// A process is gone: forget its pending switch.
    pub fn forget_process(&mut self, tgid: u32) {
        self.switching.remove(&tgid);
    }

    /// PATH resolution for a bare command name: the shim it was, if one,
    /// and the later candidates it hid (kept as context in the exec record).
    pub(super) fn path_context(
        &mut self,
        fs: &FsView,
        e: &Exec,
        a: &mut ExecAnalysis,
    ) -> Option<PathContext> {
        let name = bare_name(e)?.to_string();
        let path_var = e.env_var("PATH")?.to_string();
        let cands = pathres::candidates(fs, &name, &path_var, a.cwd.as_deref());
        let winner = pathres::winner(fs, &cands, &e.exe)?;
        let win = &cands[winner];
        a.shim = shims::resolve(fs, &win.path, a.cwd.as_deref(), |k| {
            e.env_var(k).map(str::to_string)
        });
        let mut shadowed = Vec::new();
        for c in &cands[winner + 1..] {
            if c.state != CandState::Executable
                || c.file_id == win.file_id
                || c.canonical == win.canonical
                || parent(&c.path).is_some_and(|d| shims::manager_of_dir(fs, d).is_some())
            {
                continue;
            }
            let id = self.identify(fs, &c.path);
            shadowed.push((c.clone(), id));
        }
        a.shadows = shadowed
            .iter()
            .map(|(c, id)| Shadowed {
                path: c.path.clone(),
                identity: id.clone(),
            })
            .collect();
        Some(PathContext {
            name,
            path_var,
            cands,
            winner,
            shadowed,
        })
    }

    /// `path.shadowed`: the winner contradicts the process's own settings
    /// or needs, and a later candidate would have met them.
    pub(super) fn rule_path_shadowed(
        &mut self,
        fs: &FsView,
        e: &Exec,
        a: &ExecAnalysis,
        p: &PathContext,
        go_lines: &[gomod::Line],
        out: &mut Vec<Finding>,
    ) {
        // A shim first on PATH is the version manager doing its job.
        if a.shim.is_some() || p.shadowed.is_empty() {
            return;
        }
        let id = &a.identity;
        // (index into shadowed, why the winner is wrong, summary tail)
        let mut hit: Option<(usize, String, String)> = None;
        if id.is_go_command
            && let Some(goroot) = e.env_var("GOROOT").filter(|g| !g.is_empty())
        {
            let g = fs
                .canonical(goroot)
                .unwrap_or_else(|| goroot.trim_end_matches('/').to_string());
            if id.go_root.as_deref() != Some(g.as_str())
                && let Some(i) = p
                    .shadowed
                    .iter()
                    .position(|(_, s)| s.go_root.as_deref() == Some(g.as_str()))
            {
                hit = Some((
                    i,
                    format!("GOROOT={goroot} in the environment is the shadowed go's installation"),
                    "; GOROOT points at the latter".into(),
                ));
            }
        }
        if hit.is_none()
            && id.is_go_command
            && let Some(have) = go_version_of(id)
        {
            let (go, tc) = gomod::strictest(go_lines);
            for line in [go, tc].into_iter().flatten() {
                if line.version <= have {
                    continue;
                }
                if let Some(i) = p.shadowed.iter().position(|(_, s)| {
                    s.is_go_command && go_version_of(s).is_some_and(|v| v >= line.version)
                }) {
                    hit = Some((
                        i,
                        format!("{} needs Go {} or newer", line.describe(), line.version),
                        format!("; {} needs the latter", line.describe()),
                    ));
                    break;
                }
            }
        }
        if hit.is_none()
            && let Some((var, value, active)) = active_env(fs, e)
            && id.pyenv.as_ref().map(|env| canonical_prefix(fs, env)) != Some(active.clone())
            && let Some(i) = p.shadowed.iter().position(|(_, s)| {
                s.pyenv.as_ref().map(|env| canonical_prefix(fs, env)) == Some(active.clone())
            })
        {
            hit = Some((
                i,
                format!("{var}={value} is active"),
                format!("; the active env {value} is the latter's"),
            ));
        }
        let Some((i, why, tail)) = hit else { return };
        let win = &p.cands[p.winner];
        let (first, first_id) = &p.shadowed[i];
        let key = format!("path.shadowed|{}|{}|{}", e.uid, win.path, first.path);
        if !self.once(key, e.ktime_ns) {
            return;
        }
        let first_dir = parent(&first.path).unwrap_or("/").to_string();
        let list: Vec<Value> = p
            .shadowed
            .iter()
            .map(|(c, id)| json!({"path": c.path, "identity": id}))
            .collect();
        out.push(Finding {
            code: "path.shadowed",
            severity: Severity::Warning,
            pid: e.tgid,
            summary: format!(
                "`{}` ran {}{}, which shadows {}{} on PATH{tail}",
                p.name,
                win.path,
                paren(&id.label()),
                first.path,
                paren(&first_id.label()),
            ),
            cause: format!("{why}, but {}", p.order(&win.path, &first.path)),
            fix: path_fix(&first_dir),
            evidence: ev(&[
                ("name", json!(p.name)),
                ("ran", json!({"path": win.path, "identity": id})),
                ("shadowed", Value::Array(list)),
                (
                    "path_order",
                    json!(p.cands.iter().map(|c| &c.path).collect::<Vec<_>>()),
                ),
                ("PATH", json!(p.path_var)),
                ("reason", json!(why)),
            ]),
        });
    }

    /// `go.version_too_old`: go.mod / go.work needs a newer Go than the one
    /// that ran, it cannot switch, and nothing later on PATH would do.
    pub(super) fn rule_go_version_required(
        &mut self,
        e: &Exec,
        a: &ExecAnalysis,
        p: Option<&PathContext>,
        go_lines: &[gomod::Line],
        out: &mut Vec<Finding>,
    ) {
        let id = &a.identity;
        let (true, Some(have)) = (id.is_go_command, go_version_of(id)) else {
            return;
        };
        let (Some(need), _) = gomod::strictest(go_lines) else {
            return;
        };
        if need.version <= have || can_switch(&have, e) {
            return;
        }
        // A later candidate that would do: path.shadowed says so.
        if p.is_some_and(|p| {
            p.shadowed
                .iter()
                .any(|(_, s)| go_version_of(s).is_some_and(|v| v >= need.version))
        }) {
            return;
        }
        if !self.once(
            format!("go.version_too_old|{}|{}|{}", e.uid, e.exe, need.describe()),
            e.ktime_ns,
        ) {
            return;
        }
        let local = e.env_var("GOTOOLCHAIN") == Some("local");
        let (severity, why, fix) = if local {
            (
                Severity::Error,
                "GOTOOLCHAIN=local in the environment forbids switching",
                format!(
                    "unset GOTOOLCHAIN (go downloads go{} itself), or install Go {} and put its bin first on PATH",
                    need.version, need.version
                ),
            )
        } else {
            (
                Severity::Warning,
                "Go before 1.21 does not switch toolchains",
                format!(
                    "install Go {} or newer and put its bin first on PATH (export PATH=/usr/local/go/bin:$PATH)",
                    need.version
                ),
            )
        };
        out.push(Finding {
            code: "go.version_too_old",
            severity,
            pid: e.tgid,
            summary: format!(
                "go {} ({}) is older than {} requires, and no newer go is on PATH",
                id.go_version.as_deref().unwrap_or("?"),
                e.exe,
                need.describe(),
            ),
            cause: format!("{}; {why}", need.describe()),
            fix,
            evidence: ev(&[
                ("exe", json!(e.exe)),
                ("go_version", json!(id.go_version)),
                ("required", json!(need.version.to_string())),
                ("file", json!(need.file)),
                ("GOTOOLCHAIN", json!(e.env_var("GOTOOLCHAIN"))),
            ]),
        });
    }

    /// `go.goroot_mismatch`.
    pub(super) fn rule_goroot_mismatch(
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
            cause: format!("GOROOT={goroot} in the environment"),
            fix: format!(
                "unset GOROOT (go finds its own installation), or export PATH={goroot_c}/bin:$PATH to use that one"
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
    pub(super) fn rule_toolchain_switch(
        &mut self,
        table: &ProcTable,
        e: &Exec,
        id: &Identity,
        go_lines: &[gomod::Line],
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
        let (gomod_go, gomod_tc) = gomod::strictest(go_lines);
        let (why, cause, fix) = match (e.env_var("GOTOOLCHAIN"), prev.env_var("GOTOOLCHAIN")) {
            (_, Some(t)) | (Some(t), None) if !t.is_empty() && t != "local" && t != "auto" => (
                format!("GOTOOLCHAIN={t}"),
                format!("GOTOOLCHAIN={t} in the environment"),
                "unset GOTOOLCHAIN to run the go found on PATH".to_string(),
            ),
            _ => {
                let line = gomod_tc
                    .into_iter()
                    .chain(gomod_go)
                    .max_by(|a, b| a.version.cmp(&b.version));
                match line {
                    Some(l) => (
                        l.describe(),
                        l.describe(),
                        format!(
                            "put Go {} first on PATH to skip the switch, or export GOTOOLCHAIN=local to refuse it",
                            l.version
                        ),
                    ),
                    None => (
                        "a go/toolchain line in go.mod or go.work".to_string(),
                        "a go/toolchain line in go.mod or go.work".to_string(),
                        "export GOTOOLCHAIN=local to refuse the switch".to_string(),
                    ),
                }
            }
        };
        out.push(Finding {
            code: "go.toolchain_switch",
            severity: Severity::Info,
            pid: e.tgid,
            summary: format!(
                "go {from} ({}) re-executed go {to} ({}) because of {why}",
                prev.exe, e.exe
            ),
            cause,
            fix,
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

    /// `conda.env_mismatch` (conda envs and venvs alike): an entry point
    /// whose `#!` interpreter is another env's, or a binary of one env run
    /// while another is active.
    pub(super) fn rule_env_mismatch(
        &mut self,
        fs: &FsView,
        e: &Exec,
        id: &Identity,
        out: &mut Vec<Finding>,
    ) {
        let name = basename(&e.exe).to_string();
        let python_interp = id
            .interpreter
            .as_ref()
            .filter(|i| is_python_name(basename(i)));
        let interp_env = python_interp.and_then(|i| pyenv::env_of(fs, i));
        // An entry point whose `#!` interpreter lives in another env.
        if let (Some(interp), Some(env)) = (python_interp, &id.pyenv)
            && interp_env.as_ref().map(PyEnv::prefix) != Some(env.prefix())
            && self.once(format!("conda.shebang|{}|{interp}", e.exe), e.ktime_ns)
        {
            out.push(Finding {
                code: "conda.env_mismatch",
                severity: Severity::Warning,
                pid: e.tgid,
                summary: format!(
                    "{name} belongs to {} but its #! interpreter {interp} is {}",
                    env.label(),
                    interp_env
                        .as_ref()
                        .map(PyEnv::label)
                        .unwrap_or_else(|| "outside any env".into())
                ),
                cause: format!("#!{interp} in {}", e.exe),
                fix: format!(
                    "reinstall what provides {name} with the env's own interpreter: {}/bin/python -m pip install --force-reinstall --no-deps <package>",
                    env.prefix()
                ),
                evidence: ev(&[
                    ("exe", json!(e.exe)),
                    ("env", json!(env)),
                    ("interpreter", json!(interp)),
                    ("interpreter_env", json!(interp_env)),
                ]),
            });
            return;
        }
        // The env the process acts on: a script's interpreter's, else the binary's.
        let Some(env) = (if python_interp.is_some() {
            interp_env
        } else {
            id.pyenv.clone()
        }) else {
            return;
        };
        let active = active_env(fs, e);
        let env_c = canonical_prefix(fs, &env);
        let env_name = match &env {
            PyEnv::Conda { name, .. } => name.clone(),
            PyEnv::Venv { prefix } => prefix.clone(),
        };
        let (summary, cause, fix) = match &active {
            Some((_, _, a)) if *a == env_c => return,
            // A conda base env active by default (auto_activate_base) says
            // nothing about which venv a command should use.
            Some(("CONDA_PREFIX", _, _))
                if matches!(env, PyEnv::Venv { .. })
                    && e.env_var("CONDA_DEFAULT_ENV").is_none_or(|n| n == "base") =>
            {
                return;
            }
            Some((var, value, a)) => {
                let shown = if *var == "CONDA_PREFIX" {
                    format!(
                        "the active env is {} ({var}={value})",
                        e.env_var("CONDA_DEFAULT_ENV").unwrap_or(basename(a))
                    )
                } else {
                    format!("the active env is the venv {value} ({var}={value})")
                };
                let own = crate::fsview::join(a, &format!("bin/{}", basename(&e.exe)));
                let fix = if fs.stat(&own).is_some_and(|m| m.executable()) {
                    format!("run {own} (the active env's), or activate {env_name} first")
                } else if matches!(env, PyEnv::Conda { .. }) {
                    format!("conda activate {env_name}")
                } else {
                    format!("source {}/bin/activate", env.prefix())
                };
                (
                    format!(
                        "{name} ran {} from {}, but {shown}",
                        e.exe,
                        match &env {
                            PyEnv::Conda { name, .. } => format!("conda env {name}"),
                            PyEnv::Venv { prefix } => format!("venv {prefix}"),
                        }
                    ),
                    format!(
                        "{var}={value} in the environment; {} is {}",
                        e.exe,
                        if python_interp.is_some() {
                            format!("a script for {}'s interpreter", env.prefix())
                        } else {
                            format!("in {}", env.prefix())
                        }
                    ),
                    fix,
                )
            }
            None => {
                // Running a venv's or the base env's binaries by path is how
                // they are used without activation.
                let PyEnv::Conda { name: n, .. } = &env else {
                    return;
                };
                if n == "base" {
                    return;
                }
                (
                    format!(
                        "{name} ran {} from conda env {n}, but no conda env is active (CONDA_PREFIX unset)",
                        e.exe
                    ),
                    "CONDA_PREFIX unset: no conda env is active".to_string(),
                    format!("conda activate {n}"),
                )
            }
        };
        if !self.once(
            format!("conda.env|{}|{:?}", e.exe, active.as_ref().map(|a| &a.2)),
            e.ktime_ns,
        ) {
            return;
        }
        out.push(Finding {
            code: "conda.env_mismatch",
            severity: Severity::Warning,
            pid: e.tgid,
            summary,
            cause,
            fix,
            evidence: ev(&[
                ("exe", json!(e.exe)),
                ("env", json!(env)),
                ("CONDA_PREFIX", json!(e.env_var("CONDA_PREFIX"))),
                ("CONDA_DEFAULT_ENV", json!(e.env_var("CONDA_DEFAULT_ENV"))),
                ("VIRTUAL_ENV", json!(e.env_var("VIRTUAL_ENV"))),
            ]),
        });
    }

    /// `env.diverged`: compare with the last run of the same toolchain by the same user.
    pub(super) fn rule_env_diverged(
        &mut self,
        table: &ProcTable,
        e: &Exec,
        out: &mut Vec<Finding>,
    ) {
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
        let origin = environment_origin(&self.cfg.proc_root, e.tgid);
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
                let from = |o: &Option<Origin>| {
                    o.as_ref()
                        .map(|o| format!(" (environment from the {})", o.describe()))
                        .unwrap_or_default()
                };
                let assign = match &before {
                    Some(b) => format!("{var}={b}"),
                    None => format!("{var} unset"),
                };
                let fix = match &origin {
                    Some(o) if o.user => format!(
                        "set it in the unit: systemctl --user edit {} (Environment={}), or systemctl --user import-environment {var} from your shell",
                        o.unit,
                        before
                            .as_deref()
                            .map(|b| format!("{var}={b}"))
                            .unwrap_or_else(|| format!("{var}=")),
                    ),
                    Some(o) => format!(
                        "set it in the unit: systemctl edit {} (Environment= or EnvironmentFile=)",
                        o.unit
                    ),
                    None => match &before {
                        Some(b) => format!("export {var}={b}"),
                        None => format!("unset {var}"),
                    },
                };
                let secs = e.ktime_ns.saturating_sub(prev.ktime_ns) / 1_000_000_000;
                out.push(Finding {
                    code: "env.diverged",
                    severity: Severity::Warning,
                    pid: e.tgid,
                    summary: format!(
                        "{} ran with {var}={} but pid {} of the same user ran it with {var}={} {secs}s earlier",
                        basename(&e.exe),
                        show(&now),
                        prev.pid,
                        show(&before),
                    ),
                    cause: format!(
                        "{var}={} in this run's environment{}; {assign} in pid {}'s{}",
                        show(&now),
                        from(&origin),
                        prev.pid,
                        from(&prev.origin),
                    ),
                    fix,
                    evidence: ev(&[
                        ("exe", json!(e.exe)),
                        ("variable", json!(var)),
                        ("value", json!(now)),
                        ("previous_value", json!(before)),
                        ("previous_pid", json!(prev.pid)),
                        (
                            "environment_from",
                            json!(origin.as_ref().map(Origin::describe)),
                        ),
                        (
                            "previous_environment_from",
                            json!(prev.origin.as_ref().map(Origin::describe)),
                        ),
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
                origin,
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
        let (summary, cause, fix) = if all_enoent {
            (
                format!(
                    "`{name}` not found: {} PATH candidate{} tried, none exists",
                    tried.len(),
                    if tried.len() == 1 { "" } else { "s" }
                ),
                format!(
                    "no `{name}` in any PATH directory (PATH={})",
                    last.env_var("PATH").unwrap_or("unset")
                ),
                format!(
                    "install `{name}`, or add the directory that has it to PATH: export PATH=/that/dir:$PATH"
                ),
            )
        } else {
            let bad: Vec<&&Arc<Exec>> = failed.iter().filter(|f| f.errno != libc::ENOENT).collect();
            let reasons: Vec<String> = bad
                .iter()
                .map(|f| format!("{} ({})", f.filename, errno_name(f.errno)))
                .collect();
            let first = bad.first().map(|f| (f.filename.as_str(), f.errno));
            let fix = match first {
                Some((f, libc::EACCES)) => format!(
                    "chmod +x {f} (or make every directory above it searchable), or remove it from PATH"
                ),
                Some((f, libc::ENOEXEC)) => format!(
                    "{f} is not a program this kernel runs: rebuild it for this machine, or give the script a #! line"
                ),
                Some((f, _)) => {
                    format!("check {f} (exists? right architecture? its #! interpreter present?)")
                }
                None => String::new(),
            };
            (
                format!("`{name}` could not be run: {}", reasons.join(", ")),
                format!("execve refused: {}", reasons.join(", ")),
                fix,
            )
        };
        vec![Finding {
            code: "exec.not_found",
            severity: Severity::Error,
            pid: x.tgid,
            summary,
            cause,
            fix,
            evidence: ev(&[
                ("name", json!(name)),
                ("tried", Value::Array(tried)),
                ("PATH", json!(last.env_var("PATH"))),
                ("caller", json!(last.comm)),
            ]),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read_from_cgroup_paths() {
        let sys = "0::/system.slice/ci-runner.service\n";
        assert_eq!(
            origin_of_cgroup(sys),
            Some(Origin {
                unit: "ci-runner.service".into(),
                user: false
            })
        );
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/build.service\n";
        let o = origin_of_cgroup(user).unwrap();
        assert_eq!(o.unit, "build.service");
        assert!(o.user);
        assert_eq!(o.describe(), "systemd user unit build.service");
        // Hybrid hierarchy: the name=systemd line.
        let hybrid = "12:cpu,cpuacct:/\n1:name=systemd:/system.slice/cron.service\n0::/\n";
        assert_eq!(origin_of_cgroup(hybrid).unwrap().unit, "cron.service");
        // A login session, the user manager itself, or a container: none.
        for none in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/user.slice/user-1000.slice/user@1000.service\n",
            "0::/\n",
            "",
            "garbage",
        ] {
            assert_eq!(origin_of_cgroup(none), None, "{none}");
        }
    }
}
