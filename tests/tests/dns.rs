//! DNS lookups seen on the wire: a DNS server of the tests' own
//! (tests/fixtures/dnsd.py) in a network namespace that answers, says
//! NXDOMAIN, stays silent or answers late; real clients (glibc `getent`,
//! Python `getaddrinfo`, a Go program with the pure-Go resolver, curl).

use agent_tests::{
    codes, findings_of,
    netlab::{NetLab, PORT_RESET},
    of_type, trace_json,
};
use serde_json::Value;

fn lookups<'a>(lines: &'a [Value], name: &str, qtype: &str) -> Vec<&'a Value> {
    of_type(lines, "dns_lookup")
        .into_iter()
        .filter(|l| l["name"] == name && l["qtype"] == qtype)
        .collect()
}

const GO_LOOKUP: &str = r#"package main

import (
	"context"
	"fmt"
	"net"
	"os"
)

func main() {
	r := &net.Resolver{PreferGo: true}
	addrs, err := r.LookupHost(context.Background(), os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println(addrs)
}
"#;

fn py_lookup(name: &str) -> String {
    format!(
        "import socket,sys\ntry:\n print(socket.getaddrinfo('{name}',80,socket.AF_INET))\nexcept OSError as e:\n print(e); sys.exit(1)\n"
    )
}

#[test]
fn answers_failures_timeouts_and_slow_answers_from_real_resolvers() {
    let mut lab = NetLab::new("dns");
    lab.dns();
    let resolver = format!("{}:53", lab.srv_ip);
    let go = agent_tests::go_build(
        &agent_tests::gobin_root().join("bin/go"),
        "go-dns",
        GO_LOOKUP,
    )
    .display()
    .to_string();
    type Argv<'a> = Box<dyn Fn(&str) -> Vec<String> + 'a>;
    let clients: Vec<(&str, Argv)> = vec![
        (
            "getent",
            Box::new(|n: &str| lab.in_client(&["getent", "ahosts", n])),
        ),
        (
            "python3",
            Box::new(|n: &str| lab.in_client(&["python3", "-c", &py_lookup(n)])),
        ),
        ("prog", Box::new(|n: &str| lab.in_client(&[&go, n]))),
    ];
    for (comm, argv) in &clients {
        // A clean lookup: answered, no finding.
        let lines = trace_json(&argv("ok.test"), &[]);
        let a = lookups(&lines, "ok.test", "A");
        assert!(!a.is_empty(), "{comm}: {lines:#?}");
        assert_eq!(a[0]["rcode"], "NOERROR");
        assert_eq!(a[0]["addresses"], serde_json::json!([lab.srv_ip]));
        assert_eq!(a[0]["resolver"], resolver);
        assert_eq!(a[0]["comm"], *comm);
        assert!(a[0]["duration_ms"].as_f64().unwrap() < 500.0);
        assert_eq!(codes(&lines), Vec::<String>::new(), "{comm}");

        // NXDOMAIN: one failure naming the name and the resolver.
        let lines = trace_json(&argv("nx.test"), &[]);
        let f = findings_of(&lines, "net.dns_failure");
        assert_eq!(f.len(), 1, "{comm}: {:?}", codes(&lines));
        let s = f[0]["summary"].as_str().unwrap();
        assert!(
            s.contains("nx.test") && s.contains("NXDOMAIN") && s.contains(&resolver),
            "{s}"
        );
        assert_eq!(f[0]["pid"], lookups(&lines, "nx.test", "A")[0]["pid"]);

        // SERVFAIL.
        let lines = trace_json(&argv("fail.test"), &[]);
        let f = findings_of(&lines, "net.dns_failure");
        assert_eq!(f.len(), 1, "{comm}: {:?}", codes(&lines));
        assert!(f[0]["summary"].as_str().unwrap().contains("SERVFAIL"));
    }

    // No answer at all: glibc tries twice, 1 s apart (resolv.conf of the lab).
    let lines = trace_json(&lab.in_client(&["getent", "ahosts", "silent.test"]), &[]);
    let f = findings_of(&lines, "net.dns_timeout");
    assert_eq!(f.len(), 1, "{:?}", codes(&lines));
    assert!(
        f[0]["evidence"]["attempts"].as_u64().unwrap() >= 2,
        "{}",
        f[0]
    );
    assert_eq!(f[0]["evidence"]["resolver"], resolver);
    let ms = f[0]["evidence"]["duration_ms"].as_f64().unwrap();
    assert!((900.0..4000.0).contains(&ms), "{ms}");

    // A late answer (1.5 s): slow, with the retry the client made meanwhile.
    let lines = trace_json(&lab.in_client(&["getent", "ahosts", "slow.test"]), &[]);
    let f = findings_of(&lines, "net.dns_slow");
    assert_eq!(f.len(), 1, "{:?}", codes(&lines));
    let ms = f[0]["evidence"]["duration_ms"].as_f64().unwrap();
    assert!((1400.0..2500.0).contains(&ms), "{ms}");
}

/// The lookup is linked to the connect that follows: a refused connection
/// names the host the address came from.
#[test]
fn connect_findings_name_the_host_looked_up() {
    let mut lab = NetLab::new("dnsconn");
    lab.dns();
    lab.serve();
    let lines = trace_json(
        &lab.in_client(&[
            "sh",
            "-c",
            &format!("curl -sS --max-time 5 http://ok.test:{PORT_RESET}/ ; true"),
        ]),
        &[],
    );
    assert!(!lookups(&lines, "ok.test", "A").is_empty(), "{lines:#?}");
    let f = findings_of(&lines, "net.connect_refused");
    assert_eq!(f.len(), 1, "{:?}", codes(&lines));
    let s = f[0]["summary"].as_str().unwrap();
    assert!(
        s.contains(&format!("ok.test ({}:{PORT_RESET})", lab.srv_ip)),
        "{s}"
    );
    assert_eq!(f[0]["evidence"]["host"], "ok.test");
}
