//! `cargo xtask test --kernel K --suite [-- BINARY…]`: the root integration
//! test binaries (all of them, or those named) in one boot of K, one after
//! another and one test at a time, as on the host. Each binary's counts and
//! time go into docs/kernels/K.json (`suite`), and docs/kernels.md's table
//! gets them in its "root suite" row.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

const MARK: &str = "=== xtask-suite: ";

/// One binary's result.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BinResult {
    pub passed: u64,
    pub failed: u64,
    pub seconds: u64,
    pub code: i32,
}

/// The guest's script: each binary from the tests/ package directory (as
/// cargo runs them), between marks that carry its exit code and time.
pub fn script(tests_dir: &Path, bins: &[(String, PathBuf)], args: &[String]) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let dir = q(&tests_dir.to_string_lossy());
    let extra: String = args.iter().map(|a| format!(" {}", q(a))).collect();
    let mut s = format!("cd {dir} && export CARGO_MANIFEST_DIR={dir}\nfail=0\n");
    for (name, exe) in bins {
        s.push_str(&format!(
            "echo '{MARK}begin {name}'; t0=$(date +%s); {} --test-threads=1{extra}; rc=$?; \
             echo \"{MARK}end {name} rc=$rc secs=$(( $(date +%s) - t0 ))\"; \
             [ $rc = 0 ] || fail=1\n",
            q(&exe.to_string_lossy())
        ));
    }
    s.push_str("exit $fail\n");
    s
}

/// The results in the guest's output, by binary.
pub fn parse(lines: &[String]) -> BTreeMap<String, BinResult> {
    let mut out: BTreeMap<String, BinResult> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for l in lines {
        if let Some(rest) = l.strip_prefix(MARK) {
            if let Some(name) = rest.strip_prefix("begin ") {
                cur = Some(name.trim().to_string());
                out.entry(name.trim().to_string()).or_default();
            } else if let Some(rest) = rest.strip_prefix("end ") {
                let mut it = rest.split_whitespace();
                let name = it.next().unwrap_or_default().to_string();
                let r = out.entry(name).or_default();
                for kv in it {
                    match kv.split_once('=') {
                        Some(("rc", v)) => r.code = v.parse().unwrap_or(-1),
                        Some(("secs", v)) => r.seconds = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                cur = None;
            }
            continue;
        }
        // `test result: ok. 9 passed; 0 failed; 0 ignored; …`
        if let (Some(c), Some(rest)) = (&cur, l.split("test result: ").nth(1)) {
            let r = out.entry(c.clone()).or_default();
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .trim_start_matches(|c: char| !c.is_ascii_digit())
                            .strip_suffix(what)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            r.passed += count(" passed");
            r.failed += count(" failed");
        }
    }
    out
}

/// Boot `kernel`, run `bins`, record and report.
pub fn run(
    root: &Path,
    kernel: &str,
    no_btf: bool,
    bins: &[(String, PathBuf)],
    args: &[String],
) -> Result<()> {
    if bins.is_empty() {
        bail!("no integration test binary to run");
    }
    let tests = root.join("tests");
    // The checkout is the guest's working directory (bound back into the
    // guest when it is under /tmp); the script goes on to tests/.
    std::env::set_current_dir(root)?;
    let mut lines = Vec::new();
    let o = super::run(
        &super::Options {
            kernel: kernel.to_string(),
            no_btf,
            timeout: Duration::from_secs(1800),
            cmd: vec!["sh".into(), "-c".into(), script(&tests, bins, args)],
            memory_mib: 4096,
        },
        &mut |l| {
            println!("{l}");
            lines.push(l.to_string());
        },
    )?;
    let results = parse(&lines);
    let name = super::smoke::run_name(kernel, no_btf);
    let path = root.join(format!("docs/kernels/{name}.json"));
    let mut doc: Value = super::smoke::read_run(&path).unwrap_or_else(|| json!({"kernel": name, "release": format!("{} ({})", o.release, o.version), "btf": !no_btf}));
    // Per binary: a run of some binaries keeps the others' last results.
    if !doc["suite"].is_object() {
        doc["suite"] = json!({});
    }
    for (n, r) in &results {
        doc["suite"][n] = json!({"passed": r.passed, "failed": r.failed, "seconds": r.seconds});
    }
    std::fs::create_dir_all(root.join("docs/kernels"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    super::doc::write(root)?;
    eprintln!(
        "xtask: {name} ({} {}): root suite in {:.0} s",
        o.release,
        o.version,
        o.boot_to_exit.as_secs_f64()
    );
    let mut bad = Vec::new();
    for (n, _) in bins {
        let r = results.get(n);
        let ok = r.is_some_and(|r| r.code == 0 && r.failed == 0);
        match r {
            Some(r) => eprintln!(
                "  {} {n}: {} passed, {} failed, {} s",
                if ok { "ok  " } else { "FAIL" },
                r.passed,
                r.failed,
                r.seconds
            ),
            None => eprintln!("  FAIL {n}: did not run"),
        }
        if !ok {
            bad.push(n.as_str());
        }
    }
    if !bad.is_empty() {
        bail!("{name}: {} failed: {}", bad.len(), bad.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_per_binary() {
        let l: Vec<String> = [
            "=== xtask-suite: begin tcp",
            "test a ... ok",
            "test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 90.29s",
            "=== xtask-suite: end tcp rc=0 secs=91",
            "=== xtask-suite: begin exec_events",
            "test result: FAILED. 8 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "=== xtask-suite: end exec_events rc=101 secs=300",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = parse(&l);
        assert_eq!(
            r["tcp"],
            BinResult {
                passed: 9,
                failed: 0,
                seconds: 91,
                code: 0
            }
        );
        assert_eq!(
            r["exec_events"],
            BinResult {
                passed: 8,
                failed: 2,
                seconds: 300,
                code: 101
            }
        );
    }

    #[test]
    fn the_script_runs_each_binary_between_marks() {
        let s = script(
            Path::new("/w/tests"),
            &[("tcp".into(), PathBuf::from("/w/target/debug/deps/tcp-1"))],
            &["--skip".into(), "slow one".into()],
        );
        assert!(s.contains("--test-threads=1 '--skip' 'slow one'"), "{s}");
        assert!(s.contains("cd '/w/tests'"), "{s}");
        assert!(
            s.contains("'/w/target/debug/deps/tcp-1' --test-threads=1"),
            "{s}"
        );
        assert!(s.contains("end tcp rc=$rc"), "{s}");
    }
}
