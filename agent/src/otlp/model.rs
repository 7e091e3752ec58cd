//! Attribute helpers, resource and scope for OTLP messages.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
};

/// A string attribute. Every string that leaves through OTLP is made here
/// (span and event attributes, resource, metrics), so it is scrubbed here.
pub fn kv_str(k: &str, v: impl Into<String>) -> KeyValue {
    let v: String = v.into();
    let v = match crate::scrub::value(&v) {
        std::borrow::Cow::Borrowed(_) => v,
        std::borrow::Cow::Owned(o) => o,
    };
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v)),
        }),
        ..Default::default()
    }
}

pub fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

pub fn kv_bool(k: &str, v: bool) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::BoolValue(v)),
        }),
        ..Default::default()
    }
}

pub fn kv_str_array(k: &str, v: &[String]) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: v
                    .iter()
                    .map(|s| AnyValue {
                        value: Some(Value::StringValue(crate::scrub::value(s).into_owned())),
                    })
                    .collect(),
            })),
        }),
        ..Default::default()
    }
}

/// A JSON value as an attribute: strings and numbers natively, the rest as JSON text.
pub fn kv_json(k: &str, v: &serde_json::Value) -> Option<KeyValue> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::String(s) => kv_str(k, s.clone()),
        serde_json::Value::Bool(b) => kv_bool(k, *b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => kv_int(k, i),
            None => kv_str(k, n.to_string()),
        },
        other => kv_str(k, other.to_string()),
    })
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// Resource: host, OS, node, service, agent version, plus OTEL_RESOURCE_ATTRIBUTES.
pub fn resource(service_name: &str, extra: &[(String, String)]) -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut attrs = vec![
        kv_str("service.name", service_name),
        kv_str("service.version", env!("CARGO_PKG_VERSION")),
        kv_str("host.name", host),
        kv_str("host.arch", arch),
        kv_str("os.type", "linux"),
    ];
    if let Ok(node) = std::env::var("NODE_NAME")
        && !node.is_empty()
    {
        attrs.push(kv_str("k8s.node.name", node));
    }
    if let Some(id) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| crate::k8s::container_id(&c))
    {
        attrs.push(kv_str("container.id", id));
    }
    for (k, v) in extra {
        if k != "service.name" {
            attrs.retain(|a| &a.key != k);
            attrs.push(kv_str(k, v.clone()));
        }
    }
    Resource {
        attributes: attrs,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}
