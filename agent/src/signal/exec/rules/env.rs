//! Environments: the conda env / venv a command acts on against the active
//! one, the same toolchain run with other settings (and where they came
//! from), and commands that could not be run at all.

use super::*;
use crate::signal::exec::codes;

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

impl ExecTracker {
    /// `conda.env_mismatch` (conda envs and venvs alike): an entry point
    /// whose `#!` interpreter is another env's, or a binary of one env run
    /// while another is active.
    pub(in crate::signal::exec) fn rule_env_mismatch(
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
                code: codes::CONDA_ENV_MISMATCH,
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
                let own = crate::process::fsview::join(a, &format!("bin/{}", basename(&e.exe)));
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
            code: codes::CONDA_ENV_MISMATCH,
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
    pub(in crate::signal::exec) fn rule_env_diverged(
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
            let mut names: Vec<&str> = crate::signal::exec::capture::DEFAULT_ENV_ALLOW
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
                    code: codes::ENV_DIVERGED,
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
            code: codes::EXEC_NOT_FOUND,
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
