//! The verdict on recorded event sequences, through the real pipeline (the
//! signals make the findings); toolchain findings, which need real
//! binaries and files, are injected as the exec signal emits them.

use std::collections::HashMap;

use super::*;
use crate::{
    events::{Event, Exit, Tcp, TcpPhase, WireKind, tests::wire},
    pipeline::Pipeline,
    process::table::tests_support::exec,
    signal::{dns::DnsConfig, exec::AnalysisConfig, tcp::NetConfig, tls::TlsConfig},
};

/// A traced run: what the pipeline made of the events, and the parents the
/// trace loop records.
struct Run {
    p: Pipeline,
    out: Vec<Output>,
    parents: HashMap<u32, u32>,
}

impl Run {
    fn new() -> Self {
        let proc_root = std::env::temp_dir().join(format!("verdict-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&proc_root);
        Run {
            p: Pipeline::new(
                AnalysisConfig {
                    proc_root,
                    all: true,
                    ..Default::default()
                },
                NetConfig::default(),
                TlsConfig::default(),
                DnsConfig::default(),
            ),
            out: Vec::new(),
            parents: HashMap::new(),
        }
    }

    fn ev(&mut self, e: Event) -> &mut Self {
        for o in self.p.handle(e) {
            let pid = o.pid();
            if let Some(pr) = self.p.table.get(pid) {
                self.parents.entry(pid).or_insert(pr.ppid);
            }
            self.out.push(o);
        }
        self
    }

    fn exec(&mut self, pid: u32, ppid: u32, at: u64, exe: &str) -> &mut Self {
        self.ev(Event::Exec(Box::new(exec(pid, ppid, at, exe))))
    }

    /// A connect from `pid` to `dst`:443; `err` 0 connects.
    fn connect(&mut self, pid: u32, dst: &str, at: u64, err: i32) -> &mut Self {
        self.ev(Event::Tcp(Box::new(Tcp {
            phase: if err == 0 {
                TcpPhase::Established
            } else {
                TcpPhase::Failed
            },
            pid,
            tgid: pid,
            uid: 1000,
            cgroup_id: 0,
            netns: 0,
            src: "10.0.0.1".parse().expect("ip"),
            sport: 40000 + (at % 1000) as u16,
            dst: dst.parse().expect("ip"),
            dport: 443,
            start_ns: at,
            ktime_ns: at + 1_000,
            syn_retrans: 0,
            err,
            no_start: false,
            comm: "go".into(),
            sock: at,
        })))
    }

    /// A lookup of `name` by `pid` at `at`: answered 10.0.0.2, or NXDOMAIN.
    fn lookup(&mut self, pid: u32, name: &str, at: u64, found: bool) -> &mut Self {
        let id = (at % 60_000) as u16;
        let mut q = wire(
            WireKind::Dns,
            true,
            dns::tests::message(id, name, 1, 0, &[]),
            at,
        );
        let answers: &[[u8; 4]] = if found { &[[10, 0, 0, 2]] } else { &[] };
        let rcode = if found { 0 } else { 3 };
        let mut a = wire(
            WireKind::Dns,
            false,
            dns::tests::message(id, name, 1, rcode, answers),
            at + 1_000,
        );
        (q.pid, q.tgid, a.pid, a.tgid) = (pid, pid, pid, pid);
        self.ev(Event::Wire(Box::new(q)));
        self.ev(Event::Wire(Box::new(a)))
    }

    fn exit(&mut self, pid: u32, at: u64, code: u32) -> &mut Self {
        self.ev(Event::Exit(Exit {
            tgid: pid,
            ktime_ns: at,
            raw_code: code << 8,
        }))
    }

    /// A toolchain finding as the exec signal emits it.
    fn finding(&mut self, pid: u32, code: &'static str, severity: Severity, at: u64) -> &mut Self {
        self.out.push(Output::Finding {
            finding: Finding {
                code,
                severity,
                pid,
                summary: format!("{code} in {pid}"),
                cause: "because".into(),
                fix: "do this".into(),
                evidence: Default::default(),
            },
            ktime_ns: at,
        });
        self
    }

    fn judge(&self, root: u32, code: i32) -> Judgement {
        judge(&self.out, root, code, &self.parents)
    }
}

use agent_parse::dns;

fn codes(j: &Judgement) -> Vec<&'static str> {
    j.causes.iter().map(|c| c.finding.code).collect()
}

#[test]
fn a_refused_connect_of_the_failing_command_is_the_networks_fault() {
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .connect(10, "10.0.0.9", 200, libc::ECONNREFUSED)
        .exit(10, 300, 1);
    let j = r.judge(10, 1);
    assert_eq!(j.verdict, Verdict::FailedNetwork, "{j:?}");
    assert_eq!(codes(&j), ["net.connect_refused"]);
    assert_eq!(j.line(), "failed_network (net.connect_refused)");
}

#[test]
fn a_command_that_succeeded_is_ok_whatever_was_found() {
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .connect(10, "10.0.0.9", 200, libc::ECONNREFUSED)
        .exit(10, 300, 0);
    let j = r.judge(10, 0);
    assert_eq!(j.verdict, Verdict::Ok);
    assert!(j.causes.is_empty());
}

#[test]
fn a_failure_without_an_explaining_finding_is_failed() {
    // A compile error: the compiler fails, go fails, the network was fine.
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .connect(10, "10.0.0.9", 150, 0)
        .exec(11, 10, 200, "/usr/local/go/pkg/tool/linux_amd64/compile")
        .exit(11, 300, 2)
        .exit(10, 400, 1);
    let j = r.judge(10, 1);
    assert_eq!(j.verdict, Verdict::Failed, "{j:?}");
    assert_eq!(j.line(), "failed (no finding explains it)");
}

#[test]
fn a_childs_failure_its_parent_survived_gives_no_verdict() {
    // sh -c 'curl https://x || true; cc broken.c': curl's refused connect
    // is real, but the shell went on and failed on the compile.
    let mut r = Run::new();
    r.exec(10, 1, 100, "/bin/sh")
        .exec(11, 10, 200, "/usr/bin/curl")
        .connect(11, "10.0.0.9", 300, libc::ECONNREFUSED)
        .exit(11, 400, 7)
        .exec(12, 10, 500, "/usr/bin/cc")
        .exit(12, 600, 1)
        .exit(10, 700, 1);
    assert!(
        r.out
            .iter()
            .any(|o| matches!(o, Output::Finding { finding, .. } if finding.code == "net.connect_refused")),
        "the finding is made: {:?}",
        r.out
    );
    let j = r.judge(10, 1);
    assert_eq!(j.verdict, Verdict::Failed, "{j:?}");
}

#[test]
fn a_childs_failure_passed_on_through_a_shell_counts() {
    // make → sh → git: git's failed lookup is what make died of.
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/bin/make")
        .exec(11, 10, 200, "/bin/sh")
        .exec(12, 11, 300, "/usr/bin/git")
        .lookup(12, "git.corp.test", 400, false)
        .exit(12, 500, 128)
        .exit(11, 600, 128)
        .exit(10, 700, 2);
    let j = r.judge(10, 2);
    assert_eq!(j.verdict, Verdict::FailedNetwork, "{j:?}");
    assert_eq!(codes(&j), ["net.dns_failure"]);
}

#[test]
fn a_retried_connect_that_succeeded_gives_no_verdict() {
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .connect(10, "10.0.0.9", 200, libc::ECONNREFUSED)
        .connect(10, "10.0.0.9", 5_000, 0)
        .exec(11, 10, 6_000, "/usr/local/go/pkg/tool/linux_amd64/compile")
        .exit(11, 7_000, 2)
        .exit(10, 8_000, 1);
    let j = r.judge(10, 1);
    assert_eq!(j.verdict, Verdict::Failed, "{j:?}");
}

#[test]
fn a_retry_to_another_address_of_the_same_name_counts_as_recovered() {
    // The name answered 10.0.0.2; the first connect there was refused,
    // the retry (same name) connected.
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .lookup(10, "proxy.test", 150, true)
        .connect(10, "10.0.0.2", 200, libc::ECONNREFUSED)
        .connect(10, "10.0.0.2", 5_000, 0)
        .exit(10, 8_000, 1);
    assert_eq!(r.judge(10, 1).verdict, Verdict::Failed);
}

#[test]
fn a_success_before_the_failure_does_not_excuse_it() {
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .connect(10, "10.0.0.9", 200, 0)
        .connect(10, "10.0.0.9", 5_000, libc::ECONNREFUSED)
        .exit(10, 8_000, 1);
    assert_eq!(r.judge(10, 1).verdict, Verdict::FailedNetwork);
}

#[test]
fn both_kinds_are_named_the_earlier_first() {
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .lookup(10, "proxy.test", 200, false)
        .finding(10, "go.version_too_old", Severity::Error, 5_000)
        .exit(10, 8_000, 1);
    let j = r.judge(10, 1);
    assert_eq!(j.verdict, Verdict::FailedNetwork, "{j:?}");
    assert_eq!(codes(&j), ["net.dns_failure", "go.version_too_old"]);
    assert_eq!(j.also(), Some(Verdict::FailedToolchain));
    assert_eq!(
        j.line(),
        "failed_network (net.dns_failure), and failed_toolchain (go.version_too_old)"
    );

    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .finding(10, "path.shadowed", Severity::Warning, 150)
        .lookup(10, "proxy.test", 200, false)
        .exit(10, 8_000, 1);
    let j = r.judge(10, 1);
    assert_eq!(j.verdict, Verdict::FailedToolchain, "{j:?}");
    assert_eq!(codes(&j), ["path.shadowed", "net.dns_failure"]);
}

#[test]
fn network_warnings_and_info_notes_explain_nothing() {
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .finding(10, "net.slow_connect", Severity::Warning, 150)
        .finding(10, "go.toolchain_switch", Severity::Info, 160)
        .exit(10, 8_000, 1);
    assert_eq!(r.judge(10, 1).verdict, Verdict::Failed);
}

#[test]
fn a_toolchain_download_that_failed_blames_the_network() {
    let mut r = Run::new();
    r.exec(10, 1, 100, "/usr/local/go/bin/go")
        .finding(10, "go.toolchain_download_failed", Severity::Error, 150)
        .exit(10, 8_000, 1);
    assert_eq!(r.judge(10, 1).verdict, Verdict::FailedNetwork);
}

#[test]
fn a_deep_or_cyclic_parent_map_stays_bounded() {
    let mut parents: HashMap<u32, u32> = (2..10_000).map(|p| (p, p - 1)).collect();
    parents.insert(1, 9_999);
    let out: Vec<Output> = Vec::new();
    let j = judge(&out, 1, 1, &parents);
    assert_eq!(j.verdict, Verdict::Failed);
}

#[test]
fn exit_codes_map_only_their_verdict() {
    let mut c = ExitCodes::default();
    c.parse_one("network=75").expect("network=75");
    assert!(c.parse_one("network=256").is_err());
    assert!(c.parse_one("compile=3").is_err());
    assert!(c.parse_one("75").is_err());
    let j = |verdict| Judgement {
        verdict,
        causes: Vec::new(),
    };
    assert_eq!(c.apply(&j(Verdict::FailedNetwork), 1), 75);
    assert_eq!(
        c.apply(&j(Verdict::FailedToolchain), 1),
        1,
        "unset: the command's"
    );
    assert_eq!(c.apply(&j(Verdict::Failed), 2), 2);
    assert_eq!(c.apply(&j(Verdict::Ok), 0), 0);
    c.parse_one(" toolchain = 3").expect("spaces");
    assert_eq!(c.apply(&j(Verdict::FailedToolchain), 1), 3);
}
