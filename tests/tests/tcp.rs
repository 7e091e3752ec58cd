//! TCP connection set-up on real sockets between network namespaces made
//! here: a listener, a reset, a silent drop (timeout), a drop of only the
//! first SYN, an ICMP reject; real clients (Python, curl, a Go program).

use std::time::Duration;

use agent_tests::{
    codes,
    netlab::{NetLab, PORT_DROP, PORT_DROP_FIRST_SYN, PORT_ICMP_UNREACH, PORT_OPEN, PORT_RESET},
    of_type, trace_json,
};
use serde_json::Value;

fn py_connect(host: &str, port: u16, v6: bool) -> String {
    format!(
        "import socket\ns=socket.socket(socket.AF_INET6 if {} else socket.AF_INET)\ntry:\n s.connect(('{host}',{port}))\nexcept OSError as e:\n print(e)\n",
        if v6 { "True" } else { "False" }
    )
}

fn only_conn(lines: &[Value]) -> &Value {
    let conns = of_type(lines, "tcp_connect");
    assert_eq!(conns.len(), 1, "connections: {conns:#?}");
    conns[0]
}

#[test]
fn reset_is_refused_and_names_the_process() {
    let mut lab = NetLab::new("rst");
    lab.serve();
    let lines = trace_json(
        &lab.in_client(&["python3", "-c", &py_connect(&lab.srv_ip, PORT_RESET, false)]),
        &[],
    );
    let c = only_conn(&lines);
    assert_eq!(c["outcome"], "refused");
    assert_eq!(c["error"], "ECONNREFUSED");
    assert_eq!(c["destination"], format!("{}:{PORT_RESET}", lab.srv_ip));
    assert_eq!(
        c["source"].as_str().unwrap().split(':').next(),
        Some(lab.cli_ip.as_str())
    );
    assert_eq!(c["comm"], "python3");
    assert_eq!(c["syn_retransmits"], 0);
    assert_eq!(c["netns"].as_u64(), Some(lab.cli_netns_inode()));
    assert_eq!(codes(&lines), vec!["net.connect_refused"]);
    let f = of_type(&lines, "finding")[0];
    assert_eq!(f["pid"], c["pid"]);
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("{}:{PORT_RESET} refused", lab.srv_ip))
    );
}

#[test]
fn silent_drop_times_out_after_counted_syns() {
    let lab = NetLab::new("drop");
    let url = format!("http://{}:{PORT_DROP}/", lab.srv_ip);
    let lines = trace_json(
        &lab.in_client(&["curl", "-sS", "--max-time", "20", &url]),
        &[],
    );
    let c = only_conn(&lines);
    assert_eq!(c["outcome"], "timeout");
    assert_eq!(c["error"], "ETIMEDOUT");
    // tcp_syn_retries=1: the first SYN and one retransmit, given up at ~3 s.
    assert_eq!(c["syn_retransmits"], 1);
    let ms = c["duration_ms"].as_f64().unwrap();
    assert!((2500.0..4500.0).contains(&ms), "duration {ms} ms");
    assert!(c["exe"].as_str().unwrap().ends_with("/curl"));
    let f = of_type(&lines, "finding");
    assert_eq!(codes(&lines), vec!["net.connect_timeout"]);
    assert_eq!(f[0]["evidence"]["syns_sent"], 2);
    assert!(
        f[0]["summary"]
            .as_str()
            .unwrap()
            .contains("timed out after 2 SYNs")
    );
}

#[test]
fn first_syn_dropped_connects_after_one_retransmit() {
    let mut lab = NetLab::new("once");
    lab.serve();
    let lines = trace_json(
        &lab.in_client(&[
            "python3",
            "-c",
            &py_connect(&lab.srv_ip, PORT_DROP_FIRST_SYN, false),
        ]),
        &[],
    );
    let c = only_conn(&lines);
    assert_eq!(c["outcome"], "established");
    assert_eq!(c["syn_retransmits"], 1);
    let ms = c["duration_ms"].as_f64().unwrap();
    assert!(
        (800.0..2500.0).contains(&ms),
        "duration {ms} ms (one SYN RTO)"
    );
    assert_eq!(codes(&lines), vec!["net.syn_retransmit"]);
}

#[test]
fn icmp_reject_is_unreachable() {
    let lab = NetLab::new("icmp");
    let lines = trace_json(
        &lab.in_client(&[
            "python3",
            "-c",
            &py_connect(&lab.srv_ip, PORT_ICMP_UNREACH, false),
        ]),
        &[],
    );
    let c = only_conn(&lines);
    assert_eq!(c["outcome"], "unreachable");
    assert_eq!(c["error"], "EHOSTUNREACH");
    assert_eq!(codes(&lines), vec!["net.unreachable"]);
}

#[test]
fn ipv6_reset_is_refused() {
    let mut lab = NetLab::new("v6");
    lab.serve();
    let lines = trace_json(
        &lab.in_client(&["python3", "-c", &py_connect(&lab.srv_ip6, PORT_RESET, true)]),
        &[],
    );
    let c = only_conn(&lines);
    assert_eq!(c["outcome"], "refused");
    assert_eq!(c["network_type"], "ipv6");
    assert_eq!(c["destination"], format!("[{}]:{PORT_RESET}", lab.srv_ip6));
}

#[test]
fn the_proxy_in_force_is_named_and_its_credentials_are_not() {
    let lab = NetLab::new("proxy");
    let proxy = format!("http://alice:s3cret@{}:{PORT_RESET}", lab.srv_ip);
    let lines = trace_json(
        &lab.in_client(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "https://proxy.golang.org/",
        ]),
        &[("HTTPS_PROXY", &proxy)],
    );
    let f = of_type(&lines, "finding");
    assert_eq!(codes(&lines), vec!["net.connect_refused"]);
    let summary = f[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("(your HTTPS_PROXY) refused"),
        "{summary}; execs: {:?}",
        of_type(&lines, "exec")
    );
    assert_eq!(f[0]["evidence"]["proxy"]["is_destination"], true);
    let all: String = lines.iter().map(|l| l.to_string()).collect();
    assert!(!all.contains("s3cret"), "credentials leaked");
}

#[test]
fn clean_connections_from_curl_python_and_go_give_no_finding() {
    let mut lab = NetLab::new("clean");
    lab.serve();
    // A real Go client, built with the installed toolchain.
    let dir = agent_tests::scratch("godial");
    std::fs::write(
        dir.join("main.go"),
        "package main\nimport (\"net\"; \"os\")\nfunc main() { c, err := net.Dial(\"tcp\", os.Args[1]); if err != nil { panic(err) }; c.Close() }\n",
    )
    .unwrap();
    let st = std::process::Command::new("/usr/lib/go-1.19/bin/go")
        .args(["build", "-o", "dial", "main.go"])
        .current_dir(&dir)
        .env("HOME", &dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .status()
        .expect("go build");
    assert!(st.success(), "go build failed");
    let dial = dir.join("dial").display().to_string();
    let target = format!("{}:{PORT_OPEN}", lab.srv_ip);
    let url = format!("http://{target}/");
    let script = format!(
        "curl -s --max-time 5 {url} >/dev/null; {dial} {target}; python3 -c \"import socket; socket.create_connection(('{}',{PORT_OPEN})).close()\"",
        lab.srv_ip
    );
    let lines = trace_json(&lab.in_client(&["sh", "-c", &script]), &[]);
    let conns = of_type(&lines, "tcp_connect");
    assert!(conns.len() >= 3, "{conns:#?}");
    for c in &conns {
        assert_eq!(c["outcome"], "established", "{c}");
        assert_eq!(c["destination"], target.as_str());
        assert!(c["duration_ms"].as_f64().unwrap() < 1000.0);
    }
    let comms: Vec<&str> = conns.iter().map(|c| c["comm"].as_str().unwrap()).collect();
    for want in ["curl", "dial", "python3"] {
        assert!(comms.contains(&want), "{want} not among {comms:?}");
    }
    assert_eq!(codes(&lines), Vec::<String>::new());
    std::thread::sleep(Duration::from_millis(10));
}

/// Live mode keeps routine connections in the kernel: a fast connection from
/// an untracked process is only counted; connections from toolchain trees
/// (tracked in the kernel from the tool's exec, inherited by its children)
/// and every failure are reported.
#[test]
fn live_mode_reports_toolchain_trees_and_failures_and_counts_the_rest() {
    use std::process::{Command, Stdio};
    agent_tests::require_root();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            drop(s);
        }
    });
    let out_file = agent_tests::scratch("live-tcp").join("records.jsonl");
    let mut agent = agent_tests::start_live_agent(&out_file);
    let url = format!("http://127.0.0.1:{port}/");
    let curl = |u: &str| {
        let _ = Command::new("curl")
            .args(["-s", "--max-time", "3", u])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    curl(&url); // untracked, fast, established: counted only
    curl("http://127.0.0.1:1/"); // untracked but refused: reported
    // python3 is a tool: its own connection and its curl child's are reported.
    let py = format!(
        "import socket,subprocess\nsocket.create_connection(('127.0.0.1',{port})).close()\nsubprocess.run(['curl','-s','--max-time','3','{url}'],stdout=subprocess.DEVNULL)"
    );
    let st = Command::new("python3")
        .args(["-c", &py])
        .env("PATH", "/usr/bin:/bin")
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(std::time::Duration::from_millis(400));
    agent_tests::signal(agent.id(), "-TERM");
    agent.wait().unwrap();
    let lines = agent_tests::json_lines(&std::fs::read_to_string(&out_file).unwrap());
    let to = |p: u16| format!("127.0.0.1:{p}");
    let conns: Vec<&Value> = of_type(&lines, "tcp_connect")
        .into_iter()
        .filter(|c| c["destination"] == to(port) || c["destination"] == to(1))
        .collect();
    let seen = |comm: &str, dst: &str, outcome: &str| {
        conns
            .iter()
            .filter(|c| c["comm"] == comm && c["destination"] == dst && c["outcome"] == outcome)
            .count()
    };
    assert_eq!(seen("python3", &to(port), "established"), 1, "{conns:#?}");
    assert_eq!(
        seen("curl", &to(port), "established"),
        1,
        "only the child of python3: {conns:#?}"
    );
    assert_eq!(seen("curl", &to(1), "refused"), 1, "{conns:#?}");
    let stats = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "stats")
        .expect("stats");
    assert!(
        stats["tcp_established_counted_in_kernel"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

/// `go version` in `newer` (its go.mod needs go1.99) with `goproxy`, in
/// the lab's client: the `go.toolchain_download_failed` finding.
fn switch_failure(
    lab: &NetLab,
    g: &agent_tests::GoModule,
    newer: &std::path::Path,
    goproxy: &str,
) -> serde_json::Value {
    let lines = trace_json(
        &lab.in_client(&["sh", "-c", &format!("cd {} && go version", newer.display())]),
        &[
            ("PATH", g.path.as_str()),
            ("GOPROXY", goproxy),
            ("GOSUMDB", "off"),
            ("GOCACHE", g.cache.as_str()),
            ("GOMODCACHE", g.modcache.as_str()),
        ],
    );
    of_type(&lines, "finding")
        .into_iter()
        .find(|f| f["code"] == "go.toolchain_download_failed")
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no go.toolchain_download_failed: {:#?}",
                of_type(&lines, "finding")
            )
        })
}

/// `go mod download` against a GOPROXY that refuses, and one that drops
/// SYNs: the finding names GOPROXY as where the address came from, with the
/// setting as the cause and a fix; the report opens with it, in JSON and in
/// Markdown.
#[test]
fn goproxy_failures_name_goproxy_with_cause_and_fix() {
    let mut lab = NetLab::new("goproxy");
    let g = agent_tests::GoModule::new("goproxy");
    let (dir, path, cache, modcache) = (&g.dir, &g.path, &g.cache, &g.modcache);
    let cmd = g.download_cmd();
    for (port, code, note) in [
        (PORT_RESET, "net.connect_refused", "refused"),
        (PORT_DROP, "net.connect_timeout", "timed out"),
    ] {
        let goproxy = format!("http://{}:{port}", lab.srv_ip);
        let lines = trace_json(&lab.in_client(&["sh", "-c", &cmd]), &g.env(&goproxy));
        let f = of_type(&lines, "finding")
            .into_iter()
            .find(|f| f["code"] == code)
            .unwrap_or_else(|| panic!("no {code}: {:#?}", of_type(&lines, "finding")));
        let summary = f["summary"].as_str().unwrap();
        assert!(
            summary.starts_with(&format!("go → {}:{port} (your GOPROXY) {note}", lab.srv_ip)),
            "{summary}"
        );
        assert_eq!(f["evidence"]["endpoint_from"]["variable"], "GOPROXY");
        assert!(
            f["cause"].as_str().unwrap().ends_with(&format!(
                "the destination came from GOPROXY={goproxy} in the environment"
            )),
            "{f:#}"
        );
        assert!(
            f["fix"]
                .as_str()
                .unwrap()
                .ends_with("or point GOPROXY at a server that works"),
            "{f:#}"
        );
        let report = lines.last().unwrap();
        assert_eq!(report["problems"][0]["code"], code, "{report:#}");
    }
    // A go.mod that needs a newer Go: go (1.21+, GOTOOLCHAIN unset) tries to
    // download that toolchain from the refusing GOPROXY.
    let newer = dir.join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(newer.join("go.mod"), "module example.com/n\n\ngo 1.99\n").unwrap();
    let goproxy = format!("http://{}:{PORT_RESET}", lab.srv_ip);
    let f = switch_failure(&lab, &g, &newer, &goproxy);
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "tried to switch to go1.99 (because of go 1.99 in {}/go.mod) and the download from GOPROXY {goproxy} failed: go → {}:{PORT_RESET} (your GOPROXY) refused",
            newer.display(),
            lab.srv_ip
        )),
        "{summary}"
    );
    assert_eq!(f["severity"], "error");
    assert!(f["fix"].as_str().unwrap().contains("GOPROXY"), "{f:#}");

    // The same report as Markdown, for a CI job summary.
    let out = dir.join("summary.md");
    let goproxy = format!("http://{}:{PORT_RESET}", lab.srv_ip);
    let st = std::process::Command::new(agent_tests::agent_bin())
        .args(["--format", "markdown", "--output"])
        .arg(&out)
        .arg("trace")
        .arg("--")
        .args(lab.in_client(&["sh", "-c", &cmd]))
        .env("PATH", path)
        .env("GOPROXY", &goproxy)
        .env("GOSUMDB", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", cache)
        .env("GOMODCACHE", modcache)
        .status()
        .expect("agent trace --format markdown");
    assert!(!st.success(), "go mod download should fail");
    let md = std::fs::read_to_string(&out).expect("markdown report");
    let lines: Vec<&str> = md.lines().collect();
    assert!(
        lines[0].starts_with("### agent trace: \\`ip netns exec"),
        "{md}"
    );
    assert!(
        lines[2].starts_with("**Verdict:** failed\\_network (net.connect\\_"),
        "{md}"
    );
    assert!(
        lines[4].starts_with(&format!(
            "- 🔴 **error** net.connect\\_refused: go → {}:{PORT_RESET} (your GOPROXY) refused",
            lab.srv_ip
        )),
        "{md}"
    );
    assert!(lines[5].starts_with("  - fix: "), "{md}");
    assert!(
        md.contains("<details><summary>Process tree</summary>"),
        "{md}"
    );

    // The switching go's GOPROXY names a host that does not resolve (the
    // lab's DNS server says NXDOMAIN): the download failed at the lookup.
    lab.dns();
    let goproxy = format!("http://nx.test:{PORT_RESET}");
    let f = switch_failure(&lab, &g, &newer, &goproxy);
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "tried to switch to go1.99 (because of go 1.99 in {}/go.mod) and the download from GOPROXY {goproxy} failed: go: lookup of nx.test ("
        , newer.display())) && summary.contains("your GOPROXY) failed: NXDOMAIN"),
        "{summary}"
    );
    assert_eq!(f["evidence"]["network_finding"], "net.dns_failure", "{f:#}");

    // A plaintext GOPROXY that answers: 404 for the toolchain (the proxy
    // does not have it), 504 (its upstream timed out, as in a real report).
    // Every answer sets a cookie, which must not leave the kernel.
    lab.spawn_server(&["python3", "-c", HTTP_ERRORS], Some("ready"));
    lab.wait_listening(PORT_HTTP_404);
    for (port, status) in [
        (PORT_HTTP_404, "HTTP 404 Not Found"),
        (PORT_HTTP_504, "HTTP 504 Gateway Timeout"),
    ] {
        let goproxy = format!("http://{}:{port}", lab.srv_ip);
        let f = switch_failure(&lab, &g, &newer, &goproxy);
        let summary = f["summary"].as_str().unwrap();
        assert!(
            summary.contains(&format!(
                "tried to switch to go1.99 (because of go 1.99 in {}/go.mod) and the download from GOPROXY {goproxy} failed: go → {}:{port} (your GOPROXY) answered {status}",
                newer.display(),
                lab.srv_ip
            )),
            "{summary}"
        );
        assert_eq!(
            f["evidence"]["network_finding"], "http.error_status",
            "{f:#}"
        );
        assert!(!f.to_string().contains("SECRET"), "{f:#}");
    }
    // The healthy twin: a 404 from a server no setting named, fetched by a
    // process that is not switching toolchains, is the protocol at work:
    // seen and counted, no finding.
    let url = format!("http://{}:{PORT_HTTP_404}/nothing", lab.srv_ip);
    let code = format!(
        "import urllib.request,urllib.error\ntry: urllib.request.urlopen('{url}', timeout=5)\nexcept urllib.error.HTTPError as e: print(e.code)"
    );
    let lines = trace_json(&lab.in_client(&["python3", "-c", &code]), &[]);
    assert!(
        of_type(&lines, "finding").is_empty(),
        "{:#?}",
        of_type(&lines, "finding")
    );
    let report = lines.last().unwrap();
    assert!(
        report["stats"]["wire"]["http_errors"].as_u64() >= Some(1),
        "{report:#}"
    );
    assert!(!report.to_string().contains("SECRET"));
    std::fs::remove_dir_all(dir).ok();
}

const PORT_HTTP_404: u16 = 8090;
const PORT_HTTP_504: u16 = 8091;

/// An HTTP/1.0 server on PORT_HTTP_404 and PORT_HTTP_504 answering every GET
/// with that status and a cookie.
const HTTP_ERRORS: &str = r#"
import http.server, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404 if self.server.server_port == 8090 else 504)
        self.send_header('Set-Cookie', 'session=SECRET')
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *a):
        pass
for p in (8090, 8091):
    s = http.server.ThreadingHTTPServer(('0.0.0.0', p), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
"#;
