//! The Go rules: a go.mod / go.work need the winner cannot meet, GOROOT
//! naming another installation, toolchain switches and their downloads.

use super::*;
use crate::process::endpoints::EndpointSource;
use crate::signal::exec::codes;

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

impl ExecTracker {
    /// Remember a `go` that will download another toolchain (Go >= 1.21
    /// switching for its go.mod / go.work or GOTOOLCHAIN), so a failed
    /// fetch from GOPROXY is explained as that download.
    pub(in crate::signal::exec) fn note_switch(
        &mut self,
        e: &Exec,
        id: &Identity,
        go_lines: &[gomod::Line],
    ) {
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

    /// `go.toolchain_download_failed`: a network, TLS or HTTP failure of a
    /// `go` that was switching toolchains, towards its GOPROXY.
    pub fn toolchain_download_failed(
        &mut self,
        f: &Finding,
        endpoint: Option<&EndpointSource>,
        now: u64,
    ) -> Option<Finding> {
        if !["net.", "tls.", "http."]
            .iter()
            .any(|p| f.code.starts_with(p))
            || f.severity < Severity::Error
        {
            return None;
        }
        let sw = self.switching.get(&f.pid)?.clone();
        let src = endpoint.filter(|s| s.variable == "GOPROXY")?;
        let proxy = src.value.clone();
        if !self.once(
            format!("go.toolchain_download_failed|{}|{}", f.pid, sw.to),
            now,
        ) {
            return None;
        }
        Some(Finding {
            code: codes::GO_TOOLCHAIN_DOWNLOAD_FAILED,
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

    /// `go.version_too_old`: go.mod / go.work needs a newer Go than the one
    /// that ran, it cannot switch, and nothing later on PATH would do.
    pub(in crate::signal::exec) fn rule_go_version_required(
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
            code: codes::GO_VERSION_TOO_OLD,
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
    pub(in crate::signal::exec) fn rule_goroot_mismatch(
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
            code: codes::GO_GOROOT_MISMATCH,
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
    pub(in crate::signal::exec) fn rule_toolchain_switch(
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
            code: codes::GO_TOOLCHAIN_SWITCH,
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
}
