//! A trace to a Service: the source node's kube-proxy rules say which backends the
//! Service address is translated to ([`podnet_api::ServiceReport`], read by the
//! source node's agent); the trace shows that translation as a hop and then follows
//! the packet to the backend it would reach.

use super::{trace, Agents, Flow, Hop, Trace};
use anyhow::{Context, Result};
use podnet_api::{Client, Request, ServicePort, ServiceReport};
use podnet_cni_spec::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr};

/// Whether `dst` is a Service rather than a pod: not an address of any node's pod
/// CIDR (of either family) nor a pod name the cluster knows.
pub(super) fn is_service(agents: &dyn Agents, dst: &str) -> bool {
    if agents.pod_ip(dst).is_some() {
        return false;
    }
    let Ok(ip) = dst.parse::<IpAddr>() else {
        return true;
    };
    !agents.nodes().iter().any(|(_, sock)| {
        Client::new(sock).status().is_ok_and(|st| match ip {
            IpAddr::V4(a) => st.pod_cidr.parse::<Ipv4Net>().is_ok_and(|c| c.contains(a)),
            IpAddr::V6(a) => st
                .pod_cidr6
                .parse::<podnet_cni_spec::net::Ipv6Net>()
                .is_ok_and(|c| c.contains(a)),
        })
    })
}

/// The agent of the node that serves pod address `ip`.
fn agent_of(agents: &dyn Agents, ip: Ipv4Addr) -> Result<(String, Client)> {
    for (n, sock) in agents.nodes() {
        let c = Client::new(&sock);
        if c.status()
            .is_ok_and(|st| st.pod_cidr.parse::<Ipv4Net>().is_ok_and(|c| c.contains(ip)))
        {
            return Ok((n, c));
        }
    }
    anyhow::bail!("no node whose agent answers serves {ip}")
}

/// What the kube-proxy of the node serving pod address `src` does to packets for `svc`
/// (`port` 0: every port): that node's name, and its agent's report.
pub fn translation(
    agents: &dyn Agents,
    src: Ipv4Addr,
    svc: &str,
    port: u16,
    proto: podnet_policy::Proto,
) -> Result<(String, ServiceReport)> {
    let (node, client) = agent_of(agents, src)?;
    let protocol = match proto {
        podnet_policy::Proto::Other(_) => String::new(),
        p => p.name().to_lowercase(),
    };
    let report: ServiceReport = client
        .call(&Request::Service {
            target: svc.to_string(),
            port,
            protocol,
        })
        .with_context(|| format!("ask the agent on {node} for kube-proxy's rules"))?;
    Ok((node, report))
}

fn describe(p: &ServicePort) -> String {
    let at = if p.node_port {
        format!("node port {}", p.port)
    } else {
        format!("{}:{}", p.ip, p.port)
    };
    format!("{} ({at}/{})", p.service, p.protocol)
}

/// Traces `src` to Service `svc` for `flow`: the translation hop, then the path to the
/// first backend (lowest address) with the backend's port.
pub fn trace_service(agents: &dyn Agents, src: &str, svc: &str, flow: &Flow) -> Result<Trace> {
    // `SERVICE:PORT`: the port given with the Service.
    let (svc, flow) = match svc.rsplit_once(':').map(|(s, p)| (s, p.parse::<u16>())) {
        Some((s, Ok(port))) => (
            s,
            &Flow {
                proto: flow.proto,
                port: Some(port),
            },
        ),
        _ => (svc, flow),
    };
    let IpAddr::V4(sip) = super::target(agents, src)? else {
        anyhow::bail!("{src} is an IPv6 address: podnet traces Services over IPv4 only so far; give the client pod by name or IPv4 address");
    };
    let (node, report) = translation(agents, sip, svc, flow.port.unwrap_or(0), flow.proto)?;
    let (hop, backend) = translation_hop(&report, &node, svc, flow);
    // Only the translation hop, when there is nothing to follow.
    let alone = |hops: Vec<Hop>, verdict: &str| Trace {
        src: format!("{src} ({sip} on {node})"),
        dst: svc.to_string(),
        family: super::Family::Ipv4,
        flow: flow.describe(),
        verdict: verdict.into(),
        broken_hop: hops.iter().find(|h| h.status == "broken").cloned(),
        hops,
        elapsed_ms: 0,
    };
    let Some(b) = backend else {
        let verdict = if hop.status == "broken" {
            "broken"
        } else {
            "unknown"
        };
        return Ok(alone(vec![hop], verdict));
    };
    if is_service(agents, &b.ip.to_string()) {
        // A host address (the API server's, a hostNetwork pod's): no pod hops follow.
        let end = Hop {
            where_: "src-node".into(),
            what: "backend".into(),
            status: "skipped".into(),
            detail: format!(
                "{}:{} is not a pod address: it leaves the pod network (masqueraded to the node's address if it is outside the cluster); traced no further",
                b.ip, b.port
            ),
            kernel: String::new(),
            cmd: String::new(),
            fix: String::new(),
        };
        return Ok(alone(vec![hop, end], "reachable"));
    }
    let to_backend = Flow {
        proto: flow.proto,
        port: Some(b.port),
    };
    let mut t = trace(agents, src, &b.ip.to_string(), &to_backend, None)?;
    let at = t
        .hops
        .iter()
        .position(|h| h.where_ == "src-node")
        .map(|i| i + 1)
        .unwrap_or(t.hops.len());
    t.hops.insert(at, hop);
    t.dst = format!("{svc} → {}", t.dst);
    Ok(t)
}

/// The translation hop from `node`'s report, and the backend the trace follows (none
/// when the hop is broken or the rules cannot be read).
fn translation_hop(
    report: &ServiceReport,
    node: &str,
    svc: &str,
    flow: &Flow,
) -> (Hop, Option<podnet_api::ServiceBackend>) {
    let hop = |status: &str, detail: String, kernel: String, fix: &str| Hop {
        where_: "src-node".into(),
        what: "service translation".into(),
        status: status.into(),
        detail,
        kernel,
        cmd: format!("{} (on {node})", report.cmd),
        fix: fix.into(),
    };
    if report.proxy == "unreadable" {
        return (hop(
            "warn",
            format!("{node} has no kube-proxy nftables table, and podnetd's image has no iptables-save to read iptables mode: the translation of {svc} is unknown here"),
            "(unreadable)".into(),
            "trace a backend directly: `podnet trace SRC BACKEND_IP --port TARGET_PORT` (backends: kubectl get endpointslices)",
        ), None);
    }
    if report.proxy == "none" {
        return (
            hop(
                "broken",
                format!("{node} has no kube-proxy rules: nothing translates {svc}"),
                "(none)".into(),
                "run kube-proxy on the node (nftables or iptables mode)",
            ),
            None,
        );
    }
    let Some(p) = report.ports.iter().find(|p| !p.node_port) else {
        return (
            hop(
                "broken",
                format!(
                    "kube-proxy ({} mode) on {node} has no Service {svc}{}",
                    report.proxy,
                    flow.port.map(|p| format!(" port {p}")).unwrap_or_default()
                ),
                "(none)".into(),
                "check the Service and its port: kubectl get service -A -o wide",
            ),
            None,
        );
    };
    let Some(b) = p.backends.first() else {
        return (
            hop(
                "broken",
                format!(
                    "{} has no ready endpoint: kube-proxy refuses its packets",
                    describe(p)
                ),
                p.rule.clone(),
                "check the Service's selector and its pods' readiness: kubectl get endpointslices",
            ),
            None,
        );
    };
    let all: Vec<String> = p
        .backends
        .iter()
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect();
    (
        hop(
            "ok",
            format!(
                "kube-proxy ({} mode) translates {} to one of {}; traced to {}:{}. NetworkPolicy judges the packet after this translation: on the backend's address and port",
                report.proxy,
                describe(p),
                all.join(", "),
                b.ip,
                b.port
            ),
            p.rule.clone(),
            "",
        ),
        Some(b.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_api::{ServiceBackend, ServicePort};

    fn report(backends: Vec<ServiceBackend>) -> ServiceReport {
        ServiceReport {
            proxy: "nftables".into(),
            ports: vec![ServicePort {
                service: "default/web/tcp/http".into(),
                ip: "10.96.0.20".parse().unwrap(),
                port: 80,
                protocol: "tcp".into(),
                node_port: false,
                rule: "chain service-ABC-default/web/tcp/http".into(),
                backends,
            }],
            cmd: "nft list table ip kube-proxy".into(),
        }
    }

    #[test]
    fn the_translation_hop_says_what_kube_proxy_does_or_why_nothing() {
        let flow = Flow {
            proto: podnet_policy::Proto::Tcp,
            port: Some(80),
        };
        let two = vec![
            ServiceBackend {
                ip: "10.244.1.3".parse().unwrap(),
                port: 8080,
            },
            ServiceBackend {
                ip: "10.244.2.3".parse().unwrap(),
                port: 8080,
            },
        ];
        let (h, b) = translation_hop(&report(two), "node1", "web", &flow);
        assert_eq!(h.status, "ok");
        assert!(
            h.detail
                .contains("to one of 10.244.1.3:8080, 10.244.2.3:8080"),
            "{h:?}"
        );
        assert_eq!(b.unwrap().ip, "10.244.1.3".parse::<Ipv4Addr>().unwrap());
        let (h, b) = translation_hop(&report(vec![]), "node1", "web", &flow);
        assert!(
            h.status == "broken" && h.detail.contains("no ready endpoint") && b.is_none(),
            "{h:?}"
        );
        let mut none = report(vec![]);
        none.ports.clear();
        let (h, _) = translation_hop(&none, "node1", "web", &flow);
        assert!(h.detail.contains("has no Service web port 80"), "{h:?}");
        none.proxy = "unreadable".into();
        let (h, b) = translation_hop(&none, "node1", "web", &flow);
        assert!(h.status == "warn" && b.is_none(), "{h:?}");
    }
}
