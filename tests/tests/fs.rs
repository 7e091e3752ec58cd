//! File-access faults of toolchain processes, for real: an unprivileged
//! `go build` with a root-owned GOCACHE, a go.work under a 750 directory read
//! by another user, a write under a read-only bind mount in a conda-style
//! prefix; a clean build gives no finding.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use agent_tests::{of_type, scratch, trace_json, trace_json_with};
use serde_json::Value;

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn fs_findings(lines: &[Value]) -> Vec<&Value> {
    of_type(lines, "finding")
        .into_iter()
        .filter(|f| f["code"].as_str().unwrap_or("").starts_with("fs."))
        .collect()
}

fn go_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.go"), "package main\nfunc main() {}\n").unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    for p in [dir.to_path_buf(), dir.join("src"), dir.join("home")] {
        mode(&p, 0o777);
    }
}

/// The command as the unprivileged account `nobody`, with `env` handed over
/// (`agent trace --user nobody --keep-env …`).
fn as_nobody(argv: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let keep: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
    let keep = keep.join(",");
    let mut opts = vec!["--user", "nobody"];
    if !keep.is_empty() {
        opts.extend(["--keep-env", keep.as_str()]);
    }
    trace_json_with(
        &opts,
        &argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        env,
    )
}

#[test]
fn root_owned_gocache_blocks_an_unprivileged_build() {
    let d = scratch("gocache");
    go_project(&d);
    std::fs::create_dir_all(d.join("gocache")).unwrap();
    mode(&d.join("gocache"), 0o755);
    let (src, home, cache) = (d.join("src"), d.join("home"), d.join("gocache"));
    let script = format!(
        "cd {} && go build -o {}/out main.go",
        src.display(),
        home.display()
    );
    let lines = as_nobody(
        &["/bin/sh", "-c", &script],
        &[
            ("HOME", home.to_str().unwrap()),
            ("GOCACHE", cache.to_str().unwrap()),
            ("GO111MODULE", "off"),
        ],
    );
    let f = fs_findings(&lines);
    assert_eq!(f.len(), 1, "{f:#?}");
    let e = &f[0]["evidence"];
    assert_eq!(f[0]["code"], "fs.permission_denied");
    assert_eq!(e["errno"], "EACCES");
    assert_eq!(e["uid"], 65534);
    assert_eq!(e["blocking_path"], cache.to_str().unwrap());
    assert_eq!(e["blocking_owner_uid"], 0);
    assert_eq!(e["blocking_mode"], "755");
    assert_eq!(e["needs"], "write");
    assert!(e["role"].as_str().unwrap().starts_with("GOCACHE"), "{e}");
    assert!(e["count"].as_u64().unwrap() >= 1);
    assert!(
        e["path"]
            .as_str()
            .unwrap()
            .starts_with(cache.to_str().unwrap())
    );
}

#[test]
fn go_work_under_a_750_directory_read_by_another_user() {
    let d = scratch("gowork");
    go_project(&d);
    let proj = d.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("go.work"), "go 1.19\n").unwrap();
    mode(&proj, 0o750);
    let (src, home) = (d.join("src"), d.join("home"));
    let gowork = proj.join("go.work");
    let script = format!("cd {} && go list ./...", src.display());
    let lines = as_nobody(
        &["/bin/sh", "-c", &script],
        &[
            ("HOME", home.to_str().unwrap()),
            ("GOCACHE", home.join("cache").to_str().unwrap()),
            ("GOWORK", gowork.to_str().unwrap()),
        ],
    );
    let f = fs_findings(&lines);
    let hit = f
        .iter()
        .find(|x| x["evidence"]["path"] == gowork.to_str().unwrap())
        .unwrap_or_else(|| panic!("no fault on go.work: {f:#?}"));
    let e = &hit["evidence"];
    assert_eq!(e["blocking_path"], proj.to_str().unwrap());
    assert_eq!(e["blocking_mode"], "750");
    assert_eq!(e["needs"], "search");
    assert_eq!(e["role"], "a go.work");
}

#[test]
fn write_under_a_read_only_bind_mount_in_a_conda_prefix() {
    let d = scratch("rofs");
    let env = d.join("conda/envs/ro");
    std::fs::create_dir_all(env.join("conda-meta")).unwrap();
    std::fs::create_dir_all(env.join("lib")).unwrap();
    let lib = env.join("lib");
    let sh = |args: &[&str]| {
        assert!(
            Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success(),
            "{args:?}"
        )
    };
    sh(&[
        "mount",
        "--bind",
        lib.to_str().unwrap(),
        lib.to_str().unwrap(),
    ]);
    sh(&["mount", "-o", "remount,bind,ro", lib.to_str().unwrap()]);
    let target = lib.join("site.py");
    let code = format!(
        "try:\n open('{}','w')\nexcept OSError:\n pass",
        target.display()
    );
    let lines = trace_json(&["python3".to_string(), "-c".into(), code], &[]);
    let _ = Command::new("umount").arg(&lib).status();
    let f = fs_findings(&lines);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0]["code"], "fs.read_only");
    let e = &f[0]["evidence"];
    assert_eq!(e["errno"], "EROFS");
    assert_eq!(e["path"], target.to_str().unwrap());
    assert_eq!(e["blocking_path"], lib.to_str().unwrap());
    assert!(e["role"].as_str().unwrap().contains("conda env ro"), "{e}");
}

#[test]
fn a_clean_build_has_no_file_finding() {
    let d = scratch("cleanbuild");
    go_project(&d);
    let (src, home) = (d.join("src"), d.join("home"));
    let script = format!(
        "cd {} && go build -o {}/out main.go",
        src.display(),
        home.display()
    );
    let lines = as_nobody(
        &["/bin/sh", "-c", &script],
        &[
            ("HOME", home.to_str().unwrap()),
            ("GOCACHE", home.join("cache").to_str().unwrap()),
            ("GO111MODULE", "off"),
        ],
    );
    assert_eq!(lines.last().unwrap()["exit_code"], 0, "the build works");
    assert_eq!(fs_findings(&lines), Vec::<&Value>::new());
}

#[test]
fn agent_trace_tracks_a_command_that_is_not_a_tool() {
    let d = scratch("notatool");
    let locked = d.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    mode(&d, 0o755);
    mode(&locked, 0o755);
    let target = locked.join("f");
    let script = format!("touch {}", target.display());
    let lines = as_nobody(&["/bin/sh", "-c", &script], &[]);
    let f = fs_findings(&lines);
    assert_eq!(f.len(), 1, "{f:#?}");
    let e = &f[0]["evidence"];
    assert_eq!(e["path"], target.to_str().unwrap());
    assert_eq!(e["blocking_path"], locked.to_str().unwrap());
    assert!(e["exe"].as_str().unwrap().ends_with("/touch"), "{e}");
}
