//! `cargo xtask test --kernel K`: one boot of K running tests/vm/smoke.sh
//! (one agent start, one workload per signal), then assertions on what the
//! agent reported there. Loading the agent takes minutes under emulation, so
//! the VM run is this one smoke pass, not the whole root suite; the result
//! is kept as docs/kernels/K.json and docs/kernels.md is regenerated from
//! all of them.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// The signals the agent can collect, in `agent check`'s order.
pub const SIGNALS: &[&str] = &[
    "exec",
    "lineage",
    "exit",
    "tcp_connect",
    "fs_faults",
    "wire",
    "tls_uprobes",
];

/// The smoke script's output, split at its `=== xtask-smoke: NAME` marks.
pub fn sections(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for l in lines {
        if let Some(name) = l.strip_prefix("=== xtask-smoke: ") {
            cur = Some(name.trim().to_string());
            out.entry(name.trim().to_string()).or_default();
        } else if let Some(c) = &cur {
            out.entry(c.clone()).or_default().push(l.clone());
        }
    }
    out
}

/// `agent: watching exec (tracepoint), exit (raw_tracepoint); Ctrl-C to stop`
/// → signal → hook kind.
pub fn watching(stderr: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(line) = stderr
        .iter()
        .find_map(|l| l.split("agent: watching ").nth(1))
    else {
        return out;
    };
    let list = line.split(';').next().unwrap_or("");
    for item in list.split(", ") {
        if let Some((sig, rest)) = item.split_once(" (") {
            out.insert(
                sig.trim().to_string(),
                rest.trim_end_matches(')').to_string(),
            );
        }
    }
    out
}

/// One check of what the agent reported.
pub struct Check {
    pub name: &'static str,
    /// The signal it exercises.
    pub signal: &'static str,
    pub passed: bool,
}

fn records(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn argv_is(r: &Value, want: &[&str]) -> bool {
    r["argv"].as_array().is_some_and(|a| {
        a.iter()
            .map(|v| v.as_str().unwrap_or(""))
            .eq(want.iter().copied())
    })
}

/// The smoke script on this machine's own kernel: its output and `uname -r`.
fn on_host(root: &Path) -> Result<(Vec<String>, String)> {
    let out = std::process::Command::new("sh")
        .arg("tests/vm/smoke.sh")
        .current_dir(root)
        .output()
        .context("running tests/vm/smoke.sh")?;
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let uname = std::process::Command::new("uname").arg("-r").output()?;
    Ok((
        lines,
        String::from_utf8_lossy(&uname.stdout).trim().to_string(),
    ))
}

/// The name a run on `kernel` is recorded under (docs/kernels/NAME.json).
pub fn run_name(kernel: &str, no_btf: bool) -> String {
    if no_btf {
        format!("{kernel}-no-btf")
    } else {
        kernel.to_string()
    }
}

/// The run recorded in `path`, if there is one.
pub fn read_run(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Keep what a `--suite` run recorded in `path` for this kernel.
fn keep_suite(path: &Path, doc: &mut Value) {
    if let Some(suite) = read_run(path)
        .map(|v| v["suite"].clone())
        .filter(|v| !v.is_null())
    {
        doc["suite"] = suite;
    }
}

/// What the smoke workloads must have produced. Without BTF (`btf`
/// false) the agent promises less, and says so at start-up: exit records
/// without their codes, failed connects without their reason.
pub fn checks(recs: &[Value], btf: bool) -> Vec<Check> {
    fn of<'a>(recs: &'a [Value], t: &'static str) -> impl Iterator<Item = &'a Value> {
        recs.iter().filter(move |r| r["type"] == t)
    }
    let exit3_pid = of(recs, "exec")
        .find(|r| argv_is(r, &["sh", "-c", "exit 3"]))
        .and_then(|r| r["pid"].as_u64());
    let missing = of(recs, "exec_failed").find(|r| r["filename"] == "/nonexistent/smoke-missing");
    let go = of(recs, "exec").find(|r| {
        r["argv"]
            .as_array()
            .is_some_and(|a| a.last().is_some_and(|v| v == "version"))
            && r["env"]["GOFLAGS"] == "-v"
    });
    vec![
        Check {
            name: "exec: sh -c 'exit 3' with its argv",
            signal: "exec",
            passed: exit3_pid.is_some(),
        },
        Check {
            name: if btf {
                "exit: its exit code 3"
            } else {
                "exit: its exit (no code without BTF)"
            },
            signal: "exit",
            passed: exit3_pid.is_some_and(|pid| {
                of(recs, "exit")
                    .any(|r| r["pid"].as_u64() == Some(pid) && (!btf || r["exit_code"] == 3))
            }),
        },
        Check {
            name: "exec (failed): ENOENT with argv and allow-listed env",
            signal: "exec",
            passed: missing.is_some_and(|r| {
                argv_is(r, &["/nonexistent/smoke-missing", "--flag"])
                    && r["env"].as_object().is_some_and(|e| e.contains_key("HOME"))
            }),
        },
        Check {
            name: "exec: go version with GOFLAGS from its environment",
            signal: "exec",
            passed: go.is_some(),
        },
        if btf {
            Check {
                name: "tcp_connect: refused connect to 127.0.0.1:1, net.connect_refused",
                signal: "tcp_connect",
                passed: of(recs, "tcp_connect")
                    .any(|r| r["destination"] == "127.0.0.1:1" && r["outcome"] == "refused")
                    && of(recs, "finding").any(|r| r["code"] == "net.connect_refused"),
            }
        } else {
            Check {
                name: "tcp_connect: the connect to 127.0.0.1:1 failed (no reason without BTF)",
                signal: "tcp_connect",
                passed: of(recs, "tcp_connect")
                    .any(|r| r["destination"] == "127.0.0.1:1" && r["outcome"] == "failed"),
            }
        },
        Check {
            name: "wire: the TLS 1.3 handshake with SNI smoke.test",
            signal: "wire",
            passed: of(recs, "tls_handshake")
                .any(|r| r["sni"] == "smoke.test" && r["version"] == "TLS 1.3"),
        },
    ]
}

/// Lines of the agent's start-up that explain a fallback or a loss.
fn fallbacks(stderr: &[String]) -> Vec<String> {
    stderr
        .iter()
        .filter(|l| l.contains("WARN"))
        .map(|l| {
            let l = l.trim_start_matches(' ').trim_start_matches("WARN ");
            // The verifier's log is long: its first statement is enough here.
            l.chars().take(400).collect()
        })
        .collect()
}

/// Run the smoke pass on `kernel` (`host`: this machine's own kernel, no
/// VM) and record it under docs/kernels/.
pub fn run(root: &Path, kernel: &str, no_btf: bool) -> Result<()> {
    let mut lines = Vec::new();
    let started = std::time::Instant::now();
    let release;
    if kernel == "host" {
        if no_btf {
            bail!("--no-btf needs a VM kernel");
        }
        (lines, release) = on_host(root)?;
    } else {
        let o = super::run(
            &super::Options {
                kernel: kernel.to_string(),
                no_btf,
                timeout: Duration::from_secs(600),
                cmd: vec!["sh".into(), "tests/vm/smoke.sh".into()],
                memory_mib: 4096,
            },
            &mut |l| {
                println!("{l}");
                lines.push(l.to_string());
            },
        )?;
        release = format!("{} ({})", o.release, o.version);
    }
    let total = started.elapsed().as_secs_f64();
    let s = sections(&lines);
    let empty = Vec::new();
    let stderr = s.get("agent-stderr").unwrap_or(&empty);
    let recs = records(s.get("records").unwrap_or(&empty));
    let check: Value = s
        .get("check")
        .and_then(|l| l.iter().find_map(|l| serde_json::from_str(l).ok()))
        .unwrap_or(Value::Null);
    let load = s
        .get("start")
        .and_then(|l| l.iter().find_map(|l| l.strip_prefix("load_seconds=")))
        .and_then(|v| v.parse::<f64>().ok());
    let hooks = watching(stderr);
    let results = checks(&recs, !no_btf);
    let name = run_name(kernel, no_btf);
    let predicted: BTreeMap<String, String> = check["signals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["signal"].as_str().unwrap_or("").to_string(),
                        s["hook"].as_str().unwrap_or("-").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let doc = json!({
        "kernel": name,
        "release": release,
        "btf": !no_btf,
        "load_seconds": load,
        "run_seconds": (total * 10.0).round() / 10.0,
        "predicted": predicted,
        "attached": hooks,
        "checks": results.iter().map(|c| json!({"name": c.name, "signal": c.signal, "passed": c.passed})).collect::<Vec<_>>(),
        "fallbacks": fallbacks(stderr),
    });
    let dir = root.join("docs/kernels");
    std::fs::create_dir_all(&dir)?;
    let mut doc = doc;
    keep_suite(&dir.join(format!("{name}.json")), &mut doc);
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    super::doc::write(root)?;
    let load_s = load.map_or("?".to_string(), |s| format!("{s:.0}"));
    eprintln!("xtask: {name} ({release}): agent loaded in {load_s} s, run {total:.0} s");
    for c in &results {
        eprintln!("  {} {}", if c.passed { "ok  " } else { "FAIL" }, c.name);
    }
    for sig in SIGNALS {
        eprintln!(
            "  {sig:12} {}",
            hooks
                .get(*sig)
                .map(String::as_str)
                .unwrap_or("not collected")
        );
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|c| !c.passed && hooks.contains_key(c.signal))
        .map(|c| c.name)
        .collect();
    if hooks.is_empty() {
        bail!("{name}: the agent did not start (see its output above)");
    }
    if !failed.is_empty() {
        bail!("{name}: {} failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_names_each_signal_and_hook() {
        let l = vec![
            " WARN something".to_string(),
            "agent: watching exec (tracepoint), exit (raw_tracepoint), wire (cgroup_skb); Ctrl-C to stop".to_string(),
        ];
        let w = watching(&l);
        assert_eq!(w["exec"], "tracepoint");
        assert_eq!(w["exit"], "raw_tracepoint");
        assert_eq!(w["wire"], "cgroup_skb");
        assert_eq!(w.len(), 3);
        assert!(watching(&[]).is_empty());
    }

    #[test]
    fn sections_split_at_marks() {
        let l: Vec<String> = [
            "noise",
            "=== xtask-smoke: a",
            "1",
            "=== xtask-smoke: b",
            "2",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = sections(&l);
        assert_eq!(s["a"], ["1"]);
        assert_eq!(s["b"], ["2", "3"]);
    }

    #[test]
    fn checks_pass_on_the_records_of_a_healthy_run() {
        let recs: Vec<Value> = [
            json!({"type":"exec","pid":7,"argv":["sh","-c","exit 3"],"env":{}}),
            json!({"type":"exit","pid":7,"exit_code":3}),
            json!({"type":"exec_failed","filename":"/nonexistent/smoke-missing","argv":["/nonexistent/smoke-missing","--flag"],"env":{"HOME":"/root"}}),
            json!({"type":"exec","pid":8,"argv":["/usr/bin/go","version"],"env":{"GOFLAGS":"-v"}}),
            json!({"type":"tcp_connect","destination":"127.0.0.1:1","outcome":"refused"}),
            json!({"type":"finding","code":"net.connect_refused"}),
            json!({"type":"tls_handshake","sni":"smoke.test","version":"TLS 1.3"}),
        ]
        .into();
        assert!(checks(&recs, true).iter().all(|c| c.passed));
        assert!(checks(&[], true).iter().all(|c| !c.passed));
        assert!(checks(&[], false).iter().all(|c| !c.passed));
    }
}
