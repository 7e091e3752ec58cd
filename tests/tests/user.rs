//! `agent trace` from a normal account, as people use it: real sudo (Debian's
//! defaults: env_reset, secure_path, use_pty), a real non-root user with a
//! supplementary group and a conda-style env first on its PATH, a real
//! terminal (tmux) for Ctrl-C. The test process is root only to set this up;
//! every agent here is started by the user.

use std::{path::PathBuf, process::Command, time::Duration, time::Instant};

use agent_tests::{json_lines, require_root, scratch, user_agent};

struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
    home: PathBuf,
    /// A supplementary group only this user has.
    extra_gid: u32,
}

fn id_of(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The test user (created once), with a NOPASSWD sudo rule.
fn user() -> User {
    require_root();
    assert!(
        std::path::Path::new("/usr/bin/sudo").is_file(),
        "sudo missing (apt-get install sudo; .ci/run does)"
    );
    let (name, group) = ("agentdev", "agentlab");
    agent_tests::ensure_user(name, &[group]);
    std::fs::write(
        "/etc/sudoers.d/agent-tests",
        format!("{name} ALL=(ALL) NOPASSWD: ALL\n"),
    )
    .expect("sudoers.d");
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .unwrap();
    let extra_gid = String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("group id");
    User {
        name,
        uid: id_of(&["-u", name]),
        gid: id_of(&["-g", name]),
        home: PathBuf::from(format!("/home/{name}")),
        extra_gid,
    }
}

/// A conda-style env in the user's home whose `go` (a real Go binary) comes
/// first on PATH, as `conda activate` leaves it.
fn conda_env(u: &User) -> PathBuf {
    let bin = u.home.join("miniconda3/envs/go-dev/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/lib/go-1.19/bin/go", bin.join("go")).expect("Debian's golang-go");
    chown_r(u, &u.home.join("miniconda3"));
    bin
}

fn chown_r(u: &User, p: &std::path::Path) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", u.uid, u.gid))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The user's login shell environment, with the conda env first on PATH.
fn shell_env(u: &User, env_bin: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), u.home.display().to_string()),
        ("USER".into(), u.name.into()),
        ("LOGNAME".into(), u.name.into()),
        ("SHELL".into(), "/bin/sh".into()),
        (
            "PATH".into(),
            format!("{}:/usr/local/bin:/usr/bin:/bin", env_bin.display()),
        ),
        (
            "CONDA_PREFIX".into(),
            env_bin.parent().unwrap().display().to_string(),
        ),
        ("CONDA_DEFAULT_ENV".into(), "go-dev".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// A command run by `u` from a shell whose environment is `env` (setpriv
/// changes uid, gid and groups like a login; `env -i` gives the shell's
/// environment and nothing of the test's).
fn as_user(u: &User, env: &[(String, String)], argv: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--init-groups")
        .arg("--")
        .arg("env")
        .arg("-i");
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.args(argv);
    c.current_dir(&u.home);
    c
}

const PROBE: &str = "echo PATH=$PATH; echo HOME=$HOME; echo USER=$USER; echo GROUPS=$(id -G); echo WHICH=$(command -v go); go version; umask; env | sed 's/^/ENV /'";

fn check_users_world(u: &User, env_bin: &std::path::Path, stdout: &str, records: &str) {
    check_users_world_from(u, env_bin, stdout, records, "sudo")
}

fn check_users_world_from(
    u: &User,
    env_bin: &std::path::Path,
    stdout: &str,
    records: &str,
    source: &str,
) {
    let line = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} line in the command's output:\n{stdout}"))
            .to_string()
    };
    assert!(
        line("PATH=").starts_with(&env_bin.display().to_string()),
        "the user's PATH: {stdout}"
    );
    assert_eq!(line("HOME="), u.home.display().to_string());
    assert_eq!(line("USER="), u.name);
    let groups: Vec<u32> = line("GROUPS=")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    assert!(
        groups.contains(&u.extra_gid) && groups[0] == u.gid,
        "supplementary group kept: {groups:?} (want {} in it)",
        u.extra_gid
    );
    assert_eq!(line("WHICH="), env_bin.join("go").display().to_string());
    for l in stdout.lines().filter_map(|l| l.strip_prefix("ENV ")) {
        for bad in ["OTEL_", "AGENT_", "SUDO_"] {
            assert!(
                !l.starts_with(bad),
                "the agent's own {l} reached the command"
            );
        }
    }
    let recs = json_lines(records);
    let go = recs
        .iter()
        .find(|r| r["type"] == "exec" && r["argv"][0] == "go")
        .unwrap_or_else(|| panic!("no exec of go in {records}"));
    assert_eq!(go["exe"], env_bin.join("go").display().to_string());
    assert_eq!(go["uid"], u.uid);
    let report = recs.last().unwrap();
    assert_eq!(report["type"], "trace_report");
    assert_eq!(report["run_as"]["uid"], u.uid);
    assert_eq!(report["run_as"]["source"], source, "{report}");
    // HOME is the user's: no fault the agent's own HOME would cause.
    for f in recs.iter().filter(|r| r["type"] == "finding") {
        assert_ne!(f["code"], "fs.permission_denied", "false finding: {f}");
    }
}

fn owner_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).expect("stat").uid()
}

#[test]
fn trace_under_sudo_runs_the_command_in_the_users_own_world() {
    let u = user();
    let env_bin = conda_env(&u);
    let agent = user_agent();
    let records = u.home.join("sudo-trace.jsonl");
    let _ = std::fs::remove_file(&records);
    // The user types: sudo OTEL_…=… AGENT_LOG=… agent --output ~/x trace -- sh -c '…'
    let out = as_user(
        &u,
        &shell_env(&u, &env_bin),
        &[
            "sudo",
            "OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20not-for-the-command",
            "AGENT_LOG=warn",
            agent.to_str().unwrap(),
            "--format",
            "json",
            "--output",
            records.to_str().unwrap(),
            "trace",
            "--",
            "sh",
            "-c",
            PROBE,
        ],
    )
    .output()
    .expect("sudo agent trace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let recs = std::fs::read_to_string(&records).unwrap_or_default();
    eprintln!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{}\nrecords:\n{recs}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    check_users_world(&u, &env_bin, &stdout, &recs);
    // --output was opened as the user: the file is theirs.
    assert_eq!(owner_of(&records), u.uid, "--output created as the user");
}

/// `agent trace -- sh -c PROBE` typed by the user without root, with
/// `setting` (one of the agent's own variables) in their shell: it elevates
/// through `tool`, says so in one line, and the command runs in the user's
/// world (the setting too: the user had it). Returns the agent's stderr.
fn self_elevated_trace(u: &User, setting: (&str, &str), tool: &str, source: &str) -> String {
    let env_bin = conda_env(u);
    let agent = user_agent();
    let records = u.home.join(format!("{tool}-self-trace.jsonl"));
    let _ = std::fs::remove_file(&records);
    let mut env = shell_env(u, &env_bin);
    env.push((setting.0.into(), setting.1.into()));
    let out = as_user(
        u,
        &env,
        &[
            agent.to_str().unwrap(),
            "--format",
            "json",
            "--output",
            records.to_str().unwrap(),
            "trace",
            "--",
            "sh",
            "-c",
            PROBE,
        ],
    )
    .output()
    .expect("agent trace as the user");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let recs = std::fs::read_to_string(&records).unwrap_or_default();
    eprintln!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nrecords:\n{recs}",
        out.status
    );
    assert!(out.status.success());
    assert!(
        stderr.contains(&format!("needs root: running `{tool} ")),
        "one line says it elevates: {stderr}"
    );
    // The environment travelled through the tool's own process, not argv.
    assert!(!stderr.contains("miniconda3/envs/go-dev/bin:"), "{stderr}");
    assert!(!stderr.contains("--elevated"), "{stderr}");
    let own = format!("ENV {}={}", setting.0, setting.1);
    let stdout: String = stdout
        .lines()
        .filter(|l| *l != own)
        .map(|l| format!("{l}\n"))
        .collect();
    check_users_world_from(u, &env_bin, &stdout, &recs, source);
    stderr
}

#[test]
fn trace_typed_without_sudo_elevates_itself_and_hands_the_environment_over() {
    // AGENT_LOG: the elevated agent uses it though sudo's env_reset dropped it.
    self_elevated_trace(&user(), ("AGENT_LOG", "warn"), "sudo", "sudo");
}

#[test]
fn without_sudo_rights_the_elevation_fails_with_one_line_and_no_elevate_stops_it() {
    require_root();
    // nobody has no sudo rule and no terminal: one line, exit 77 (EX_NOPERM).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(user_agent())
        .args(["trace", "--", "true"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    assert!(err.trim().lines().count() <= 2, "{err}");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(user_agent())
        .args(["--no-elevate", "trace", "--", "true"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(!err.contains("running `sudo"), "--no-elevate: {err}");
    assert!(err.contains("run as root"), "{err}");
}

#[test]
fn a_root_login_runs_the_command_as_root_and_the_report_says_so() {
    require_root();
    let out = Command::new(agent_tests::agent_bin())
        .args(["trace", "--", "id", "-u"])
        .env("PATH", "/usr/bin:/bin")
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "0");
    let first = stderr
        .lines()
        .find(|l| l.starts_with("agent trace: "))
        .unwrap_or_else(|| panic!("no report: {stderr}"));
    assert!(
        first.contains("ran as root"),
        "first line of the report: {first}"
    );
    assert!(
        stderr.contains("environment: the agent's own environment (a root login"),
        "{stderr}"
    );
}

#[test]
fn user_flag_runs_the_command_as_another_account() {
    let u = user();
    let out = Command::new(agent_tests::agent_bin())
        .args(["trace", "--user", u.name, "--keep-env", "KEEP_ME", "--"])
        .args([
            "sh",
            "-c",
            "id -un; echo HOME=$HOME; echo KEEP=$KEEP_ME; echo DROP=$DROP_ME; id -G",
        ])
        .env("KEEP_ME", "kept")
        .env("DROP_ME", "dropped")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], u.name);
    assert_eq!(lines[1], format!("HOME={}", u.home.display()));
    assert_eq!(lines[2], "KEEP=kept");
    assert_eq!(lines[3], "DROP=");
    assert!(
        lines[4]
            .split_whitespace()
            .any(|g| g == u.extra_gid.to_string()),
        "{stdout}"
    );
}

#[test]
fn output_symlink_planted_by_the_user_is_refused() {
    let u = user();
    let agent = user_agent();
    let victim = scratch("victim").join("owned-by-root");
    std::fs::write(&victim, "root's\n").unwrap();
    let link = u.home.join("out.jsonl");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let env = vec![
        ("HOME".to_string(), u.home.display().to_string()),
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
    ];
    // `sudo agent --output <output> trace -- true`: exit code and stderr.
    let with_output = |output: &std::path::Path| {
        let out = as_user(
            &u,
            &env,
            &[
                "sudo",
                agent.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
                "trace",
                "--",
                "true",
            ],
        )
        .output()
        .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = with_output(&link);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's\n");
    // A place the user cannot write is refused too, though the agent is root.
    let forbidden = scratch("forbidden");
    std::fs::set_permissions(
        &forbidden,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let target = forbidden.join("x.jsonl");
    let (code, err) = with_output(&target);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!target.exists());
}

#[test]
fn sigterm_goes_to_the_command_and_the_report_still_comes() {
    require_root();
    let out_file = scratch("sigterm").join("r.jsonl");
    let mut agent = Command::new(agent_tests::agent_bin())
        .args(["--format", "json", "--output"])
        .arg(&out_file)
        .args(["trace", "--", "sh", "-c", "sleep 31; echo not-reached"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the command to run.
    let t = Instant::now();
    let sleep_pid = loop {
        let out = Command::new("pgrep")
            .args(["-f", "^sleep 31$"])
            .output()
            .unwrap();
        if let Some(p) = String::from_utf8_lossy(&out.stdout).lines().next() {
            break p.trim().to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "command never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    agent_tests::signal(agent.id(), "-TERM");
    let t = Instant::now();
    let st = agent.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(st.code(), Some(143), "128 + SIGTERM");
    // The command's whole group got the signal (sleep is gone, or a zombie
    // about to be reaped by init).
    let gone = || {
        std::fs::read_to_string(format!("/proc/{sleep_pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    let t = Instant::now();
    while !gone() && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(), "sleep {sleep_pid} outlived the trace");
    let recs = json_lines(&std::fs::read_to_string(&out_file).unwrap());
    let report = recs.last().unwrap();
    assert_eq!(report["type"], "trace_report");
    assert_eq!(report["interrupted_by"], "SIGTERM");
    assert_eq!(report["exit_code"], 143);
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (apt-get install tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ctrl_c_in_a_real_terminal_stops_the_command_and_gives_the_report() {
    let u = user();
    let agent = user_agent();
    let session = format!("agent-it-{}", std::process::id());
    let env = vec![
        ("HOME".to_string(), u.home.display().to_string()),
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
        ("TERM".to_string(), "xterm".to_string()),
    ];
    let mut line = format!(
        "setpriv --reuid={} --regid={} --init-groups -- env -i",
        u.uid, u.gid
    );
    for (k, v) in &env {
        line.push_str(&format!(" {k}={v}"));
    }
    // The user's shell in a real terminal: sudo agent trace -- sleep 30.
    line.push_str(&format!(
        " sh -c 'sudo {} trace -- sleep 30; echo AGENT-EXIT=$?; sleep 60'",
        agent.display()
    ));
    tmux(&["kill-session", "-t", &session]);
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "50",
        &line,
    ]);
    let pane = || tmux(&["capture-pane", "-p", "-t", &session, "-S", "-100"]);
    let t = Instant::now();
    loop {
        let has_sleep = Command::new("pgrep")
            .args(["-u", &u.uid.to_string(), "-f", "^sleep 30$"])
            .output()
            .unwrap()
            .status
            .success();
        if has_sleep {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never started: {}",
            pane()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    tmux(&["send-keys", "-t", &session, "C-c"]);
    let t = Instant::now();
    let screen = loop {
        let p = pane();
        if p.contains("AGENT-EXIT=") {
            break p;
        }
        if t.elapsed() > Duration::from_secs(5) {
            let ps = Command::new("ps")
                .args(["-eo", "pid,ppid,pgid,tpgid,sid,tty,stat,user,comm,wchan:30"])
                .output()
                .unwrap();
            eprintln!("{}", String::from_utf8_lossy(&ps.stdout));
            if let Ok(p) = std::env::var("AGENT_IT_DEBUG_WAIT") {
                std::thread::sleep(Duration::from_secs(p.parse().unwrap_or(0)));
            }
            tmux(&["kill-session", "-t", &session]);
            panic!("no report 5 s after Ctrl-C:\n{p}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t.elapsed();
    tmux(&["kill-session", "-t", &session]);
    eprintln!("{screen}");
    assert!(took < Duration::from_secs(2), "report after {took:?}");
    assert!(
        screen.contains("AGENT-EXIT=130"),
        "exit 128 + SIGINT:\n{screen}"
    );
    assert!(
        screen.contains(&format!(
            "agent trace: `sleep 30` ran as {} (uid {})",
            u.name, u.uid
        )),
        "the report:\n{screen}"
    );
}

#[test]
fn trace_elevating_through_doas_hands_the_environment_over_too() {
    let u = user();
    assert!(
        std::path::Path::new("/usr/bin/doas").is_file(),
        "doas missing (apt-get install opendoas; .ci/run does)"
    );
    std::fs::write(
        "/etc/doas.conf",
        format!("permit nopass {} as root\n", u.name),
    )
    .unwrap();
    std::fs::set_permissions(
        "/etc/doas.conf",
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .unwrap();
    self_elevated_trace(&u, ("AGENT_ELEVATE", "doas"), "doas", "self_elevated");
}

/// A GitHub Actions step as a runner user types it: `sudo agent trace`
/// (sudo drops GITHUB_*; the agent reads them from the user's shell). A
/// network-caused failure gives one `::error` workflow command per problem
/// on stdout, the Markdown report in the job summary, `verdict=` in the
/// step's outputs, JUnit XML, every file still the user's, and the exit
/// code `--exit-code` asks for.
#[test]
fn under_github_actions_a_network_failure_is_annotated_summarised_and_retryable() {
    let u = user();
    let agent = user_agent();
    let (summary, outputs, junit) = (
        u.home.join("gh-summary.md"),
        u.home.join("gh-output"),
        u.home.join("junit.xml"),
    );
    for f in [&summary, &outputs] {
        let _ = std::fs::remove_file(f);
        // The runner creates them, owned by the runner's user.
        std::fs::write(f, "").unwrap();
        chown_r(&u, f);
    }
    let _ = std::fs::remove_file(&junit);
    let mut env = vec![
        ("HOME".to_string(), u.home.display().to_string()),
        ("USER".into(), u.name.into()),
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("GITHUB_ACTIONS".into(), "true".into()),
        ("CI".into(), "true".into()),
    ];
    env.push(("GITHUB_STEP_SUMMARY".into(), summary.display().to_string()));
    env.push(("GITHUB_OUTPUT".into(), outputs.display().to_string()));
    let connect = "import socket; socket.create_connection(('127.0.0.1', 1), timeout=5)";
    let out = as_user(
        &u,
        &env,
        &[
            "sudo",
            agent.to_str().unwrap(),
            "trace",
            "--exit-code",
            "network=75",
            "--junit",
            junit.to_str().unwrap(),
            "--",
            "/usr/bin/python3",
            "-c",
            connect,
        ],
    )
    .output()
    .expect("sudo agent trace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(out.status.code(), Some(75), "--exit-code network=75");
    // Workflow commands: `::name key=value,...::message`, one line each,
    // properties without a raw `:` or `,`, the message without a newline.
    let commands: Vec<&str> = stdout.lines().filter(|l| l.starts_with("::")).collect();
    for c in &commands {
        let rest = &c[2..];
        let (head, _message) = rest.split_once("::").unwrap_or_else(|| panic!("{c}"));
        let (name, props) = head.split_once(' ').unwrap_or((head, ""));
        assert!(["error", "warning", "notice"].contains(&name), "{c}");
        for p in props.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or_else(|| panic!("{c}"));
            assert!(k.chars().all(|c| c.is_ascii_lowercase()), "{c}");
            assert!(!v.contains(':'), "{c}");
        }
    }
    let error = commands
        .iter()
        .find(|c| c.starts_with("::error title=agent%3A net.connect_refused::"))
        .unwrap_or_else(|| panic!("no ::error for the refused connect: {commands:?}"));
    assert!(
        error.contains("%0Acause: ") && error.contains("%0Afix: "),
        "{error}"
    );
    assert!(
        commands.contains(&"::notice title=agent verdict::failed_network (net.connect_refused)"),
        "{commands:?}"
    );
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.starts_with("### agent trace: "), "{md}");
    assert!(
        md.contains("**Verdict:** failed\\_network (net.connect\\_refused)"),
        "{md}"
    );
    assert_eq!(
        std::fs::read_to_string(&outputs).unwrap(),
        "verdict=failed_network\n"
    );
    // JUnit: well-formed, one test case, its failure the network's.
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E\nr = E.parse(sys.argv[1]).getroot()\nassert r.tag == 'testsuites', r.tag\ncases = r.findall('testsuite/testcase')\nassert len(cases) == 1, cases\nf = cases[0].findall('failure')\nassert [x.get('type') for x in f] == ['failed_network'], [x.attrib for x in f]\nprint(f[0].get('message'))",
        ])
        .arg(&junit)
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).starts_with("net.connect_refused: "));
    for f in [&summary, &outputs, &junit] {
        assert_eq!(owner_of(f), u.uid, "{} is the user's", f.display());
    }
    // --ci=off: nothing of it.
    let out = as_user(
        &u,
        &env,
        &[
            "sudo",
            agent.to_str().unwrap(),
            "trace",
            "--ci=off",
            "--",
            "/usr/bin/python3",
            "-c",
            connect,
        ],
    )
    .output()
    .expect("sudo agent trace --ci=off");
    assert_eq!(out.status.code(), Some(1), "the command's own code");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("::error"));
    assert_eq!(
        std::fs::read_to_string(&outputs).unwrap(),
        "verdict=failed_network\n",
        "nothing appended"
    );
}
