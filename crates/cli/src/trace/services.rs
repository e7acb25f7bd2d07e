//! A trace to a Service: the source node's kube-proxy rules say which backends the
//! Service address is translated to ([`podnet_api::ServiceReport`], read by the
//! source node's agent); the trace shows that translation as a hop and then follows
//! the packet to the backend it would reach. A dual-stack Service is traced over
//! either family: its IPv6 side through kube-proxy's IPv6 rules, to an IPv6 backend.

use super::{trace, Agents, Family, Flow, Hop, Trace};
use anyhow::{Context, Result};
use podnet_api::{Client, Request, ServicePort, ServiceReport};
use podnet_cni_spec::Ipv4Net;
use std::net::{IpAddr, SocketAddr};

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

/// The agent of the node that serves pod address `ip` (of either family).
fn agent_of(agents: &dyn Agents, ip: IpAddr) -> Result<(String, Client)> {
    for (n, sock) in agents.nodes() {
        let c = Client::new(&sock);
        if c.status().is_ok_and(|st| match ip {
            IpAddr::V4(a) => st.pod_cidr.parse::<Ipv4Net>().is_ok_and(|c| c.contains(a)),
            IpAddr::V6(a) => st
                .pod_cidr6
                .parse::<podnet_cni_spec::net::Ipv6Net>()
                .is_ok_and(|c| c.contains(a)),
        }) {
            return Ok((n, c));
        }
    }
    anyhow::bail!("no node whose agent answers serves {ip}")
}

/// What the kube-proxy of the node serving pod address `src` does to packets for `svc`
/// (`port` 0: every port; `ipv6`: its IPv6 rules, for the Service's IPv6 side): that
/// node's name, and its agent's report.
pub fn translation(
    agents: &dyn Agents,
    src: IpAddr,
    svc: &str,
    port: u16,
    proto: podnet_policy::Proto,
    ipv6: bool,
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
            ipv6,
        })
        .with_context(|| format!("ask the agent on {node} for kube-proxy's rules"))?;
    Ok((node, report))
}

/// A Service as given to trace, and the port given with it: `SERVICE:PORT`
/// (`[IPV6]:PORT` for an IPv6 ClusterIP; an IPv6 address alone has no port).
fn split_port(svc: &str) -> (&str, Option<u16>) {
    if svc.parse::<IpAddr>().is_ok() {
        return (svc, None);
    }
    if let Ok(a) = svc.parse::<SocketAddr>() {
        let ip = svc[..svc.rfind(':').unwrap_or(svc.len())]
            .trim_start_matches('[')
            .trim_end_matches(']');
        return (ip, Some(a.port()));
    }
    match svc.rsplit_once(':').map(|(s, p)| (s, p.parse::<u16>())) {
        Some((s, Ok(port))) => (s, Some(port)),
        _ => (svc, None),
    }
}

fn describe(p: &ServicePort) -> String {
    let at = if p.node_port {
        format!("node port {}", p.port)
    } else {
        SocketAddr::new(p.ip, p.port).to_string()
    };
    format!("{} ({at}/{})", p.service, p.protocol)
}

/// Traces `src` to Service `svc` for `flow` over `family` (`None`: IPv6 when the
/// client or the Service is given by an IPv6 address): the translation hop, then the
/// path to the first backend (lowest address) with the backend's port.
pub fn trace_service(
    agents: &dyn Agents,
    src: &str,
    svc: &str,
    flow: &Flow,
    family: Option<Family>,
) -> Result<Trace> {
    let (svc, port) = split_port(svc);
    let flow = &Flow {
        proto: flow.proto,
        port: port.or(flow.port),
    };
    let given = super::target(agents, src)?;
    let svc_ip = svc.parse::<IpAddr>().ok();
    let v6 = match family {
        Some(f) => f == Family::Ipv6,
        None => given.is_ipv6() || svc_ip.is_some_and(|a| a.is_ipv6()),
    };
    if let Some(a) = svc_ip.filter(|a| a.is_ipv6() != v6) {
        anyhow::bail!(
            "{src} → {a} mixes an IPv4 and an IPv6 address: a flow is of one family; give the Service by name (its ClusterIP of the family traced is taken) or by its {} ClusterIP",
            if v6 { "IPv6" } else { "IPv4" }
        );
    }
    // The client's address in the family traced (a pod name or either of its
    // addresses may be given).
    let (node, client) = agent_of(agents, given)?;
    let sip = super::traced(given, &client.pod(given)?, src, v6, &node)?;
    let (node, report) = translation(agents, sip, svc, flow.port.unwrap_or(0), flow.proto, v6)?;
    of_family(&report, v6, &node, svc)?;
    let (hop, backend) = translation_hop(&report, &node, svc, flow, v6);
    let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
    // Only the translation hop, when there is nothing to follow.
    let alone = |hops: Vec<Hop>, verdict: &str| Trace {
        src: format!("{src} ({sip} on {node})"),
        dst: svc.to_string(),
        family,
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
                "{} is not a pod address: it leaves the pod network (masqueraded to the node's address if it is outside the cluster); traced no further",
                SocketAddr::new(b.ip, b.port)
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
    let mut t = trace(agents, src, &b.ip.to_string(), &to_backend, Some(family))?;
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

/// A report of the family asked for: an agent older than `ipv6` in its API answers
/// with its IPv4 rules whatever is asked.
fn of_family(report: &ServiceReport, v6: bool, node: &str, svc: &str) -> Result<()> {
    if let Some(p) = report.ports.iter().find(|p| p.ip.is_ipv6() != v6) {
        anyhow::bail!(
            "the agent on {node} answered with {} for the {} side of {svc}: it predates this podnet; upgrade podnetd on {node}, or trace over {}",
            SocketAddr::new(p.ip, p.port),
            if v6 { "IPv6" } else { "IPv4" },
            if v6 { "IPv4" } else { "IPv6" },
        );
    }
    Ok(())
}

/// The translation hop from `node`'s report (of its IPv6 rules when `v6`), and the
/// backend the trace follows (none when the hop is broken or the rules cannot be read).
fn translation_hop(
    report: &ServiceReport,
    node: &str,
    svc: &str,
    flow: &Flow,
    v6: bool,
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
                    "kube-proxy ({} mode) on {node} has no {}Service {svc}{}",
                    report.proxy,
                    if v6 { "IPv6 side of " } else { "" },
                    flow.port.map(|p| format!(" port {p}")).unwrap_or_default()
                ),
                "(none)".into(),
                if v6 {
                    "check the Service, its port and its families (a single-stack IPv4 Service has no IPv6 ClusterIP): kubectl get service -A -o custom-columns=NAME:.metadata.name,IPS:.spec.clusterIPs,FAMILIES:.spec.ipFamilies"
                } else {
                    "check the Service and its port: kubectl get service -A -o wide"
                },
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
        .map(|b| SocketAddr::new(b.ip, b.port).to_string())
        .collect();
    (
        hop(
            "ok",
            format!(
                "kube-proxy ({} mode) translates {} to one of {}; traced to {}. NetworkPolicy judges the packet after this translation: on the backend's address and port",
                report.proxy,
                describe(p),
                all.join(", "),
                SocketAddr::new(b.ip, b.port)
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
        let (h, b) = translation_hop(&report(two), "node1", "web", &flow, false);
        assert_eq!(h.status, "ok");
        assert!(
            h.detail
                .contains("to one of 10.244.1.3:8080, 10.244.2.3:8080"),
            "{h:?}"
        );
        assert_eq!(b.unwrap().ip, "10.244.1.3".parse::<IpAddr>().unwrap());
        // IPv6 backends in brackets.
        let six = vec![ServiceBackend {
            ip: "fd00:10:244:1::3".parse().unwrap(),
            port: 8080,
        }];
        let (h, _) = translation_hop(&report(six), "node1", "web", &flow, false);
        assert!(
            h.detail
                .contains("to one of [fd00:10:244:1::3]:8080; traced to [fd00:10:244:1::3]:8080"),
            "{h:?}"
        );
        let (h, b) = translation_hop(&report(vec![]), "node1", "web", &flow, false);
        assert!(
            h.status == "broken" && h.detail.contains("no ready endpoint") && b.is_none(),
            "{h:?}"
        );
        let mut none = report(vec![]);
        none.ports.clear();
        let (h, _) = translation_hop(&none, "node1", "web", &flow, false);
        assert!(h.detail.contains("has no Service web port 80"), "{h:?}");
        let (h, _) = translation_hop(&none, "node1", "web", &flow, true);
        assert!(
            h.detail.contains("has no IPv6 side of Service web port 80")
                && h.fix.contains("ipFamilies"),
            "{h:?}"
        );
        none.proxy = "unreadable".into();
        let (h, b) = translation_hop(&none, "node1", "web", &flow, false);
        assert!(h.status == "warn" && b.is_none(), "{h:?}");
    }

    #[test]
    fn an_answer_of_the_other_family_is_refused() {
        let r = report(vec![]);
        assert!(of_family(&r, false, "node1", "web").is_ok());
        let e = of_family(&r, true, "node1", "web").unwrap_err().to_string();
        assert!(
            e.contains("answered with 10.96.0.20:80 for the IPv6 side of web")
                && e.contains("upgrade podnetd on node1"),
            "{e}"
        );
    }

    #[test]
    fn a_service_is_split_from_its_port() {
        assert_eq!(split_port("web:80"), ("web", Some(80)));
        assert_eq!(split_port("ns/web"), ("ns/web", None));
        assert_eq!(split_port("10.96.0.10:53"), ("10.96.0.10", Some(53)));
        // An IPv6 ClusterIP ends in hex digits, not in a port.
        assert_eq!(split_port("fd00:10:96::10"), ("fd00:10:96::10", None));
        assert_eq!(
            split_port("[fd00:10:96::10]:53"),
            ("fd00:10:96::10", Some(53))
        );
    }
}
