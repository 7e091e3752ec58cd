//! docs/kernels.md's generated table, from the runs kept in docs/kernels/*.json
//! (`cargo xtask test --kernel K` writes one per kernel).

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use super::smoke::SIGNALS;

const BEGIN: &str = "<!-- kernels:begin (cargo xtask test --kernel K regenerates this) -->";
const END: &str = "<!-- kernels:end -->";

fn cell(run: &Value, signal: &str) -> String {
    let attached = run["attached"][signal].as_str();
    let predicted = run["predicted"][signal].as_str().unwrap_or("-");
    let checks: Vec<&Value> = run["checks"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["signal"] == signal).collect())
        .unwrap_or_default();
    let passed = checks.iter().filter(|c| c["passed"] == true).count();
    match attached {
        None => "**not collected**".to_string(),
        Some(h) => {
            let mut s = h.to_string();
            if h != predicted && predicted != "-" {
                s.push_str(&format!(" (fell back from {predicted})"));
            }
            if !checks.is_empty() {
                s.push_str(&format!(", {passed}/{} checks", checks.len()));
            }
            s
        }
    }
}

/// `tcp 9/9, exec_events 10/10 (400 s)`, or `-` when not run there.
fn suite_cell(suite: &Value) -> String {
    let Some(m) = suite.as_object().filter(|m| !m.is_empty()) else {
        return "-".to_string();
    };
    let mut secs = 0;
    let parts: Vec<String> = m
        .iter()
        .map(|(n, r)| {
            let (p, f) = (
                r["passed"].as_u64().unwrap_or(0),
                r["failed"].as_u64().unwrap_or(0),
            );
            secs += r["seconds"].as_u64().unwrap_or(0);
            if f == 0 {
                format!("{n} {p}/{}", p + f)
            } else {
                format!("{n} **{p}/{}**", p + f)
            }
        })
        .collect();
    format!("{} ({secs} s)", parts.join(", "))
}

/// The table and the fallback lines of every recorded run.
pub fn render(runs: &[Value]) -> String {
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push_str("\n\n| signal |");
    for r in runs {
        out.push_str(&format!(" {} |", r["kernel"].as_str().unwrap_or("?")));
    }
    out.push_str("\n|---|");
    for _ in runs {
        out.push_str("---|");
    }
    out.push('\n');
    out.push_str("| kernel |");
    for r in runs {
        out.push_str(&format!(" {} |", r["release"].as_str().unwrap_or("?")));
    }
    out.push('\n');
    out.push_str("| agent start |");
    for r in runs {
        match r["load_seconds"].as_f64() {
            Some(s) => out.push_str(&format!(" {s:.0} s |")),
            None => out.push_str(" - |"),
        }
    }
    out.push('\n');
    out.push_str("| root suite (`--suite`) |");
    for r in runs {
        out.push_str(&format!(" {} |", suite_cell(&r["suite"])));
    }
    out.push('\n');
    for sig in SIGNALS {
        out.push_str(&format!("| {sig} |"));
        for r in runs {
            out.push_str(&format!(" {} |", cell(r, sig)));
        }
        out.push('\n');
    }
    for r in runs {
        let fb: Vec<&str> = r["fallbacks"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if fb.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n{}, as the agent said it at start-up:\n\n",
            r["kernel"].as_str().unwrap_or("?")
        ));
        for l in fb {
            out.push_str(&format!("- `{}`\n", l.replace('`', "'")));
        }
    }
    out.push('\n');
    out.push_str(END);
    out
}

/// Rewrite docs/kernels.md's generated part from docs/kernels/*.json.
pub fn write(root: &Path) -> Result<()> {
    let dir = root.join("docs/kernels");
    let mut runs: Vec<Value> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "json")
                && let Ok(v) = serde_json::from_slice(&std::fs::read(e.path())?)
            {
                runs.push(v);
            }
        }
    }
    // Oldest kernel first, the host last.
    runs.sort_by_key(|r| {
        let k = r["kernel"].as_str().unwrap_or("").to_string();
        (k.starts_with("host"), super::kernel::version_key(&k))
    });
    let path = root.join("docs/kernels.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let table = render(&runs);
    let new = match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &doc[..a], table, &doc[b + END.len()..]),
        _ => format!("{doc}\n{table}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fallback_and_a_loss_are_spelled_out() {
        let run = json!({
            "kernel": "debian-6.1", "release": "6.1.0-50-amd64 (6.1.176-1)", "load_seconds": 300.0,
            "predicted": {"exec": "tracepoint", "exit": "raw_tracepoint"},
            "attached": {"exit": "tracepoint"},
            "checks": [{"name": "x", "signal": "exit", "passed": true}],
            "fallbacks": ["attach failed"],
        });
        let t = render(&[run]);
        assert!(t.contains("| exec | **not collected** |"), "{t}");
        assert!(
            t.contains("| exit | tracepoint (fell back from raw_tracepoint), 1/1 checks |"),
            "{t}"
        );
        assert!(t.contains("- `attach failed`"), "{t}");
        assert!(t.contains("| agent start | 300 s |"), "{t}");
    }
}
