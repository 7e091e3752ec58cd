//! Secrets never leave the agent: a real command tree with planted markers
//! in argv, headers, query strings, URL passwords and the environment goes
//! through `agent trace` (JSON records, the text report, debug logs) and
//! through OTLP to a real receiver; nothing any of them received holds a
//! marker, and the diagnostic parts (flag, user name, host) are still there.

use std::process::Command;

use agent_tests::{agent_bin, json_lines, otlp_receiver::while_receiving, require_root, scratch};

/// Each command fails fast on loopback (port 1 refuses); none prints a marker.
fn script(dir: &std::path::Path) -> String {
    let mysql = dir.join("mysql");
    let _ = std::os::unix::fs::symlink("/bin/true", &mysql);
    [
        "curl -s -m 2 -u alice:MARK01 http://127.0.0.1:1/".to_string(),
        "curl -s -m 2 -H 'Authorization: Bearer MARK02' 'http://127.0.0.1:1/x?access_token=MARK03&page=2'".into(),
        "env AWS_SECRET_ACCESS_KEY=MARK04 GITHUB_TOKEN=MARK05 true".into(),
        "curl -s -m 2 -x 'http://bob:pa;MARK06@127.0.0.1:1' http://127.0.0.2/".into(),
        "HTTPS_PROXY='http://carol:pa,MARK07 x@127.0.0.1:1' curl -s -m 2 https://127.0.0.2/".into(),
        "true --password=MARK08".into(),
        "git -c http.extraHeader='Authorization: Basic MARK09' --version >/dev/null".into(),
        format!("{} -pMARK10 -u root", mysql.display()),
        "true ghp_MARK11abcdefghijklmnopqrstuvwxyz012345".into(),
        "true 'https://s3.test/b?X-Amz-Credential=MARK12&X-Amz-Signature=MARK13'".into(),
    ]
    .join("; ")
        + "; exit 0"
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains("MARK"),
        "{what} holds a planted secret:\n{}",
        text.lines()
            .filter(|l| l.contains("MARK"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn no_planted_secret_reaches_any_sink() {
    require_root();
    let dir = scratch("secrets");
    let cmd = script(&dir);
    let records = dir.join("records.jsonl");
    // JSON records + OTLP (gRPC) in one run.
    let (out, received) = {
        let (cmd, records) = (cmd.clone(), records.clone());
        while_receiving("grpc", move |endpoint: String| {
            Command::new(agent_bin())
                .args(["--format", "json", "--output"])
                .arg(&records)
                .args(["--otlp-protocol", "grpc", "--otlp-endpoint", &endpoint])
                .args(["trace", "--", "/bin/sh", "-c", &cmd])
                .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
                .output()
                .expect("agent trace")
        })
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean("stderr (json run)", &String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&records).unwrap();
    assert_clean("JSON records", &text);
    let spans = received.spans();
    assert!(!spans.is_empty(), "no spans received");
    assert_clean(
        "OTLP traces",
        &format!("{:?}", received.traces.lock().unwrap()),
    );
    assert_clean(
        "OTLP metrics",
        &format!("{:?}", received.metrics.lock().unwrap()),
    );
    // The diagnostic part stays.
    let lines = json_lines(&text);
    let curl_u = lines
        .iter()
        .find(|l| {
            l["type"] == "exec"
                && l["argv"][0] == "curl"
                && l["argv"].to_string().contains("alice:")
        })
        .expect("curl -u exec");
    assert_eq!(
        curl_u["argv"],
        serde_json::json!([
            "curl",
            "-s",
            "-m",
            "2",
            "-u",
            "alice:***",
            "http://127.0.0.1:1/"
        ])
    );
    let proxy = lines
        .iter()
        .find(|l| l["type"] == "exec" && l["env"]["HTTPS_PROXY"].is_string())
        .expect("curl with HTTPS_PROXY");
    assert_eq!(proxy["env"]["HTTPS_PROXY"], "http://***@127.0.0.1:1");

    // Text: the live lines of every exec and the report, with debug logs.
    let out = Command::new(agent_bin())
        .args(["--all-execs", "trace", "--", "/bin/sh", "-c", &cmd])
        .env("AGENT_LOG", "debug")
        .output()
        .expect("agent trace (text)");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_clean("text report and logs", &stderr);
    assert_clean("stdout", &String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("-u alice:***"), "{stderr}");
    assert!(stderr.contains("Authorization: Bearer ***"), "{stderr}");
}
