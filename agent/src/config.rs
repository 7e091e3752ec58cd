//! The configuration file (TOML): the same settings as the flags.
//!
//! Precedence: flags > environment (`OTEL_*` for export) > file > defaults.
//! The file is `--config PATH`, else `$AGENT_CONFIG`, else
//! `/etc/agent/config.toml` when it exists. An invalid file is an error at
//! start-up that names the line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every key is optional; unknown keys are errors (a typo must not be silent).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `text` or `json`.
    pub format: Option<String>,
    /// `auto`, `always`, `never`.
    pub color: Option<String>,
    /// `scrubbed` (default), `none`, `full`: how much of command lines leaves.
    pub argv: Option<String>,
    pub all_execs: Option<bool>,
    pub analyse_all: Option<bool>,
    pub tools: Option<Vec<String>>,
    /// Signals not collected, as `--without`.
    pub without: Option<Vec<String>>,
    pub env_allow: Option<Vec<String>>,
    pub output: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    /// `host:port` for /healthz and /readyz.
    pub health_addr: Option<String>,
    /// `http://127.0.0.1:8001`: pod names from the Kubernetes API via `kubectl proxy`.
    pub k8s_api: Option<String>,
    /// `net.slow_connect` absolute threshold, ms.
    pub slow_connect_ms: Option<u64>,
    /// `net.slow_connect`: times the destination's own average.
    pub slow_connect_factor: Option<f64>,
    /// `tls.slow_handshake` threshold, ms.
    pub slow_tls_ms: Option<u64>,
    /// `net.dns_slow` threshold, ms.
    pub slow_dns_ms: Option<u64>,
    /// `net.dns_timeout`: unanswered this long after the last attempt, ms.
    pub dns_timeout_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}, column {column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

pub const DEFAULT_PATH: &str = "/etc/agent/config.toml";

/// Parse `text` (from `path`, for messages).
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigFileError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|sp| {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before
                    .rsplit('\n')
                    .next()
                    .map(|l| l.chars().count() + 1)
                    .unwrap_or(1);
                (line, column)
            })
            .unwrap_or((0, 0));
        ConfigFileError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

/// Load the file chosen by flag, environment or default location.
pub fn load(flag: Option<&Path>) -> Result<FileConfig, ConfigFileError> {
    let chosen = flag
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("AGENT_CONFIG").map(PathBuf::from));
    let path = match chosen {
        Some(p) => p,
        None => {
            let p = PathBuf::from(DEFAULT_PATH);
            if !p.exists() {
                return Ok(FileConfig::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let c = parse(
            Path::new("a.toml"),
            "format = \"json\"\ntools = [\"go\", \"python\"]\nwithout = [\"wire\"]\notlp_endpoint = \"http://c:4318\"\nhealth_addr = \"0.0.0.0:9464\"\n",
        )
        .unwrap();
        assert_eq!(c.format.as_deref(), Some("json"));
        assert_eq!(c.tools.unwrap(), vec!["go", "python"]);
        assert_eq!(c.without.unwrap(), vec!["wire"]);
    }

    #[test]
    fn the_shipped_daemonset_config_parses() {
        let text = include_str!("../../deploy/kubernetes/base/config.toml");
        let c = parse(Path::new("config.toml"), text).unwrap();
        assert_eq!(c.health_addr.as_deref(), Some("0.0.0.0:9464"));
        assert!(c.otlp_endpoint.is_some());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(
            Path::new("/etc/agent/config.toml"),
            "format = \"json\"\n\nall_execs = maybe\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/etc/agent/config.toml, line 3"), "{msg}");
        let e = parse(
            Path::new("c.toml"),
            "format = \"json\"\nfromat = \"text\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("fromat"), "{e}");
    }
}
