//! The Kubernetes objects policy is computed from, in their API shape
//! (`v1` Namespace and Pod, `networking.k8s.io/v1` NetworkPolicy), reduced to the
//! fields NetworkPolicy depends on. Unknown fields are refused, so a typo in a
//! manifest is an error that names the field, never a rule silently left out.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The label every namespace carries with its own name (Kubernetes ≥ 1.21 sets it on
/// every namespace; podnet adds it to namespaces that lack it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The pod annotation asking for a fixed address (passed to podnet-cni as the CNI
/// `ips` capability): an IPv4 address, and on a dual-stack network optionally an IPv6
/// one after a comma (`10.244.1.9,fd00:10:244:1::9`).
pub const IP_ANNOTATION: &str = "podnet.dev/ip";

/// The addresses an [`IP_ANNOTATION`] asks for: its IPv4 address and, if given, its
/// IPv6 one; an error saying what is wrong otherwise.
pub fn requested_ips(
    value: &str,
) -> Result<(std::net::Ipv4Addr, Option<std::net::Ipv6Addr>), String> {
    let mut v4 = None;
    let mut v6 = None;
    for part in value.split(',').map(str::trim) {
        match part.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) if v4.is_none() => v4 = Some(a),
            Ok(std::net::IpAddr::V6(a)) if v6.is_none() => v6 = Some(a),
            Ok(_) => return Err(format!("{value:?} names two addresses of one family")),
            Err(_) => return Err(format!("{part:?} in {value:?} is not an IP address")),
        }
    }
    let v4 = v4.ok_or_else(|| {
        format!("{value:?} has no IPv4 address (IPv6-only pods are not supported yet)")
    })?;
    Ok((v4, v6))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace, `default` when none is given.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pod {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodStatus {
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// Every address of the pod, one per family (the first is `podIP`).
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: NetworkPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

/// A port given by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i32),
    Str(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` satisfy every term (an empty selector selects everything).
    /// Operators are checked by [`crate::validate`]; an unknown one matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => have.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                }
            })
    }
}

/// Any of the three kinds, as read from a manifest or a datastore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    /// `(kind, namespace, name)`; a Namespace's own namespace is empty.
    pub fn key(&self) -> (String, String, String) {
        let m = self.meta();
        let ns = match self {
            Object::Namespace(_) => String::new(),
            _ => m.ns().to_string(),
        };
        (self.kind().to_string(), ns, m.name.clone())
    }

    /// `Pod default/web`, for messages.
    pub fn describe(&self) -> String {
        let (k, ns, n) = self.key();
        if ns.is_empty() {
            format!("{k} {n}")
        } else {
            format!("{k} {ns}/{n}")
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::NetworkPolicy(o) => serde_json::to_value(o),
        }
        .expect("objects serialize")
    }

    /// Reads one object from its JSON form, by its `kind` and `apiVersion`; errors
    /// name the field at fault.
    pub fn from_json(v: serde_json::Value) -> Result<Object, String> {
        if !v.is_object() {
            return Err(
                "the record holds no object (it is damaged): write the object again".into(),
            );
        }
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or("the field `kind` is missing")?
            .to_string();
        let api = v
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .ok_or("the field `apiVersion` is missing")?
            .to_string();
        let want_api = match kind.as_str() {
            "Namespace" | "Pod" => "v1",
            "NetworkPolicy" => "networking.k8s.io/v1",
            other => {
                return Err(format!(
                    "unknown kind {other:?}: podnet reads Namespace (v1), Pod (v1) and NetworkPolicy (networking.k8s.io/v1)"
                ))
            }
        };
        if api != want_api {
            return Err(format!(
                "apiVersion {api:?} of kind {kind} is not understood: use {want_api:?}"
            ));
        }
        let fail = |e: serde_json::Error| format!("{kind}: {e}");
        Ok(match kind.as_str() {
            "Namespace" => Object::Namespace(serde_json::from_value(v).map_err(fail)?),
            "Pod" => Object::Pod(serde_json::from_value(v).map_err(fail)?),
            _ => Object::NetworkPolicy(serde_json::from_value(v).map_err(fail)?),
        })
    }
}

/// Reduces an object as the Kubernetes API serves it (`metadata.uid`,
/// `managedFields`, the pod's whole spec and status…) to the fields this crate reads,
/// so that [`Object::from_json`] accepts it. `kind` is `Namespace`, `Pod` or
/// `NetworkPolicy`. Returns `None` for pods NetworkPolicy does not apply to: those on
/// the host network (they carry the node's address) and those that finished (their
/// address may already be another pod's).
pub fn from_api(kind: &str, v: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::{json, Map, Value};
    let pick = |from: &Value, keys: &[&str]| -> Value {
        let mut m = Map::new();
        for k in keys {
            if let Some(x) = from.get(*k).filter(|x| !x.is_null()) {
                m.insert((*k).to_string(), x.clone());
            }
        }
        Value::Object(m)
    };
    let meta = &v["metadata"];
    let mut metadata = pick(meta, &["name", "namespace", "labels"]);
    if let Some(ip) = meta["annotations"].get(IP_ANNOTATION) {
        metadata["annotations"] = json!({ IP_ANNOTATION: ip });
    }
    let api_version = if kind == "NetworkPolicy" {
        "networking.k8s.io/v1"
    } else {
        "v1"
    };
    let mut out = json!({ "apiVersion": api_version, "kind": kind, "metadata": metadata });
    match kind {
        "Namespace" => {}
        "Pod" => {
            let spec = &v["spec"];
            let phase = v["status"]["phase"].as_str().unwrap_or("");
            if spec["hostNetwork"].as_bool() == Some(true)
                || matches!(phase, "Succeeded" | "Failed")
            {
                return None;
            }
            let containers: Vec<Value> = spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut o = pick(c, &["name"]);
                    let ports: Vec<Value> = c["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| pick(p, &["name", "containerPort", "protocol"]))
                        .collect();
                    if !ports.is_empty() {
                        o["ports"] = Value::Array(ports);
                    }
                    o
                })
                .collect();
            out["spec"] = pick(spec, &["nodeName"]);
            out["spec"]["containers"] = Value::Array(containers);
            if let Some(ip) = v["status"].get("podIP").filter(|ip| ip.is_string()) {
                out["status"] = json!({ "podIP": ip });
                let ips: Vec<Value> = v["status"]["podIPs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["ip"].is_string())
                    .map(|a| pick(a, &["ip"]))
                    .collect();
                if !ips.is_empty() {
                    out["status"]["podIPs"] = Value::Array(ips);
                }
            }
        }
        "NetworkPolicy" => {
            out["spec"] = pick(
                &v["spec"],
                &["podSelector", "ingress", "egress", "policyTypes"],
            );
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod api_tests {
    use super::*;

    #[test]
    fn api_objects_reduce_to_what_policy_reads() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "9",
                         "labels": {"app": "web"}, "managedFields": [{}],
                         "annotations": {"podnet.dev/ip": "10.244.1.9", "other": "x"}},
            "spec": {"nodeName": "node1", "restartPolicy": "Always",
                     "containers": [{"name": "c", "image": "busybox",
                                     "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.9",
                       "podIPs": [{"ip": "10.244.1.9"}, {"ip": "fd00:10:244:1::9", "x": 1}]}
        });
        let t = from_api("Pod", &pod).unwrap();
        let o = Object::from_json(t).unwrap();
        let Object::Pod(p) = o else { panic!() };
        assert_eq!(p.metadata.ns(), "shop");
        assert_eq!(p.metadata.labels["app"], "web");
        assert_eq!(p.metadata.annotations.len(), 1);
        assert_eq!(p.spec.containers[0].ports[0].container_port, 80);
        let info = crate::PodInfo::from_pod(&p);
        assert_eq!(info.ip6, Some("fd00:10:244:1::9".parse().unwrap()));
        assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.244.1.9"));

        let mut host = pod.clone();
        host["spec"]["hostNetwork"] = true.into();
        assert!(from_api("Pod", &host).is_none());
        let mut done = pod.clone();
        done["status"]["phase"] = "Succeeded".into();
        assert!(from_api("Pod", &done).is_none());

        let np = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "shop", "generation": 1},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}
        });
        assert!(matches!(
            Object::from_json(from_api("NetworkPolicy", &np).unwrap()),
            Ok(Object::NetworkPolicy(_))
        ));
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        assert!(matches!(
            Object::from_json(from_api("Namespace", &ns).unwrap()),
            Ok(Object::Namespace(_))
        ));
    }
}
