//! Live mode's filters on real processes: `--pid` keeps a process tree,
//! `--uid` a user's processes (in the kernel), `--comm` a program name,
//! `--cgroup` a cgroup subtree; what is outside is neither printed nor
//! exported. Each runs two programs, one inside and one outside, both
//! started after the agent watches.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_tests::{json_lines, require_root, scratch, signal, start_live_agent_with};

const USER: &str = "agentfilter";

/// A copy of /bin/true named `name` in `dir` (one marker per program).
fn program(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::copy("/bin/true", &p).unwrap();
    p
}

/// The agent's records, once `want` (a program name) appeared in one or
/// 15 s passed; the agent is stopped.
fn records_until(mut agent: std::process::Child, out: &Path, want: &str) -> Vec<serde_json::Value> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if text.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Late records of the other program would have come by now.
    std::thread::sleep(Duration::from_millis(500));
    signal(agent.id(), "-TERM");
    let _ = agent.wait();
    json_lines(&std::fs::read_to_string(out).unwrap_or_default())
}

fn execs_of<'a>(lines: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|l| {
            l["type"] == "exec"
                && l["argv"][0]
                    .as_str()
                    .is_some_and(|a| a.rsplit('/').next() == Some(name))
        })
        .collect()
}

/// Run `first` outside the filter, then `second` inside it; assert that only
/// the second was reported.
fn check(lines: &[serde_json::Value], inside: &str, outside: &str) {
    assert_eq!(
        execs_of(lines, inside).len(),
        1,
        "{inside} missing: {lines:?}"
    );
    assert!(
        execs_of(lines, outside).is_empty(),
        "{outside} is outside the filter: {lines:?}"
    );
}

#[test]
fn pid_keeps_one_process_tree() {
    require_root();
    let dir = scratch("filter-pid");
    let out = dir.join("records.jsonl");
    let (inside, outside) = (program(&dir, "in-tree"), program(&dir, "off-tree"));
    // A shell that waits for a line, then runs `inside` as its child.
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!("read x; {}", inside.display()))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let agent = start_live_agent_with(&out, &["--all-execs", "--pid", &sh.id().to_string()]);
    assert!(Command::new(&outside).status().unwrap().success());
    writeln!(sh.stdin.take().unwrap(), "go").unwrap();
    assert!(sh.wait().unwrap().success());
    check(
        &records_until(agent, &out, "in-tree"),
        "in-tree",
        "off-tree",
    );
}

#[test]
fn uid_keeps_one_users_processes() {
    require_root();
    agent_tests::ensure_user(USER, &[]);
    let dir = scratch("filter-uid");
    let out = dir.join("records.jsonl");
    let (inside, outside) = (program(&dir, "as-user"), program(&dir, "as-root"));
    let agent = start_live_agent_with(&out, &["--all-execs", "--uid", USER]);
    assert!(Command::new(&outside).status().unwrap().success());
    let id = Command::new("id").args(["-u", USER]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&id.stdout).trim().parse().unwrap();
    assert!(
        Command::new(&inside)
            .uid(uid)
            .gid(uid)
            .status()
            .unwrap()
            .success()
    );
    check(&records_until(agent, &out, "as-user"), "as-user", "as-root");
}

#[test]
fn comm_keeps_one_program_name() {
    require_root();
    let dir = scratch("filter-comm");
    let out = dir.join("records.jsonl");
    let (inside, outside) = (program(&dir, "wanted-name"), program(&dir, "other-name"));
    let agent = start_live_agent_with(&out, &["--all-execs", "--comm", "wanted-name"]);
    assert!(Command::new(&outside).status().unwrap().success());
    assert!(Command::new(&inside).status().unwrap().success());
    check(
        &records_until(agent, &out, "wanted-name"),
        "wanted-name",
        "other-name",
    );
}

#[test]
fn cgroup_keeps_a_subtree_created_after_the_agent_started() {
    require_root();
    let dir = scratch("filter-cgroup");
    let out = dir.join("records.jsonl");
    let (inside, outside) = (program(&dir, "in-cgroup"), program(&dir, "off-cgroup"));
    let top = &cgroup_v2().join("agent-filter-test");
    let _ = std::fs::remove_dir(top.join("child"));
    let _ = std::fs::remove_dir(top);
    std::fs::create_dir(top).expect("cgroup v2 directory");
    let agent = start_live_agent_with(&out, &["--all-execs", "--cgroup", "agent-filter-test"]);
    // A cgroup made after the agent walked the subtree: found by path.
    std::fs::create_dir(top.join("child")).unwrap();
    assert!(Command::new(&outside).status().unwrap().success());
    // The shell moves itself into the cgroup, then becomes the program.
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {}",
            top.join("child/cgroup.procs").display(),
            inside.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let lines = records_until(agent, &out, "in-cgroup");
    let _ = std::fs::remove_dir(top.join("child"));
    let _ = std::fs::remove_dir(top);
    check(&lines, "in-cgroup", "off-cgroup");
}

/// cgroup v2's mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid hierarchy (the agent's own lookup).
fn cgroup_v2() -> PathBuf {
    let root = agent::app::filter::cgroup_root();
    assert!(root.join("cgroup.procs").is_file(), "a cgroup v2 mount");
    root
}

/// A pod as the kubelet and containerd lay it out: a cgroup
/// `kubepods/besteffort/pod<uid>/<container id>`, and in the container's
/// own mount namespace its hostname (the pod's name) and the service
/// account's namespace file.
#[test]
fn namespace_and_pod_keep_one_pods_processes() {
    require_root();
    let dir = scratch("filter-pod");
    let out = dir.join("records.jsonl");
    // A program that lives a moment, as a pod's processes do.
    let (inside, outside) = (dir.join("in-pod"), dir.join("off-pod"));
    std::fs::copy("/bin/sleep", &inside).unwrap();
    std::fs::copy("/bin/sleep", &outside).unwrap();
    // One that is gone before its record is read (a compiler a build ran):
    // known by its container's cgroup.
    let short = program(&dir, "short-in-pod");
    let top = cgroup_v2().join("kubepods");
    let ctr = top.join(format!(
        "besteffort/pod5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{}",
        "c0ffee".repeat(10) + "c0ff"
    ));
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("find {} -depth -type d -delete", top.display()))
        .status();
    std::fs::create_dir_all(&ctr).expect("cgroup v2 directories");
    std::fs::write(dir.join("hostname"), "runner-x\n").unwrap();
    let agent = start_live_agent_with(
        &out,
        &["--all-execs", "--namespace", "ci", "--pod", "runner-x"],
    );
    assert!(
        Command::new(&outside)
            .arg("0.5")
            .status()
            .unwrap()
            .success()
    );
    let script = format!(
        // /var/run is /run on Debian: the tmpfs holds the service account.
        "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && \
         echo ci > /run/secrets/kubernetes.io/serviceaccount/namespace && \
         mount --bind {host} /etc/hostname && echo $$ > {procs} && \
         {{ {inside} 1 & sleep 0.3; {short}; wait; }}",
        host = dir.join("hostname").display(),
        procs = ctr.join("cgroup.procs").display(),
        inside = inside.display(),
        short = short.display(),
    );
    let st = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .status()
        .unwrap();
    assert!(st.success(), "the pod's process");
    let lines = records_until(agent, &out, "short-in-pod");
    assert_eq!(execs_of(&lines, "short-in-pod").len(), 1, "{lines:?}");
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("find {} -depth -type d -delete", top.display()))
        .status();
    check(&lines, "in-pod", "off-pod");
}

#[test]
fn a_filter_with_a_subcommand_or_a_bad_value_is_a_usage_error() {
    for args in [
        &["--pid", "1", "trace", "--", "true"][..],
        &["--uid", "no-such-user-agentfilter"],
        &["--cgroup", "no/such/cgroup"],
        &["--pid", "0"],
    ] {
        let out = Command::new(agent_tests::agent_bin())
            .arg("--no-elevate")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
