//! `agent` (live): the whole machine, one line per toolchain exec and per
//! finding, until Ctrl-C.

use std::time::Duration;

use super::{
    options::{RunOptions, analysis_config},
    session::*,
};
use crate::{
    pipeline::Pipeline,
    render::{Format, Style},
    sink::output,
    sink::output::render,
};

/// `agent` (live). Returns the process exit code.
pub async fn live(opts: RunOptions) -> anyhow::Result<i32> {
    let (mut k, mut rx) =
        Instrumentation::start(&opts.collector_options(), &opts.analysis.proc_root)?;
    let proc_root = opts.analysis.proc_root.clone();
    k.tls.probe_libssl(&mut k.collector, &proc_root);
    k.tls.probe_host_go(&mut k.collector, &proc_root);
    let mut ticks: u64 = 0;
    let json = opts.format == Format::Json;
    report_attach(&k.collector);
    let style = Style {
        format: opts.format,
        color: opts.color,
        clock_offset_ns: k.collector.clock_offset_ns,
    };
    let analysis = analysis_config(&opts);
    let mut filter =
        super::filter::LiveFilter::new(&opts.filter, &proc_root, analysis.pods.clone());
    let mut pipeline = Pipeline::new(
        analysis,
        opts.net.clone(),
        opts.tls.clone(),
        opts.dns.clone(),
    );
    let health = health(&k, &opts).await?;
    // Bound while privileged (/run/agent is root's); served once dropped.
    let bound = opts
        .trace_socket
        .as_deref()
        .map(super::service::bind)
        .transpose()?;
    // Attached, health port bound: keep only what the running agent uses.
    drop_privileges(&k.uprobe_caps());
    let mut service = bound.map(super::service::Bound::serve);
    release_free_memory();
    let mut otlp = start_otlp(&opts, k.collector.clock_offset_ns, None)?;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_lost = 0;
    let mut lines = output::Lines::default();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let session_due = service.as_ref().and_then(|s| s.deadline());
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                k.before_analysis(&ev, &pipeline.table, &proc_root);
                for o in pipeline.handle(ev) {
                    if let Some(s) = service.as_mut() {
                        s.observe(&o, &pipeline);
                    }
                    if admitted(filter.as_mut(), &o, &pipeline) {
                        k.on_output(&o, &proc_root);
                        show(&o, &pipeline, otlp.as_mut(), &style, opts.all_execs, &mut lines);
                    }
                }
                if rx.caught_up() {
                    lines.flush();
                }
            }
            _ = tick.tick() => {
                health.beat();
                k.sweep_uprobes();
                // Toolchains that appeared under a watched root (`go`
                // downloaded one, `golang.org/dl` installed one).
                k.tls.rescan_go_toolchains(&mut k.collector);
                ticks += 1;
                // Libraries loaded since (dlopen, new conda envs): every 30 s.
                if ticks.is_multiple_of(6) {
                    k.tls.probe_libssl(&mut k.collector, &proc_root);
                }
                if let Some(f) = filter.as_mut() {
                    f.refresh();
                }
                for o in pipeline.flush(crate::clock::boot_ns(), 2_000_000_000) {
                    if let Some(s) = service.as_mut() {
                        s.observe(&o, &pipeline);
                    }
                    if admitted(filter.as_mut(), &o, &pipeline) {
                        show(&o, &pipeline, otlp.as_mut(), &style, opts.all_execs, &mut lines);
                    }
                }
                lines.flush();
                release_free_memory();
                let losses = k.losses();
                if let Some(x) = otlp.as_mut() {
                    x.expire_spans(&proc_root);
                    x.update_self(&losses);
                }
                health.set_stats(&full_stats(&losses, &k, &pipeline));
                let lost = losses.total();
                if lost != last_lost {
                    last_lost = lost;
                    if json {
                        print_line(&crate::render::json_line(&loss_json(&losses)));
                    } else {
                        tracing::warn!("events lost so far: {}", loss_json(&losses)["lost"]);
                    }
                }
            }
            req = next_request(service.as_mut()) => {
                if let Some(s) = service.as_mut() {
                    s.on_request(req, &mut k, &mut pipeline);
                }
            }
            _ = super::trace::sleep_until_some(session_due) => {
                if let Some(s) = service.as_mut() {
                    s.finish_due(&k, &mut pipeline);
                }
            }
            _ = &mut stop => break,
        }
    }
    lines.flush();
    // Sessions still open get no report; the socket goes.
    drop(service);
    wind_down(k, &pipeline, otlp, opts.exit_after, json).await;
    Ok(0)
}

/// Live mode stopped: the last stats, the probes detached, the exporter
/// flushed, the stats record printed.
async fn wind_down(
    k: Instrumentation,
    pipeline: &Pipeline,
    otlp: Option<crate::sink::otlp::Otlp>,
    exit_after: bool,
    json: bool,
) {
    let losses = k.losses();
    let mut stats = full_stats(&losses, &k, pipeline);
    if let Some(x) = &otlp {
        x.update_self(&losses);
    }
    // Detaching the probes waits for the kernel (each perf-event link takes
    // a grace period, one after another): left to a child at exit, or done
    // while the exporter flushes.
    let detach = if exit_after {
        crate::app::teardown::leave(k.collector);
        None
    } else {
        Some(tokio::task::spawn_blocking(move || drop(k.collector)))
    };
    if let Some(x) = otlp {
        stats["export"] = x.shutdown(OTLP_SHUTDOWN).await;
    }
    if let Some(d) = detach {
        let _ = d.await;
    }
    if json {
        print_line(&crate::render::json_line(&stats));
    }
}

/// The health endpoint's state, served when `--health-addr` asks.
async fn health(
    k: &Instrumentation,
    opts: &RunOptions,
) -> anyhow::Result<crate::sink::health::Health> {
    let health = crate::sink::health::Health::new(
        k.collector.attached.iter().any(|a| a.choice.is_active()),
        k.stats.clone(),
    );
    if let Some(addr) = &opts.health_addr {
        crate::sink::health::serve(addr, health.clone()).await?;
    }
    Ok(health)
}

/// The trace service's next request; pending without a service.
async fn next_request(service: Option<&mut super::service::Service>) -> super::service::Request {
    match service {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Whether `o` passes live mode's filters (all do without one). An exec
/// decides its process again (it may have moved to another cgroup first,
/// as a container's init does); an exit ends what the filter kept of it.
fn admitted(
    filter: Option<&mut super::filter::LiveFilter>,
    o: &crate::pipeline::Output,
    pipeline: &Pipeline,
) -> bool {
    let Some(f) = filter else { return true };
    if let crate::pipeline::Output::Exec { exec, .. } = o {
        f.forget(exec.tgid);
    }
    let ok = f.admits(o.pid(), &pipeline.table);
    if let crate::pipeline::Output::Exit { exit, .. } = o {
        f.forget(exit.tgid);
    }
    ok
}

/// `o` exported and printed.
fn show(
    o: &crate::pipeline::Output,
    pipeline: &Pipeline,
    otlp: Option<&mut crate::sink::otlp::Otlp>,
    style: &Style,
    all_execs: bool,
    lines: &mut output::Lines,
) {
    if let Some(x) = otlp {
        x.observe(o, &pipeline.table);
    }
    if let Some(line) = render(style, o, all_execs) {
        lines.push(&line);
    }
}
