//! The `agent` binary as users run it.

use std::{os::unix::process::CommandExt as _, process::Command};

use agent_tests::{agent_bin, json_lines, kernel_at_least, require_root, run_agent};

#[test]
fn check_reports_this_kernel_in_json() {
    require_root();
    let (status, out, err) = run_agent(&["check", "--format", "json"]);
    assert!(status.success(), "agent check failed: {err}\n{out}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let hook = |name: &str| {
        r["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("hook {name} missing"))["ok"]
            .as_bool()
            .unwrap()
    };
    for h in [
        "tracepoint",
        "raw_tracepoint",
        "tp_btf",
        "uprobe",
        "cgroup_sock_addr",
        "sock_ops",
        "cgroup_skb",
    ] {
        assert!(hook(h), "{h} should be available on this kernel");
    }
    // uprobe_multi links came in 6.6.
    assert_eq!(hook("uprobe_multi"), kernel_at_least(6, 6));
    // Kernels without CONFIG_KPROBES have no kprobe PMU; where they do, kprobes work.
    let has_kprobe_pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(hook("kprobe"), has_kprobe_pmu);
    let sig = |name: &str| {
        r["signals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["signal"] == name)
            .unwrap_or_else(|| panic!("signal {name} missing"))
            .clone()
    };
    assert_eq!(sig("exec")["state"], "active");
    assert_eq!(sig("exec")["hook"], "tracepoint");
    assert_eq!(sig("exit")["state"], "active");
    // The raw tracepoint reads `group_dead`, which sched_process_exit has
    // from 6.16 on; before, the tracepoint is chosen up front.
    let group_dead =
        std::fs::read_to_string("/sys/kernel/tracing/events/sched/sched_process_exit/format")
            .unwrap_or_default()
            .contains("group_dead");
    let exit_hook = if group_dead {
        "raw_tracepoint"
    } else {
        "tracepoint"
    };
    assert_eq!(sig("exit")["hook"], exit_hook, "{}", sig("exit"));
    assert_eq!(sig("lineage")["hook"], "raw_tracepoint");
    assert_eq!(r["usable"], true);
    let env = |name: &str| {
        r["environment"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .unwrap()["ok"]
            .clone()
    };
    assert_eq!(env("btf"), true);
    assert_eq!(env("tracefs"), true);
    assert_eq!(env("ring_buffer"), true);
}

#[test]
fn without_root_the_error_is_one_clear_line() {
    require_root();
    // --no-elevate: the loader's own one-line error.
    let out = Command::new(agent_bin())
        .args(["--format=json", "--no-elevate"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run agent as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    // 77: EX_NOPERM, apart from other failures.
    assert_eq!(out.status.code(), Some(77), "stderr: {err}");
    assert!(err.contains("run as root"), "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "stderr: {err}"
    );
    assert!(
        err.trim().lines().count() <= 2,
        "more than a clear line: {err}"
    );

    // Without privileges `agent check` tells what it can read and succeeds
    // on a kernel that has what the agent needs.
    let out = Command::new(agent_bin())
        .args(["check", "--format", "json"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run agent check as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(r["probed"], false);
    assert_eq!(r["usable"], true);
    assert!(
        r["environment"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "btf" && i["ok"] == true),
        "{text}"
    );
    assert!(text.contains("agent check --probe"), "{text}");
}

#[test]
fn trace_exits_with_the_commands_code_and_reports_its_tree() {
    require_root();
    let (status, out, err) = run_agent(&[
        "--format",
        "json",
        "trace",
        "--",
        "/bin/sh",
        "-c",
        "/bin/true one; exit 5",
    ]);
    assert_eq!(status.code(), Some(5), "stderr: {err}");
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["type"], "trace_report");
    assert_eq!(lines.last().unwrap()["exit_code"], 5);
    let execs: Vec<_> = lines.iter().filter(|l| l["type"] == "exec").collect();
    let sh = execs
        .iter()
        .find(|l| l["exe"] == "/bin/sh")
        .expect("sh exec");
    let tru = execs
        .iter()
        .find(|l| l["exe"] == "/bin/true")
        .expect("true exec");
    assert_eq!(tru["argv"], serde_json::json!(["/bin/true", "one"]));
    assert_eq!(tru["ppid"], sh["pid"]);
    // Only the command's tree: nothing else on the machine.
    assert!(execs.len() == 2, "unexpected execs: {execs:?}");
    for l in &lines {
        let t = l.to_string();
        assert!(t.starts_with("{\"type\":"), "type first: {t}");
    }
}

#[test]
fn trace_runs_the_command_as_the_sudo_user() {
    require_root();
    let out = Command::new(agent_bin())
        .args(["--format", "json", "trace", "--", "/usr/bin/id", "-u"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .expect("agent trace id");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().next().unwrap_or("").trim() == "65534",
        "id -u printed: {stdout}"
    );
}

#[test]
fn missing_tracefs_is_reported_by_check_and_mounted_by_the_agent() {
    require_root();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
    };
    // With debugfs mounted, its tracing/ directory mounts tracefs again
    // on first use (automount): out of the way too, put back at the end.
    let debugfs = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/kernel/debug"));
    if debugfs {
        let st = Command::new("umount")
            .args(["-l", "/sys/kernel/debug"])
            .status()
            .unwrap();
        assert!(st.success(), "umount /sys/kernel/debug");
    }
    // Unmount every tracefs (lazily: nothing else of ours holds it now).
    while mounted() {
        let target = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("tracefs"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .unwrap();
        let st = Command::new("umount")
            .arg("-l")
            .arg(&target)
            .status()
            .unwrap();
        assert!(st.success(), "umount {target}");
    }
    assert!(!mounted());
    // `agent check` changes nothing: it says tracefs is absent and how to mount it.
    let (_, out, err) = run_agent(&["check", "--format", "json"]);
    let still_absent = !mounted();
    // The agent itself mounts it when it starts.
    let (trace_status, _, trace_err) = run_agent(&["trace", "--", "true"]);
    let mounted_by_agent = mounted();
    // Whatever happens, leave tracefs (and debugfs) mounted for the rest of the suite.
    if !mounted() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
    if debugfs {
        let _ = Command::new("mount")
            .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
            .status();
    }
    let r: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let tracefs = r["environment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "tracefs")
        .unwrap()
        .clone();
    assert_eq!(tracefs["ok"], false, "{tracefs}");
    assert!(
        tracefs["detail"]
            .as_str()
            .unwrap()
            .contains("mount -t tracefs nodev /sys/kernel/tracing"),
        "{tracefs}"
    );
    assert!(still_absent, "agent check mounted tracefs");
    assert!(trace_status.success(), "{trace_err}");
    assert!(
        mounted_by_agent,
        "the agent mounted tracefs when it started"
    );
}

/// How many loaded BPF programs are named `name`.
fn programs_named(name: &str) -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .expect("bpftool");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    progs
        .as_array()
        .expect("program list")
        .iter()
        .filter(|p| p["name"] == name)
        .count()
}

/// `agent trace` gives its command's exit code back at once: releasing the
/// probes (~45 ms of kernel grace period per tracepoint link, over a second
/// in all) is left to a child that holds none of the caller's pipes, and it
/// still happens.
#[test]
fn trace_returns_at_once_and_its_probes_are_released_after() {
    require_root();
    // Programs of agents that ended just before (earlier tests) are still
    // being released by their exit children: count only once that is over,
    // so that what is left is what stays (another agent running here).
    let mut before = programs_named("exec_sched_tp");
    let settle = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut steady_since = std::time::Instant::now();
    while std::time::Instant::now() < settle
        && steady_since.elapsed() < std::time::Duration::from_secs(3)
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = programs_named("exec_sched_tp");
        if now != before {
            before = now;
            steady_since = std::time::Instant::now();
        }
    }
    let stamp = agent_tests::scratch("trace-exit").join("ended");
    // `output()` returns when the agent has exited and both pipes are closed.
    let (status, out, err) = run_agent(&[
        "--format",
        "json",
        "trace",
        "--",
        "/bin/sh",
        "-c",
        &format!("date +%s%N > {}; exit 7", stamp.display()),
    ]);
    let returned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert_eq!(status.code(), Some(7), "stderr: {err}");
    assert_eq!(json_lines(&out).last().unwrap()["type"], "trace_report");
    let ended: u128 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let late_ms = returned.saturating_sub(ended) / 1_000_000;
    assert!(
        late_ms < 800,
        "agent trace returned {late_ms} ms after its command ended"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = programs_named("exec_sched_tp");
        if now <= before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's programs are still loaded 15 s after it exited ({now} vs {before} before)"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `--bpf-log`: the programs' own diagnostics reach stderr (here the fork
/// of `agent trace`'s command, logged at info in the kernel); by default
/// nothing of the kind is written.
#[test]
fn bpf_log_forwards_the_programs_diagnostics_and_is_off_by_default() {
    require_root();
    let (status, _, err) = run_agent(&["--bpf-log", "info", "trace", "--", "true"]);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("bpf: agent trace: its command is pid "),
        "no kernel log line: {err}"
    );
    // The flag changes no choice of hook: the same fallbacks (if this
    // kernel needs any) as without it.
    let fallbacks = |e: &str| -> Vec<String> {
        e.lines()
            .filter(|l| l.contains("degraded") || l.contains("not collected"))
            .map(str::to_string)
            .collect()
    };
    let (_, _, plain) = run_agent(&["trace", "--", "true"]);
    assert_eq!(fallbacks(&err), fallbacks(&plain), "{err}");
    assert!(!err.contains("not collected"), "{err}");
    let (status, _, err) = run_agent(&["trace", "--", "true"]);
    assert!(status.success(), "{err}");
    assert!(!err.contains("bpf:"), "{err}");
}

/// `--without wire`: no program of the wire signal is attached to the
/// cgroup root while the agent runs (it would run on every packet of every
/// socket), and the agent says so; by default they are there.
#[test]
fn without_wire_attaches_nothing_to_the_packet_path() {
    require_root();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = agent::bpf::kernel::cgroup2_in_mounts(&mounts).expect("a cgroup v2 mount");
    let dir = agent_tests::scratch("without-wire");
    let seen = |args: &[&str], name: &str| {
        let out = dir.join(name);
        let script = format!("bpftool cgroup show {} > {}", root.display(), out.display());
        let mut argv: Vec<&str> = args.to_vec();
        argv.extend(["trace", "--", "/bin/sh", "-c", &script]);
        let (status, _, err) = run_agent(&argv);
        assert!(status.success(), "{err}");
        (std::fs::read_to_string(&out).unwrap(), err)
    };
    let (attached, err) = seen(&[], "default");
    assert!(attached.contains("wire_egress"), "{attached}\n{err}");
    let (attached, err) = seen(&["--without", "wire"], "without");
    assert!(!attached.contains("wire_"), "{attached}");
    assert!(err.contains("; without wire;"), "{err}");
    assert!(!err.contains("wire (cgroup_skb)"), "{err}");
}

/// A signal that cannot be turned off, or a misspelt one, is said at once,
/// by an unprivileged user too, before any elevation is attempted.
#[test]
fn a_wrong_without_is_refused_before_elevating() {
    require_root();
    for (arg, says) in [("exec", "process table"), ("wires", "one of: ")] {
        let out = Command::new(agent_bin())
            .args(["--without", arg])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run agent as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {err}");
        assert!(err.starts_with("agent: --without: "), "stderr: {err}");
        assert!(err.contains(says), "stderr: {err}");
        assert!(!err.contains("sudo"), "stderr: {err}");
        assert_eq!(err.trim().lines().count(), 1, "stderr: {err}");
    }
}

/// A bad value is a usage error (exit 2) wherever it was given: an enum
/// flag clap checks, the config file, an OpenTelemetry variable.
#[test]
fn usage_errors_exit_2_whatever_their_source() {
    let code = |c: &mut Command| {
        let out = c.output().expect("run agent");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (c, err) = code(Command::new(agent_bin()).args(["--otlp-protocol", "bogus", "check"]));
    assert_eq!(c, Some(2), "{err}");
    assert!(
        err.contains("grpc") && err.contains("http/protobuf"),
        "{err}"
    );
    let dir = agent_tests::scratch("usage-errors");
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, "format = \"yaml\"\n").unwrap();
    let (c, err) = code(
        Command::new(agent_bin())
            .arg("--config")
            .arg(&cfg)
            .arg("check"),
    );
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("format = \"yaml\""), "{err}");
    let (c, err) = code(
        Command::new(agent_bin())
            .args([
                "--otlp-endpoint",
                "http://127.0.0.1:1",
                "trace",
                "--",
                "true",
            ])
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "bogus"),
    );
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("bogus"), "{err}");
}
