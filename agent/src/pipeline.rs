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
    process::names::HostNames,
    process::table::ProcTable,
    signal::dns::{DnsConfig, DnsReport, DnsTracker},
    signal::exec::{AnalysisConfig, Analyzer, ExecAnalysis},
    signal::tcp::{ConnReport, NetAnalyzer, NetConfig},
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
}

/// Process table + analyzer: the stages after the collector.
pub struct Pipeline {
    pub table: ProcTable,
    pub analyzer: Analyzer,
    pub net: NetAnalyzer,
    pub fs: crate::signal::fs::FsAnalyzer,
    pub tls: TlsTracker,
    pub dns: DnsTracker,
    analysed: std::collections::HashSet<u32>,
}

impl Pipeline {
    pub fn new(cfg: AnalysisConfig, net: NetConfig, tls: TlsConfig, dns: DnsConfig) -> Self {
        Self {
            tls: TlsTracker::new(tls),
            dns: DnsTracker::new(dns),
            table: ProcTable::default(),
            fs: crate::signal::fs::FsAnalyzer::new(cfg.proc_root.clone()),
            analyzer: Analyzer::new(cfg),
            net: NetAnalyzer::new(net),
            analysed: Default::default(),
        }
    }

    /// File-access findings whose faults stopped `idle_ns` ago, and DNS and
    /// TLS conclusions that are due (everything when `idle_ns` is 0).
    /// What the TLS and DNS signals could not use, for the stats record.
    pub fn wire_stats(&self) -> WireStats {
        WireStats {
            dns_malformed: self.dns.malformed,
            tls_malformed: self.tls.malformed,
            dns_unmatched: self.dns.unmatched,
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

    /// A network signal's findings, each followed by the exec signal's
    /// conclusion when it was a toolchain download that failed.
    fn push_network_findings(&mut self, findings: Vec<Finding>, at: u64, out: &mut Vec<Output>) {
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

    fn push_tls(&mut self, report: Box<TlsReport>, out: &mut Vec<Output>) {
        let (findings, at) = (report.findings.clone(), report.end_ns);
        let analysed = self.is_analysed(report.owner.pid);
        out.push(Output::Tls { report, analysed });
        self.push_network_findings(findings, at, out);
    }

    fn push_dns(&mut self, report: Box<DnsReport>, out: &mut Vec<Output>) {
        let (findings, at) = (report.findings.clone(), report.end_ns);
        let analysed = self.is_analysed(report.owner.pid);
        out.push(Output::Dns { report, analysed });
        self.push_network_findings(findings, at, out);
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
            },
            Event::Tcp(t) => {
                // TCP's host name comes from the DNS signal.
                let host = self.dns.name_for(t.tgid, t.dst);
                if let Some(report) = self.net.on_tcp(&self.table, &t, host) {
                    let analysed = self.is_analysed(t.tgid);
                    let findings = report.findings.clone();
                    let at = t.ktime_ns;
                    out.push(Output::Tcp {
                        tcp: t,
                        report: Box::new(report),
                        analysed,
                    });
                    self.push_network_findings(findings, at, &mut out);
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
        out
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
}
