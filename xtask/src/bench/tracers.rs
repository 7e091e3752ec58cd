//! Starting and stopping what is measured: the agent, bpftrace and the libbpf-tools peers.

#[allow(
    clippy::wildcard_imports,
    reason = "one module split in parts that share its items"
)]
use super::*;

pub(super) struct Tracer {
    pub(super) child: Child,
    pub(super) stats_file: Option<PathBuf>,
    /// The agent's start-up: spawn to its "watching" line (all attached).
    pub(super) startup: Option<Duration>,
}

pub(super) fn agent_bin() -> PathBuf {
    workspace_root().join("target/release/agent")
}

pub(super) fn wait_for_line(child: &mut Child, needle: &str, from_stderr: bool) -> Result<()> {
    let stream: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut r = BufReader::new(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("tracer exited before `{needle}`");
        }
        if line.contains(needle) {
            // Keep draining so the tracer never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while r.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            });
            return Ok(());
        }
    }
    bail!("timed out waiting for `{needle}`")
}

/// Start `mode`'s tracer; `agent_args` are added to the agent's (the lean mode's flags).
pub(super) fn start(mode: Mode, out_dir: &Path, agent_args: &[&str]) -> Result<Option<Tracer>> {
    match mode {
        Mode::Bare => Ok(None),
        Mode::Agent | Mode::AgentLean => {
            let stats = out_dir.join("agent.jsonl");
            let _ = std::fs::remove_file(&stats);
            let t0 = Instant::now();
            let mut child = Command::new(agent_bin())
                .args(["--format", "json", "--output"])
                .arg(&stats)
                .args(agent_args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting the agent (cargo xtask build first)")?;
            wait_for_line(&mut child, "agent: watching", true)?;
            Ok(Some(Tracer {
                child,
                stats_file: Some(stats),
                startup: Some(t0.elapsed()),
            }))
        }
        Mode::Bpftrace => {
            let mut child = Command::new("bpftrace")
                .args(["-e", BPFTRACE_SCRIPT])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace (apt-get install bpftrace)")?;
            wait_for_line(&mut child, "Attaching", false)?;
            // bpftrace prints "Attaching" just before attaching.
            std::thread::sleep(Duration::from_millis(500));
            Ok(Some(Tracer {
                child,
                stats_file: None,
                startup: None,
            }))
        }
        peer => {
            let tool = peer.libbpf_tool().context("not a libbpf-tools peer")?;
            let out = out_dir.join(format!("{}.out", peer.name()));
            let file = std::fs::File::create(&out)?;
            let child = Command::new(tool)
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {tool} (apt-get install libbpf-tools)"))?;
            // Its header sits in stdio's buffer (a file is not a terminal):
            // attached is when it holds a BPF link, plus a moment for the rest.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !holds_bpf_link(child.id()) {
                if Instant::now() > deadline {
                    bail!("{tool} attached nothing in 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300));
            Ok(Some(Tracer {
                child,
                stats_file: None,
                startup: None,
            }))
        }
    }
}

/// Whether process `pid` has a BPF link open.
pub(super) fn holds_bpf_link(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf_link"))
}

pub(super) fn stop(t: Tracer) -> Result<Option<serde_like::Stats>> {
    let Tracer {
        mut child,
        stats_file,
        ..
    } = t;
    terminate(child.id());
    let _ = child.wait();
    if stats_file.is_some() {
        wait_agent_probes_released();
    }
    Ok(stats_file.and_then(|f| serde_like::last_stats(&f)))
}

/// The agent exits before the kernel has released its probes (a child of it
/// takes the ~1.5 s of grace periods): wait until its programs are gone, so
/// the next repetition's bare run is really bare.
pub(super) fn wait_agent_probes_released() {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() else {
            return;
        };
        if !String::from_utf8_lossy(&out.stdout).contains(" name exec_sched_tp ") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bench: the agent's programs were still loaded 20 s after it exited");
}

pub(super) fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
