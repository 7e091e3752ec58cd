//! The two ways the agent runs: live (`agent`) and around one command
//! (`agent trace -- cmd`). Both feed decoded events through the process
//! table and the analyzer and print what they produce.
//!
//! Owns: the consumer loop, selection of what is shown, the trace report.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    bpf::collector::Collector,
    bpf::hooks::Choice,
    events::{Event, Exec, Exit, Tcp},
    finding::Finding,
    process::fsview::basename,
    process::table::ProcTable,
    signal::exec::AnalysisConfig,
    signal::exec::Analyzer,
    signal::exec::ExecAnalysis,
    signal::tcp::{ConnReport, NetAnalyzer, NetConfig},
    signal::wire::{DnsReport, TlsReport, WireAnalyzer, WireConfig, WireOutput},
    sink::output::{self, Format, Style},
};

/// Options shared by both modes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub format: Format,
    pub color: bool,
    /// Show every exec, not only toolchain ones.
    pub all_execs: bool,
    pub env_allow: Vec<String>,
    pub analysis: AnalysisConfig,
    /// OTLP export; `None` prints locally only.
    pub otlp: Option<crate::sink::otlp::OtlpConfig>,
    /// Serve /healthz and /readyz here (live mode).
    pub health_addr: Option<String>,
    /// Thresholds of `net.slow_connect`.
    pub net: NetConfig,
    /// Thresholds of the TLS and DNS findings.
    pub wire: WireConfig,
    /// Kubernetes API endpoint (a `kubectl proxy` sidecar) for pod names.
    pub k8s_api: Option<String>,
    /// The process exits right after the run: the probes are left to
    /// [`crate::app::teardown::exit`] to detach instead of being detached here.
    pub exit_after: bool,
    /// Who `agent trace` runs its command as; found from the ancestry when unset.
    pub invoker: Option<crate::process::invoker::Invoker>,
}

/// The analysis settings, with pod names from the Kubernetes API when
/// `--k8s-api` is set (refreshed every 30 s in the background).
fn analysis_config(opts: &RunOptions) -> AnalysisConfig {
    let mut a = opts.analysis.clone();
    if let Some(url) = &opts.k8s_api {
        let dir = crate::process::k8s::PodDirectory::default();
        let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        crate::process::k8s::spawn_pod_refresher(
            url.clone(),
            node,
            dir.clone(),
            Duration::from_secs(30),
        );
        a.pods = Some(dir);
    }
    a
}

impl RunOptions {
    fn collector_options(&self) -> crate::bpf::collector::CollectorOptions {
        crate::bpf::collector::CollectorOptions {
            env_allow: self.env_allow.clone(),
            tools: self.analysis.tools.clone(),
            env_all_execs: self.all_execs || self.analysis.all,
            // With --all-execs / --analyse-all every connection is an event.
            tcp_quiet_ns: if self.all_execs || self.analysis.all {
                0
            } else {
                crate::bpf::collector::DEFAULT_TCP_QUIET_NS
            },
            track_own_children: false,
        }
    }
}

/// Shutdown must finish within 2 s even with the endpoint down.
const OTLP_SHUTDOWN: Duration = Duration::from_millis(600);

/// Start the exporter (after privileges are dropped: its threads inherit them).
fn start_otlp(
    opts: &RunOptions,
    offset: i128,
    root: Option<(u32, crate::sink::otlp::RootSpan)>,
) -> anyhow::Result<Option<crate::sink::otlp::Otlp>> {
    match &opts.otlp {
        None => Ok(None),
        Some(cfg) => {
            let o = crate::sink::otlp::Otlp::start(cfg, offset, root)
                .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
            tracing::info!(
                traces = %cfg.traces.endpoint,
                metrics = %cfg.metrics.endpoint,
                protocol = cfg.traces.protocol.name(),
                "exporting OTLP"
            );
            Ok(Some(o))
        }
    }
}

/// Everything the pipeline produced for one event, for the printer or a test.
#[derive(Debug, Clone)]
pub enum Output {
    Exec {
        exec: Arc<Exec>,
        analysis: Box<ExecAnalysis>,
    },
    Exit {
        exit: Exit,
        name: String,
        duration_ns: Option<u64>,
        /// The process was analysed (toolchain or descendant).
        analysed: bool,
    },
    Finding {
        finding: Finding,
        ktime_ns: u64,
    },
    Tcp {
        tcp: Box<Tcp>,
        report: Box<ConnReport>,
        /// The connecting process is analysed (toolchain or descendant).
        analysed: bool,
    },
    Tls {
        report: Box<TlsReport>,
        analysed: bool,
    },
    Dns {
        report: Box<DnsReport>,
        analysed: bool,
    },
}

impl Output {
    /// The process an output concerns.
    pub fn pid(&self) -> u32 {
        match self {
            Output::Exec { exec, .. } => exec.tgid,
            Output::Exit { exit, .. } => exit.tgid,
            Output::Finding { finding, .. } => finding.pid,
            Output::Tcp { tcp, .. } => tcp.tgid,
            Output::Tls { report, .. } => report.owner.pid,
            Output::Dns { report, .. } => report.owner.pid,
        }
    }
}

/// Process table + analyzer: the stages after the collector.
pub struct Pipeline {
    pub table: ProcTable,
    pub analyzer: Analyzer,
    pub net: NetAnalyzer,
    pub fs: crate::signal::fs::FsAnalyzer,
    pub wire: WireAnalyzer,
    analysed: std::collections::HashSet<u32>,
}

impl Pipeline {
    pub fn new(cfg: AnalysisConfig, net: NetConfig, wire: WireConfig) -> Self {
        Self {
            wire: WireAnalyzer::new(wire),
            table: ProcTable::default(),
            fs: crate::signal::fs::FsAnalyzer::new(cfg.proc_root.clone()),
            analyzer: Analyzer::new(cfg),
            net: NetAnalyzer::new(net),
            analysed: Default::default(),
        }
    }

    /// File-access findings whose faults stopped `idle_ns` ago, and DNS and
    /// TLS conclusions that are due (everything when `idle_ns` is 0).
    pub fn flush(&mut self, now_ns: u64, idle_ns: u64) -> Vec<Output> {
        let mut out: Vec<Output> = self
            .fs
            .flush(now_ns, idle_ns)
            .into_iter()
            .map(|(finding, ktime_ns)| Output::Finding { finding, ktime_ns })
            .collect();
        let wire_now = if idle_ns == 0 { u64::MAX } else { now_ns };
        for w in self.wire.flush(&self.table, wire_now) {
            self.push_wire(w, &mut out);
        }
        out
    }

    fn is_analysed(&self, tgid: u32) -> bool {
        self.analysed.contains(&tgid)
            || self
                .table
                .ancestors(tgid)
                .iter()
                .any(|a| self.analysed.contains(a))
    }

    fn push_wire(&mut self, w: WireOutput, out: &mut Vec<Output>) {
        let (findings, at) = match &w {
            WireOutput::Tls(r) => (r.findings.clone(), r.end_ns),
            WireOutput::Dns(r) => (r.findings.clone(), r.end_ns),
        };
        match w {
            WireOutput::Tls(report) => {
                let analysed = self.is_analysed(report.owner.pid);
                out.push(Output::Tls { report, analysed })
            }
            WireOutput::Dns(report) => {
                let analysed = self.is_analysed(report.owner.pid);
                out.push(Output::Dns { report, analysed })
            }
        }
        for finding in findings {
            let download = self.analyzer.toolchain_download_failed(&finding, at);
            out.push(Output::Finding {
                finding,
                ktime_ns: at,
            });
            if let Some(d) = download {
                out.push(Output::Finding {
                    finding: d,
                    ktime_ns: at,
                });
            }
        }
    }

    pub fn handle(&mut self, ev: Event) -> Vec<Output> {
        let mut out = Vec::new();
        match ev {
            Event::Fork(f) => self.table.on_fork(&f),
            Event::Fs(f) => self.fs.on_fault(&self.table, &f),
            Event::TlsLib(l) => {
                for o in self.wire.on_tls_lib(&self.table, &l) {
                    self.push_wire(o, &mut out);
                }
            }
            Event::Wire(w) => {
                for o in self.wire.on_wire(&self.table, &w) {
                    self.push_wire(o, &mut out);
                }
            }
            Event::Tcp(t) => {
                let host = self.wire.name_for(t.tgid, t.dst);
                if let Some(report) = self.net.on_tcp(&self.table, &t, host) {
                    let analysed = self.is_analysed(t.tgid);
                    let findings = report.findings.clone();
                    out.push(Output::Tcp {
                        tcp: t.clone(),
                        report: Box::new(report),
                        analysed,
                    });
                    for f in findings {
                        let download = self.analyzer.toolchain_download_failed(&f, t.ktime_ns);
                        out.push(Output::Finding {
                            finding: f,
                            ktime_ns: t.ktime_ns,
                        });
                        if let Some(d) = download {
                            out.push(Output::Finding {
                                finding: d,
                                ktime_ns: t.ktime_ns,
                            });
                        }
                    }
                }
            }
            Event::Exec(e) => {
                let e: Arc<Exec> = Arc::from(e);
                self.table.on_exec(e.clone());
                let analysis = self.analyzer.on_exec(&self.table, &e);
                if analysis.analysed {
                    self.analysed.insert(e.tgid);
                }
                let findings = analysis.findings.clone();
                out.push(Output::Exec {
                    exec: e.clone(),
                    analysis: Box::new(analysis),
                });
                for f in findings {
                    out.push(Output::Finding {
                        finding: f,
                        ktime_ns: e.ktime_ns,
                    });
                }
            }
            Event::Exit(x) => {
                for o in self.wire.on_exit(&self.table, x.tgid, x.ktime_ns) {
                    self.push_wire(o, &mut out);
                }
                let p = self.table.get(x.tgid).cloned();
                self.table.on_exit(&x);
                self.analyzer.forget_process(x.tgid);
                for f in self.analyzer.on_exit(&self.table, &x) {
                    out.push(Output::Finding {
                        finding: f,
                        ktime_ns: x.ktime_ns,
                    });
                }
                let name = p
                    .as_ref()
                    .and_then(|p| p.current())
                    .map(|e| basename(&e.exe).to_string())
                    .unwrap_or_default();
                let duration_ns = p.as_ref().map(|p| x.ktime_ns.saturating_sub(p.id.start_ns));
                let analysed = self.analysed.remove(&x.tgid);
                out.push(Output::Exit {
                    exit: x.clone(),
                    name,
                    duration_ns,
                    analysed,
                });
                self.table.expire(x.ktime_ns);
            }
        }
        out
    }
}

fn print_line(s: &str) {
    output::emit(s);
}

fn render(style: &Style, o: &Output, all_execs: bool) -> Option<String> {
    let json = style.format == Format::Json;
    match o {
        Output::Exec { exec, analysis } => {
            if !(all_execs || analysis.analysed || !exec.ok()) {
                return None;
            }
            // Failed attempts outside toolchains are only noise in live text.
            if !exec.ok() && !all_execs && !json {
                return None;
            }
            Some(if json {
                output::json_line(output::exec_json(style, exec, Some(analysis)))
            } else {
                output::exec_text(style, exec, Some(analysis))
            })
        }
        Output::Exit {
            exit,
            name,
            duration_ns,
            analysed,
        } => {
            if !(all_execs || *analysed) {
                return None;
            }
            Some(if json {
                output::json_line(output::exit_json(style, exit, *duration_ns))
            } else {
                output::exit_text(style, exit, name, *duration_ns)
            })
        }
        Output::Finding { finding, ktime_ns } => Some(if json {
            output::json_line(output::finding_json(style, finding, *ktime_ns))
        } else {
            output::finding_text(style, finding, *ktime_ns)
        }),
        Output::Tcp {
            tcp,
            report,
            analysed,
        } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                output::json_line(output::tcp_json(style, tcp, report))
            } else {
                output::tcp_text(style, tcp, report)
            })
        }
        Output::Tls { report, analysed } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                output::json_line(output::tls_json(style, report))
            } else {
                output::tls_text(style, report)
            })
        }
        Output::Dns { report, analysed } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                output::json_line(output::dns_json(style, report))
            } else {
                output::dns_text(style, report)
            })
        }
    }
}

/// A program started: put the crypto/tls probe on a Go program's file (once
/// per file), the OpenSSL probes on the libssl files it may `dlopen`.
fn probe_tls_libraries(c: &mut Collector, o: &Output, proc_root: &std::path::Path) {
    if let Output::Exec { exec, analysis } = o
        && exec.ok()
    {
        if analysis.identity.go_version.is_some() {
            c.probe_go(exec.tgid, &exec.exe, proc_root);
            // From the exec in the kernel to the probe in place (the first
            // run of a program races its first handshake against this).
            tracing::debug!(
                exe = %exec.exe,
                ms = crate::bpf::collector::boot_ns().saturating_sub(exec.ktime_ns) as f64 / 1e6,
                "Go program seen: exec to probe attached"
            );
        }
        let n = c.probe_libssl_near(exec, proc_root);
        if n > 0 {
            tracing::debug!(exe = %exec.exe, n, "libssl near a program's start probed");
        }
    }
}

/// Log degraded/missing signals, and announce readiness on stderr (scripts wait for
/// the `agent: watching` line).
fn report_attach(c: &Collector) {
    for a in &c.attached {
        match &a.choice {
            Choice::Active {
                degraded: true,
                hook,
                note,
            } => {
                tracing::warn!(signal = a.signal, hook = hook.name(), "degraded: {note}")
            }
            Choice::Unavailable { reason } => {
                tracing::warn!(signal = a.signal, "not collected: {reason}")
            }
            _ => {}
        }
    }
    for w in &c.warnings {
        tracing::warn!("{w}");
    }
    {
        let active: Vec<String> = c
            .attached
            .iter()
            .filter_map(|a| match &a.choice {
                Choice::Active { hook, .. } => Some(format!("{} ({})", a.signal, hook.name())),
                _ => None,
            })
            .collect();
        eprintln!("agent: watching {}; Ctrl-C to stop", active.join(", "));
    }
}

/// Loss counters as one JSON object (kernel causes + decode errors).
pub fn loss_json(c: &Collector) -> Value {
    let mut m = serde_json::Map::new();
    for (cause, n) in c.lost() {
        m.insert(cause.name().to_string(), json!(n));
    }
    m.insert(
        "decode_errors".into(),
        json!(c.stats.decode_errors.load(Ordering::Relaxed)),
    );
    json!({
        "type": "stats",
        "events_received": c.stats.received.load(Ordering::Relaxed),
        "tcp_established_counted_in_kernel": c.tcp_quiet(),
        "lost": m,
    })
}

fn total_lost(c: &Collector) -> u64 {
    c.lost()
        .iter()
        .filter(|(cause, _)| *cause != agent_common::LostCause::ExecNoEnter)
        .map(|(_, n)| n)
        .sum::<u64>()
        + c.stats.decode_errors.load(Ordering::Relaxed)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Capabilities a mode needs beyond the runtime set: uprobes attached later
/// (Go programs and libssl copies seen after start-up) need CAP_SYS_ADMIN
/// for `perf_event_open` here (measured: EACCES with CAP_PERFMON alone).
/// Before the command starts, put the TLS-library probes on every Go
/// program and libssl it can reach (its PATH, GOROOT, the module cache's
/// toolchains, what its command line names): its first handshake is then
/// probed, not only later runs'.
fn probe_reachable(c: &mut Collector, argv: &[String], inv: &crate::process::invoker::Invoker) {
    if uprobe_caps(c).is_empty() {
        return;
    }
    let t0 = std::time::Instant::now();
    let env: Vec<(String, String)> = inv
        .env
        .iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let reach =
        crate::signal::tls::libs::reachable(argv, &env, inv.cwd.as_deref(), inv.home.as_deref());
    for p in &reach.go {
        c.probe_go_file(p);
    }
    let mut libssl = 0;
    for exe in &reach.libssl_users {
        libssl += c.probe_libssl_for(exe, &env, std::path::Path::new("/"));
    }
    tracing::debug!(
        go = reach.go.len(),
        libssl,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "probed what the command can reach before it starts"
    );
}

/// Live mode, at start-up: the crypto/tls probe on every Go toolchain known
/// on the host (see [`crate::signal::tls::libs::host_go_dirs`]), so a `go` the agent
/// has not seen run yet is probed on its first run.
fn probe_host_go(c: &mut Collector, proc_root: &std::path::Path) {
    if uprobe_caps(c).is_empty() {
        return;
    }
    let t0 = std::time::Instant::now();
    let mut n = 0;
    for d in crate::signal::tls::libs::host_go_dirs(proc_root) {
        let go = d.join("go");
        if go.is_file() && crate::signal::tls::libs::is_go_program(&go) {
            c.probe_go_file(&go);
            n += 1;
        }
    }
    tracing::debug!(
        go = n,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "probed the host's Go toolchains"
    );
}

fn uprobe_caps(c: &Collector) -> Vec<u32> {
    let uprobes = c
        .attached
        .iter()
        .any(|a| a.signal == "tls_uprobes" && matches!(a.choice, Choice::Active { .. }));
    if uprobes {
        vec![crate::app::privs::CAP_SYS_ADMIN]
    } else {
        Vec::new()
    }
}

fn drop_privileges(extra: &[u32]) {
    let keep = crate::app::privs::runtime_set(extra);
    match crate::app::privs::drop_to(keep) {
        Ok(()) => tracing::debug!("capabilities dropped to {keep:#x}"),
        Err(e) => tracing::warn!("could not drop capabilities after start-up: {e}"),
    }
    // Wake the workers now (each applies the drop when it runs a task or
    // parks) rather than at the next event or tick.
    for i in 0..8u64 {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1 + i)).await;
            crate::app::privs::on_thread_hook();
        });
    }
}

/// `agent` (live). Returns the process exit code.
pub async fn live(opts: RunOptions) -> anyhow::Result<i32> {
    let (mut collector, mut rx) = Collector::start(&opts.collector_options(), 65_536)?;
    let proc_root = opts.analysis.proc_root.clone();
    collector.probe_libssl(&proc_root);
    probe_host_go(&mut collector, &proc_root);
    let mut ticks: u64 = 0;
    let json = opts.format == Format::Json;
    report_attach(&collector);
    let style = Style {
        format: opts.format,
        color: opts.color,
        clock_offset_ns: collector.clock_offset_ns,
    };
    let mut pipeline = Pipeline::new(analysis_config(&opts), opts.net.clone(), opts.wire.clone());
    let health = crate::sink::health::Health::new(
        collector
            .attached
            .iter()
            .any(|a| matches!(a.choice, Choice::Active { .. })),
        collector.stats.clone(),
    );
    if let Some(addr) = &opts.health_addr {
        crate::sink::health::serve(addr, health.clone()).await?;
    }
    // Attached, health port bound: keep only what the running agent uses.
    drop_privileges(&uprobe_caps(&collector));
    let mut otlp = start_otlp(&opts, collector.clock_offset_ns, None)?;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_lost = 0;
    let mut lines = output::Lines::default();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                for o in pipeline.handle(ev) {
                    probe_tls_libraries(&mut collector, &o, &proc_root);
                    if let Some(x) = otlp.as_mut() {
                        x.observe(&o, &pipeline.table);
                    }
                    if let Some(line) = render(&style, &o, opts.all_execs) {
                        lines.push(&line);
                    }
                }
                if rx.caught_up() {
                    lines.flush();
                }
            }
            _ = tick.tick() => {
                health.beat();
                ticks += 1;
                // Libraries loaded since (dlopen, new conda envs): every 30 s.
                if ticks.is_multiple_of(6) {
                    collector.probe_libssl(&proc_root);
                }
                for o in pipeline.flush(crate::bpf::collector::boot_ns(), 2_000_000_000) {
                    if let Some(x) = otlp.as_mut() {
                        x.observe(&o, &pipeline.table);
                    }
                    if let Some(line) = render(&style, &o, opts.all_execs) {
                        lines.push(&line);
                    }
                }
                lines.flush();
                if let Some(x) = &otlp {
                    x.update_self(&collector);
                }
                let lost = total_lost(&collector);
                if lost != last_lost {
                    last_lost = lost;
                    if json {
                        print_line(&output::json_line(loss_json(&collector)));
                    } else {
                        tracing::warn!("events lost so far: {}", loss_json(&collector)["lost"]);
                    }
                }
            }
            _ = &mut stop => break,
        }
    }
    lines.flush();
    let mut stats = loss_json(&collector);
    stats["wire"] = json!(pipeline.wire.stats);
    if let Some(x) = &otlp {
        x.update_self(&collector);
    }
    // Detaching the probes waits for the kernel (each perf-event link takes
    // a grace period, one after another): left to a child at exit, or done
    // while the exporter flushes.
    let detach = if opts.exit_after {
        crate::app::teardown::leave(collector);
        None
    } else {
        Some(tokio::task::spawn_blocking(move || drop(collector)))
    };
    if let Some(x) = otlp {
        stats["export"] = x.shutdown(OTLP_SHUTDOWN).await;
    }
    if let Some(d) = detach {
        let _ = d.await;
    }
    if json {
        print_line(&output::json_line(stats));
    }
    Ok(0)
}

/// How long a traced command may take to exit after the signal the agent
/// handed it before its group is killed.
const TRACE_KILL_GRACE: Duration = Duration::from_secs(3);

/// Until `t`, or for ever when there is none.
async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// SIGINT, SIGTERM and SIGHUP as one stream (`agent trace` forwards them).
struct TermSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

async fn next_of(s: &mut Option<tokio::signal::unix::Signal>) {
    let got = match s {
        Some(s) => s.recv().await.is_some(),
        None => false,
    };
    if !got {
        std::future::pending::<()>().await;
    }
}

impl TermSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        TermSignals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = next_of(&mut self.int) => libc::SIGINT,
            _ = next_of(&mut self.term) => libc::SIGTERM,
            _ = next_of(&mut self.hup) => libc::SIGHUP,
        }
    }
}

/// What `agent trace` collected about one command tree.
#[derive(Debug, Default)]
pub struct TraceResult {
    pub root_pid: u32,
    pub exit_code: i32,
    pub outputs: Vec<Output>,
    pub lost: Value,
    /// Who the command ran as, and where its environment came from.
    pub run_as: Option<crate::process::invoker::Invoker>,
    /// A signal the agent received and handed to the command's group.
    pub interrupted_by: Option<i32>,
}

/// Run `argv` (as the invoking user), observe its process tree, return what was seen.
pub async fn trace_collect(opts: &RunOptions, argv: &[String]) -> anyhow::Result<TraceResult> {
    let (mut collector, mut rx) = Collector::start(
        &crate::bpf::collector::CollectorOptions {
            // One command's tree: every connection is an event, and the
            // command is tracked from its fork on.
            tcp_quiet_ns: 0,
            track_own_children: true,
            ..opts.collector_options()
        },
        65_536,
    )?;
    report_attach(&collector);
    let proc_root = opts.analysis.proc_root.clone();
    collector.probe_libssl(&proc_root);
    let inv = match &opts.invoker {
        Some(i) => i.clone(),
        None => crate::process::invoker::find(
            &crate::process::invoker::probe_self(std::path::Path::new("/proc")),
            None,
            &[],
        )?,
    };
    probe_reachable(&mut collector, argv, &inv);
    // With export on, the command's span is reserved now, so that the
    // command gets TRACEPARENT naming it (OTel-instrumented children join
    // our trace); a TRACEPARENT the user's environment has (a CI job's
    // span) becomes its parent.
    let mut inv = inv;
    let root_span = opts.otlp.as_ref().map(|cfg| {
        let root = crate::sink::otlp::RootSpan::new(&trace_context(&inv.env));
        if cfg.inject_traceparent {
            inv.env
                .retain(|(k, _)| k != "TRACEPARENT" && k != "TRACESTATE");
            inv.env
                .extend(root.env().into_iter().map(|(k, v)| (k.into(), v.into())));
        }
        root
    });
    // Before the command starts: from now on a signal goes to it, not to us.
    let mut sigs = TermSignals::new();
    let mut traced =
        crate::app::traced::spawn(argv, &inv).map_err(|e| anyhow::anyhow!("agent trace: {e}"))?;
    let root = traced.pid;
    // Attached and the command started as its user: keep only what the
    // running agent uses, and KILL to signal the command's group.
    let mut extra = uprobe_caps(&collector);
    extra.push(crate::app::privs::CAP_KILL);
    drop_privileges(&extra);
    // The whole traced tree is "toolchain": file faults of e.g. `make` count
    // too. The kernel tracked it at fork already; this is belt and braces.
    collector.track(root);
    // Every process of the traced command gets an identity and a span (rules
    // still apply to toolchain execs only).
    let mut pipeline = Pipeline::new(
        AnalysisConfig {
            all: true,
            ..analysis_config(opts)
        },
        opts.net.clone(),
        opts.wire.clone(),
    );
    let mut otlp = start_otlp(
        opts,
        collector.clock_offset_ns,
        root_span.map(|r| (root, r)),
    )?;
    let mut outputs = Vec::new();
    let mut in_tree = std::collections::HashSet::from([root]);
    let mut status = None;
    let mut root_exit_seen = false;
    let mut interrupted_by = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    // Once the command is done: drain what is still in flight until a
    // deadline (not until the ring is idle: on a busy machine other
    // processes' events never stop), shorter once its exit event is in.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if status.is_some() {
            let ms = if root_exit_seen { 150 } else { 1500 };
            let cap = tokio::time::Instant::now() + Duration::from_millis(ms);
            // Set once the command is done; only ever brought forward.
            drain_until = Some(drain_until.map_or(cap, |d| d.min(cap)));
        }
        tokio::select! {
            _ = sleep_until_some(drain_until) => break,
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    if status.is_some() { break } else { continue }
                };
                for o in pipeline.handle(ev) {
                    probe_tls_libraries(&mut collector, &o, &proc_root);
                    let pid = o.pid();
                    let member = in_tree.contains(&pid) || pipeline.table.in_tree(pid, root);
                    if !member {
                        continue;
                    }
                    in_tree.insert(pid);
                    if let Some(x) = otlp.as_mut() {
                        x.observe(&o, &pipeline.table);
                    }
                    if let Output::Exit { exit, .. } = &o
                        && exit.tgid == root {
                            root_exit_seen = true;
                        }
                    outputs.push(o);
                }
            }
            st = traced.child.wait(), if status.is_none() => {
                status = Some(st?);
                traced.reclaim_terminal();
            }
            sig = sigs.recv(), if status.is_none() => {
                // Ctrl-C, SIGTERM, SIGHUP: the command's whole group gets
                // it; the agent stays to print the report. A command that
                // ignores it is killed after a grace period.
                traced.signal_group(sig);
                interrupted_by.get_or_insert(sig);
                kill_at.get_or_insert_with(|| tokio::time::Instant::now() + TRACE_KILL_GRACE);
            }
            _ = sleep_until_some(kill_at), if status.is_none() => {
                traced.signal_group(libc::SIGKILL);
                kill_at = None;
            }
        }
    }
    for o in pipeline.flush(crate::bpf::collector::boot_ns(), 0) {
        let pid = o.pid();
        if in_tree.contains(&pid) || pipeline.table.in_tree(pid, root) {
            if let Some(x) = otlp.as_mut() {
                x.observe(&o, &pipeline.table);
            }
            outputs.push(o);
        }
    }
    let code = status
        .map(|s| {
            use std::os::unix::process::ExitStatusExt as _;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        })
        .unwrap_or(1);
    let mut lost = loss_json(&collector);
    lost["wire"] = json!(pipeline.wire.stats);
    if let Some(x) = otlp {
        x.update_self(&collector);
        lost["export"] = x.shutdown(OTLP_SHUTDOWN).await;
    }
    if opts.exit_after {
        crate::app::teardown::leave(collector);
    }
    Ok(TraceResult {
        root_pid: root,
        exit_code: code,
        outputs,
        lost,
        run_as: Some(inv),
        interrupted_by,
    })
}

/// TRACEPARENT and TRACESTATE of an environment (what the W3C carrier reads).
fn trace_context(env: &[(std::ffi::OsString, std::ffi::OsString)]) -> Vec<(String, String)> {
    env.iter()
        .filter(|(k, _)| k == "TRACEPARENT" || k == "TRACESTATE")
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v.to_str()?.to_string())))
        .collect()
}

/// `agent trace -- cmd`: print the report, return the command's exit code.
pub async fn trace(opts: RunOptions, argv: Vec<String>) -> anyhow::Result<i32> {
    let r = trace_collect(&opts, &argv).await?;
    let style = Style {
        format: opts.format,
        color: opts.color,
        clock_offset_ns: crate::bpf::collector::boot_to_unix_offset(),
    };
    match opts.format {
        Format::Json => {
            for o in &r.outputs {
                if let Some(line) = render(&style, o, true) {
                    print_line(&line);
                }
            }
            print_line(&output::json_line(crate::sink::report::json(
                &style, &r, &argv,
            )));
        }
        Format::Text => output::emit_report(&crate::sink::report::text(&style, &r, &argv)),
        Format::Markdown => output::emit_report(&crate::sink::report::markdown(&r, &argv)),
    }
    Ok(r.exit_code)
}

/// Channel receiver type used by tests that drive the pipeline themselves.
pub use crate::bpf::collector::EventRx;
