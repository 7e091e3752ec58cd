//! The README's first command, run from a normal account as a new user would:
//! `rustup toolchain install && cargo xtask install && agent`, with rustup in
//! the user's home (a copy of the pinned toolchains, owned by the user) and a
//! NOPASSWD sudo rule. Builds as the user; only the copy to /usr/local/bin is
//! elevated; the installed `agent` elevates itself.

use std::{
    io::BufRead as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_tests::{json_lines, require_root};

const USER: &str = "agentbuild";

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().expect("sh");
    assert!(st.success(), "{cmd}: {st}");
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn channel(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .map(|v| {
            v.trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .expect("channel")
}

/// A user with rustup of its own (the pinned toolchains copied, as if it
/// had installed them itself) and a checkout of this workspace.
fn prepare() -> (u32, u32, PathBuf) {
    require_root();
    assert!(
        Path::new("/usr/bin/sudo").is_file(),
        "sudo missing (.ci/run installs it)"
    );
    agent_tests::ensure_user(USER, &[]);
    std::fs::write(
        "/etc/sudoers.d/agent-install-test",
        format!("{USER} ALL=(ALL) NOPASSWD: ALL\n"),
    )
    .unwrap();
    let home = PathBuf::from(format!("/home/{USER}"));
    let id = |a: &str| -> u32 {
        let o = Command::new("id").args([a, USER]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    let (uid, gid) = (id("-u"), id("-g"));
    // rustup as it installs into a home: ~/.rustup and ~/.cargo/bin.
    let root_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let rustup_home =
        std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{root_home}/.rustup"));
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{root_home}/.cargo"));
    let ws = workspace();
    let wanted = [
        channel(&ws.join("rust-toolchain.toml")),
        channel(&ws.join("agent-ebpf/rust-toolchain.toml")),
    ];
    sh(&format!(
        "rm -rf {h}/.rustup {h}/.cargo {h}/agent {h}/.cache; mkdir -p {h}/.rustup/toolchains {h}/.cargo",
        h = home.display()
    ));
    for t in std::fs::read_dir(format!("{rustup_home}/toolchains")).unwrap() {
        let t = t.unwrap().path();
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        if wanted.iter().any(|w| name.starts_with(&format!("{w}-"))) {
            sh(&format!(
                "cp -a {} {}/.rustup/toolchains/",
                t.display(),
                home.display()
            ));
        }
    }
    sh(&format!(
        "cp -a {rustup_home}/settings.toml {h}/.rustup/ 2>/dev/null || true; cp -a {cargo_home}/bin {h}/.cargo/",
        h = home.display()
    ));
    // The checkout: the workspace's files as they are now.
    let files = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&ws)
        .output()
        .unwrap();
    assert!(files.status.success(), "git ls-files");
    let dst = home.join("agent");
    for f in files.stdout.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let rel = Path::new(std::str::from_utf8(f).unwrap());
        let (from, to) = (ws.join(rel), dst.join(rel));
        if !from.is_file() {
            continue;
        }
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    sh(&format!("chown -R {uid}:{gid} {}", home.display()));
    (uid, gid, home)
}

fn as_user(uid: u32, gid: u32, home: &Path, script: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .args(["--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("USER={USER}"))
        .arg(format!("LOGNAME={USER}"))
        .arg(format!(
            "PATH={}/.cargo/bin:/usr/local/bin:/usr/bin:/bin",
            home.display()
        ));
    // A shared bpf-linker cache (`.ci/run` exports one, as a CI runner's
    // tool cache would be): the user reuses what root's `cargo xtask setup`
    // built instead of spending two minutes on it again. The cold figure,
    // bpf-linker included, is `cargo xtask measure-install`'s.
    if let Some(dir) = std::env::var_os("AGENT_TOOLS_DIR") {
        c.arg({
            let mut a = std::ffi::OsString::from("AGENT_TOOLS_DIR=");
            a.push(dir);
            a
        });
    }
    c.args(["sh", "-c", script]).current_dir(home.join("agent"));
    c
}

fn root_owned_under(dir: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-uid", "0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_first_command_works_from_a_normal_account() {
    let (uid, gid, home) = prepare();
    let _ = std::fs::remove_file("/usr/local/bin/agent");
    sh(
        "rm -f /usr/local/share/man/man1/agent.1 /usr/local/share/bash-completion/completions/agent \\
        /usr/local/share/zsh/site-functions/_agent /usr/local/share/fish/vendor_completions.d/agent.fish",
    );
    // 1. `rustup toolchain install && cargo xtask install`: the agent is
    //    built by the user, in the user's own target/ and caches (bpf-linker
    //    too, unless a shared AGENT_TOOLS_DIR has it).
    let t = Instant::now();
    let out = as_user(
        uid,
        gid,
        &home,
        "rustup toolchain install && cargo xtask install",
    )
    .output()
    .expect("cargo xtask install");
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "install took {took:?}\n{}",
        err.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "install failed: {err}");
    if std::env::var_os("AGENT_TOOLS_DIR").is_some() {
        assert!(
            !err.contains("building bpf-linker"),
            "the shared AGENT_TOOLS_DIR's bpf-linker was not reused: {err}"
        );
    }
    assert!(
        err.contains("copying with `sudo install -m 0755"),
        "says before it elevates: {err}"
    );
    let m = std::fs::metadata("/usr/local/bin/agent").expect("installed");
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "owner and mode");
    // The man page and completions, where man and the shells look.
    for f in [
        "man/man1/agent.1",
        "bash-completion/completions/agent",
        "zsh/site-functions/_agent",
        "fish/vendor_completions.d/agent.fish",
    ] {
        let m = std::fs::metadata(Path::new("/usr/local/share").join(f)).expect(f);
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o644), "{f}");
    }
    let out = as_user(
        uid,
        gid,
        &home,
        "man -w agent && MANWIDTH=80 man agent | grep -c -- --otlp-endpoint && \
         bash -c '. /usr/local/share/bash-completion/completions/agent && complete -p agent'",
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            // Debian's /usr/local/man is a link to /usr/local/share/man.
            && text.lines().any(|l| l.starts_with("/usr/local/") && l.ends_with("man/man1/agent.1"))
            && text.contains("complete -o bashdefault -o default -o nosort -F _agent agent"),
        "man and bash completion as the user: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        root_owned_under(&home),
        Vec::<String>::new(),
        "root-owned files in the user's home"
    );

    // 2. `agent check` as the user: what it can tell, exit 0.
    let out = as_user(uid, gid, &home, "agent check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "agent check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("btf") && text.contains("agent check --probe"),
        "{text}"
    );

    // 3. `agent trace -- true`: elevates, runs, reports.
    let out = as_user(uid, gid, &home, "agent trace -- id -un")
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{o}{e}");
    assert_eq!(o.trim(), USER);
    assert!(e.contains(&format!("ran as {USER}")), "{e}");

    // 4. A few seconds of `agent`: a tool exec is seen.
    let records = home.join("live.jsonl");
    let mut agent = as_user(
        uid,
        gid,
        &home,
        &format!("exec agent --format json --output {}", records.display()),
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(agent.stderr.take().unwrap());
    let mut line = String::new();
    let t = Instant::now();
    while !line.contains("agent: watching") {
        line.clear();
        assert!(
            lines.read_line(&mut line).unwrap() > 0,
            "agent ended before watching"
        );
        assert!(t.elapsed() < Duration::from_secs(30));
    }
    let go = as_user(uid, gid, &home, "/usr/lib/go-1.19/bin/go version")
        .output()
        .unwrap();
    assert!(go.status.success());
    let t = Instant::now();
    let seen = loop {
        let text = std::fs::read_to_string(&records).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("\"type\":\"exec\"") && l.contains("go-1.19/bin/go"))
        {
            break true;
        }
        if t.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // sudo relays SIGINT to the agent, which stops at once.
    agent_tests::signal(agent.id(), "-INT");
    let st = agent.wait().unwrap();
    assert!(
        seen,
        "no exec of go in {}",
        std::fs::read_to_string(&records).unwrap_or_default()
    );
    assert!(st.success(), "agent after SIGINT: {st}");
    let _ = json_lines(&std::fs::read_to_string(&records).unwrap());
    assert_eq!(
        std::fs::metadata(&records).unwrap().uid(),
        uid,
        "--output belongs to the user"
    );
    assert_eq!(
        root_owned_under(&home),
        Vec::<String>::new(),
        "root-owned files after running"
    );
    eprintln!("install as a normal user: {took:?}");

    // 5. Plain `cargo test` in the same checkout, as the user: every unit
    //    test (the root tests are not a default member) is green without root.
    let t = Instant::now();
    let out = as_user(uid, gid, &home, "cargo test 2>&1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .collect();
    eprintln!("cargo test as {USER}: {:?}, {results:?}", t.elapsed());
    assert!(out.status.success(), "cargo test as a user failed:\n{text}");
    let passed: u64 = results
        .iter()
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum();
    assert!(passed >= 100, "{passed} unit tests ran: {results:?}");
}
