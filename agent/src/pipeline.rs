//! The router: hands each decoded event to the process table and the
//! signals, and one signal's facts to another (TCP's host name from DNS,
//! a failed download to the exec signal's toolchain switch). What comes out
//! is a list of [`Output`]s for the sinks.
//!
//! Owns: the order in which signals see an event. Must not: print, export
//! or touch the kernel.

use std::sync::Arc;

use crate::{
    events::{Event, Exec, Exit, Tcp, WireKind},
    finding::Finding,
    process::fsview::basename,
    process::table::ProcTable,
    process::{endpoints::EndpointSource, names::HostNames},
    render::Record,
    signal::dns::{DnsConfig, DnsReport, DnsTracker},
    signal::exec::{AnalysisConfig, ExecAnalysis, ExecTracker},
    signal::http::{HttpReport, HttpTracker},
    signal::tcp::{ConnReport, NetConfig, TcpTracker},
    signal::tls::{TlsConfig, TlsReport, TlsTracker},
};

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

    /// `f` applied to the output as a [`Record`]: the one place that knows
    /// which signal renders which output, so no sink has to.
    pub fn with_record<R>(&self, f: impl FnOnce(&dyn Record) -> R) -> R {
        use crate::{
            finding::FindingRecord,
            signal::{
                dns::render::DnsRecord,
                exec::render::{ExecRecord, ExitRecord},
                tcp::render::TcpRecord,
                tls::render::TlsRecord,
            },
        };
        match self {
            Output::Exec { exec, analysis } => f(&ExecRecord {
                exec,
                analysis: Some(analysis),
            }),
            Output::Exit {
                exit,
                name,
                duration_ns,
                analysed,
            } => f(&ExitRecord {
                exit,
                name,
                duration_ns: *duration_ns,
                analysed: *analysed,
            }),
            Output::Finding { finding, ktime_ns } => f(&FindingRecord {
                finding,
                ktime_ns: *ktime_ns,
            }),
            Output::Tcp {
                tcp,
                report,
                analysed,
            } => f(&TcpRecord {
                tcp,
                report,
                analysed: *analysed,
            }),
            Output::Tls { report, analysed } => f(&TlsRecord {
                report,
                analysed: *analysed,
            }),
            Output::Dns { report, analysed } => f(&DnsRecord {
                report,
                analysed: *analysed,
            }),
        }
    }
}

/// Process table + analyzer: the stages after the collector.
pub struct Pipeline {
    pub table: ProcTable,
    pub analyzer: ExecTracker,
    pub net: TcpTracker,
    pub fs: crate::signal::fs::FsTracker,
    pub tls: TlsTracker,
    pub dns: DnsTracker,
    pub http: HttpTracker,
    analysed: std::collections::HashSet<u32>,
}

impl Pipeline {
    pub fn new(cfg: AnalysisConfig, net: NetConfig, tls: TlsConfig, dns: DnsConfig) -> Self {
        Self {
            tls: TlsTracker::new(tls),
            dns: DnsTracker::new(dns),
            http: HttpTracker::default(),
            table: ProcTable::default(),
            fs: crate::signal::fs::FsTracker::new(cfg.proc_root.clone()),
            analyzer: ExecTracker::new(cfg),
            net: TcpTracker::new(net),
            analysed: Default::default(),
        }
    }

    /// The process table's bounds at work, for the stats record.
    pub fn table_stats(&self) -> serde_json::Value {
        serde_json::json!({
            "processes": self.table.len(),
            "evicted": self.table.evicted,
            "execs_dropped": self.table.execs_dropped,
            "bytes": self.table.bytes,
        })
    }

    /// What the wire signals saw and could not use, for the stats record.
    pub fn wire_stats(&self) -> WireStats {
        WireStats {
            dns_malformed: self.dns.malformed,
            tls_malformed: self.tls.malformed,
            dns_unmatched: self.dns.unmatched,
            http_errors: self.http.seen,
            http_malformed: self.http.malformed,
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
        for r in self.dns.flush(&self.table, wire_now) {
            self.push_dns(r, &mut out);
        }
        for r in self.tls.flush(&self.table, wire_now, &self.dns) {
            self.push_tls(r, &mut out);
        }
        catalogued(out)
    }

    fn is_analysed(&self, tgid: u32) -> bool {
        self.analysed.contains(&tgid)
            || self
                .table
                .ancestors(tgid)
                .iter()
                .any(|a| self.analysed.contains(a))
    }

    /// A network signal's findings, each followed by the exec signal's
    /// conclusion when it was a toolchain download that failed.
    fn push_network_findings(
        &mut self,
        findings: Vec<Finding>,
        endpoint: Option<&EndpointSource>,
        at: u64,
        out: &mut Vec<Output>,
    ) {
        for finding in findings {
            let download = self
                .analyzer
                .toolchain_download_failed(&finding, endpoint, at);
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

    fn push_tls(&mut self, report: TlsReport, out: &mut Vec<Output>) {
        let (findings, at) = (report.findings.clone(), report.end_ns);
        let endpoint = report.endpoint.clone();
        let analysed = self.is_analysed(report.owner.pid);
        out.push(Output::Tls {
            report: Box::new(report),
            analysed,
        });
        self.push_network_findings(findings, endpoint.as_ref(), at, out);
    }

    fn push_dns(&mut self, report: DnsReport, out: &mut Vec<Output>) {
        let (findings, at) = (report.findings.clone(), report.end_ns);
        let endpoint = report.endpoint.clone();
        let analysed = self.is_analysed(report.owner.pid);
        out.push(Output::Dns {
            report: Box::new(report),
            analysed,
        });
        self.push_network_findings(findings, endpoint.as_ref(), at, out);
    }

    /// An HTTP error response: its finding when it stands on its own (an
    /// error from a server a setting named) or when it was a toolchain
    /// download that failed (a GOPROXY's 404 for the toolchain), followed by
    /// the exec signal's conclusion.
    fn push_http(&mut self, r: HttpReport, out: &mut Vec<Output>) {
        let download =
            self.analyzer
                .toolchain_download_failed(&r.finding, r.endpoint.as_ref(), r.ktime_ns);
        if r.standalone || download.is_some() {
            out.push(Output::Finding {
                finding: r.finding,
                ktime_ns: r.ktime_ns,
            });
        }
        if let Some(d) = download {
            out.push(Output::Finding {
                finding: d,
                ktime_ns: r.ktime_ns,
            });
        }
    }

    /// One event through the process table and the signal it belongs to.
    pub fn handle(&mut self, ev: Event) -> Vec<Output> {
        let mut out = Vec::new();
        match ev {
            Event::Fork(f) => self.table.on_fork(&f),
            Event::Fs(f) => self.fs.on_fault(&self.table, &f),
            Event::TlsLib(l) => {
                for r in self.tls.on_lib(&self.table, &l, &self.dns) {
                    self.push_tls(r, &mut out);
                }
            }
            Event::Wire(w) => match w.kind {
                WireKind::Tls => {
                    if let Some(r) = self.tls.on_wire(&self.table, &w, &self.dns) {
                        self.push_tls(r, &mut out);
                    }
                }
                WireKind::Dns => {
                    for r in self.dns.on_wire(&self.table, &w) {
                        self.push_dns(r, &mut out);
                    }
                }
                WireKind::Http => {
                    if let Some(r) = self.http.on_wire(&self.table, &w, &self.dns) {
                        self.push_http(r, &mut out);
                    }
                }
            },
            Event::Tcp(t) => {
                // TCP's host name comes from the DNS signal.
                let host = self.dns.name_for(t.tgid, t.dst);
                if let Some(report) = self.net.on_tcp(&self.table, &t, host) {
                    let analysed = self.is_analysed(t.tgid);
                    let findings = report.findings.clone();
                    let endpoint = report.endpoint.clone();
                    let at = t.ktime_ns;
                    out.push(Output::Tcp {
                        tcp: t,
                        report: Box::new(report),
                        analysed,
                    });
                    self.push_network_findings(findings, endpoint.as_ref(), at, &mut out);
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
                for r in self.tls.on_exit(&self.table, x.tgid, &self.dns) {
                    self.push_tls(r, &mut out);
                }
                for r in self.dns.on_exit(&self.table, x.tgid, x.ktime_ns) {
                    self.push_dns(r, &mut out);
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
        catalogued(out)
    }
}

/// Counters of wire payloads the TLS and DNS signals could not use.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WireStats {
    /// DNS payloads that did not parse.
    pub dns_malformed: u64,
    /// TLS segments/records that could not be followed or parsed.
    pub tls_malformed: u64,
    /// Responses that matched no query seen.
    pub dns_unmatched: u64,
    /// Plaintext HTTP 4xx/5xx responses seen (findings or not).
    pub http_errors: u64,
    /// HTTP captures that were not an error status line.
    pub http_malformed: u64,
}

/// Every finding a signal hands on is one the catalogue allows (a listed
/// code, one of its severities, a cause and a fix): checked in every debug
/// build, so each unit test of a rule checks it too.
fn catalogued(out: Vec<Output>) -> Vec<Output> {
    debug_assert!(
        out.iter().all(|o| match o {
            Output::Finding { finding, .. } => crate::signal::well_formed(finding),
            _ => true,
        }),
        "a finding outside the catalogue or without cause and fix: {:?}",
        out.iter()
            .filter_map(|o| match o {
                Output::Finding { finding, .. } => Some(finding),
                _ => None,
            })
            .filter(|f| !crate::signal::well_formed(f))
            .collect::<Vec<_>>()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_parse::dns::tests::message;

    use crate::events::{
        TcpPhase, WireKind, decode,
        tests::{exec_record, wire},
    };

    fn pipeline() -> Pipeline {
        // An empty /proc: nothing here reads the machine's processes.
        let proc_root = std::env::temp_dir().join(format!("pipeline-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&proc_root);
        Pipeline::new(
            AnalysisConfig {
                proc_root,
                ..Default::default()
            },
            NetConfig::default(),
            TlsConfig::default(),
            DnsConfig::default(),
        )
    }

    fn refused(tgid: u32, dst: &str, at: u64) -> Event {
        Event::Tcp(Box::new(Tcp {
            phase: TcpPhase::Failed,
            pid: tgid,
            tgid,
            uid: 0,
            cgroup_id: 0,
            netns: 0,
            src: "10.0.0.1".parse().expect("ip"),
            sport: 40001,
            dst: dst.parse().expect("ip"),
            dport: 443,
            start_ns: at,
            ktime_ns: at + 1,
            syn_retrans: 0,
            err: libc::ECONNREFUSED,
            no_start: false,
            comm: "curl".into(),
            sock: 1,
        }))
    }

    /// One process's events through the router: its exec goes to the exec
    /// signal and the process table, its lookup to DNS, whose answer names
    /// the address its refused connection went to (TCP's host comes from
    /// DNS), and its exit to every signal and the table.
    #[test]
    fn the_router_hands_each_event_to_its_signal_and_dns_names_to_tcp() {
        let mut p = pipeline();
        let Ok(Event::Exec(mut e)) = decode(&exec_record(
            "/usr/bin/curl",
            "/usr/bin/curl",
            &["curl", "https://pkg.test/"],
            &["PATH=/usr/bin:/bin"],
            0,
        )) else {
            panic!("exec record")
        };
        (e.pid, e.tgid) = (9, 9);
        let out = p.handle(Event::Exec(e));
        assert!(
            matches!(&out[..], [Output::Exec { exec, .. }] if exec.tgid == 9),
            "{out:?}"
        );
        assert!(p.table.get(9).is_some(), "the process table has it");

        let q = wire(WireKind::Dns, true, message(1, "pkg.test", 1, 0, &[]), 10);
        assert!(p.handle(Event::Wire(Box::new(q))).is_empty());
        let a = wire(
            WireKind::Dns,
            false,
            message(1, "pkg.test", 1, 0, &[[10, 0, 0, 2]]),
            20,
        );
        let out = p.handle(Event::Wire(Box::new(a)));
        assert!(
            matches!(&out[..], [Output::Dns { report, .. }] if report.name == "pkg.test"),
            "{out:?}"
        );

        let out = p.handle(refused(9, "10.0.0.2", 30));
        let Some(Output::Tcp { report, .. }) = out.first() else {
            panic!("{out:?}")
        };
        assert_eq!(report.findings[0].code, "net.connect_refused");
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Finding { finding, .. }
                if finding.code == "net.connect_refused" && finding.summary.contains("pkg.test"))),
            "the finding names the host DNS answered for: {out:?}"
        );
        // Another process's connection to an address nobody looked up has no name.
        let out = p.handle(refused(11, "10.0.0.3", 40));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Finding { finding, .. }
                if finding.code == "net.connect_refused" && !finding.summary.contains("pkg.test"))),
            "{out:?}"
        );

        let x = Exit {
            tgid: 9,
            ktime_ns: 50,
            raw_code: 0,
        };
        let out = p.handle(Event::Exit(x));
        assert!(
            matches!(out.last(), Some(Output::Exit { name, duration_ns: Some(_), .. }) if name == "curl"),
            "{out:?}"
        );
    }
}
