//! `agent trace -- cmd`: run one command as the user who asked, follow its
//! process tree, and print the report.

use std::time::Duration;

use super::{
    options::{RunOptions, analysis_config},
    session::*,
};
use crate::{
    pipeline::{Output, Pipeline},
    render::{Format, Style},
    signal::exec::AnalysisConfig,
    sink::output,
    sink::output::render,
    sink::report::TraceResult,
};

/// How often the TLS-library probes of deleted programs are released.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How long a traced command may take to exit after the signal the agent
/// handed it before its group is killed.
const TRACE_KILL_GRACE: Duration = Duration::from_secs(3);

/// Until `t`, or for ever when there is none.
pub(super) async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// SIGINT, SIGTERM and SIGHUP as one stream (`agent trace` forwards them).
pub(super) struct TermSignals {
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
    pub(super) fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        TermSignals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    pub(super) async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = next_of(&mut self.int) => libc::SIGINT,
            _ = next_of(&mut self.term) => libc::SIGTERM,
            _ = next_of(&mut self.hup) => libc::SIGHUP,
        }
    }
}

/// Run `argv` (as the invoking user), observe its process tree, return what was seen.
pub async fn trace_collect(opts: &RunOptions, argv: &[String]) -> anyhow::Result<TraceResult> {
    let (mut k, mut rx) = Instrumentation::start(
        &crate::bpf::CollectorOptions {
            // One command's tree: every connection is an event, and the
            // command is tracked from its fork on.
            tcp_quiet_ns: 0,
            track_own_children: true,
            ..opts.collector_options()
        },
        &opts.analysis.proc_root,
    )?;
    report_attach(&k.collector);
    let proc_root = opts.analysis.proc_root.clone();
    let mut inv = attach_ahead(&mut k, opts, argv)?;
    let root_span = reserve_root_span(opts, &mut inv);
    // Before the command starts: from now on a signal goes to it, not to us.
    let mut sigs = TermSignals::new();
    let mut traced =
        crate::app::traced::spawn(argv, &inv).map_err(|e| anyhow::anyhow!("agent trace: {e}"))?;
    let root = traced.pid;
    settle(&mut k, root);
    let mut pipeline = trace_pipeline(opts);
    let mut otlp = start_otlp(
        opts,
        k.collector.clock_offset_ns,
        root_span.map(|r| (root, r)),
    )?;
    let mut outputs = crate::sink::report::KeptOutputs::default();
    let (mut in_tree, mut parents) = (std::collections::HashSet::from([root]), Default::default());
    let mut status = None;
    let mut root_exit_seen = false;
    let mut interrupted_by = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    // Once the command is done: drain what is still in flight until a
    // deadline (not until the ring is idle: on a busy machine other
    // processes' events never stop), shorter once its exit event is in.
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut sweep =
        tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    loop {
        if status.is_some() {
            let ms = if root_exit_seen { 150 } else { 1500 };
            let cap = tokio::time::Instant::now() + Duration::from_millis(ms);
            // Set once the command is done; only ever brought forward.
            drain_until = Some(drain_until.map_or(cap, |d| d.min(cap)));
        }
        tokio::select! {
            _ = sleep_until_some(drain_until) => break,
            // A long build (`go test ./...`) runs and deletes many Go
            // programs: their probes are released as they go.
            _ = sweep.tick() => {
                k.sweep_uprobes();
                k.tls.rescan_go_toolchains(&mut k.collector);
                if let Some(x) = otlp.as_mut() {
                    x.expire_spans(&proc_root);
                }
            }
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    if status.is_some() { break } else { continue }
                };
                k.before_analysis(&ev, &pipeline.table, &proc_root);
                for o in pipeline.handle(ev) {
                    k.on_output(&o, &proc_root);
                    let pid = o.pid();
                    let member = in_tree.contains(&pid) || pipeline.table.in_tree(pid, root);
                    if !member {
                        continue;
                    }
                    if in_tree.insert(pid) {
                        note_parent(&mut parents, &pipeline, pid);
                    }
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
    finish(Finished {
        k,
        opts,
        pipeline,
        otlp,
        outputs,
        in_tree,
        parents,
        root,
        status,
        inv,
        interrupted_by,
    })
    .await
}

/// Attached and the command started as its user: keep only what the
/// running agent uses, and KILL to signal the command's group.
fn settle(k: &mut Instrumentation, root: u32) {
    let mut extra = k.uprobe_caps();
    extra.push(crate::app::privs::CAP_KILL);
    drop_privileges(&extra);
    release_free_memory();
    // The whole traced tree is "toolchain": file faults of e.g. `make` count
    // too. The kernel tracked it at fork already; this is belt and braces.
    k.collector.track(root);
}

/// Who started `pid`, kept past the process table's expiry (the verdict
/// walks it).
pub(super) fn note_parent(
    parents: &mut std::collections::HashMap<u32, u32>,
    p: &Pipeline,
    pid: u32,
) {
    if let Some(e) = p.table.get(pid) {
        parents.entry(pid).or_insert(e.ppid);
    }
}

/// The TLS libraries and Go toolchains the command can reach, attached
/// before it starts; the account it runs as.
fn attach_ahead(
    k: &mut Instrumentation,
    opts: &RunOptions,
    argv: &[String],
) -> anyhow::Result<crate::process::invoker::Invoker> {
    let proc_root = &opts.analysis.proc_root;
    k.tls.probe_libssl(&mut k.collector, proc_root);
    let inv = opts.invoker_or_self()?;
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
    k.tls.probe_reachable(
        &mut k.collector,
        argv,
        &env,
        inv.cwd.as_deref(),
        inv.home.as_deref(),
    );
    Ok(inv)
}

/// With export on, the command's span is reserved now, so that the command
/// gets TRACEPARENT naming it (OTel-instrumented children join our trace);
/// a TRACEPARENT the user's environment has (a CI job's span) becomes its
/// parent.
fn reserve_root_span(
    opts: &RunOptions,
    inv: &mut crate::process::invoker::Invoker,
) -> Option<crate::sink::otlp::RootSpan> {
    opts.otlp.as_ref().map(|cfg| {
        let root = crate::sink::otlp::RootSpan::new(&trace_context(&inv.env));
        if cfg.inject_traceparent {
            inv.env
                .retain(|(k, _)| k != "TRACEPARENT" && k != "TRACESTATE");
            inv.env
                .extend(root.env().into_iter().map(|(k, v)| (k.into(), v.into())));
        }
        root
    })
}

/// Every process of the traced command gets an identity and a span (rules
/// still apply to toolchain execs only).
fn trace_pipeline(opts: &RunOptions) -> Pipeline {
    Pipeline::new(
        AnalysisConfig {
            all: true,
            ..analysis_config(opts)
        },
        opts.net.clone(),
        opts.tls.clone(),
        opts.dns.clone(),
    )
}

/// What a traced run has when its command is done.
struct Finished<'a> {
    k: Instrumentation,
    opts: &'a RunOptions,
    pipeline: Pipeline,
    otlp: Option<crate::sink::otlp::Otlp>,
    outputs: crate::sink::report::KeptOutputs,
    in_tree: std::collections::HashSet<u32>,
    parents: std::collections::HashMap<u32, u32>,
    root: u32,
    status: Option<std::process::ExitStatus>,
    inv: crate::process::invoker::Invoker,
    interrupted_by: Option<i32>,
}

/// The conclusions still due, the exit code, the losses; the exporter flushed.
async fn finish(f: Finished<'_>) -> anyhow::Result<TraceResult> {
    let Finished {
        k,
        opts,
        mut pipeline,
        mut otlp,
        mut outputs,
        in_tree,
        mut parents,
        root,
        status,
        inv,
        interrupted_by,
    } = f;
    for o in pipeline.flush(crate::clock::boot_ns(), 0) {
        let pid = o.pid();
        if in_tree.contains(&pid) || pipeline.table.in_tree(pid, root) {
            if let Some(x) = otlp.as_mut() {
                x.observe(&o, &pipeline.table);
            }
            note_parent(&mut parents, &pipeline, pid);
            outputs.push(o);
        }
    }
    let code = status.map(crate::app::traced::exit_code_of).unwrap_or(1);
    let losses = k.losses();
    let mut lost = full_stats(&losses, &k, &pipeline);
    // Middle execs of processes that exec'd more than 16 times.
    lost["report_execs_not_kept"] = serde_json::json!(outputs.dropped);
    if let Some(x) = otlp {
        x.update_self(&losses);
        lost["export"] = x.shutdown(OTLP_SHUTDOWN).await;
    }
    if opts.exit_after {
        crate::app::teardown::leave(k.collector);
    }
    let outputs = outputs.finish();
    let judgement = crate::verdict::judge(&outputs, root, code, &parents);
    Ok(TraceResult {
        root_pid: root,
        exit_code: code,
        judgement,
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

pub use super::trace_opts::TraceOptions;

/// What `agent trace` prints at the end of a run, rendered by the agent
/// that traced it (this process, or the trace service for a client).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    /// JSON format: the records, the verdict and the report, a line each.
    pub json_lines: Vec<String>,
    /// Text or Markdown format: the report.
    pub report: String,
    pub ci: crate::sink::ci::CiParts,
    /// The code to exit with (the command's, or `--exit-code`'s).
    pub exit_code: i32,
}

/// How to render: what the user asked for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RenderAsk {
    pub format: Format,
    pub color: bool,
    pub ci: crate::sink::ci::Kind,
    pub junit: bool,
    pub exit_codes: crate::verdict::ExitCodes,
}

/// `r` rendered as `ask` says.
pub fn render_result(r: &TraceResult, argv: &[String], ask: &RenderAsk, seconds: f64) -> Rendered {
    let style = Style {
        format: ask.format,
        color: ask.color,
        clock_offset_ns: crate::clock::boot_to_unix_offset(),
    };
    let mut out = Rendered {
        ci: crate::sink::ci::CiParts::of(ask.ci, ask.junit, r, argv, seconds),
        exit_code: ask.exit_codes.apply(&r.judgement, r.exit_code),
        ..Default::default()
    };
    match ask.format {
        Format::Json => {
            out.json_lines = r
                .outputs
                .iter()
                .filter_map(|o| render(&style, o, true))
                .collect();
            out.json_lines
                .push(crate::render::json_line(&r.judgement.json(r.exit_code)));
            out.json_lines
                .push(crate::render::json_line(&crate::sink::report::json(
                    &style, r, argv,
                )));
        }
        Format::Text => out.report = crate::sink::report::text(&style, r, argv),
        Format::Markdown => out.report = crate::sink::report::markdown(r, argv),
    }
    out
}

/// Print `r` and write its CI files; returns the code to exit with.
pub fn emit(r: &Rendered, format: Format, ci: &mut crate::sink::ci::Ci) -> i32 {
    match format {
        Format::Json => r.json_lines.iter().for_each(|l| print_line(l)),
        Format::Text => {
            // GitLab folds the report in its job log (markers on the
            // terminal stream only: escape codes are not for a file).
            let fold = ci.kind == crate::sink::ci::Kind::GitLab && !output::has_output_file();
            if fold {
                eprint!(
                    "{}",
                    crate::sink::ci::section_start("agent_trace", "agent trace report")
                );
            }
            output::emit_report(&r.report);
            if fold {
                eprint!("{}", crate::sink::ci::section_end("agent_trace"));
            }
        }
        Format::Markdown => output::emit_report(&r.report),
    }
    // Workflow commands on stdout, unless JSON records are there.
    if format == Format::Json && !output::has_output_file() {
        ci.write(&r.ci, &mut std::io::stderr());
    } else {
        ci.write(&r.ci, &mut std::io::stdout());
    }
    r.exit_code
}

/// `agent trace -- cmd`: print the report and the verdict, return the
/// command's exit code (or the one `--exit-code` gives its verdict).
pub async fn trace(
    opts: RunOptions,
    argv: Vec<String>,
    mut t: TraceOptions,
) -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    let r = trace_collect(&opts, &argv).await?;
    let ask = t.render_ask(opts.format, opts.color);
    let rendered = render_result(&r, &argv, &ask, started.elapsed().as_secs_f64());
    Ok(emit(&rendered, opts.format, &mut t.ci))
}
