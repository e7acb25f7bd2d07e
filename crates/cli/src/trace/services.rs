//! A trace to a Service: the source node's kube-proxy rules say which backends the
//! Service address is translated to ([`podnet_api::ServiceReport`], read by the
//! source node's agent); the trace shows that translation as a hop and then follows
//! the packet to the backend it would reach.

use super::{trace, Agents, Flow, Hop, Trace};
use anyhow::{Context, Result};
use podnet_api::{Client, Request, ServicePort, ServiceReport};
use podnet_cni_spec::Ipv4Net;
use std::net::Ipv4Addr;

/// Whether `dst` is a Service rather than a pod: not an address of any node's pod
/// CIDR nor a pod name the cluster knows.
pub(super) fn is_service(agents: &dyn Agents, dst: &str) -> bool {
    if agents.pod_ip(dst).is_some() {
        return false;
    }
    let Ok(ip) = dst.parse::<Ipv4Addr>() else {
        return true;
    };
    !agents.nodes().iter().any(|(_, sock)| {
        Client::new(sock)
            .status()
            .is_ok_and(|st| st.pod_cidr.parse::<Ipv4Net>().is_ok_and(|c| c.contains(ip)))
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
    let sip: Ipv4Addr = src
        .parse()
        .ok()
        .or_else(|| agents.pod_ip(src))
        .with_context(|| format!("{src:?} is neither an IPv4 address nor a known pod"))?;
    let (node, report) = translation(agents, sip, svc, flow.port.unwrap_or(0), flow.proto)?;
    let cmd = format!("{} (on {node})", report.cmd);
    let hop = |status: &str, detail: String, kernel: String, fix: &str| Hop {
        where_: "src-node".into(),
        what: "service translation".into(),
        status: status.into(),
        detail,
        kernel,
        cmd: cmd.clone(),
        fix: fix.into(),
    };
    let broken = |h: Hop| Trace {
        src: format!("{src} ({sip} on {node})"),
        dst: svc.to_string(),
        flow: flow.describe(),
        verdict: "broken".into(),
        broken_hop: Some(h.clone()),
        hops: vec![h],
        elapsed_ms: 0,
    };
    if report.proxy == "unreadable" {
        let mut t = broken(hop(
            "warn",
            format!("{node} has no kube-proxy nftables table, and podnetd's image has no iptables-save to read iptables mode: the translation of {svc} is unknown here"),
            "(unreadable)".into(),
            "trace a backend directly: `podnet trace SRC BACKEND_IP --port TARGET_PORT` (backends: kubectl get endpointslices)",
        ));
        t.verdict = "unknown".into();
        t.broken_hop = None;
        return Ok(t);
    }
    if report.proxy == "none" {
        return Ok(broken(hop(
            "broken",
            format!("{node} has no kube-proxy rules: nothing translates {svc}"),
            "(none)".into(),
            "run kube-proxy on the node (nftables or iptables mode)",
        )));
    }
    let Some(p) = report.ports.iter().find(|p| !p.node_port) else {
        return Ok(broken(hop(
            "broken",
            format!(
                "kube-proxy ({} mode) on {node} has no Service {svc}{}",
                report.proxy,
                flow.port.map(|p| format!(" port {p}")).unwrap_or_default()
            ),
            "(none)".into(),
            "check the Service and its port: kubectl get service -A -o wide",
        )));
    };
    let Some(b) = p.backends.first() else {
        return Ok(broken(hop(
            "broken",
            format!(
                "{} has no ready endpoint: kube-proxy refuses its packets",
                describe(p)
            ),
            p.rule.clone(),
            "check the Service's selector and its pods' readiness: kubectl get endpointslices",
        )));
    };
    let all: Vec<String> = p
        .backends
        .iter()
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect();
    let translation = hop(
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
    );
    if is_service(agents, &b.ip.to_string()) {
        // A host address (the API server's, a hostNetwork pod's): no pod hops follow.
        let mut t = broken(translation);
        t.verdict = "reachable".into();
        t.broken_hop = None;
        t.hops.push(Hop {
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
        });
        return Ok(t);
    }
    let to_backend = Flow {
        proto: flow.proto,
        port: Some(b.port),
    };
    let mut t = trace(agents, src, &b.ip.to_string(), &to_backend)?;
    let at = t
        .hops
        .iter()
        .position(|h| h.where_ == "src-node")
        .map(|i| i + 1)
        .unwrap_or(t.hops.len());
    t.hops.insert(at, translation);
    t.dst = format!("{svc} → {}", t.dst);
    Ok(t)
}
