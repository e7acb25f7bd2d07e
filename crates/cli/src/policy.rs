//! `podnet policy explain` and `podnet policy stats`.
//!
//! `explain` judges one flow with the same definitions the agents compile
//! (`podnet_policy::eval`; the compiler is tested against it), from the objects in
//! the datastore, and says why: the policies that isolate each end, the rule that
//! admits the flow, or that none does. `stats` reads each node's drop counters
//! through its agent.

use anyhow::{bail, Context, Result};
use podnet_policy::eval::{evaluate, End, Verdict};
use podnet_policy::{Cluster, Object, Proto};
use serde::Serialize;
use std::net::IpAddr;
use std::path::Path;

/// One end: an address (its pod, if any), or a pod as `namespace/name` by its address
/// of the flow's family.
fn end<'a>(c: &'a Cluster, spec: &str, ipv6: bool) -> Result<End<'a>> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(End {
            ip,
            pod: c.pod_by_ip(ip),
        });
    }
    let (ns, name) = spec.split_once('/').unwrap_or(("default", spec));
    let pod = c.pod(ns, name).with_context(|| {
        format!(
            "no pod {ns}/{name} in the datastore; name a pod as namespace/name (pods: {})",
            c.pods
                .iter()
                .map(|p| p.key())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if ipv6 {
        return End::of_pod6(pod).with_context(|| {
            format!(
                "pod {ns}/{name} has no IPv6 address (not dual-stack, or no address yet): judge the flow over IPv4 (leave out --ipv6 and give no IPv6 address)"
            )
        });
    }
    End::of_pod(pod).with_context(|| format!("pod {ns}/{name} has no address yet"))
}

/// Judges the flow `from` → `to` (pods as `ns/name`, or addresses). The flow is IPv6
/// when `ipv6` is set or either end is an IPv6 address: pods are then taken by their
/// IPv6 addresses.
pub fn explain(
    objs: &[Object],
    from: &str,
    to: &str,
    port: u16,
    proto: Proto,
    ipv6: bool,
) -> Result<Verdict> {
    let c = Cluster::from_objects(objs);
    let is6 = |s: &str| s.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6());
    let v4 = |s: &str| s.parse::<IpAddr>().is_ok_and(|a| a.is_ipv4());
    let ipv6 = ipv6 || is6(from) || is6(to);
    if ipv6 && (v4(from) || v4(to)) {
        bail!("{from} → {to} mixes an IPv4 and an IPv6 address: a flow is of one family; give two addresses of one family (pods are taken by the address of the other end's family)");
    }
    let (s, d) = (end(&c, from, ipv6)?, end(&c, to, ipv6)?);
    Ok(evaluate(&c, &s, &d, proto, port))
}

/// The verdict on a flow to a Service port: the flow kube-proxy makes of it, judged on
/// each backend it may pick (NetworkPolicy sees the translated packet).
#[derive(Debug, Serialize)]
pub struct ServiceVerdict {
    pub from: String,
    /// The Service port, as kube-proxy names it (`namespace/name/protocol/port-name`).
    pub service: String,
    /// kube-proxy's mode and the rule that translates, on the source's node.
    pub proxy: String,
    pub rule: String,
    /// `allowed` (to every backend), `denied` (to none) or `allowed to some backends`.
    pub verdict: String,
    pub backends: Vec<Verdict>,
}

/// Judges `from` → Service port `p` (as the source node's kube-proxy translates it).
pub fn explain_service(
    objs: &[Object],
    from: &str,
    p: &podnet_api::ServicePort,
    proxy: &str,
    proto: Proto,
) -> Result<ServiceVerdict> {
    // A client given by its address of the other family than the backends' is taken
    // by name (a dual-stack pod's IPv6 side to an IPv6 Service).
    let c = Cluster::from_objects(objs);
    let client = |b: IpAddr| match from.parse::<IpAddr>() {
        Ok(a) if a.is_ipv6() != b.is_ipv6() => c
            .pod_by_ip(a)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .unwrap_or_else(|| from.to_string()),
        _ => from.to_string(),
    };
    let backends = p
        .backends
        .iter()
        .map(|b| explain(objs, &client(b.ip), &b.ip.to_string(), b.port, proto, false))
        .collect::<Result<Vec<_>>>()?;
    let allowed = backends.iter().filter(|v| v.allowed()).count();
    Ok(ServiceVerdict {
        from: from.to_string(),
        service: p.service.clone(),
        proxy: proxy.to_string(),
        rule: p.rule.clone(),
        verdict: match allowed {
            0 => "denied".into(),
            n if n == backends.len() => "allowed".into(),
            _ => "allowed to some backends".into(),
        },
        backends,
    })
}

pub fn render_service_verdict(v: &ServiceVerdict) -> String {
    let mut s = format!(
        "{} → Service {}: {}
  judged after kube-proxy's translation ({} mode, {}), on each backend:
",
        v.from,
        v.service,
        v.verdict.to_uppercase(),
        v.proxy,
        v.rule
    );
    if v.backends.is_empty() {
        s.push_str("  (no ready endpoint: kube-proxy refuses the packets)\n");
    }
    for b in &v.backends {
        for line in render_verdict(b).lines() {
            s.push_str(&format!("  {line}\n"));
        }
    }
    s
}

pub fn render_verdict(v: &Verdict) -> String {
    let mut s = format!(
        "{} → {} {} port {}: {}\n",
        v.from,
        v.to,
        v.protocol.name(),
        v.port,
        v.verdict.to_uppercase()
    );
    for side in [&v.egress, &v.ingress] {
        let mark = if side.allowed { "✓" } else { "✗" };
        s.push_str(&format!(
            "  {mark} {:<7} {}\n",
            side.direction.as_str(),
            side.reason
        ));
    }
    s
}

/// Packets refused on one node, per pod and direction.
#[derive(Debug, Serialize)]
pub struct NodeStats {
    pub node: String,
    /// None: the agent did not answer.
    pub datapath: Option<podnet_conventions::PolicyDatapath>,
    pub revision: u64,
    /// Packets to or from addresses of the node's pod CIDR that no programmed pod holds.
    pub closed_packets: u64,
    pub denied: serde_json::Value,
    /// Local pods left closed because their tables are too large.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<podnet_api::RefusedPod>,
    pub error: Option<String>,
}

/// Asks each agent (`(node, socket)`) for its policy counters.
pub fn stats(agents: &[(String, &Path)]) -> Result<Vec<NodeStats>> {
    let mut out = Vec::new();
    for (node, sock) in agents {
        match podnet_api::Client::new(*sock).policy_stats() {
            Ok(v) => out.push(NodeStats {
                node: node.clone(),
                datapath: Some(v.status.datapath),
                revision: v.status.revision,
                closed_packets: v.closed_packets,
                denied: serde_json::to_value(&v.denied).unwrap_or_default(),
                refused: v.status.refused.clone(),
                error: v.status.error.or(v.denied_error),
            }),
            Err(e) => out.push(NodeStats {
                node: node.clone(),
                datapath: None,
                revision: 0,
                closed_packets: 0,
                denied: serde_json::Value::Null,
                refused: vec![],
                error: Some(e.to_string()),
            }),
        }
    }
    if out.is_empty() {
        bail!("no agents to ask");
    }
    Ok(out)
}

pub fn render_stats(s: &[NodeStats]) -> String {
    let mut out = format!(
        "{:<8} {:<24} {:<8} {:>8}  POLICIES\n",
        "NODE", "POD", "DIR", "DENIED"
    );
    for n in s {
        if let Some(e) = &n.error {
            out.push_str(&format!("{:<8} error: {e}\n", n.node));
        }
        for r in &n.refused {
            out.push_str(&format!(
                "{:<8} {:<24} {:<8} {:>8}  left closed: {}\n",
                n.node, r.pod, "both", "-", r.why
            ));
        }
        for d in n.denied.as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{:<8} {:<24} {:<8} {:>8}  {}\n",
                n.node,
                d["pod"].as_str().unwrap_or("?"),
                d["direction"].as_str().unwrap_or("?"),
                d["packets"].as_u64().unwrap_or(0),
                d["policies"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ));
        }
        if n.closed_packets > 0 {
            out.push_str(&format!(
                "{:<8} {:<24} {:<8} {:>8}  (addresses of no programmed pod)\n",
                n.node, "(closed)", "both", n.closed_packets
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> Vec<Object> {
        let pod = |name: &str, ips: &[&str]| {
            let ip_list: Vec<serde_json::Value> =
                ips.iter().map(|i| serde_json::json!({"ip": i})).collect();
            Object::from_json(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "x", "labels": {"app": name}},
                "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
                "status": {"podIP": ips[0], "podIPs": ip_list}
            }))
            .unwrap()
        };
        let policy = Object::from_json(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "v6-only", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:10:244::/48"}}]}]}
        }))
        .unwrap();
        vec![
            pod("web", &["10.244.0.5", "fd00:10:244::5"]),
            pod("db", &["10.244.1.7", "fd00:10:244:1::7"]),
            pod("old", &["10.244.0.9"]),
            policy,
        ]
    }

    /// The flow's family follows its ends: pods by their IPv6 addresses with --ipv6 or
    /// an IPv6 end; the same pods judged apart over each family.
    #[test]
    fn explain_judges_each_family_and_refuses_what_has_none() {
        let o = objects();
        let v6 = explain(&o, "x/web", "x/db", 5432, Proto::Tcp, true).unwrap();
        assert!(v6.allowed(), "{v6:?}");
        assert_eq!(v6.from, "x/web (fd00:10:244::5)");
        let v4 = explain(&o, "x/web", "x/db", 5432, Proto::Tcp, false).unwrap();
        assert!(!v4.allowed(), "an IPv6 block admits no IPv4 flow: {v4:?}");
        // An IPv6 address as one end makes the pod end IPv6 too.
        let by_addr = explain(&o, "fd00:10:244::5", "x/db", 5432, Proto::Tcp, false).unwrap();
        assert_eq!(by_addr.from, "x/web (fd00:10:244::5)");
        assert!(by_addr.allowed());
        let e = explain(&o, "x/old", "x/db", 5432, Proto::Tcp, true).unwrap_err();
        assert!(e.to_string().contains("has no IPv6 address"), "{e}");
        let e = explain(
            &o,
            "10.244.0.5",
            "fd00:10:244:1::7",
            5432,
            Proto::Tcp,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("mixes an IPv4 and an IPv6"), "{e}");
    }

    /// To a Service's IPv6 side: each IPv6 backend judged, the client given by its
    /// IPv4 address taken as the pod it is.
    #[test]
    fn a_service_is_judged_on_its_ipv6_backends_whatever_address_names_the_client() {
        let o = objects();
        let port = podnet_api::ServicePort {
            service: "x/db/tcp/".into(),
            ip: "fd00:10:96::7".parse().unwrap(),
            port: 5432,
            protocol: "tcp".into(),
            node_port: false,
            rule: "chain service-X-x/db/tcp/".into(),
            backends: vec![podnet_api::ServiceBackend {
                ip: "fd00:10:244:1::7".parse().unwrap(),
                port: 5432,
            }],
        };
        for from in ["x/web", "10.244.0.5", "fd00:10:244::5"] {
            let v = explain_service(&o, from, &port, "nftables", Proto::Tcp).unwrap();
            assert_eq!(v.verdict, "allowed", "{from}: {v:?}");
            assert_eq!(v.backends[0].from, "x/web (fd00:10:244::5)", "{from}");
        }
    }
}
