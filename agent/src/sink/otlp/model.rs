//! Attribute helpers, scope and resource. Every string that leaves through
//! OTLP is made here (span and event attributes, resource, metric labels),
//! so it is scrubbed here.

use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::{
    Resource,
    resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector},
};
use opentelemetry_semantic_conventions::attribute as semconv;

/// A string attribute, scrubbed of secrets.
pub fn kv_str(k: &'static str, v: impl Into<String>) -> KeyValue {
    let v: String = v.into();
    let v = match crate::scrub::value(&v) {
        std::borrow::Cow::Borrowed(_) => v,
        std::borrow::Cow::Owned(o) => o,
    };
    KeyValue::new(k, v)
}

/// A string attribute with a key made at run time (evidence keys).
pub fn kv_string(k: String, v: &str) -> KeyValue {
    KeyValue::new(k, crate::scrub::value(v).into_owned())
}

pub fn kv_int(k: &'static str, v: i64) -> KeyValue {
    KeyValue::new(k, v)
}

pub fn kv_bool(k: &'static str, v: bool) -> KeyValue {
    KeyValue::new(k, v)
}

pub fn kv_str_array(k: &'static str, v: &[String]) -> KeyValue {
    let values: Vec<StringValue> = v
        .iter()
        .map(|s| crate::scrub::value(s).into_owned().into())
        .collect();
    KeyValue::new(k, Value::Array(Array::String(values)))
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("agent")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
        .build()
}

/// Resource: service (with an instance id per start, a random UUID as the
/// conventions ask), agent version, host, OS, node, the agent's own
/// container, under the semantic conventions' schema URL; then `OTEL_RESOURCE_ATTRIBUTES` (the SDK's detector) over
/// them, and `OTEL_SERVICE_NAME` over everything, as the spec orders.
pub fn resource() -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut attrs = vec![
        kv_str(semconv::SERVICE_NAME, "agent"),
        kv_str(semconv::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
        kv_str(semconv::HOST_NAME, host),
        kv_str(semconv::HOST_ARCH, arch),
        kv_str(semconv::OS_TYPE, "linux"),
    ];
    // The kernel's random UUID: one per start, no dependency for it.
    if let Ok(id) = std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        attrs.push(kv_str(semconv::SERVICE_INSTANCE_ID, id.trim().to_string()));
    }
    if let Ok(node) = std::env::var("NODE_NAME")
        && !node.is_empty()
    {
        attrs.push(kv_str(semconv::K8S_NODE_NAME, node));
    }
    if let Some(id) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| crate::process::k8s::container_id(&c))
    {
        attrs.push(kv_str(semconv::CONTAINER_ID, id));
    }
    let detectors: [Box<dyn ResourceDetector>; 2] = [
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    let mut b = Resource::builder_empty()
        .with_schema_url(attrs, opentelemetry_semantic_conventions::SCHEMA_URL)
        .with_detectors(&detectors);
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
        && !name.trim().is_empty()
    {
        b = b.with_service_name(name.trim().to_string());
    }
    b.build()
}
