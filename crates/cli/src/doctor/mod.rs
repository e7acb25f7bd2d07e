//! `podnet doctor`: node-wide checks, each node through its own agent. For every peer:
//! route, neighbour and FDB entry (VXLAN) or WireGuard peer (both ways: the key this
//! node holds for the peer is the one the peer's device holds, and back) present and
//! matching what the datastore says, the overlay port open and the path MTU big enough
//! (probed); nothing stale for departed peers; forwarding on; bridge and overlay device
//! up, the WireGuard device holding the key the node publishes; the NetworkPolicy datapath
//! programmed without error (and what it refused); conntrack table below 80%;
//! reverse-path filtering that would drop overlay traffic. Neighbour entries are held
//! against the MAC their owner really has, as trace holds them: each peer's VTEP entries
//! against what the peer's own agent reports, each local pod's entry on the node
//! against the pod's interface, and each pod's entry for its gateway against the
//! bridge ([`crate::trace::poisoned`]).

use crate::trace::{
    age, device_mismatch, echo_text, node_neigh_for_pod, pod_end, pod_gateway_neigh,
    pod_gateway_of, route_fix, route_text, route_to_peer_mismatch, vtep_fdb_check,
    vtep_neigh_check, wireguard_peer_mismatch, Agents, Macs, Overlay, Vtep, VtepWant,
};
use anyhow::{bail, Result};
use podnet_api::Status;
use podnet_api::{Client, NeighState, NodeState, RouteState};
use podnet_conventions::{Datapath, PolicyDatapath};
use serde::Serialize;
use std::time::Instant;

mod edges;
use edges::{masquerade, underlay_guard};

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub node: String,
    pub check: String,
    /// `ok`, `warn` or `broken`.
    pub status: String,
    pub detail: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub nodes: Vec<String>,
    pub findings: Vec<Finding>,
    pub broken: usize,
    pub warnings: usize,
    pub elapsed_ms: u64,
}

struct Out<'a> {
    node: &'a str,
    f: &'a mut Vec<Finding>,
}

impl Out<'_> {
    fn put(&mut self, check: &str, status: &str, detail: String, fix: &str) {
        self.f.push(Finding {
            node: self.node.into(),
            check: check.into(),
            status: status.into(),
            detail,
            fix: if status == "ok" {
                String::new()
            } else {
                fix.into()
            },
        });
    }
    fn check(&mut self, check: &str, ok: bool, detail: String, fix: &str) {
        self.put(check, if ok { "ok" } else { "broken" }, detail, fix);
    }
}

/// Checks every node, or only `only`.
pub fn doctor(agents: &dyn Agents, only: Option<&str>) -> Result<Report> {
    let t0 = Instant::now();
    let mut findings = Vec::new();
    let all = agents.nodes();
    if let Some(o) = only.filter(|o| !all.iter().any(|(n, _)| n == o)) {
        bail!(
            "no node {o} to check; nodes: {}",
            all.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Every node's own view first: a WireGuard peer's key is checked against the key
    // that peer's device really holds.
    let statuses: std::collections::BTreeMap<String, Status> = all
        .iter()
        .filter_map(|(n, sock)| Some((n.clone(), Client::new(sock).status().ok()?)))
        .collect();
    let mut nodes = Vec::new();
    for (node, sock) in all {
        if only.is_some_and(|o| o != node) {
            continue;
        }
        nodes.push(node.clone());
        let mut out = Out {
            node: &node,
            f: &mut findings,
        };
        let agent = Client::new(&sock);
        let (st, state) = match (agent.status(), agent.state()) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                out.put(
                    "agent",
                    "broken",
                    format!("{e:#}"),
                    "start podnetd on this node (podnet lab up restarts it in a lab)",
                );
                continue;
            }
        };
        let n = NodeView {
            node: &node,
            agent: &agent,
            agents,
            st: &st,
            state: &state,
            others: &statuses,
        };
        devices(&mut out, &n);
        peers(&mut out, &n);
        pods(&mut out, &n);
        stale(&mut out, &n);
        policy(&mut out, &n);
        underlay_guard(&mut out, &n);
        masquerade(&mut out, &n);
        kernel(&mut out, &n);
    }
    let broken = findings.iter().filter(|f| f.status == "broken").count();
    let warnings = findings.iter().filter(|f| f.status == "warn").count();
    Ok(Report {
        nodes,
        findings,
        broken,
        warnings,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    })
}

/// One node as doctor sees it: its agent, the agent's status and the kernel state.
struct NodeView<'a> {
    node: &'a str,
    agent: &'a Client,
    /// Pod names, where the cluster knows them.
    agents: &'a dyn Agents,
    st: &'a Status,
    state: &'a NodeState,
    /// Every node's agent status, by node.
    others: &'a std::collections::BTreeMap<String, Status>,
}

impl NodeView<'_> {
    /// podnet's routes on the node (protocol 0x50).
    fn routes(&self) -> Vec<&RouteState> {
        self.state
            .routes
            .iter()
            .filter(|r| r.protocol == podnet_conventions::RTPROT_PODNET)
            .collect()
    }

    /// Who has which MAC on this node.
    fn macs(&self) -> Macs<'_> {
        Macs {
            node: self.node,
            state: self.state,
            st: self.st,
            agent: self.agent,
            agents: self.agents,
        }
    }

    /// Every node's VTEP as its own agent reports it.
    fn vteps(&self) -> Vec<Vtep> {
        self.others
            .iter()
            .map(|(n, o)| Vtep {
                node: n.clone(),
                mac: o.vtep_mac.clone(),
                underlay: o.tunnel().to_string(),
            })
            .collect()
    }

    /// podnet's permanent neighbours on the VXLAN device.
    fn neighs(&self) -> Vec<&NeighState> {
        self.state
            .neigh
            .iter()
            .filter(|n| n.dev == self.st.vxlan_dev && n.state == "PERMANENT")
            .collect()
    }
}

fn text(a: Option<impl std::fmt::Display>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// The datastore, the bridge, the VXLAN device, forwarding.
fn devices(out: &mut Out, n: &NodeView) {
    let st = n.st;
    let state = n.state;
    let bridge = &n.st.bridge;
    let vx = &n.st.vxlan_dev;
    let link = |n: &str| state.links.iter().find(|x| x.name == n);
    // The datastore: a refused or lost watch (Kubernetes), a damaged record. The
    // datapath keeps its last state meanwhile; changes wait for the datastore.
    let problems = &st.datastore_problems;
    out.check(
        "datastore",
        problems.is_empty(),
        if problems.is_empty() {
            format!("{} answers", st.datastore)
        } else {
            format!("{}: {}", st.datastore, problems.join("; "))
        },
        "the datapath keeps its last state; restore the datastore (API server, etcd) or its access rights (deploy/rbac.yaml), or delete the damaged record",
    );
    // Each device up, with the values its agent gives it (MTU, MAC, VXLAN port and
    // source address).
    let wg = st
        .wireguard
        .as_ref()
        .map(|w| w.device.clone())
        .unwrap_or_default();
    for (check, label, dev) in [
        ("bridge", "bridge", bridge),
        ("vxlan", "VXLAN device", vx),
        ("wireguard", "WireGuard device", &wg),
    ] {
        if dev.is_empty() {
            continue;
        }
        let l = link(dev);
        let wrong = l.and_then(|l| device_mismatch(l, st));
        let node = n.node;
        let detail = match (l, &wrong) {
            (None, _) => format!("{label} {dev} on {node} is missing"),
            (Some(l), _) if !l.up => format!("{label} {dev} on {node} is down"),
            (Some(_), Some(w)) => format!("{label} {dev} on {node} is up, but {w}"),
            (Some(_), None) => format!("{label} {dev} on {node} is up"),
        };
        out.check(
            check,
            l.is_some_and(|l| l.up) && wrong.is_none(),
            detail,
            &if wrong.is_some() {
                format!("restart podnetd: it recreates {dev} as configured")
            } else {
                format!("ip link set {dev} up")
            },
        );
    }
    // The node's own link to the physical network: its values are not podnet's.
    let ul = &st.underlay_dev;
    if !ul.is_empty() {
        let l = link(ul);
        let is = match l {
            None => "missing",
            Some(l) if !l.up => "down",
            Some(_) => "up",
        };
        out.check(
            "underlay",
            is == "up",
            format!("underlay device {ul} on {} is {is}", n.node),
            &format!("ip link set {ul} up (the node's own link, not podnet's)"),
        );
    }
    if let Some(w) = &st.wireguard {
        wireguard_key(out, w);
    }
    let fwd = state.forwarding;
    out.check(
        "forwarding",
        fwd,
        format!("IPv4 forwarding is {}", if fwd { "on" } else { "off" }),
        "sysctl -w net.ipv4.ip_forward=1",
    );
}

/// The WireGuard device process answers, and holds the key the node publishes.
fn wireguard_key(out: &mut Out, w: &podnet_api::WireGuardStatus) {
    let bad = match &w.error {
        Some(e) => Some(format!("its device process does not answer: {e}")),
        None if w.device_public_key != w.public_key => Some(format!(
            "it holds key {}, but the node publishes {}",
            w.device_public_key, w.public_key
        )),
        None => None,
    };
    out.check(
        "wireguard key",
        bad.is_none(),
        match &bad {
            None => format!(
                "{} (pid {}, {}) holds the published key {}",
                w.device, w.pid, w.implementation, w.public_key
            ),
            Some(b) => format!("{}: {b}", w.device),
        },
        "restart podnetd: it starts the device process and gives it the node's key",
    );
}

/// For every peer: route, neighbour and FDB entry as the datastore says; the underlay,
/// the VXLAN port and the path MTU, probed.
fn peers(out: &mut Out, n: &NodeView) {
    let (routes, vteps) = (n.routes(), n.vteps());
    for p in &n.st.peers {
        peer_entries(out, n, p, &routes, &vteps);
        peer_probes(out, n, p);
    }
}

/// One peer's route, and its VXLAN neighbour and FDB entries or WireGuard peer.
fn peer_entries(
    out: &mut Out,
    n: &NodeView,
    p: &podnet_api::PeerStatus,
    routes: &[&RouteState],
    vteps: &[Vtep],
) {
    let st = n.st;
    let vx = &n.st.vxlan_dev;
    let (name, cidr) = (&p.name, &p.pod_cidr);
    let vtep = cidr.split('/').next().unwrap_or("");
    // The same test trace applies to the route the lookup picks.
    let r = routes.iter().copied().find(|r| &r.dst == cidr);
    let bad = route_to_peer_mismatch(r, st, Some(p), false);
    out.check(
        &format!("route to {name}"),
        bad.is_none(),
        match &bad {
            None => format!("{cidr} via {}", text(r.and_then(|r| r.gateway))),
            Some(why) => format!("{name}'s pod CIDR {cidr}: {why}"),
        },
        &route_fix(st, Some(p), false),
    );
    if !p.pod_cidr6.is_empty() {
        peer_entries6(out, n, p);
    }
    if !vx.is_empty() {
        // Held against the peer's own VTEP MAC and underlay address, as its agent
        // reports them (the datastore's record only when it does not answer).
        let want = VtepWant::new(p, n.others.get(name).map(|o| (o, None)));
        let (vm, vu) = (&want.mac, &want.underlay);
        let (_, r) = vtep_neigh_check(n.state, vx, vtep.parse().ok(), &want, vteps);
        out.check(
            &format!("neighbour for {name}"),
            r.is_ok(),
            r.unwrap_or_else(|e| e),
            &format!("ip neigh replace {vtep} lladdr {vm} dev {vx} nud permanent"),
        );
        let (_, r) = vtep_fdb_check(n.state, vx, &want, vteps);
        out.check(
            &format!("fdb for {name}"),
            r.is_ok(),
            r.unwrap_or_else(|e| e),
            &format!("bridge fdb replace {vm} dev {vx} dst {vu} self permanent"),
        );
    }
    if let Some(w) = &st.wireguard {
        // The other direction: what the peer's device holds for this node.
        let theirs = n
            .others
            .get(name)
            .and_then(|o| o.wireguard.as_ref())
            .and_then(|o| {
                o.peers
                    .iter()
                    .find(|c| c.allowed_ips.contains(&st.pod_cidr))
            });
        let r = wireguard_peer_mismatch(st, p, n.others.get(name)).and_then(|c| match theirs {
            Some(t) if t.public_key != w.device_public_key => Err(format!(
                "{name} holds key {} for this node, but this node's device has {}: handshakes fail (is this node's record in the datastore stale?)",
                t.public_key, w.device_public_key
            )),
            _ => Ok(c),
        });
        out.check(
            &format!("wireguard peer {name}"),
            r.is_ok(),
            match &r {
                Ok(c) => format!(
                    "key {} at {}, latest handshake {}",
                    c.public_key,
                    c.endpoint,
                    age(c.last_handshake)
                ),
                Err(e) => e.clone(),
            },
            &format!("if {name}'s record is stale, restart podnetd on {name} to publish its key; else restart podnetd here (it configures peers from the datastore)"),
        );
    }
}

/// A dual-stack peer's IPv6 route (and, over VXLAN, its permanent neighbour), as
/// podnetd plans them and trace checks them: over VXLAN via the range's first address
/// on the device with that address at the peer's VTEP MAC; over WireGuard straight to
/// the device; with host-gw via the peer's underlay IPv6 address on the underlay.
fn peer_entries6(out: &mut Out, n: &NodeView, p: &podnet_api::PeerStatus) {
    let (name, cidr6) = (&p.name, &p.pod_cidr6);
    let Ok(net) = cidr6.parse::<podnet_conventions::Ipv6Net>() else {
        return;
    };
    // Only VXLAN keeps a neighbour of its own: WireGuard has no next hop, host-gw's is
    // the peer's underlay address, resolved as any neighbour on the link.
    let (dev, via) = match (&n.st.wireguard, n.st.vxlan_dev.is_empty()) {
        (Some(w), _) => (w.device.clone(), None),
        (None, false) => (n.st.vxlan_dev.clone(), Some(net.network())),
        (None, true) => (n.st.underlay_dev.clone(), None),
    };
    let r = n.state.routes6.iter().find(|r| &r.dst == cidr6);
    let bad = route_to_peer_mismatch(r, n.st, Some(p), true);
    out.check(
        &format!("route6 to {name}"),
        bad.is_none(),
        match (&bad, r) {
            (None, Some(r)) => route_text(r),
            (Some(why), None) => format!(
                "{name}'s IPv6 pod CIDR {cidr6} has no podnet route ({why}): its pods' IPv6 does not get there"
            ),
            (why, _) => format!(
                "{name}'s IPv6 pod CIDR {cidr6}: {}",
                why.as_deref().unwrap_or_default()
            ),
        },
        &route_fix(n.st, Some(p), true),
    );
    let Some(via) = via else { return };
    let want = VtepWant::new(p, n.others.get(name).map(|o| (o, None)));
    let e = n.state.neigh6.iter().find(|e| e.ip == via && e.dev == dev);
    let ok = e.is_some_and(|e| e.state == "PERMANENT" && e.mac.as_deref() == Some(&*want.mac));
    out.check(
        &format!("neighbour6 for {name}"),
        ok,
        match e {
            None => {
                format!("no neighbour entry for {via} on {dev}: IPv6 to {name}'s pods cannot leave")
            }
            Some(_) if ok => format!("{via} lladdr {} PERMANENT", want.mac),
            Some(e) => format!(
                "{via} holds {} ({}), not {name}'s VTEP MAC {} permanently",
                e.mac.as_deref().unwrap_or("no MAC"),
                e.state,
                want.mac
            ),
        },
        &format!(
            "ip -6 neigh replace {via} lladdr {} dev {dev} nud permanent",
            want.mac
        ),
    );
}

/// One peer probed from this node: the underlay, the overlay port, the path MTU.
fn peer_probes(out: &mut Out, n: &NodeView, p: &podnet_api::PeerStatus) {
    let (st, agent, vx) = (n.st, n.agent, &n.st.vxlan_dev);
    // The tunnel's far end: the peer's underlay IPv6 address over an IPv6 underlay.
    let (name, under) = (&p.name, p.tunnel());
    let vtep = p.pod_cidr.split('/').next().unwrap_or("");
    let (mtu, overhead) = (st.mtu, st.overlay_overhead);
    let ping = |ip: &str, size: u32| -> String {
        let size = u16::try_from(size).unwrap_or(u16::MAX);
        match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => match agent.ping(ip, size) {
                Ok(r) => echo_text(&r.result),
                Err(e) => format!("error: {e}"),
            },
            Err(e) => format!("error: {ip}: {e}"),
        }
    };
    let small = ping(under, 56);
    out.check(
        &format!("underlay to {name}"),
        small == "reply",
        format!("ping {under}: {small}"),
        "check the physical network between the nodes",
    );
    if small == "reply" {
        let overlay = match (&st.wireguard, vx.is_empty()) {
            (Some(_), _) => Some(Overlay::WireGuard),
            (None, false) => Some(Overlay::Vxlan),
            (None, true) => None,
        };
        if let Some(o) = overlay {
            let (label, port) = o.describe(st, p);
            let v = ping(vtep, 56);
            out.check(
                &format!("{} port to {name}", label.to_lowercase()),
                v == "reply",
                format!("{label} (UDP {port}) through the overlay to {vtep} and back: {v}"),
                &format!("allow UDP {port} between the nodes, both directions"),
            );
        }
        // The echo's own headers: 28 bytes over IPv4, 48 over IPv6.
        let size = mtu + overhead - if under.contains(':') { 48 } else { 28 };
        let big = ping(under, size);
        out.check(
            &format!("mtu to {name}"),
            big == "reply",
            format!("{} bytes with DF set to {under}: {big}", mtu + overhead),
            "raise the physical MTU, or lower the pod MTU",
        );
    }
}

/// Every pod on the node: host veth up on the bridge, pod link, address and default
/// route in place. Host veths carry MAC 0a:5a:<pod IP>.
fn pods(out: &mut Out, n: &NodeView) {
    let st = n.st;
    let state = n.state;
    let agent = n.agent;
    let bridge = &n.st.bridge;
    let macs = n.macs();
    // Every pod on the node: host veth up on the bridge, pod link, address and
    // default route in place. Host veths carry MAC 0a:5a:<pod IP>.
    for l in &state.links {
        let mac = l.mac.as_str();
        let Some(ip) = mac.strip_prefix("0a:5a:").and_then(|rest| {
            let b: Vec<u8> = rest
                .split(':')
                .filter_map(|x| u8::from_str_radix(x, 16).ok())
                .collect();
            (b.len() == 4).then(|| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }) else {
            continue;
        };
        let name = l.name.clone();
        let pod_name = macs.pod_label(ip);
        let on = l.up && l.master.as_deref() == Some(bridge.as_str());
        out.check(
            &format!("pod {ip} veth"),
            on,
            format!(
                "host veth {name} of {pod_name} on {} is {}",
                n.node,
                if !l.up {
                    "down".to_string()
                } else if on {
                    format!("up on {bridge}")
                } else {
                    format!("not on bridge {bridge}")
                }
            ),
            &format!("ip link set {name} up master {bridge}"),
        );
        let p = match agent.pod(ip) {
            Ok(p) => p,
            Err(e) => {
                out.put(
                    &format!("pod {ip}"),
                    "warn",
                    format!("cannot look inside: {e:#}"),
                    "",
                );
                continue;
            }
        };
        for h in pod_end(&p, ip.into(), st) {
            out.put(&format!("pod {ip} {}", h.what), &h.status, h.detail, &h.fix);
        }
        // The node's entry for the pod must hold the pod's own MAC, and the pod's
        // entry for its gateway the bridge's: a poisoned one is the ARP attack landed.
        // Each family the pod has: a dual-stack pod's IPv6 checks carry a `6`.
        let families = std::iter::once((std::net::IpAddr::V4(ip), ""))
            .chain(p.ip6.map(|a| (std::net::IpAddr::V6(a), "6")));
        for (addr, six) in families {
            if addr.is_ipv6() {
                // The pod holds its IPv6 address (its link was checked above).
                for h in pod_end(&p, addr, st)
                    .into_iter()
                    .filter(|h| h.what == "addr")
                {
                    out.put(&format!("pod {ip} addr6"), &h.status, h.detail, &h.fix);
                }
            }
            let h = node_neigh_for_pod("node", &macs, addr, &p, &pod_name, true);
            out.put(
                &format!("pod {ip} neighbour{six}"),
                &h.status,
                h.detail,
                &h.fix,
            );
            if let Some(h) = pod_gateway_neigh(&p, &pod_name, &macs, addr.is_ipv6()) {
                out.put(
                    &format!("pod {ip} gateway neighbour{six}"),
                    &h.status,
                    h.detail,
                    &h.fix,
                );
            }
            pod_default_route(out, st, &p, ip, addr.is_ipv6());
        }
    }
}

/// The pod's default route of one family (`v6`: `pod <ip> route6`): via the gateway
/// its node gives pods (the bridge's address of that family).
fn pod_default_route(
    out: &mut Out,
    st: &Status,
    p: &podnet_api::PodReport,
    ip: std::net::Ipv4Addr,
    v6: bool,
) {
    let Some(pod) = p.pod.as_ref().filter(|i| p.found && i.error.is_none()) else {
        return;
    };
    let routes = if v6 { &pod.routes6 } else { &pod.routes };
    let default = routes.iter().find(|r| r.dst == "default");
    let want = pod_gateway_of(st, v6);
    let via = default.and_then(|r| r.gateway);
    let want_s = text(want);
    let (six, cmd) = if v6 { ("6", "ip -6") } else { ("", "ip") };
    out.check(
        &format!("pod {ip} route{six}"),
        via.is_some() && via == want,
        match (default, via) {
            (None, _) => format!(
                "the pod has no {}default route",
                if v6 { "IPv6 " } else { "" }
            ),
            (Some(_), Some(g)) if Some(g) != want => {
                format!("default via {g}, but the pod's gateway is {want_s} (the bridge)")
            }
            (Some(_), _) => format!("default via {want_s}"),
        },
        &format!("{cmd} route replace default via {want_s} inside the pod, or DEL and ADD it"),
    );
}

/// Nothing stale for departed peers.
fn stale(out: &mut Out, n: &NodeView) {
    let vx = &n.st.vxlan_dev;
    let peers = &n.st.peers;
    let routes = n.routes();
    let neighs = n.neighs();
    let fdb = &n.state.fdb;
    // Nothing stale for departed peers.
    let cidrs: Vec<&str> = peers.iter().map(|p| p.pod_cidr.as_str()).collect();
    for r in routes.iter().filter(|r| !cidrs.contains(&r.dst.as_str())) {
        out.put(
            "stale route",
            "broken",
            format!("{} via {} is for no current peer", r.dst, text(r.gateway)),
            &format!(
                "ip route del {} (podnetd removes it when repair is on)",
                r.dst
            ),
        );
    }
    let cidrs6: Vec<&str> = peers.iter().map(|p| p.pod_cidr6.as_str()).collect();
    for r in n
        .state
        .routes6
        .iter()
        // podnet's own (the node's bridge routes are listed too).
        .filter(|r| r.protocol == podnet_conventions::RTPROT_PODNET)
        .filter(|r| !cidrs6.contains(&r.dst.as_str()))
    {
        out.put(
            "stale route",
            "broken",
            format!("{} (IPv6) is for no current peer", r.dst),
            &format!(
                "ip -6 route del {} (podnetd removes it when repair is on)",
                r.dst
            ),
        );
    }
    let macs: Vec<&str> = peers.iter().map(|p| p.vtep_mac.as_str()).collect();
    for f in fdb.iter().filter(|f| !macs.contains(&f.mac.as_str())) {
        out.put(
            "stale fdb",
            "broken",
            format!("{} dst {} is for no current peer", f.mac, text(f.dst)),
            &format!("bridge fdb del {} dev {vx} self", f.mac),
        );
    }
    let vteps: Vec<&str> = cidrs
        .iter()
        .map(|c| c.split('/').next().unwrap_or(""))
        .collect();
    for n in neighs
        .iter()
        .filter(|n| !vteps.contains(&n.ip.to_string().as_str()))
    {
        out.put(
            "stale neighbour",
            "broken",
            format!(
                "{} lladdr {} is for no current peer",
                n.ip,
                n.mac.as_deref().unwrap_or("(none)")
            ),
            &format!("ip neigh del {} dev {vx}", n.ip),
        );
    }
}

/// The underlay guard (crates/agent/src/guard.rs): attached, holding every peer, and
/// what it refused.
/// NetworkPolicy: programmed without error, every local pod accounted for, and what
/// was refused.
fn policy(out: &mut Out, n: &NodeView) {
    let agent = n.agent;
    // NetworkPolicy: programmed without error, every local pod accounted for, and
    // what was refused.
    match agent.policy_stats() {
        Ok(stats) => {
            let p = &stats.status;
            let dp = p.datapath;
            if dp == PolicyDatapath::None {
                out.put("policy", "warn", "no NetworkPolicy datapath: every pod is open".into(), "start podnetd with --policy-datapath nftables or ebpf to enforce NetworkPolicy");
            } else if let Some(e) = &p.error {
                out.check("policy", false, format!("{dp}: the last change failed: {e}"), "see podnetd's log on this node; the datapath keeps its last verdicts until a change succeeds");
            } else {
                let pods = p.pods.len();
                let isolated = p
                    .pods
                    .iter()
                    .filter(|x| x.ingress.state == "isolated" || x.egress.state == "isolated")
                    .count();
                let denied: u64 = stats.denied.iter().map(|d| d.packets).sum();
                out.put("policy", "ok", format!("{dp}: revision {}, {pods} pods programmed ({isolated} isolated), {denied} packets refused (podnet policy stats)", p.revision), "");
            }
            if stats.enforcement.is_empty() {
                if dp != PolicyDatapath::None {
                    out.put("policy enforcement", "ok", format!("{dp}: every object that isolates and protects this node's pods is in the kernel"), "");
                }
            } else {
                out.check("policy enforcement", false, format!("OPEN: {}", stats.enforcement.join("; ")), "podnetd puts these back within 2 s (`repairing drift` in its log, podnet_repairs_total): if this persists, the agent is down or failing — see its log");
            }
            if !p.refused.is_empty() {
                out.put(
                    "policy refused pods",
                    "warn",
                    format!(
                        "{} pods left closed: {}",
                        p.refused.len(),
                        p.refused
                            .iter()
                            .map(|r| format!("{} ({}): {}", r.pod, r.ip, r.why))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    "split or simplify the policies named; every other pod is programmed",
                );
            }
            let r = &p.rejected;
            if !r.is_empty() {
                out.put(
                    "policy objects",
                    "warn",
                    format!("{} invalid objects left out: {}", r.len(), r.join("; ")),
                    "fix them in the datastore (or the API); the others are enforced",
                );
            }
            // The fast path: every pod of the node served directly, and the overlay
            // program in place (VXLAN).
            if n.st.datapath == Datapath::Ebpf {
                let local: Vec<&String> = p.pods.iter().map(|x| &x.ip).collect();
                match &p.fast_path {
                    None => out.check(
                        "fast path",
                        false,
                        "the node runs --datapath ebpf but its fast path is not in place".into(),
                        "restart podnetd with --policy-datapath ebpf --datapath ebpf; see its log",
                    ),
                    Some(f) => {
                        // A dual-stack pod is served by both of its addresses.
                        let missing: Vec<&String> = local
                            .iter()
                            .copied()
                            .filter(|ip| !f.pods.contains(ip))
                            .chain(
                                p.pods
                                    .iter()
                                    .filter_map(|x| x.ip6.as_ref())
                                    .filter(|ip| !f.pods6.contains(ip)),
                            )
                            .collect();
                        let no_overlay = !n.st.vxlan_dev.is_empty() && f.overlay_dev.is_empty();
                        out.put(
                            "fast path",
                            if missing.is_empty() && !no_overlay { "ok" } else { "warn" },
                            if no_overlay {
                                format!("from_overlay is not on {}: other nodes' packets take the bridge", n.st.vxlan_dev)
                            } else if missing.is_empty() {
                                format!("{} pods served directly (bpf_redirect_peer){}; {}", f.pods.len(), if f.pods6.is_empty() { String::new() } else { format!(", {} by their IPv6 address too", f.pods6.len()) }, if f.overlay_dev.is_empty() { "no overlay program (host-gw)".to_string() } else if f.underlay_dev.is_empty() { format!("from_overlay on {}; the VXLAN device encapsulates (it has no local address or underlay link)", f.overlay_dev) } else { format!("from_overlay on {}, VXLAN written and removed by the programs (from_underlay on {}, {} peer VTEPs)", f.overlay_dev, f.underlay_dev, f.overlay_peers) })
                            } else {
                                format!("{} pods take the bridge (not in local_pods): {}", missing.len(), missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
                            },
                            "podnetd adds pods within a second of their anti-spoofing entry; a pod made without anti-spoofing always takes the bridge",
                        );
                    }
                }
            }
            if let Some(n) = Some(stats.closed_packets).filter(|n| *n > 0) {
                out.put("policy closed", "ok", format!("{n} packets to or from addresses no programmed pod holds (pods not yet programmed, or gone)"), "");
            }
        }
        Err(e) => out.put(
            "policy",
            "warn",
            format!("the agent does not report its policy datapath: {e:#}"),
            "upgrade podnetd on this node",
        ),
    }
}

/// Conntrack and reverse-path filtering.
fn kernel(out: &mut Out, n: &NodeView) {
    let state = n.state;
    let bridge = &n.st.bridge;
    let vx = &n.st.vxlan_dev;
    // Conntrack and reverse-path filtering.
    if let (Some(c), Some(m)) = (state.conntrack.count, state.conntrack.max) {
        let pct = (c * 100).checked_div(m).unwrap_or(0);
        out.put("conntrack", if pct > 80 { "warn" } else { "ok" }, format!("{c} of {m} entries ({pct}%)"), "raise net.netfilter.nf_conntrack_max before the table fills and new connections are dropped");
    }
    let rp = &state.rp_filter;
    let all = rp.get("all").copied().unwrap_or(0);
    for dev in [bridge.as_str(), vx.as_str()]
        .into_iter()
        .filter(|d| !d.is_empty())
    {
        let eff = all.max(rp.get(dev).copied().unwrap_or(0));
        out.put(&format!("rp_filter {dev}"), if eff == 1 { "warn" } else { "ok" }, format!("effective rp_filter {eff} on {dev}"), &format!("strict reverse-path filtering can drop overlay traffic: sysctl -w net.ipv4.conf.{dev}.rp_filter=2 (and .all)"));
    }
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    for n in &r.nodes {
        out.push_str(&format!("{n}\n"));
        for f in r.findings.iter().filter(|f| &f.node == n) {
            let mark = match f.status.as_str() {
                "ok" => "✓",
                "warn" => "!",
                _ => "✗",
            };
            out.push_str(&format!("  {mark} {:<22} {}\n", f.check, f.detail));
            if f.status != "ok" {
                out.push_str(&format!("      fix: {}\n", f.fix));
            }
        }
    }
    out.push_str(&format!(
        "\n{} broken, {} warnings ({} ms)\n",
        r.broken, r.warnings, r.elapsed_ms
    ));
    out
}

#[cfg(test)]
mod tests;
