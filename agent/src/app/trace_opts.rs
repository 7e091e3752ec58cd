//! What only `agent trace` takes: the verdict's exit codes and the CI's
//! output, with the CI's files opened as the user at start.

use crate::sink::ci::{Ci, Kind};

/// `--exit-code`, `--ci`, `--junit`, resolved.
#[derive(Debug, Default)]
pub struct TraceOptions {
    pub exit_codes: crate::verdict::ExitCodes,
    pub ci: Ci,
}

impl TraceOptions {
    /// How the report is to be rendered, in this format and colour.
    pub fn render_ask(
        &self,
        format: crate::render::Format,
        color: bool,
    ) -> super::trace::RenderAsk {
        super::trace::RenderAsk {
            format,
            color,
            ci: self.ci.kind,
            junit: self.ci.wants_junit(),
            exit_codes: self.exit_codes,
        }
    }
}

/// From the flags and the environment of the user who ran `agent trace`
/// (sudo's env_reset dropped the CI's variables from ours); the files are
/// opened now, as that user (before other threads: see `super::outfile`).
/// `Err`: the message and the exit code (2: usage).
pub fn from_flags(
    exit_code: &[String],
    ci_auto: bool,
    junit: Option<&std::path::Path>,
    invoker: &crate::process::invoker::Invoker,
) -> Result<TraceOptions, (String, u8)> {
    let mut t = TraceOptions::default();
    for e in exit_code {
        t.exit_codes
            .parse_one(e)
            .map_err(|e| (format!("--exit-code {e}"), 2))?;
    }
    let env: Vec<(&[u8], &[u8])> = invoker
        .env
        .iter()
        .map(|(k, v)| (k.as_encoded_bytes(), v.as_encoded_bytes()))
        .collect();
    if ci_auto {
        t.ci.kind = Kind::detect(&env);
    }
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| std::path::PathBuf::from(String::from_utf8_lossy(v).into_owned()))
            .filter(|p| !p.as_os_str().is_empty())
    };
    let open = |what: &str, p: &std::path::Path, replace: bool| {
        super::outfile::open_as(p, Some(invoker), replace)
            .map_err(|e| format!("cannot open {what} {}: {e}", p.display()))
    };
    if t.ci.kind == Kind::GitHub {
        // A summary the agent cannot write is a warning, not a failed job.
        for (name, slot) in [
            ("GITHUB_STEP_SUMMARY", &mut t.ci.summary),
            ("GITHUB_OUTPUT", &mut t.ci.outputs),
        ] {
            *slot = var(name).and_then(|p| match open(name, &p, false) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("{e}");
                    None
                }
            });
        }
    }
    if let Some(p) = junit {
        t.ci.junit = Some(open("--junit", p, true).map_err(|e| (e, 1))?);
    }
    Ok(t)
}
