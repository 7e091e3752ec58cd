//! OTLP exporter configuration from the standard OpenTelemetry variables and
//! the agent's flags (flags win).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// Full URL the traces go to (`.../v1/traces` for HTTP, the base for gRPC).
    pub traces_endpoint: String,
    pub metrics_endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub service_name: String,
    /// From OTEL_RESOURCE_ATTRIBUTES.
    pub resource: Vec<(String, String)>,
    pub metrics_interval: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0:?}: use grpc or http/protobuf")]
    Protocol(String),
    #[error(
        "OTLP endpoint {0:?}: only http:// endpoints are supported (plain text; put a collector next to the agent for TLS)"
    )]
    Scheme(String),
}

/// Percent-decoding for header values (`OTEL_EXPORTER_OTLP_HEADERS` is URL-encoded).
fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k1=v1,k2=v2` lists (headers, resource attributes).
pub fn parse_kv_list(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (pct_decode(k), pct_decode(v.trim())))
        })
        .collect()
}

impl OtlpConfig {
    /// `None` when no endpoint is configured (export off: the agent prints locally).
    pub fn from_env_and_flags(
        get: impl Fn(&str) -> Option<String>,
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
    ) -> Result<Option<Self>, ConfigError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let base = flag_endpoint
            .map(str::to_string)
            .or_else(|| nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let traces_env = nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let metrics_env = nonempty("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        if base.is_none() && traces_env.is_none() && metrics_env.is_none() {
            return Ok(None);
        }
        let proto = flag_protocol
            .map(str::to_string)
            .or_else(|| nonempty("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let protocol = match proto.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => return Err(ConfigError::Protocol(other.into())),
        };
        let signal_url = |specific: Option<String>, path: &str| -> String {
            match (specific, &base) {
                // A signal-specific endpoint is used as is.
                (Some(s), _) => s,
                (None, Some(b)) => match protocol {
                    Protocol::Grpc => b.clone(),
                    Protocol::HttpProtobuf => format!("{}/{path}", b.trim_end_matches('/')),
                },
                (None, None) => String::new(),
            }
        };
        let traces_endpoint = signal_url(traces_env, "v1/traces");
        let metrics_endpoint = signal_url(metrics_env, "v1/metrics");
        for e in [&traces_endpoint, &metrics_endpoint] {
            if !e.is_empty() && !e.starts_with("http://") {
                return Err(ConfigError::Scheme(e.clone()));
            }
        }
        let timeout = nonempty("OTEL_EXPORTER_OTLP_TIMEOUT")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(5));
        let resource = nonempty("OTEL_RESOURCE_ATTRIBUTES")
            .map(|s| parse_kv_list(&s))
            .unwrap_or_default();
        let service_name = nonempty("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "agent".into());
        let metrics_interval = nonempty("OTEL_METRIC_EXPORT_INTERVAL")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(10));
        Ok(Some(OtlpConfig {
            traces_endpoint,
            metrics_endpoint,
            protocol,
            headers: nonempty("OTEL_EXPORTER_OTLP_HEADERS")
                .map(|s| parse_kv_list(&s))
                .unwrap_or_default(),
            timeout,
            service_name,
            resource,
            metrics_interval,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(
            OtlpConfig::from_env_and_flags(env(&[]), None, None),
            Ok(None)
        );
    }

    #[test]
    fn http_paths_grpc_base_and_flags_win() {
        let c = OtlpConfig::from_env_and_flags(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.traces_endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.metrics_endpoint, "http://c:4318/v1/metrics");
        let c = OtlpConfig::from_env_and_flags(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
            Some("http://g:4317"),
            Some("grpc"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.protocol, c.traces_endpoint.as_str()),
            (Protocol::Grpc, "http://g:4317")
        );
    }

    #[test]
    fn headers_resource_and_service_name() {
        let c = OtlpConfig::from_env_and_flags(
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://t:4318/v1/traces",
                ),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20abc,x-tenant=a",
                ),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=node-agent,deployment.environment=ci",
                ),
            ]),
            None,
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.headers[0], ("authorization".into(), "Bearer abc".into()));
        assert_eq!(c.service_name, "node-agent");
        assert_eq!(c.metrics_endpoint, "");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert!(matches!(
            OtlpConfig::from_env_and_flags(
                env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
                ]),
                None,
                None
            ),
            Err(ConfigError::Protocol(_))
        ));
        assert!(matches!(
            OtlpConfig::from_env_and_flags(
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")]),
                None,
                None
            ),
            Err(ConfigError::Scheme(_))
        ));
    }
}
