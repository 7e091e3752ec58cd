//! The toolchain rules. Each makes a finding only with evidence that
//! something is wrong or about to be (a setting the winner contradicts, a
//! requirement it cannot meet), and says which setting decided it and what
//! to type.

use std::{collections::HashMap, sync::Arc};

use serde_json::{Value, json};

use super::{
    EnvSeen, ExecAnalysis, ExecTracker, Identity, Shadowed, bare_name, compared, gomod,
    gomod::GoVersion,
    is_python_name,
    pathres::{self, CandState, Candidate},
    shims,
};
use crate::{
    events::{Exec, Exit},
    finding::{Finding, Severity, errno_name, evidence as ev},
    process::fsview::{FsView, basename, parent},
    process::pyenv::{self, PyEnv},
    process::table::ProcTable,
    scrub::url::redact_urls,
};

mod env;
mod go;
mod path;

pub use env::{Origin, environment_origin, origin_of_cgroup};
pub use go::Switch;
pub(in crate::signal::exec) use path::PathContext;

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
