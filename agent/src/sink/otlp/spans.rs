//! Turning pipeline outputs into spans: one trace per top-level toolchain
//! command, one span per process (exec → exit) under its parent's, one span
//! per TCP connection set-up under its process, findings as span events.
//! Routine activity (processes outside toolchain trees, connections that
//! succeeded outside them) only feeds metrics.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
        TraceId, TraceState, Tracer as _,
    },
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator, RandomIdGenerator, SdkTracer, Span},
};
use opentelemetry_semantic_conventions::attribute as semconv;

use super::model::{kv_bool, kv_int, kv_str, kv_str_array, kv_string};
use crate::{
    events::{Exec, Exit},
    finding::Finding,
    pipeline::Output,
    process::fsview::basename,
    process::table::ProcTable,
    render::{AttrValue, SpanDesc},
    signal::exec::ExecAnalysis,
};

/// The SDK's random ids, except that the next span (and trace) id can be
/// fixed in advance: `agent trace` hands the command TRACEPARENT of the
/// command's span before the span exists (its exec has not happened yet),
/// and the SDK 0.33 span builder takes no ids of its own.
#[derive(Debug, Default, Clone)]
pub struct Ids {
    next: Arc<Mutex<Option<(TraceId, SpanId)>>>,
    random: RandomIdGenerator,
}

impl Ids {
    fn reserve(&self, ids: Option<(TraceId, SpanId)>) {
        if let Ok(mut n) = self.next.lock() {
            *n = ids;
        }
    }
}

impl IdGenerator for Ids {
    // Reserved ids stay until the builder clears them after the one span.
    fn new_trace_id(&self) -> TraceId {
        match self.next.lock().ok().and_then(|n| n.map(|(t, _)| t)) {
            Some(t) => t,
            None => self.random.new_trace_id(),
        }
    }
    fn new_span_id(&self) -> SpanId {
        match self.next.lock().ok().and_then(|n| n.map(|(_, s)| s)) {
            Some(s) => s,
            None => self.random.new_span_id(),
        }
    }
}

/// The span `agent trace` reserves for its command before starting it.
#[derive(Debug, Clone)]
pub struct RootSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// From TRACEPARENT/TRACESTATE in the command's own environment (a CI
    /// job's span): the command's span is its child.
    pub parent: Option<SpanContext>,
}

/// Environment variables as a W3C trace-context carrier (the OpenTelemetry
/// environment-variable convention: TRACEPARENT, TRACESTATE).
struct EnvCarrier<'a>(&'a [(String, String)]);

impl Extractor for EnvCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// A remote parent from an environment, when it carries a valid TRACEPARENT.
pub fn parent_from_env(env: &[(String, String)]) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&EnvCarrier(env));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

impl RootSpan {
    /// Reserve ids for the command's span, under `env`'s TRACEPARENT if any.
    pub fn new(env: &[(String, String)]) -> Self {
        let parent = parent_from_env(env);
        let g = RandomIdGenerator::default();
        RootSpan {
            trace_id: parent
                .as_ref()
                .map(|p| p.trace_id())
                .unwrap_or_else(|| g.new_trace_id()),
            span_id: g.new_span_id(),
            parent,
        }
    }

    /// TRACEPARENT (and TRACESTATE) naming this span, for the command's environment.
    pub fn env(&self) -> Vec<(String, String)> {
        struct Vars(Vec<(String, String)>);
        impl Injector for Vars {
            fn set(&mut self, key: &str, value: String) {
                self.0.push((key.to_ascii_uppercase(), value));
            }
        }
        let (flags, state) = match &self.parent {
            Some(p) => (p.trace_flags(), p.trace_state().clone()),
            None => (TraceFlags::SAMPLED, TraceState::default()),
        };
        let sc = SpanContext::new(self.trace_id, self.span_id, flags, false, state);
        let mut v = Vars(Vec::new());
        TraceContextPropagator::new()
            .inject_context(&Context::new().with_remote_span_context(sc), &mut v);
        v.0
    }
}

/// Builds spans through the SDK tracer; ended spans go to its processor.
pub struct SpanBuilder {
    tracer: SdkTracer,
    ids: Ids,
    /// boot-time ns → Unix ns.
    offset: i128,
    /// Open spans by pid, with the boot-time ns of their exec: at most
    /// [`MAX_OPEN_SPANS`]; ended by their exit, by [`SpanBuilder::expire`]
    /// when the exit was lost, or as the oldest when the cap is reached.
    open: HashMap<u32, (Span, u64)>,
    /// `agent trace`: the command's pid and its reserved span.
    root: Option<(u32, RootSpan)>,
    /// Spans ended because their process was gone without an exit seen
    /// (or its pid belongs to a newer process).
    pub expired: u64,
    /// Spans ended early to stay under [`MAX_OPEN_SPANS`].
    pub evicted: u64,
    /// Open spans whose process was missing at the last tick.
    missing: std::collections::HashSet<u32>,
}

/// Open spans kept at most (each holds its attributes and up to the SDK's
/// 128 events): spans of processes whose exits were lost, or of very many
/// long-lived tools, cannot grow without bound.
pub const MAX_OPEN_SPANS: usize = 16384;

/// When process `pid` (as `proc_root` shows it) started, boot-time ns
/// (`/proc/<pid>/stat` field 22, in clock ticks); `None` when it is gone.
fn process_start_ns(proc_root: &std::path::Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may hold spaces and ')': fields after
    // the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(ticks.saturating_mul(1_000_000_000 / hz))
}

fn at(offset: i128, ktime: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos((ktime as i128 + offset).max(0) as u64)
}

fn finding_attributes(f: &Finding) -> Vec<KeyValue> {
    let mut attributes = vec![
        kv_str("agent.finding.code", f.code),
        kv_str("agent.finding.severity", f.severity.name()),
        kv_str("agent.finding.summary", f.summary.clone()),
        kv_str("agent.finding.cause", f.cause.clone()),
        kv_str("agent.finding.fix", f.fix.clone()),
    ];
    // Evidence as text: strings as they are, other values as JSON.
    for (k, v) in &f.evidence {
        let key = format!("agent.evidence.{k}");
        attributes.push(match v {
            serde_json::Value::String(s) => kv_string(key, s),
            other => kv_string(key, &other.to_string()),
        });
    }
    attributes
}

fn add_finding(span: &mut Span, f: &Finding, t: SystemTime) {
    span.add_event_with_timestamp(f.code, t, finding_attributes(f));
}

impl SpanBuilder {
    /// `ids` must be the provider's id generator.
    pub fn new(
        tracer: SdkTracer,
        ids: Ids,
        clock_offset_ns: i128,
        root: Option<(u32, RootSpan)>,
    ) -> Self {
        Self {
            tracer,
            ids,
            offset: clock_offset_ns,
            open: HashMap::new(),
            root,
            expired: 0,
            evicted: 0,
            missing: Default::default(),
        }
    }

    /// Keep `span` open for `tgid`; at the cap, the oldest sixteenth of the
    /// open spans ends first (marked `agent.process.evicted`; one sort per
    /// 1024 inserts, however hard the cap is pushed).
    fn keep_open(&mut self, tgid: u32, span: Span, start_ns: u64) {
        if self.open.len() >= MAX_OPEN_SPANS && !self.open.contains_key(&tgid) {
            let mut by_age: Vec<(u64, u32)> =
                self.open.iter().map(|(p, (_, t))| (*t, *p)).collect();
            let n = (MAX_OPEN_SPANS / 16).min(by_age.len());
            if n > 0 {
                by_age.select_nth_unstable(n - 1);
            }
            for (_, pid) in &by_age[..n] {
                if let Some((mut s, _)) = self.open.remove(pid) {
                    s.set_attribute(kv_bool("agent.process.evicted", true));
                    s.end();
                    self.evicted += 1;
                }
            }
        }
        self.open.insert(tgid, (span, start_ns));
    }

    /// End the spans of processes that are gone although no exit was seen
    /// (a lost exit record), or whose pid a newer process now has; marked
    /// `agent.process.exit_lost`. Run on the agent's tick: a span is ended
    /// when its process was missing at two ticks in a row, so an exit
    /// record still on its way ends its span as usual.
    pub fn expire(&mut self, proc_root: &std::path::Path) -> usize {
        let missing: std::collections::HashSet<u32> = self
            .open
            .iter()
            .filter(|(pid, (_, exec_ns))| {
                process_start_ns(proc_root, **pid).is_none_or(|start| start > *exec_ns)
            })
            .map(|(p, _)| *p)
            .collect();
        let stale: Vec<u32> = missing.intersection(&self.missing).copied().collect();
        for pid in &stale {
            if let Some((mut s, _)) = self.open.remove(pid) {
                s.set_attribute(kv_bool("agent.process.exit_lost", true));
                s.end();
            }
        }
        self.missing = missing;
        for pid in &stale {
            self.missing.remove(pid);
        }
        self.expired += stale.len() as u64;
        stale.len()
    }

    /// The nearest process with an open span: `first`, then `tgid`'s ancestors.
    fn nearest_open(&self, table: &ProcTable, first: u32, tgid: u32) -> Option<u32> {
        std::iter::once(first)
            .chain(table.ancestors(tgid))
            .find(|p| self.open.contains_key(p))
    }

    /// The parent of a new span: the nearest open span; else a TRACEPARENT
    /// in the process's environment (a new span of its own otherwise).
    fn context(
        &self,
        table: &ProcTable,
        first: u32,
        tgid: u32,
        env: &[(String, String)],
    ) -> Context {
        match self
            .nearest_open(table, first, tgid)
            .and_then(|p| self.open.get(&p))
        {
            Some((o, _)) => Context::new().with_remote_span_context(o.span_context().clone()),
            None => match parent_from_env(env) {
                Some(sc) => Context::new().with_remote_span_context(sc),
                None => Context::new(),
            },
        }
    }

    fn start(
        &self,
        name: String,
        kind: SpanKind,
        t: SystemTime,
        attributes: Vec<KeyValue>,
        cx: &Context,
    ) -> Span {
        let b = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(t)
            .with_attributes(attributes);
        self.tracer.build_with_context(b, cx)
    }

    /// A span that is over when it is reported (connection, lookup, handshake).
    #[allow(
        clippy::too_many_arguments,
        reason = "one call per kind of finished span"
    )]
    fn finished(
        &self,
        name: String,
        cx: &Context,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
        findings: &[Finding],
        status: Option<String>,
    ) {
        let mut span = self.start(name, SpanKind::Client, start, attributes, cx);
        for f in findings {
            add_finding(&mut span, f, end);
        }
        if let Some(m) = status {
            span.set_status(Status::error(m));
        }
        span.end_with_timestamp(end);
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Feed one output; spans that end go to the SDK's processor.
    pub fn observe(&mut self, o: &Output, table: &ProcTable) {
        match o {
            Output::Exec { exec, analysis } if exec.ok() && analysis.analysed => {
                self.exec_span(exec, analysis, table)
            }
            Output::Exit { exit, .. } => self.exit_span(exit),
            // net.* and tls.* findings are events of their connection, lookup or handshake span.
            Output::Finding { finding, ktime_ns }
                if !finding.code.starts_with("net.") && !finding.code.starts_with("tls.") =>
            {
                self.finding_event(finding, *ktime_ns, table)
            }
            // Every other record says itself which client span it makes.
            Output::Tcp { .. } | Output::Dns { .. } | Output::Tls { .. } => o.with_record(|r| {
                if let Some(d) = r.span() {
                    self.client_span(d, table)
                }
            }),
            _ => {}
        }
    }

    /// A client span a signal described (a connection set-up, a lookup, a
    /// handshake), under its process's span, its findings as events.
    fn client_span(&mut self, d: SpanDesc<'_>, table: &ProcTable) {
        let cx = self.context(table, d.pid, d.pid, &[]);
        let attributes = d
            .attributes
            .into_iter()
            .map(|(k, v)| match v {
                AttrValue::Str(s) => kv_str(k, s),
                AttrValue::Int(i) => kv_int(k, i),
                AttrValue::Bool(b) => kv_bool(k, b),
                AttrValue::StrArray(a) => kv_str_array(k, &a),
            })
            .collect();
        self.finished(
            d.name.to_string(),
            &cx,
            at(self.offset, d.start_ns),
            at(self.offset, d.end_ns),
            attributes,
            d.findings,
            d.error,
        );
    }

    /// A toolchain's exec: its process span (or an event on the open one).
    fn exec_span(&mut self, exec: &Exec, analysis: &ExecAnalysis, table: &ProcTable) {
        let t = at(self.offset, exec.ktime_ns);
        if let Some((open, _)) = self.open.get_mut(&exec.tgid) {
            // Re-exec in the same process (e.g. a Go toolchain switch).
            open.add_event_with_timestamp(
                "exec",
                t,
                vec![
                    kv_str(semconv::PROCESS_EXECUTABLE_PATH, exec.exe.clone()),
                    kv_str(
                        semconv::PROCESS_RUNTIME_VERSION,
                        analysis.identity.go_version.clone().unwrap_or_default(),
                    ),
                ],
            );
            return;
        }
        let args: Vec<String> = crate::scrub::argv(&exec.argv);
        let mut attributes = vec![
            kv_int(semconv::PROCESS_PID, exec.tgid as i64),
            kv_int(semconv::PROCESS_PARENT_PID, exec.ppid as i64),
            kv_str(semconv::PROCESS_EXECUTABLE_PATH, exec.exe.clone()),
            kv_str(
                semconv::PROCESS_EXECUTABLE_NAME,
                basename(&exec.exe).to_string(),
            ),
            kv_str_array(semconv::PROCESS_COMMAND_ARGS, &args),
            kv_int(semconv::PROCESS_REAL_USER_ID, exec.uid as i64),
            kv_bool("agent.toolchain", analysis.toolchain),
        ];
        if let Some(v) = &analysis.identity.go_version {
            attributes.push(kv_str(semconv::PROCESS_RUNTIME_NAME, "go"));
            attributes.push(kv_str(semconv::PROCESS_RUNTIME_VERSION, v.clone()));
        }
        if let Some(e) = &analysis.identity.pyenv {
            attributes.push(kv_str("agent.python.env", e.label()));
        }
        if let Some(c) = &analysis.cwd {
            attributes.push(kv_str(semconv::PROCESS_WORKING_DIRECTORY, c.clone()));
        }
        let pod = &analysis.pod;
        for (k, v) in [
            (semconv::CONTAINER_ID, &pod.container_id),
            (semconv::K8S_POD_UID, &pod.pod_uid),
            (semconv::K8S_POD_NAME, &pod.pod_name),
            (semconv::K8S_NAMESPACE_NAME, &pod.namespace),
        ] {
            if let Some(v) = v {
                attributes.push(kv_str(k, v.clone()));
            }
        }
        let name = basename(&exec.exe).to_string();
        let span = match &self.root {
            // The traced command: the span whose ids it was given.
            Some((pid, root)) if *pid == exec.tgid => {
                let cx = match &root.parent {
                    Some(p) => Context::new().with_remote_span_context(p.clone()),
                    None => Context::new(),
                };
                self.ids.reserve(Some((root.trace_id, root.span_id)));
                let span = self.start(name, SpanKind::Internal, t, attributes, &cx);
                self.ids.reserve(None);
                self.root = None;
                span
            }
            _ => {
                let cx = self.context(table, exec.ppid, exec.tgid, &exec.env);
                self.start(name, SpanKind::Internal, t, attributes, &cx)
            }
        };
        self.keep_open(exec.tgid, span, exec.ktime_ns);
    }

    /// A process ended: its span ends with the exit code or signal.
    fn exit_span(&mut self, exit: &Exit) {
        if let Some((mut span, _)) = self.open.remove(&exit.tgid) {
            match (exit.status(), exit.signal()) {
                (Some(c), _) => {
                    span.set_attribute(kv_int(semconv::PROCESS_EXIT_CODE, c as i64));
                    if c != 0 {
                        span.set_status(Status::error(format!("exit code {c}")));
                    }
                }
                (None, Some(s)) => {
                    span.set_attribute(kv_int("agent.process.signal", s as i64));
                    span.set_status(Status::error(format!("killed by signal {s}")));
                }
                _ => {}
            }
            span.end_with_timestamp(at(self.offset, exit.ktime_ns));
        }
    }

    /// A finding: an event on the nearest open process span, else a span of its own.
    fn finding_event(&mut self, finding: &Finding, ktime_ns: u64, table: &ProcTable) {
        let t = at(self.offset, ktime_ns);
        let target = self.nearest_open(table, finding.pid, finding.pid);
        match target.and_then(|p| self.open.get_mut(&p)) {
            Some((open, _)) => add_finding(open, finding, t),
            None => {
                // A finding outside any open span: a span of its own.
                let mut span = self.start(
                    format!("finding {}", finding.code),
                    SpanKind::Internal,
                    t,
                    vec![kv_int(semconv::PROCESS_PID, finding.pid as i64)],
                    &Context::new(),
                );
                add_finding(&mut span, finding, t);
                span.end_with_timestamp(t);
            }
        }
    }

    /// End every open span now (agent shutdown).
    pub fn close_all(&mut self) {
        let now = SystemTime::now();
        for (_, (mut span, _)) in self.open.drain() {
            span.set_attribute(kv_bool("agent.process.still_running", true));
            span.end_with_timestamp(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::trace::{Status, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

    use super::*;
    use crate::{events::Exit, process::table::tests_support::exec, signal::exec::ExecAnalysis};

    const CI_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CI_SPAN: &str = "00f067aa0ba902b7";

    fn setup(
        root: Option<(u32, RootSpan)>,
    ) -> (SpanBuilder, SdkTracerProvider, InMemorySpanExporter) {
        let mem = InMemorySpanExporter::default();
        let ids = Ids::default();
        let p = SdkTracerProvider::builder()
            .with_simple_exporter(mem.clone())
            .with_id_generator(ids.clone())
            .build();
        (SpanBuilder::new(p.tracer("t"), ids, 0, root), p, mem)
    }

    fn run(b: &mut SpanBuilder, t: &mut ProcTable, tgid: u32, ppid: u32, env: &[(&str, &str)]) {
        let mut e = exec(tgid, ppid, 1_000 * tgid as u64, "/usr/bin/go");
        e.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = Arc::new(e);
        t.on_exec(e.clone());
        b.observe(
            &Output::Exec {
                exec: e,
                analysis: Box::new(ExecAnalysis {
                    analysed: true,
                    ..Default::default()
                }),
            },
            t,
        );
    }

    fn exit(b: &mut SpanBuilder, t: &mut ProcTable, tgid: u32, code: u32) {
        let x = Exit {
            tgid,
            ktime_ns: 1_000_000 + tgid as u64,
            raw_code: code << 8,
        };
        b.observe(
            &Output::Exit {
                exit: x.clone(),
                name: "go".into(),
                duration_ns: None,
                analysed: true,
            },
            t,
        );
        t.on_exit(&x);
    }

    fn named(spans: &[SpanData], pid: i64) -> &SpanData {
        spans
            .iter()
            .find(|s| {
                s.attributes
                    .iter()
                    .any(|a| a.key.as_str() == "process.pid" && a.value == pid.into())
            })
            .expect("span of pid")
    }

    /// A fake /proc where `pid` started at `ticks` clock ticks after boot.
    fn proc_stat(root: &std::path::Path, pid: u32, ticks: u64) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        let fields: String = std::iter::repeat_n(" 0", 18).collect();
        std::fs::write(
            d.join("stat"),
            format!("{pid} (a) b) S{fields} {ticks} 0 0\n"),
        )
        .unwrap();
    }

    #[test]
    fn spans_whose_exit_was_lost_end_and_open_spans_are_capped() {
        let (mut b, p, mem) = setup(None);
        let mut t = ProcTable::default();
        let root = crate::process::fsview::tests::tempdir("spans-proc");
        for pid in [10, 11, 12] {
            run(&mut b, &mut t, pid, 1, &[]);
        }
        proc_stat(&root, 10, 0); // still running: started before its exec
        proc_stat(&root, 12, 100_000); // a newer process has pid 12
        // pid 11 is gone. Missing once: maybe its exit is on its way.
        assert_eq!(b.expire(&root), 0);
        assert_eq!(b.expire(&root), 2);
        assert_eq!((b.open_count(), b.expired), (1, 2));
        p.force_flush().unwrap();
        let spans = mem.get_finished_spans().unwrap();
        for pid in [11, 12] {
            assert!(
                named(&spans, pid)
                    .attributes
                    .iter()
                    .any(|a| a.key.as_str() == "agent.process.exit_lost"),
                "{pid}"
            );
        }
        // Past the cap the oldest sixteenth ends.
        for pid in 100..100 + MAX_OPEN_SPANS as u32 {
            run(&mut b, &mut t, pid, 1, &[]);
        }
        assert_eq!(b.evicted, (MAX_OPEN_SPANS / 16) as u64);
        assert_eq!(b.open_count(), MAX_OPEN_SPANS + 1 - MAX_OPEN_SPANS / 16);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_traceparent_in_the_environment_parents_a_new_trace_only() {
        let (mut b, _p, mem) = setup(None);
        let mut t = ProcTable::default();
        let tp = format!("00-{CI_TRACE}-{CI_SPAN}-01");
        run(&mut b, &mut t, 10, 1, &[("TRACEPARENT", &tp)]);
        // A child with another TRACEPARENT stays under its open parent.
        run(
            &mut b,
            &mut t,
            11,
            10,
            &[(
                "TRACEPARENT",
                "00-11111111111111111111111111111111-2222222222222222-01",
            )],
        );
        exit(&mut b, &mut t, 11, 0);
        exit(&mut b, &mut t, 10, 3);
        let spans = mem.get_finished_spans().unwrap();
        let (root, child) = (named(&spans, 10), named(&spans, 11));
        assert_eq!(root.span_context.trace_id().to_string(), CI_TRACE);
        assert_eq!(root.parent_span_id.to_string(), CI_SPAN);
        assert!(root.parent_span_is_remote);
        assert_eq!(child.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(child.parent_span_id, root.span_context.span_id());
        assert_eq!(root.status, Status::error("exit code 3"));
        assert_eq!(child.status, Status::Unset);
    }

    #[test]
    fn garbage_traceparent_starts_a_trace_of_its_own() {
        let (mut b, _p, mem) = setup(None);
        let mut t = ProcTable::default();
        for (pid, tp) in [
            (20, "00-xyz-00f067aa0ba902b7-01"),
            (
                21,
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            (22, ""),
        ] {
            run(&mut b, &mut t, pid, 1, &[("TRACEPARENT", tp)]);
            exit(&mut b, &mut t, pid, 0);
        }
        for s in mem.get_finished_spans().unwrap() {
            assert_eq!(s.parent_span_id, SpanId::INVALID);
            assert!(s.span_context.is_valid());
        }
    }

    #[test]
    fn the_traced_command_gets_the_span_named_in_its_traceparent() {
        let env = vec![
            (
                "TRACEPARENT".to_string(),
                format!("00-{CI_TRACE}-{CI_SPAN}-01"),
            ),
            ("TRACESTATE".to_string(), "vendor=x".to_string()),
        ];
        let root = RootSpan::new(&env);
        let injected = root.env();
        let tp = &injected.iter().find(|(k, _)| k == "TRACEPARENT").unwrap().1;
        assert_eq!(tp, &format!("00-{CI_TRACE}-{}-01", root.span_id));
        assert!(injected.contains(&("TRACESTATE".into(), "vendor=x".into())));
        let (mut b, _p, mem) = setup(Some((30, root.clone())));
        let mut t = ProcTable::default();
        // The command's exec carries the injected TRACEPARENT: not its own parent.
        run(&mut b, &mut t, 30, 1, &[("TRACEPARENT", tp)]);
        run(&mut b, &mut t, 31, 30, &[("TRACEPARENT", tp)]);
        exit(&mut b, &mut t, 31, 0);
        exit(&mut b, &mut t, 30, 0);
        let spans = mem.get_finished_spans().unwrap();
        let (cmd, child) = (named(&spans, 30), named(&spans, 31));
        assert_eq!(cmd.span_context.span_id(), root.span_id);
        assert_eq!(cmd.span_context.trace_id().to_string(), CI_TRACE);
        assert_eq!(cmd.parent_span_id.to_string(), CI_SPAN);
        assert_eq!(child.parent_span_id, root.span_id);
        assert_ne!(
            child.span_context.span_id(),
            root.span_id,
            "the reservation is used once"
        );
        // Without a TRACEPARENT of the user's: a new trace, sampled.
        let fresh = RootSpan::new(&[]);
        assert!(fresh.parent.is_none());
        let tp = fresh.env()[0].1.clone();
        assert!(
            tp.starts_with(&format!("00-{}-{}-01", fresh.trace_id, fresh.span_id)),
            "{tp}"
        );
    }
}
