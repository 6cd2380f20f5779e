//! CRI messages in the protobuf JSON mapping, as crictl prints them
//! (`-o json|yaml|go-template`): camelCase field names, enum names such as
//! `CONTAINER_RUNNING`, 64-bit integers as strings, every field shown.
//! Messages go through their descriptors (compiled into the protocol crate)
//! with prost-reflect, so the mapping is the protobuf one, not serde's.
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// A message that cannot be shown in the JSON mapping (descriptors missing
/// or out of step with the message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

type Result<T> = std::result::Result<T, Error>;

fn pool() -> Result<&'static DescriptorPool> {
    static POOL: OnceLock<std::result::Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(protocol::CRI_DESCRIPTOR_SET).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error(format!("CRI descriptors: {e}")))
}

/// `msg`, a `runtime.v1` message named `name` (`ListContainersResponse`), as JSON.
pub fn to_json<M: prost::Message>(msg: &M, name: &str) -> Result<serde_json::Value> {
    let full = format!("runtime.v1.{name}");
    let desc = pool()?.get_message_by_name(&full).ok_or_else(|| Error(format!("no message {full}")))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| Error(format!("re-reading {full}: {e}")))?;
    let opts = SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| Error(format!("encoding {full} as JSON: {e}")))
}

/// A JSON value as a Go template sees it (crictl decodes its JSON into
/// `map[string]interface{}` before running the template).
pub fn to_template_value(v: &serde_json::Value) -> gtmpl::Value {
    use serde_json::Value as J;
    match v {
        J::Null => gtmpl::Value::Nil,
        J::Bool(b) => gtmpl::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.into(),
            (_, Some(u), _) => u.into(),
            (_, _, Some(f)) => f.into(),
            _ => gtmpl::Value::Nil,
        },
        J::String(s) => gtmpl::Value::String(s.clone()),
        J::Array(a) => gtmpl::Value::Array(a.iter().map(to_template_value).collect()),
        J::Object(o) => gtmpl::Value::Map(o.iter().map(|(k, v)| (k.clone(), to_template_value(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::cri;

    #[test]
    fn json_is_the_protobuf_mapping() {
        let r = cri::ListContainersResponse {
            containers: vec![cri::Container {
                id: "c1".into(),
                pod_sandbox_id: "p1".into(),
                state: cri::ContainerState::ContainerRunning as i32,
                created_at: 1_700_000_000_123_456_789,
                ..Default::default()
            }],
        };
        let v = to_json(&r, "ListContainersResponse").unwrap();
        let c = &v["containers"][0];
        assert_eq!(c["podSandboxId"], "p1");
        assert_eq!(c["state"], "CONTAINER_RUNNING");
        assert_eq!(c["createdAt"], "1700000000123456789");
        // Unset fields are shown with their defaults, as crictl shows them.
        assert_eq!(c["imageRef"], "");
        assert!(c.get("labels").is_some());
        let out = gtmpl::template("{{range .containers}}{{.id}} {{.state}}{{end}}", to_template_value(&v)).unwrap();
        assert_eq!(out, "c1 CONTAINER_RUNNING");
    }
}
