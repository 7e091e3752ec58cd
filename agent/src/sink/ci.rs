//! CI-native output of `agent trace`: GitHub Actions workflow commands (an
//! annotation per problem), the job summary and the step's outputs; GitLab
//! CI's collapsible section around the report; JUnit XML for any CI.
//! Switched on by the CI's own variables in the environment of the user who
//! ran `agent trace` (sudo resets the agent's own), off with `--ci=off`.
//!
//! Owns: these formats and their escaping. Must not: decide the verdict or
//! open files (the app opens them as the user, before threads exist).

use std::{fmt::Write as _, io::Write as _};

use crate::{
    finding::Severity,
    pipeline::Output,
    sink::report::{TraceResult, verdict},
};

/// Which CI the command runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    #[default]
    None,
    GitHub,
    GitLab,
}

impl Kind {
    /// From the environment the command runs with (`--ci=off`: not called).
    pub fn detect<K: AsRef<[u8]>, V: AsRef<[u8]>>(env: &[(K, V)]) -> Self {
        let is_true = |name: &str| {
            env.iter()
                .any(|(k, v)| k.as_ref() == name.as_bytes() && v.as_ref() == b"true")
        };
        if is_true("GITHUB_ACTIONS") {
            Kind::GitHub
        } else if is_true("GITLAB_CI") {
            Kind::GitLab
        } else {
            Kind::None
        }
    }
}

/// What `agent trace` writes for the CI, files opened at start.
#[derive(Debug, Default)]
pub struct Ci {
    pub kind: Kind,
    /// `$GITHUB_STEP_SUMMARY`: the Markdown report is appended.
    pub summary: Option<std::fs::File>,
    /// `$GITHUB_OUTPUT`: `verdict=…` is appended.
    pub outputs: Option<std::fs::File>,
    /// `--junit FILE`.
    pub junit: Option<std::fs::File>,
}

/// Workflow-command data: `%`, CR and LF escaped as the runner unescapes them.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow-command property value: data escaping plus `:` and `,`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One `::error`/`::warning` line per problem (info notes are not
/// annotations), the title its code, the message its summary, cause and fix.
pub fn github_annotations(r: &TraceResult) -> String {
    let findings: Vec<_> = r
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Finding { finding, .. } => Some(finding),
            _ => None,
        })
        .collect();
    let mut s = String::new();
    for p in verdict(&findings) {
        let f = p.finding;
        let level = if f.severity == Severity::Error {
            "error"
        } else {
            "warning"
        };
        let message = format!("{}\ncause: {}\nfix: {}", f.summary, f.cause, f.fix);
        let _ = writeln!(
            s,
            "::{level} title={}::{}",
            escape_property(&format!("agent: {}", f.code)),
            escape_data(&crate::sink::output::text_safe(&message))
        );
    }
    let _ = writeln!(
        s,
        "::notice title={}::{}",
        escape_property("agent verdict"),
        escape_data(&r.judgement.line())
    );
    s
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// GitLab's marker that opens a collapsible section of the job log.
pub fn section_start(name: &str, title: &str) -> String {
    format!(
        "\x1b[0Ksection_start:{}:{name}\r\x1b[0K{title}\n",
        unix_now()
    )
}

/// And the one that closes it.
pub fn section_end(name: &str) -> String {
    format!("\x1b[0Ksection_end:{}:{name}\r\x1b[0K\n", unix_now())
}

/// XML character data and attribute values: the five special characters
/// escaped, and characters XML 1.0 does not allow dropped.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {}
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one test suite, one test case for the traced command, a
/// `failure` per cause of a failed command (or one for `failed` with no
/// cause); every finding in the test case's output.
pub fn junit(r: &TraceResult, argv: &[String], seconds: f64) -> String {
    let cmd = crate::scrub::argv(argv).join(" ");
    let failed = r.exit_code != 0;
    let mut failures = String::new();
    if failed {
        let j = &r.judgement;
        if j.causes.is_empty() {
            let _ = writeln!(
                failures,
                "      <failure type=\"failed\" message=\"{}\">exit code {}: no finding explains it</failure>",
                xml(&format!("{cmd} exited {}", r.exit_code)),
                r.exit_code
            );
        }
        for c in &j.causes {
            let f = &c.finding;
            let _ = writeln!(
                failures,
                "      <failure type=\"{}\" message=\"{}\">{}</failure>",
                xml(c.blame.verdict()),
                xml(&format!("{}: {}", f.code, f.summary)),
                xml(&format!("cause: {}\nfix: {}", f.cause, f.fix))
            );
        }
    }
    let mut out = String::new();
    for o in &r.outputs {
        if let Output::Finding { finding: f, .. } = o {
            let _ = writeln!(
                out,
                "{} {}: {}\n  cause: {}\n  fix: {}",
                f.severity.name(),
                f.code,
                f.summary,
                f.cause,
                f.fix
            );
        }
    }
    let n_fail = usize::from(failed);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"agent trace\" tests=\"1\" failures=\"{n_fail}\" errors=\"0\" time=\"{seconds:.3}\">\n\
         \x20 <testsuite name=\"agent trace\" tests=\"1\" failures=\"{n_fail}\" errors=\"0\" skipped=\"0\" time=\"{seconds:.3}\">\n\
         \x20   <testcase classname=\"agent.trace\" name=\"{}\" time=\"{seconds:.3}\">\n\
         {failures}\
         \x20     <system-out>{}</system-out>\n\
         \x20   </testcase>\n\
         \x20 </testsuite>\n\
         </testsuites>\n",
        xml(&cmd),
        xml(&format!("verdict: {}\n{out}", r.judgement.line())),
    )
}

/// What the CI integration writes at the end of a run, rendered from its
/// result (by the agent that traced it: this process, or the trace service
/// for an unprivileged `agent trace`, which writes the files itself).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CiParts {
    /// GitHub workflow commands, empty elsewhere.
    pub annotations: String,
    /// The Markdown report for `$GITHUB_STEP_SUMMARY`, empty elsewhere.
    pub summary: String,
    /// The verdict's name, for `$GITHUB_OUTPUT`.
    pub verdict: String,
    /// The JUnit report, when `--junit` asked for one.
    pub junit: Option<String>,
}

impl CiParts {
    /// The parts `kind` (and `--junit`, when `junit`) needs of `r`.
    pub fn of(kind: Kind, junit: bool, r: &TraceResult, argv: &[String], seconds: f64) -> Self {
        let github = kind == Kind::GitHub;
        CiParts {
            annotations: if github {
                github_annotations(r)
            } else {
                String::new()
            },
            summary: if github {
                crate::sink::report::markdown(r, argv)
            } else {
                String::new()
            },
            verdict: r.judgement.verdict.name().to_string(),
            junit: junit.then(|| self::junit(r, argv, seconds)),
        }
    }
}

impl Ci {
    /// Whether `--junit` opened a file.
    pub fn wants_junit(&self) -> bool {
        self.junit.is_some()
    }

    /// Everything but the report itself, once the command is done: the
    /// annotations go to `annotations` (stdout unless JSON records are
    /// there), the files get their part. A write that fails is one warning.
    pub fn finish(
        &mut self,
        r: &TraceResult,
        argv: &[String],
        seconds: f64,
        annotations: &mut dyn std::io::Write,
    ) {
        let parts = CiParts::of(self.kind, self.wants_junit(), r, argv, seconds);
        self.write(&parts, annotations);
    }

    /// [`Ci::finish`] with its parts already rendered.
    pub fn write(&mut self, parts: &CiParts, annotations: &mut dyn std::io::Write) {
        if self.kind == Kind::GitHub {
            let _ = annotations.write_all(parts.annotations.as_bytes());
            let _ = annotations.flush();
        }
        let verdict = format!("verdict={}\n", parts.verdict);
        for (what, file, text) in [
            (
                "GITHUB_STEP_SUMMARY",
                self.summary.as_mut(),
                Some(&parts.summary),
            ),
            ("GITHUB_OUTPUT", self.outputs.as_mut(), Some(&verdict)),
            ("--junit", self.junit.as_mut(), parts.junit.as_ref()),
        ] {
            let (Some(f), Some(text)) = (file, text) else {
                continue;
            };
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::warn!("agent trace: cannot write {what}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
