//! `agent trace` without sudo through a running agent (`--trace-socket`):
//! the agent runs as root as a service would; the user is a real account
//! with no sudo rule, running its own copy of the agent binary.

use std::{path::PathBuf, process::Command, time::Duration, time::Instant};

use agent_tests::{json_lines, require_root, scratch, user_agent};

/// The account: created once, no sudo rule.
const USER: &str = "agentsvc";

fn uid_of(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid")
}

/// A live agent serving `sock` (returns once the socket is there).
fn service(tag: &str) -> (std::process::Child, PathBuf, PathBuf) {
    let dir = scratch(tag);
    let sock = dir.join("run/trace.sock");
    let out = dir.join("live.jsonl");
    let agent =
        agent_tests::start_live_agent_with(&out, &["--trace-socket", sock.to_str().unwrap()]);
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no socket at {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (agent, sock, out)
}

/// `agent trace` typed by USER in a bare login-like environment.
fn user_trace(
    sock: &std::path::Path,
    bin: &std::path::Path,
    argv: &[&str],
) -> std::process::Output {
    let home = agent_tests::ensure_user(USER, &[]);
    let uid = uid_of(USER);
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--init-groups", "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("USER={USER}"))
        .arg("PATH=/usr/local/bin:/usr/bin:/bin")
        .arg(format!("AGENT_TRACE_SOCKET={}", sock.display()))
        .arg(bin)
        .args(["--format", "json", "trace", "--"])
        .args(argv)
        .current_dir(&home)
        .output()
        .expect("agent trace as the user")
}

fn stop(mut agent: std::process::Child) {
    agent_tests::signal(agent.id(), "-TERM");
    let _ = agent.wait();
}

#[test]
fn a_user_without_sudo_traces_their_command_through_the_running_agent() {
    require_root();
    let (agent, sock, _) = service("svc-trace");
    let bin = user_agent();
    // While the user's command runs, root makes a refused connect of its
    // own: the user's report must not show it.
    let root_noise = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(700));
        let _ = std::net::TcpStream::connect("127.0.0.1:2");
    });
    let out = user_trace(
        &sock,
        &bin,
        &[
            "sh",
            "-c",
            "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 1))' 2>/dev/null; sleep 1.5; exit 3",
        ],
    );
    root_noise.join().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "the command's code\n{stderr}\n{stdout}"
    );
    assert!(!stderr.contains("sudo"), "no elevation: {stderr}");
    let lines = json_lines(&stdout);
    let verdict = agent_tests::of_type(&lines, "verdict");
    assert_eq!(verdict.len(), 1, "{stdout}");
    assert_eq!(verdict[0]["verdict"], "failed_network", "{stdout}");
    let refused = agent_tests::findings_of(&lines, "net.connect_refused");
    assert!(
        refused
            .iter()
            .any(|f| f.to_string().contains("127.0.0.1:1")),
        "the user's refused connect: {stdout}"
    );
    assert!(
        !stdout.contains("127.0.0.1:2"),
        "root's connect is not the user's business: {stdout}"
    );
    let uid = uid_of(USER);
    let execs = agent_tests::of_type(&lines, "exec");
    assert!(
        execs
            .iter()
            .any(|e| e["uid"] == uid && e.to_string().contains("python3")),
        "the user's python3 exec: {stdout}"
    );
    assert!(
        execs.iter().all(|e| e["uid"] == uid),
        "only the user's processes: {stdout}"
    );
    // The healthy twin: nothing wrong, nothing said, the code kept.
    let out = user_trace(&sock, &bin, &["true"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&stdout);
    assert_eq!(
        agent_tests::of_type(&lines, "verdict")[0]["verdict"],
        "ok",
        "{stdout}"
    );
    assert!(
        agent_tests::of_type(&lines, "finding").is_empty(),
        "{stdout}"
    );
    stop(agent);
}

/// A client that hands the service a pidfd of a process of its choosing.
const HOSTILE_CLIENT: &str = r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
fd = os.pidfd_open(int(sys.argv[2]))
hello = {"v": 1, "argv": ["x"], "ask": {"format": "json", "color": False, "ci": "None",
         "junit": False, "exit_codes": {"network": None, "toolchain": None}}}
socket.send_fds(s, [json.dumps(hello).encode() + b"\n"], [fd])
print(s.makefile().readline().strip())
"#;

#[test]
fn a_user_cannot_have_another_users_process_traced() {
    require_root();
    let (agent, sock, _) = service("svc-hostile");
    agent_tests::ensure_user(USER, &[]);
    let uid = uid_of(USER);
    // Somebody else's process (nobody's), and one of the user's own that
    // is not the client's child.
    let mut theirs = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    let mut own = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let script = scratch("svc-client").join("client.py");
    std::fs::write(&script, HOSTILE_CLIENT).unwrap();
    for (pid, why) in [
        (theirs.id(), "not your child"),
        (own.id(), "not your child"),
    ] {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--", "/usr/bin/python3"])
            .arg(&script)
            .arg(&sock)
            .arg(pid.to_string())
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(
            answer.contains("error") && answer.contains(why),
            "pid {pid}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The same client with a child of its own: followed.
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import subprocess, sys; c = subprocess.Popen(['sleep', '5']); \
             sys.argv = ['x', '{}', str(c.pid)]; exec(open('{}').read())",
            sock.display(),
            script.display()
        ))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("\"ready\""),
        "the user's own child is followed: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = theirs.kill();
    let _ = own.kill();
    let _ = theirs.wait();
    let _ = own.wait();
    stop(agent);
}
