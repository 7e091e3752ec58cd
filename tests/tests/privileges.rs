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
    // BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH, and SYS_ADMIN for the
    // uprobes attached to programs seen later.
    let want: u64 = (1 << 39) | (1 << 38) | (1 << 21) | (1 << 19) | (1 << 2);
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
                "{name} {f} {:#x} (want BPF, PERFMON, SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH)",
                cap_field(&st, f)
            );
        }
        assert_eq!(cap_field(&st, "CapInh:"), 0, "{name}");
        assert!(st.contains("NoNewPrivs:\t1"), "{name}: no_new_privs");
    }
    eprintln!(
        "{} threads, each CapEff = CapPrm = CapBnd = {want:#018x}, NoNewPrivs 1",
        tasks.len()
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
