//! What the OpenTelemetry SDK does not decide for us: whether export is on
//! at all (the SDK would default to localhost), the agent's own flags and
//! config file over the standard variables, one resolved endpoint per signal
//! (so the TLS settings and the start-up line match what is used), and the
//! certificate variables, which opentelemetry-otlp 0.33 does not read.
//!
//! Headers, timeouts, compression and `OTEL_BSP_*` are read by the SDK
//! itself from the same variables; this module only checks the values the
//! SDK would otherwise ignore with a log line we would not see.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// PEM files for TLS, read at start (before privileges are dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `..._CERTIFICATE`: trusted CA(s) besides the system roots.
    pub ca: Option<(String, Vec<u8>)>,
    /// `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY`: mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// `traces` or `metrics`.
    pub name: &'static str,
    /// The URL requests go to: `.../v1/traces` for HTTP, the base for gRPC.
    pub endpoint: String,
    pub protocol: Protocol,
    /// `..._TIMEOUT`: per export, retries included (the SDK's 10 s by default).
    pub timeout: Duration,
    pub tls: TlsFiles,
}

impl Signal {
    pub fn https(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    /// Host (without IPv6 brackets) and port the endpoint connects to.
    pub fn host_port(&self) -> (String, u16) {
        let rest = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, r)| r);
        let hostport = rest.split('/').next().unwrap_or(rest);
        let default = if self.https() { 443 } else { 80 };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => (hostport, default),
            },
            _ => (hostport, default),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host.to_string(), port)
    }
}

/// Where a signal goes: `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exporter {
    /// To the resolved OTLP endpoint (the default).
    Otlp,
    /// The SDK's stdout exporter (opentelemetry-stdout): for a look by hand.
    Console,
    /// Not exported.
    None,
}

impl Exporter {
    pub fn name(self) -> &'static str {
        match self {
            Exporter::Otlp => "otlp",
            Exporter::Console => "console",
            Exporter::None => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// `OTEL_TRACES_EXPORTER`.
    pub traces_exporter: Exporter,
    /// `OTEL_METRICS_EXPORTER`.
    pub metrics_exporter: Exporter,
    pub traces: Signal,
    pub metrics: Signal,
    /// `OTEL_METRIC_EXPORT_INTERVAL`, or ours (the SDK's is 60 s).
    pub metrics_interval: Duration,
    /// `OTEL_BSP_SCHEDULE_DELAY`, or ours (the SDK's is 5 s).
    pub span_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`, or ours: spans waiting for export.
    pub queue_cap: usize,
    /// `agent trace` puts TRACEPARENT of the command's span into its
    /// environment (`--no-traceparent` turns it off).
    pub inject_traceparent: bool,
}

/// Spans waiting for export at most (each is ~1–2 KiB: ~16 MiB at worst).
pub const QUEUE_CAP: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}={1:?}: use grpc or http/protobuf")]
    Protocol(String, String),
    #[error("OTLP endpoint {0:?}: use an http:// or https:// URL")]
    Scheme(String),
    #[error("{0}={1:?}: use gzip or none")]
    Compression(String, String),
    #[error("{0}={1:?}: {2}")]
    File(String, String, String),
    #[error("{0} is set but {1} is not: mutual TLS needs both")]
    ClientPair(String, String),
    #[error("{0}={1:?}: not a number of milliseconds")]
    Number(String, String),
    #[error("{0}={1:?}: use otlp, console or none (one of them)")]
    Exporter(String, String),
    #[error("{0}: this agent was built without it (cargo feature {1})")]
    NotBuilt(String, &'static str),
}

/// Whether this build exports over `p` (its cargo feature).
pub fn built(p: Protocol) -> bool {
    match p {
        Protocol::Grpc => cfg!(feature = "otlp-grpc"),
        Protocol::HttpProtobuf => cfg!(feature = "otlp-http"),
    }
}

/// The spec's default, http/protobuf, unless this build has gRPC only.
fn default_protocol() -> Protocol {
    if built(Protocol::HttpProtobuf) || !built(Protocol::Grpc) {
        Protocol::HttpProtobuf
    } else {
        Protocol::Grpc
    }
}

impl OtlpConfig {
    /// `None` when no endpoint is configured (export off: the agent prints
    /// locally). `flag_endpoint` (flag or config file) replaces
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; `flag_protocol` every protocol variable.
    pub fn from_env_and_flags(
        get: impl Fn(&str) -> Option<String>,
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
    ) -> Result<Option<Self>, ConfigError> {
        Self::resolve(&get, flag_endpoint, flag_protocol, &|p| {
            std::fs::read(p).map_err(|e| e.to_string())
        })
    }

    fn resolve(
        get: &dyn Fn(&str) -> Option<String>,
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
        read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Option<Self>, ConfigError> {
        let env = Env {
            get,
            read,
            flag_endpoint,
            flag_protocol,
        };
        // The SDK-wide switch of the spec: everything off, endpoints or not.
        if env
            .nonempty("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let (traces_exporter, metrics_exporter) = (
            env.exporter("OTEL_TRACES_EXPORTER")?,
            env.exporter("OTEL_METRICS_EXPORTER")?,
        );
        let base = env.base();
        let endpoint_set =
            base.is_some() || env.specific("TRACES").is_some() || env.specific("METRICS").is_some();
        let wanted = |e: Exporter| match e {
            Exporter::Otlp => endpoint_set,
            Exporter::Console => true,
            Exporter::None => false,
        };
        // Off unless something asks for it: an endpoint (the SDK would
        // default to localhost) or a console exporter.
        if !wanted(traces_exporter) && !wanted(metrics_exporter) {
            return Ok(None);
        }
        if !cfg!(feature = "otlp") {
            let what = if endpoint_set {
                "an OTLP endpoint"
            } else {
                "a console exporter"
            };
            return Err(ConfigError::NotBuilt(what.into(), "otlp-grpc or otlp-http"));
        }
        let only_wanted = |e: Exporter| if wanted(e) { e } else { Exporter::None };
        let queue_cap = match env.nonempty("OTEL_BSP_MAX_QUEUE_SIZE") {
            None => QUEUE_CAP,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ConfigError::Number("OTEL_BSP_MAX_QUEUE_SIZE".into(), v))?,
        };
        Ok(Some(OtlpConfig {
            traces_exporter: only_wanted(traces_exporter),
            metrics_exporter: only_wanted(metrics_exporter),
            traces: env.signal("TRACES", "traces", base.as_deref())?,
            metrics: env.signal("METRICS", "metrics", base.as_deref())?,
            metrics_interval: env.ms("OTEL_METRIC_EXPORT_INTERVAL", 10_000)?,
            span_delay: env.ms("OTEL_BSP_SCHEDULE_DELAY", 1_000)?,
            queue_cap,
            inject_traceparent: true,
        }))
    }
}

/// The variables and flags one resolution reads, and how files are read.
struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    read: &'a dyn Fn(&str) -> Result<Vec<u8>, String>,
    flag_endpoint: Option<&'a str>,
    flag_protocol: Option<&'a str>,
}

impl Env<'_> {
    fn nonempty(&self, k: &str) -> Option<String> {
        (self.get)(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn exporter(&self, k: &str) -> Result<Exporter, ConfigError> {
        match self.nonempty(k) {
            None => Ok(Exporter::Otlp),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "otlp" => Ok(Exporter::Otlp),
                "console" => Ok(Exporter::Console),
                "none" => Ok(Exporter::None),
                _ => Err(ConfigError::Exporter(k.into(), v)),
            },
        }
    }

    /// The generic endpoint: the flag (or config file) over the variable.
    fn base(&self) -> Option<String> {
        self.flag_endpoint
            .map(str::to_string)
            .or_else(|| self.nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"))
    }

    fn specific(&self, signal: &str) -> Option<String> {
        self.nonempty(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
    }

    /// Per signal first, then the generic variable (the spec's order).
    fn var(&self, signal: &str, what: &str) -> Option<(String, String)> {
        [
            format!("OTEL_EXPORTER_OTLP_{signal}_{what}"),
            format!("OTEL_EXPORTER_OTLP_{what}"),
        ]
        .into_iter()
        .find_map(|k| self.nonempty(&k).map(|v| (k, v)))
    }

    fn ms(&self, k: &str, default: u64) -> Result<Duration, ConfigError> {
        match self.nonempty(k) {
            None => Ok(Duration::from_millis(default)),
            Some(v) => parse_ms(k.into(), v),
        }
    }

    fn file(&self, signal: &str, what: &str) -> Result<Option<(String, Vec<u8>)>, ConfigError> {
        self.var(signal, what)
            .map(|(k, path)| match (self.read)(&path) {
                Ok(b) => Ok((path, b)),
                Err(e) => Err(ConfigError::File(k, path, e)),
            })
            .transpose()
    }

    fn signal(
        &self,
        upper: &str,
        name: &'static str,
        base: Option<&str>,
    ) -> Result<Signal, ConfigError> {
        let (source, protocol) = match self.flag_protocol {
            Some(p) => (
                "--otlp-protocol".to_string(),
                parse_protocol("--otlp-protocol", p)?,
            ),
            None => match self.var(upper, "PROTOCOL") {
                Some((k, v)) => (k.clone(), parse_protocol(&k, &v)?),
                None => (String::new(), default_protocol()),
            },
        };
        if !built(protocol) && cfg!(feature = "otlp") {
            let feature = match protocol {
                Protocol::Grpc => "otlp-grpc",
                Protocol::HttpProtobuf => "otlp-http",
            };
            return Err(ConfigError::NotBuilt(
                format!("{source}={}", protocol.name()),
                feature,
            ));
        }
        let insecure = self
            .var(upper, "INSECURE")
            .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"));
        let endpoint = match (self.specific(upper), base) {
            // A signal's own endpoint is used as is (unless a flag names one).
            (Some(s), _) if self.flag_endpoint.is_none() => with_scheme(&s, protocol, insecure)?,
            (_, Some(b)) => {
                let b = with_scheme(b, protocol, insecure)?;
                match protocol {
                    Protocol::Grpc => b,
                    Protocol::HttpProtobuf => format!("{}/v1/{name}", b.trim_end_matches('/')),
                }
            }
            (Some(s), None) => with_scheme(&s, protocol, insecure)?,
            (None, None) => String::new(),
        };
        if let Some((k, v)) = self.var(upper, "COMPRESSION")
            && !matches!(v.to_ascii_lowercase().as_str(), "gzip" | "none")
        {
            return Err(ConfigError::Compression(k, v));
        }
        let pair = |a: &str, b: &str| {
            ConfigError::ClientPair(
                format!("OTEL_EXPORTER_OTLP_{a}"),
                format!("OTEL_EXPORTER_OTLP_{b}"),
            )
        };
        let ca = self.file(upper, "CERTIFICATE")?;
        let client = match (
            self.file(upper, "CLIENT_CERTIFICATE")?,
            self.file(upper, "CLIENT_KEY")?,
        ) {
            (Some((_, c)), Some((_, k))) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(pair("CLIENT_CERTIFICATE", "CLIENT_KEY")),
            (None, Some(_)) => return Err(pair("CLIENT_KEY", "CLIENT_CERTIFICATE")),
        };
        let timeout = match self.var(upper, "TIMEOUT") {
            None => Duration::from_secs(10),
            Some((k, v)) => parse_ms(k, v)?,
        };
        Ok(Signal {
            name,
            endpoint,
            protocol,
            timeout,
            tls: TlsFiles { ca, client },
        })
    }
}

/// Milliseconds, as the OTEL_* duration variables are given.
fn parse_ms(var: String, v: String) -> Result<Duration, ConfigError> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| ConfigError::Number(var, v))
}

fn parse_protocol(var: &str, v: &str) -> Result<Protocol, ConfigError> {
    match v.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(ConfigError::Protocol(var.into(), other.into())),
    }
}

/// The spec: a gRPC endpoint without a scheme is `https://` unless
/// `..._INSECURE=true`; HTTP endpoints must carry their scheme.
fn with_scheme(e: &str, protocol: Protocol, insecure: bool) -> Result<String, ConfigError> {
    if e.starts_with("http://") || e.starts_with("https://") {
        return Ok(e.to_string());
    }
    if protocol == Protocol::Grpc && !e.contains("://") {
        let scheme = if insecure { "http" } else { "https" };
        return Ok(format!("{scheme}://{e}"));
    }
    Err(ConfigError::Scheme(e.to_string()))
}

#[cfg(test)]
mod tests {
    /// Each transport works where its feature is built and is refused by
    /// name where it is not; a build without OTLP refuses any endpoint.
    #[test]
    fn a_transport_not_built_is_refused_by_name() {
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".into());
        for p in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let r = OtlpConfig::from_env_and_flags(env, None, Some(p.name()));
            if cfg!(feature = "otlp") && built(p) {
                assert_eq!(r.unwrap().unwrap().traces.protocol, p);
            } else {
                assert!(matches!(r, Err(ConfigError::NotBuilt(..))), "{p:?}: {r:?}");
            }
        }
        // No protocol named: one this build has.
        let r = OtlpConfig::from_env_and_flags(env, None, None);
        if cfg!(feature = "otlp") {
            assert!(built(r.unwrap().unwrap().traces.protocol));
        } else {
            assert!(matches!(r, Err(ConfigError::NotBuilt(..))), "{r:?}");
        }
    }

    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn files(p: &str) -> Result<Vec<u8>, String> {
        match p {
            "/ca.pem" => Ok(b"CA".to_vec()),
            "/c.pem" => Ok(b"CERT".to_vec()),
            "/k.pem" => Ok(b"KEY".to_vec()),
            _ => Err("No such file or directory (os error 2)".into()),
        }
    }

    fn cfg(
        pairs: &[(&str, &str)],
        flag: Option<&str>,
        proto: Option<&str>,
    ) -> Result<Option<OtlpConfig>, ConfigError> {
        OtlpConfig::resolve(&env(pairs), flag, proto, &files)
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "otlp-grpc", feature = "otlp-http")),
        ignore = "the full build's defaults"
    )]
    fn off_without_an_endpoint() {
        assert_eq!(
            cfg(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=b")], None, None),
            Ok(None)
        );
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "otlp-grpc", feature = "otlp-http")),
        ignore = "the full build's defaults"
    )]
    fn http_paths_grpc_base_and_flags_win() {
        let c = cfg(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.traces.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.traces.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.metrics.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(c.metrics_interval, Duration::from_secs(10));
        let c = cfg(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://t:4318/v1/traces",
                ),
            ],
            Some("https://g:4317"),
            Some("grpc"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.traces.protocol, c.traces.endpoint.as_str()),
            (Protocol::Grpc, "https://g:4317")
        );
        assert!(c.traces.https());
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "otlp-grpc", feature = "otlp-http")),
        ignore = "the full build's defaults"
    )]
    fn per_signal_variables_come_first() {
        let c = cfg(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.com"),
                (
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "https://m.example.com/otlp/v1/metrics",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
                ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", "/c.pem"),
                ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "/k.pem"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.traces.protocol, Protocol::Grpc);
        assert_eq!(c.traces.endpoint, "https://otlp.example.com");
        assert_eq!(c.metrics.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.metrics.endpoint, "https://m.example.com/otlp/v1/metrics");
        assert_eq!(
            c.traces.tls.ca.as_ref().map(|c| c.1.as_slice()),
            Some(&b"CA"[..])
        );
        assert_eq!(c.traces.tls.client, None);
        assert_eq!(
            c.metrics.tls.client,
            Some((b"CERT".to_vec(), b"KEY".to_vec()))
        );
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "otlp-grpc", feature = "otlp-http")),
        ignore = "the full build's defaults"
    )]
    fn host_and_port_of_an_endpoint() {
        let hp = |e: &str| {
            Signal {
                name: "traces",
                endpoint: e.into(),
                protocol: Protocol::Grpc,
                timeout: Duration::from_secs(1),
                tls: TlsFiles::default(),
            }
            .host_port()
        };
        assert_eq!(hp("https://c.example:4317"), ("c.example".into(), 4317));
        assert_eq!(
            hp("https://c.example/otlp/v1/traces"),
            ("c.example".into(), 443)
        );
        assert_eq!(hp("https://[::1]:4318/v1/traces"), ("::1".into(), 4318));
        assert_eq!(hp("http://10.0.0.5"), ("10.0.0.5".into(), 80));
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "otlp-grpc", feature = "otlp-http")),
        ignore = "the full build's defaults"
    )]
    fn grpc_without_a_scheme_is_tls_unless_insecure() {
        let c = cfg(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true"),
            ],
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.traces.endpoint, "https://collector:4317");
        assert_eq!(c.metrics.endpoint, "http://collector:4317");
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "otlp-grpc", feature = "otlp-http")),
        ignore = "the full build's defaults"
    )]
    fn bad_values_are_clear_errors() {
        let e = |pairs: &[(&str, &str)]| cfg(pairs, None, None).unwrap_err().to_string();
        assert_eq!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
            ]),
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"thrift\": use grpc or http/protobuf"
        );
        assert!(
            e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "unix:///run/otel.sock")])
                .contains("http:// or https://")
        );
        assert!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")
            ])
            .contains("use gzip or none")
        );
        assert_eq!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nope.pem")
            ]),
            "OTEL_EXPORTER_OTLP_CERTIFICATE=\"/nope.pem\": No such file or directory (os error 2)"
        );
        assert!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")
            ])
            .contains("mutual TLS needs both")
        );
        assert!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "10s")
            ])
            .contains("not a number")
        );
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "otlp-grpc", feature = "otlp-http")),
        ignore = "the full build's defaults"
    )]
    fn the_spec_switches_sdk_disabled_and_exporters() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let on = |pairs: &[(&str, &str)]| cfg(pairs, None, None).unwrap();
        // OTEL_SDK_DISABLED=true wins over an endpoint; other values do not.
        assert_eq!(on(&[ep, ("OTEL_SDK_DISABLED", "true")]), None);
        assert_eq!(on(&[ep, ("OTEL_SDK_DISABLED", "TRUE")]), None);
        let c = on(&[ep, ("OTEL_SDK_DISABLED", "false")]).unwrap();
        assert_eq!(
            (c.traces_exporter, c.metrics_exporter),
            (Exporter::Otlp, Exporter::Otlp)
        );
        // One signal off.
        let c = on(&[ep, ("OTEL_METRICS_EXPORTER", "none")]).unwrap();
        assert_eq!(
            (c.traces_exporter, c.metrics_exporter),
            (Exporter::Otlp, Exporter::None)
        );
        // Both off: no export at all.
        assert_eq!(
            on(&[
                ep,
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_METRICS_EXPORTER", "none")
            ]),
            None
        );
        // Console needs no endpoint; the other signal stays off without one.
        let c = on(&[("OTEL_TRACES_EXPORTER", "console")]).unwrap();
        assert_eq!(
            (c.traces_exporter, c.metrics_exporter),
            (Exporter::Console, Exporter::None)
        );
        // Anything else is a clear error, as a bad protocol is.
        assert_eq!(
            cfg(&[ep, ("OTEL_TRACES_EXPORTER", "zipkin")], None, None)
                .unwrap_err()
                .to_string(),
            "OTEL_TRACES_EXPORTER=\"zipkin\": use otlp, console or none (one of them)"
        );
    }
}
