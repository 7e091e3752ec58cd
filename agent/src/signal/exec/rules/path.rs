//! `path.shadowed`: PATH resolution for a bare name, the shim it was, the
//! candidates it hid, and the evidence that the winner is wrong.

use super::*;
use crate::signal::exec::codes;

/// What PATH resolution found for a bare command name.
pub(in crate::signal::exec) struct PathContext {
    pub(super) name: String,
    pub(super) path_var: String,
    pub(super) cands: Vec<Candidate>,
    pub(super) winner: usize,
    /// Executable later candidates that are other files, with identities.
    pub(super) shadowed: Vec<(Candidate, Identity)>,
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

impl ExecTracker {
    /// PATH resolution for a bare command name: the shim it was, if one,
    /// and the later candidates it hid (kept as context in the exec record).
    pub(in crate::signal::exec) fn path_context(
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
    pub(in crate::signal::exec) fn rule_path_shadowed(
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
            code: codes::PATH_SHADOWED,
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
}
