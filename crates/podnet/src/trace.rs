//! `podnet trace SRC DST`: the path a packet takes from one pod to another, hop by hop,
//! each hop read from the real kernel state of the node it is on, plus active probes
//! where reading is not enough (the VXLAN port, the path MTU).
//!
//! Each node's agent reports its own state and runs its own probes (its local API,
//! `crate::agent::api`); this module only asks and combines. A hop is `ok`, `broken`,
//! `warn` or `skipped`; the first broken hop in path order is the verdict.

use anyhow::{Context, Result};
use podnet_agent::proto::Request;
use podnet_cni_spec::Ipv4Net;
use serde::Serialize;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

/// Where the agents of a cluster answer.
pub trait Agents {
    /// Every node with an agent that answers, and its socket.
    fn nodes(&self) -> Vec<(String, PathBuf)>;
    /// A pod name to its address, if this cluster knows pod names.
    fn pod_ip(&self, name: &str) -> Option<Ipv4Addr>;
}

#[derive(Clone, Debug, Serialize)]
pub struct Hop {
    #[serde(rename = "where")]
    pub where_: String,
    pub what: String,
    pub status: String,
    pub detail: String,
    /// The entry found, as `ip`/`bridge` would print it, or `(none)`.
    pub kernel: String,
    /// The command that shows it, and on which node or pod.
    pub cmd: String,
    /// How to fix it, when broken.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub src: String,
    pub dst: String,
    /// The traffic traced: `tcp`, `tcp port 8080`, `icmp`…
    pub flow: String,
    pub verdict: String,
    pub broken_hop: Option<Hop>,
    pub hops: Vec<Hop>,
    pub elapsed_ms: u64,
}

struct Builder {
    hops: Vec<Hop>,
}

impl Builder {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        where_: &str,
        what: &str,
        status: &str,
        detail: String,
        kernel: String,
        cmd: String,
        fix: &str,
    ) {
        self.hops.push(Hop {
            where_: where_.into(),
            what: what.into(),
            status: status.into(),
            detail,
            kernel,
            cmd,
            fix: fix.into(),
        });
    }
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        where_: &str,
        what: &str,
        ok: bool,
        detail: String,
        kernel: String,
        cmd: String,
        fix: &str,
    ) {
        let fix = if ok { "" } else { fix };
        self.add(
            where_,
            what,
            if ok { "ok" } else { "broken" },
            detail,
            kernel,
            cmd,
            fix,
        );
    }
}

fn arr(v: &Value, k: &str) -> Vec<Value> {
    v[k].as_array().cloned().unwrap_or_default()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// The most specific route in `routes` (agent `state` form) that covers `ip`.
fn lookup(routes: &[Value], ip: Ipv4Addr) -> Option<Value> {
    routes
        .iter()
        .filter_map(|r| {
            let dst = s(r, "dst");
            let net: Ipv4Net = if dst == "default" {
                "0.0.0.0/0".parse().ok()?
            } else {
                dst.parse().ok()?
            };
            net.contains(ip).then(|| (net.prefix(), r.clone()))
        })
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| r)
}

/// Why `r` (the route the lookup chose) is not the route podnet makes on a node
/// with agent status `st` to `peer`: prefix, protocol, next hop and device
/// (VXLAN: via the peer CIDR's first address on the VXLAN device, onlink;
/// host-gw: via the peer's underlay address on the underlay device).
/// `None` when it is that route.
pub(crate) fn route_to_peer_mismatch(
    r: Option<&Value>,
    st: &Value,
    peer: Option<&Value>,
) -> Option<String> {
    let Some(peer) = peer else {
        return Some("the agent knows no such peer".into());
    };
    let cidr = s(peer, "pod_cidr");
    let Some(r) = r else {
        return Some("no route covers it".into());
    };
    if s(r, "dst") != cidr {
        return Some(format!("the lookup gives {}", route_text(r)));
    }
    if r["protocol"].as_u64() != Some(u64::from(podnet_conventions::RTPROT_PODNET)) {
        return Some(format!(
            "the route {} was not made by podnet (protocol is not 0x50)",
            route_text(r)
        ));
    }
    let (gw, dev, onlink) = podnet_route(st, peer);
    let (rgw, rdev) = (r["gateway"].as_str().unwrap_or(""), s(r, "dev"));
    if rgw != gw || rdev != dev || (r["onlink"] == true) != onlink {
        return Some(format!(
            "the route {} should go via {gw} dev {dev}{}",
            route_text(r),
            if onlink { " onlink" } else { "" }
        ));
    }
    None
}

/// Next hop, device and onlink of the route podnet makes to `peer` on a node
/// with agent status `st`.
fn podnet_route(st: &Value, peer: &Value) -> (String, String, bool) {
    let vx = s(st, "vxlan_dev");
    if vx.is_empty() {
        let dev = s(st, "underlay_dev");
        (s(peer, "underlay_ip").to_string(), dev.to_string(), false)
    } else {
        let first = s(peer, "pod_cidr")
            .parse::<Ipv4Net>()
            .map(|n| n.network().to_string())
            .unwrap_or_default();
        (first, vx.to_string(), true)
    }
}

/// The command that puts podnet's route to `peer` back by hand.
pub(crate) fn route_fix(st: &Value, peer: Option<&Value>) -> String {
    let add = match peer {
        Some(p) => {
            let (gw, dev, onlink) = podnet_route(st, p);
            format!(
                "ip route replace {} via {gw} dev {dev}{} proto 0x50",
                s(p, "pod_cidr"),
                if onlink { " onlink" } else { "" }
            )
        }
        None => "ip route replace <peer CIDR> via <next hop> dev <device> proto 0x50".into(),
    };
    format!(
        "podnetd restores it within a second unless it runs with --no-repair; or by hand: {add}"
    )
}

fn route_text(r: &Value) -> String {
    let mut t = s(r, "dst").to_string();
    if let Some(g) = r["gateway"].as_str() {
        t.push_str(&format!(" via {g}"));
    }
    if let Some(d) = r["dev"].as_str() {
        t.push_str(&format!(" dev {d}"));
    }
    if r["onlink"] == true {
        t.push_str(" onlink");
    }
    if r["protocol"].as_u64() == Some(u64::from(podnet_conventions::RTPROT_PODNET)) {
        t.push_str(" proto 0x50");
    }
    t
}

fn link<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    state["links"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
}

fn link_text(l: &Value) -> String {
    format!(
        "{}: <{}> mtu {}{}",
        s(l, "name"),
        if l["up"] == true { "UP" } else { "DOWN" },
        l["mtu"],
        l["master"]
            .as_str()
            .map(|m| format!(" master {m}"))
            .unwrap_or_default()
    )
}

/// One typed request to an agent (a refusal is an error too); the reply as a JSON
/// document for the hop checks below.
pub(crate) fn ask(path: &std::path::Path, req: Request) -> Result<Value> {
    Ok(podnet_agent::proto::Client::new(path).call::<Value>(&req)?)
}

/// The traffic a trace is about: its protocol (`tcp`, `udp`, `sctp`, `icmp`) and, for
/// the first three, a destination port if one was given.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub proto: podnet_policy::Proto,
    pub port: Option<u16>,
}

impl Flow {
    pub fn describe(&self) -> String {
        let p = match self.proto {
            podnet_policy::Proto::Other(1) => "icmp".to_string(),
            p => p.name().to_lowercase(),
        };
        match self.port {
            Some(n) if self.proto.has_ports() => format!("{p} port {n}"),
            _ => p,
        }
    }
}

/// The policy hop of one end: what that pod's node programmed for it, asked of its
/// agent (`verdict`), with the kernel's view of whether the pod is programmed at all.
#[allow(clippy::too_many_arguments)]
fn policy_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    sock: &std::path::Path,
    ip: Ipv4Addr,
    peer: Ipv4Addr,
    dir: podnet_policy::Direction,
    flow: &Flow,
    names: (&str, &str),
) {
    let d = dir.as_str();
    let cmd = format!(
        "nft list table inet podnet   (on {node}); podnet policy explain {} {}{}",
        names.0,
        names.1,
        flow.port
            .map(|p| format!(" --port {p} --protocol {}", flow.proto.name()))
            .unwrap_or_default()
    );
    let v = match ask(
        sock,
        Request::Verdict {
            ip,
            peer,
            direction: dir,
            protocol: flow.proto.name(),
            port: flow.port.unwrap_or(0),
        },
    ) {
        Ok(v) => v,
        Err(e) => {
            b.add(
                where_,
                "policy",
                "warn",
                format!("cannot ask {node}'s agent for its {d} verdict: {e:#}"),
                "(unknown)".into(),
                cmd,
                "",
            );
            return;
        }
    };
    let pols = arr(&v, "policies")
        .iter()
        .filter_map(|p| p.as_str().map(String::from))
        .collect::<Vec<_>>()
        .join(", ");
    let entry = v["entry"].as_str().unwrap_or("(none)").to_string();
    let (who, other) = match dir {
        podnet_policy::Direction::Egress => names,
        podnet_policy::Direction::Ingress => (names.1, names.0),
    };
    if s(&v, "datapath") == "none" {
        b.add(
            where_,
            "policy",
            "ok",
            format!("{node} runs without a NetworkPolicy datapath: nothing filters {d}"),
            "(none)".into(),
            cmd,
            "",
        );
        return;
    }
    if v["programmed"] != true {
        b.check(where_, "policy", false,
            format!("{ip} is closed on {node}: its agent has not programmed this pod's policy, so nothing passes {d}"),
            "(not in set programmed)".into(), cmd,
            "the agent opens a pod once it knows its Pod object (namespace, labels, node and address): check that the object exists, and podnetd's log on that node");
        return;
    }
    if v["isolated"] != true {
        b.add(
            where_,
            "policy",
            "ok",
            format!("not isolated for {d}: no policy selects {who}"),
            "(open)".into(),
            cmd,
            "",
        );
        return;
    }
    if flow.port.is_none() && flow.proto.has_ports() {
        b.add(
            where_,
            "policy",
            "warn",
            format!("isolated for {d} by {pols}; give --port to judge its rules"),
            format!("isolated by {pols}"),
            cmd,
            "",
        );
        return;
    }
    if v["allowed"] == true {
        b.add(
            where_,
            "policy",
            "ok",
            format!("isolated for {d} by {pols}; admitted: {entry}"),
            entry,
            cmd,
            "",
        );
    } else {
        b.check(where_, "policy", false,
            format!("denied on {d}: {who} is isolated by {pols} and no rule admits {other} {}", flow.describe()),
            format!("no entry for {peer} {}", flow.describe()), cmd,
            "`podnet policy explain` shows the rules tried; add a rule that admits this flow, or leave it denied if that is the intent");
    }
}

/// Traces `src` to `dst` (pod names or addresses) for `flow`.
pub fn trace(agents: &dyn Agents, src: &str, dst: &str, flow: &Flow) -> Result<Trace> {
    let t0 = Instant::now();
    let flow_desc = flow.describe();
    let flow_desc = flow_desc.as_str();
    let resolve = |x: &str| -> Result<Ipv4Addr> {
        x.parse()
            .ok()
            .or_else(|| agents.pod_ip(x))
            .with_context(|| format!("{x:?} is neither an IPv4 address nor a known pod"))
    };
    let (sip, dip) = (resolve(src)?, resolve(dst)?);
    let nodes = agents.nodes();
    let mut statuses = Vec::new();
    for (n, sock) in &nodes {
        if let Ok(st) = ask(sock, Request::Status) {
            statuses.push((n.clone(), sock.clone(), st));
        }
    }
    let node_of = |ip: Ipv4Addr| {
        statuses.iter().find(|(_, _, st)| {
            st["pod_cidr"]
                .as_str()
                .and_then(|c| c.parse::<Ipv4Net>().ok())
                .is_some_and(|c| c.contains(ip))
        })
    };
    let (sn, ssock, sst) = node_of(sip)
        .with_context(|| format!("no node whose agent answers serves {sip}"))?
        .clone();
    let (dn, dsock, dst_st) = node_of(dip)
        .with_context(|| format!("no node whose agent answers serves {dip}"))?
        .clone();
    let cross = sn != dn;
    let s_state = ask(&ssock, Request::State)?;
    let d_state = if cross {
        ask(&dsock, Request::State)?
    } else {
        s_state.clone()
    };
    let s_pod = ask(&ssock, Request::Pod { ip: sip })?;
    let d_pod = ask(&dsock, Request::Pod { ip: dip })?;
    let mut b = Builder { hops: vec![] };

    // ---- source pod
    pod_hops(&mut b, "src-pod", src, sip, &s_pod, &sst, Some(dip));
    policy_hop(
        &mut b,
        "src-pod",
        &sn,
        &ssock,
        sip,
        dip,
        podnet_policy::Direction::Egress,
        flow,
        (src, dst),
    );

    // ---- source node
    let bridge = s(&sst, "bridge").to_string();
    host_veth_hop(&mut b, "src-node", &sn, &s_pod, &sst);
    bridge_hop(&mut b, "src-node", &sn, &s_state, &bridge);
    let s_routes = arr(&s_state, "routes");
    let r = lookup(&s_routes, dip);
    let peer = arr(&sst, "peers")
        .into_iter()
        .find(|p| p["name"] == dn.as_str());
    let vx = s(&sst, "vxlan_dev").to_string();
    if cross && !vx.is_empty() {
        // First: a VXLAN device that is down takes its routes and neighbours with it.
        device_hop(
            &mut b,
            "src-node",
            "link",
            &sn,
            &s_state,
            &vx,
            "VXLAN device",
        );
    }
    if cross {
        let want = peer
            .as_ref()
            .map(|p| s(p, "pod_cidr").to_string())
            .unwrap_or_default();
        let bad = route_to_peer_mismatch(r.as_ref(), &sst, peer.as_ref());
        let ok = bad.is_none();
        b.check(
            "src-node",
            "route",
            ok,
            match &bad {
                None => format!("{dip} goes to peer {dn} ({want})"),
                Some(why) => format!("{dn}'s pod CIDR {want} is not routed to {dn}: {why}"),
            },
            r.as_ref()
                .map(route_text)
                .unwrap_or_else(|| "(none)".into()),
            format!("ip route get {dip}   (on {sn})"),
            &route_fix(&sst, peer.as_ref()),
        );
        let fwd = s_state["forwarding"] == true;
        b.check(
            "src-node",
            "forwarding",
            fwd,
            format!(
                "IPv4 forwarding is {} on {sn}",
                if fwd { "on" } else { "off" }
            ),
            format!("net.ipv4.ip_forward = {}", u8::from(fwd)),
            format!("sysctl net.ipv4.ip_forward   (on {sn})"),
            "sysctl -w net.ipv4.ip_forward=1 (podnetd turns it on when repair is on)",
        );
        if !vx.is_empty() {
            overlay_hops(&mut b, "src-node", &sn, &s_state, &vx, peer.as_ref());
        }
        // ---- the destination node's way back to the source (read before probing, so
        // a broken return path is not blamed on the physical network)
        let mut back = Builder { hops: vec![] };
        if !vx.is_empty() {
            device_hop(
                &mut back,
                "dst-node",
                "link",
                &dn,
                &d_state,
                &vx,
                "VXLAN device",
            );
        }
        let fwd = d_state["forwarding"] == true;
        back.check(
            "dst-node",
            "forwarding",
            fwd,
            format!(
                "IPv4 forwarding is {} on {dn}",
                if fwd { "on" } else { "off" }
            ),
            format!("net.ipv4.ip_forward = {}", u8::from(fwd)),
            format!("sysctl net.ipv4.ip_forward   (on {dn})"),
            "sysctl -w net.ipv4.ip_forward=1",
        );
        let src_peer = arr(&dst_st, "peers")
            .into_iter()
            .find(|p| p["name"] == sn.as_str());
        let back_cidr = src_peer
            .as_ref()
            .map(|p| s(p, "pod_cidr").to_string())
            .unwrap_or_default();
        let br = lookup(&arr(&d_state, "routes"), sip);
        let bad = route_to_peer_mismatch(br.as_ref(), &dst_st, src_peer.as_ref());
        let ok = bad.is_none();
        back.check(
            "dst-node",
            "route",
            ok,
            match &bad {
                None => format!("replies to {sip} go back to {sn} ({back_cidr})"),
                Some(why) => {
                    format!(
                        "{dn} does not route replies back to {sn}'s pod CIDR {back_cidr}: {why}"
                    )
                }
            },
            br.as_ref()
                .map(route_text)
                .unwrap_or_else(|| "(none)".into()),
            format!("ip route get {sip}   (on {dn})"),
            &route_fix(&dst_st, src_peer.as_ref()),
        );
        if !vx.is_empty() {
            overlay_hops(&mut back, "dst-node", &dn, &d_state, &vx, src_peer.as_ref());
        }
        let back_ok = !back.hops.iter().any(|h| h.status == "broken");
        // ---- the physical network, probed from the source node
        underlay_hops(
            &mut b,
            &sn,
            &ssock,
            &sst,
            peer.as_ref(),
            !vx.is_empty(),
            back_ok,
        )?;
        b.hops.extend(back.hops);
    }
    let d_bridge = s(&dst_st, "bridge").to_string();
    let dr = lookup(&arr(&d_state, "routes"), dip);
    let ok = dr.as_ref().is_some_and(|r| r["dev"] == d_bridge.as_str());
    b.check(
        "dst-node",
        "route",
        ok,
        if ok {
            format!("{dip} is on {d_bridge}")
        } else {
            format!("{dn} does not route {dip} to its bridge {d_bridge}")
        },
        dr.as_ref()
            .map(route_text)
            .unwrap_or_else(|| "(none)".into()),
        format!("ip route get {dip}   (on {dn})"),
        "the bridge must hold the gateway address of the node's pod CIDR; restart podnetd",
    );
    if cross {
        bridge_hop(&mut b, "dst-node", &dn, &d_state, &d_bridge);
    }
    let n = arr(&d_state, "neigh")
        .into_iter()
        .find(|n| n["ip"] == dip.to_string().as_str());
    let failed = n.as_ref().is_some_and(|n| n["state"] == "FAILED");
    b.add(
        "dst-node",
        "neigh",
        if failed { "broken" } else { "ok" },
        match &n {
            Some(n) if failed => format!("{dn} could not resolve {dip} (ARP FAILED)"),
            Some(n) => format!("{dip} is at {}", s(n, "mac")),
            None => format!("{dip} not resolved yet; the first packet resolves it"),
        },
        n.as_ref()
            .map(|n| format!("{} lladdr {} {}", s(n, "ip"), s(n, "mac"), s(n, "state")))
            .unwrap_or_else(|| "(none)".into()),
        format!("ip neigh show {dip}   (on {dn})"),
        if failed {
            "the pod does not answer ARP: check its link and address (next hops)"
        } else {
            ""
        },
    );
    host_veth_hop(&mut b, "dst-node", &dn, &d_pod, &dst_st);

    // ---- destination pod
    pod_hops(&mut b, "dst-pod", dst, dip, &d_pod, &dst_st, Some(sip));
    policy_hop(
        &mut b,
        "dst-pod",
        &dn,
        &dsock,
        dip,
        sip,
        podnet_policy::Direction::Ingress,
        flow,
        (src, dst),
    );

    let broken = b.hops.iter().find(|h| h.status == "broken").cloned();
    Ok(Trace {
        src: format!("{src} ({sip} on {sn})"),
        dst: format!("{dst} ({dip} on {dn})"),
        flow: flow_desc.into(),
        verdict: if broken.is_some() {
            "broken"
        } else {
            "reachable"
        }
        .into(),
        broken_hop: broken,
        hops: b.hops,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    })
}

/// The command that runs `ip c` in the pod the agent's `pod` answer describes.
fn cmd(pod: &Value, c: &str, name: &str) -> String {
    match pod["netns"].as_str() {
        Some(p) if p.starts_with("/run/netns/") => {
            format!("ip -n {} {c}   (pod {name})", &p["/run/netns/".len()..])
        }
        Some(p) => format!("nsenter --net={p} ip {c}   (pod {name})"),
        None => format!("ip {c}   (inside pod {name})"),
    }
}

/// The pod's own end as doctor checks it for every pod: found, address, link (with
/// the MTU and MAC its node gives pods), on the node whose agent status is `node`.
pub(crate) fn pod_end(pod: &Value, ip: Ipv4Addr, node: &Value) -> Vec<Hop> {
    let mut b = Builder { hops: vec![] };
    pod_hops(&mut b, "pod", &ip.to_string(), ip, pod, node, None);
    b.hops
}

/// The gateway podnet gives the pods of the node whose agent status is `node`: the
/// first address of its pod CIDR (the bridge's).
pub(crate) fn pod_gateway(node: &Value) -> Option<Ipv4Addr> {
    s(node, "pod_cidr")
        .parse::<Ipv4Net>()
        .ok()
        .and_then(|c| c.nth(1))
}

/// What is wrong with a link's MTU and MAC against what podnet gives it (`None`: right).
fn link_mismatch(l: &Value, name: &str, mtu: u64, mac: [u8; 6]) -> Option<String> {
    let want_mac = podnet_netlink::fmt_mac(&mac);
    let have_mtu = l["mtu"].as_u64().unwrap_or(0);
    if mtu != 0 && have_mtu != mtu {
        return Some(format!(
            "{name} has MTU {have_mtu}; its node gives pods MTU {mtu}"
        ));
    }
    match l["mac"].as_str() {
        Some(m) if !m.eq_ignore_ascii_case(&want_mac) => {
            Some(format!("{name} has MAC {m}; podnet gives it {want_mac}"))
        }
        _ => None,
    }
}

/// The pod's own hops; every value is held against what its node (agent status
/// `node`) gives pods: MTU, MAC, gateway.
fn pod_hops(
    b: &mut Builder,
    where_: &str,
    name: &str,
    ip: Ipv4Addr,
    pod: &Value,
    node: &Value,
    peer: Option<Ipv4Addr>,
) {
    if pod["found"] != true {
        b.add(
            where_,
            "link",
            "broken",
            format!("no podnet pod with address {ip} on its node"),
            "(none)".into(),
            "ip -d link show".into(),
            "is the pod running? its host veth is missing",
        );
        return;
    }
    let p = &pod["pod"];
    if let Some(e) = p["error"].as_str() {
        b.add(
            where_,
            "link",
            "warn",
            format!("cannot look inside the pod: {e}"),
            "(unknown)".into(),
            String::new(),
            "",
        );
        return;
    }
    let ifname = s(pod, "ifname").to_string();
    let addrs = arr(p, "addrs");
    let has = addrs
        .iter()
        .any(|a| a.as_str().is_some_and(|a| a.starts_with(&format!("{ip}/"))));
    b.check(
        where_,
        "addr",
        has,
        if has {
            format!("{ip} on {ifname}")
        } else {
            format!("{ifname} does not hold {ip}")
        },
        addrs
            .iter()
            .filter_map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cmd(pod, &format!("addr show {ifname}"), name),
        "delete and re-add the pod (CNI DEL + ADD); its address was removed",
    );
    let l = &p["link"];
    let up = l["up"] == true;
    let mtu = node["mtu"].as_u64().unwrap_or(0);
    let wrong = link_mismatch(l, &ifname, mtu, podnet_conventions::pod_mac(ip));
    b.check(
        where_,
        "link",
        up && wrong.is_none(),
        match (&wrong, up) {
            (_, false) => format!("{ifname} is down"),
            (Some(w), true) => w.clone(),
            (None, true) => format!("{ifname} is up"),
        },
        if l.is_null() {
            "(none)".into()
        } else {
            link_text(l)
        },
        cmd(pod, &format!("link show {ifname}"), name),
        &match wrong {
            Some(_) => {
                format!("ip link set {ifname} mtu {mtu} (inside the pod), or DEL and ADD the pod")
            }
            None => format!("ip link set {ifname} up (inside the pod)"),
        },
    );
    if let Some(other) = peer {
        let routes = arr(p, "routes");
        let r = lookup(&routes, other);
        let want_gw = pod_gateway(node).map(|g| g.to_string());
        let gw = r.as_ref().and_then(|r| r["gateway"].as_str());
        // A gateway other than the bridge's sends the pod's packets nowhere.
        let wrong_gw = matches!((gw, &want_gw), (Some(g), Some(w)) if g != w);
        let ok = r.is_some() && !wrong_gw;
        b.check(
            where_, "route", ok,
            match &r {
                Some(_) if wrong_gw => format!(
                    "{other} via {}, but the pod's gateway is {} (its node's bridge)",
                    gw.unwrap_or(""),
                    want_gw.as_deref().unwrap_or("")
                ),
                Some(r) => format!("{other} via {}", r["gateway"].as_str().unwrap_or("the link")),
                None => format!("the pod has no route to {other} (no default route)"),
            },
            r.as_ref().map(route_text).unwrap_or_else(|| "(none)".into()),
            cmd(pod, &format!("route get {other}"), name),
            "re-add the default route via the bridge gateway (ip route add default via <gateway>), or DEL and ADD the pod",
        );
        if let Some(gw) = r.as_ref().and_then(|r| r["gateway"].as_str()) {
            let n = arr(p, "neigh").into_iter().find(|n| n["ip"] == gw);
            let failed = n.as_ref().is_some_and(|n| n["state"] == "FAILED");
            b.add(
                where_,
                "neigh",
                if failed { "broken" } else { "ok" },
                match &n {
                    Some(n) if failed => format!("the gateway {gw} does not answer ARP"),
                    Some(n) => format!("gateway {gw} is at {}", s(n, "mac")),
                    None => format!("gateway {gw} not resolved yet; the first packet resolves it"),
                },
                n.as_ref()
                    .map(|n| format!("{} lladdr {} {}", s(n, "ip"), s(n, "mac"), s(n, "state")))
                    .unwrap_or_else(|| "(none)".into()),
                cmd(pod, "neigh show", name),
                if failed {
                    "the pod's host veth or the bridge is down (see the node hops)"
                } else {
                    ""
                },
            );
        }
    }
}

/// The pod's host veth: up, on the node's bridge, with the node's pod MTU (agent
/// status `st`).
fn host_veth_hop(b: &mut Builder, where_: &str, node: &str, pod: &Value, st: &Value) {
    if pod["found"] != true {
        return;
    }
    let bridge = s(st, "bridge");
    let h = &pod["host_veth"];
    let name = s(h, "name");
    let up = h["up"] == true;
    let on = h["master"] == bridge;
    let mtu = st["mtu"].as_u64().unwrap_or(0);
    let have = h["mtu"].as_u64().unwrap_or(0);
    let mtu_ok = mtu == 0 || have == mtu;
    b.check(
        where_,
        "link",
        up && on && mtu_ok,
        if !up {
            format!("host veth {name} is down")
        } else if !on {
            format!("host veth {name} is not on bridge {bridge}")
        } else if !mtu_ok {
            format!("host veth {name} has MTU {have}; its node gives pods MTU {mtu}")
        } else {
            format!("host veth {name} is up on {bridge}")
        },
        link_text(h),
        format!("ip -d link show {name}   (on {node})"),
        &format!("ip link set {name} up master {bridge}   (on {node})"),
    );
}

/// A node-level device (bridge, VXLAN device) that must exist and be up.
fn device_hop(
    b: &mut Builder,
    where_: &str,
    what: &str,
    node: &str,
    state: &Value,
    dev: &str,
    label: &str,
) {
    let l = link(state, dev);
    let up = l.is_some_and(|l| l["up"] == true);
    let is = if l.is_none() {
        "missing"
    } else if up {
        "up"
    } else {
        "down"
    };
    b.check(
        where_,
        what,
        up,
        format!("{label} {dev} on {node} is {is}"),
        l.map(link_text).unwrap_or_else(|| "(none)".into()),
        format!("ip -d link show {dev}   (on {node})"),
        &format!("ip link set {dev} up (podnetd does it when repair is on)"),
    );
}

fn bridge_hop(b: &mut Builder, where_: &str, node: &str, state: &Value, bridge: &str) {
    device_hop(b, where_, "bridge", node, state, bridge, "bridge");
}

/// The neighbour and FDB entries a node needs to reach `peer` through `vx`.
fn overlay_hops(
    b: &mut Builder,
    where_: &str,
    node: &str,
    state: &Value,
    vx: &str,
    peer: Option<&Value>,
) {
    let Some(p) = peer else {
        b.add(
            where_,
            "neigh",
            "broken",
            "the destination node is not among this node's peers".into(),
            "(none)".into(),
            "podnet lab status".into(),
            "is the destination's agent registered? check the datastore",
        );
        return;
    };
    let cidr: Option<Ipv4Net> = s(p, "pod_cidr").parse().ok();
    let vtep = cidr.map(|c| c.network().to_string()).unwrap_or_default();
    let mac = s(p, "vtep_mac");
    let n = arr(state, "neigh")
        .into_iter()
        .find(|n| n["ip"] == vtep.as_str() && n["dev"] == vx);
    let ok = n.as_ref().is_some_and(|n| n["mac"] == mac);
    b.check(
        where_, "neigh", ok,
        if ok { format!("peer VTEP {vtep} is at {mac}") } else { format!("no neighbour entry {vtep} → {mac} on {vx}") },
        n.as_ref().map(|n| format!("{} dev {vx} lladdr {} {}", s(n, "ip"), s(n, "mac"), s(n, "state"))).unwrap_or_else(|| "(none)".into()),
        format!("ip neigh show dev {vx}   (on {node})"),
        &format!("ip neigh replace {vtep} lladdr {mac} dev {vx} nud permanent (podnetd does it when repair is on)"),
    );
    let under = s(p, "underlay_ip");
    let f = arr(state, "fdb").into_iter().find(|f| f["mac"] == mac);
    let ok = f.as_ref().is_some_and(|f| f["dst"] == under);
    b.check(
        where_, "fdb", ok,
        if ok { format!("{mac} is reached through {under}") } else { format!("no FDB entry {mac} → {under} on {vx}") },
        f.as_ref().map(|f| format!("{} dev {vx} dst {} self permanent", s(f, "mac"), s(f, "dst"))).unwrap_or_else(|| "(none)".into()),
        format!("bridge fdb show dev {vx}   (on {node})"),
        &format!("bridge fdb replace {mac} dev {vx} dst {under} self permanent (podnetd does it when repair is on)"),
    );
}

fn underlay_hops(
    b: &mut Builder,
    node: &str,
    sock: &std::path::Path,
    st: &Value,
    peer: Option<&Value>,
    vxlan: bool,
    return_ok: bool,
) -> Result<()> {
    let Some(p) = peer else { return Ok(()) };
    let under = s(p, "underlay_ip").to_string();
    let ping = |ip: &str, size: u64| -> Result<String> {
        let v = ask(
            sock,
            Request::Ping {
                ip: ip.parse()?,
                size: u16::try_from(size).unwrap_or(u16::MAX),
            },
        )?;
        Ok(match &v["result"] {
            Value::String(r) => r.clone(),
            other => format!(
                "error: {}",
                other["error"].as_str().unwrap_or(&other.to_string())
            ),
        })
    };
    let small = ping(&under, 56)?;
    if small != "reply" {
        b.add(
            "underlay",
            "port",
            "broken",
            format!("{node} cannot reach peer {under} on the physical network ({small})"),
            format!("ping {under}: {small}"),
            format!("ping -c1 {under}   (on {node})"),
            "check the physical network between the nodes: links, addresses, firewalls",
        );
        return Ok(());
    }
    let port = st["vxlan_port"]
        .as_u64()
        .unwrap_or(u64::from(podnet_conventions::VXLAN_PORT));
    if vxlan {
        let vtep = s(p, "pod_cidr").split('/').next().unwrap_or("").to_string();
        let over = ping(&vtep, 56)?;
        let src_overlay_ok = return_ok
            && !b
                .hops
                .iter()
                .any(|h| h.where_ == "src-node" && h.status == "broken");
        let (status, fix) = match (over.as_str(), src_overlay_ok) {
            ("reply", _) => ("ok", String::new()),
            (_, true) => ("broken", format!("allow UDP {port} between all node IPs, both directions (security groups, host firewalls)")),
            (_, false) => ("warn", String::new()),
        };
        b.add(
            "underlay", "port", status,
            match status {
                "ok" => format!("VXLAN (UDP {port}) carries packets to {under} and back"),
                "broken" => format!("the underlay reaches {under} but VXLAN (UDP {port}) does not get through: the port is blocked on the way"),
                _ => "VXLAN probe failed, but an overlay entry on one of the two nodes is already broken (listed)".into(),
            },
            format!("ping {vtep} (through the overlay): {over}"),
            format!("ping -c1 {vtep}   (on {node}); tcpdump -ni eth0 udp port {port}"),
            &fix,
        );
    }
    let mtu = st["mtu"].as_u64().unwrap_or(1450);
    let overhead = st["overlay_overhead"].as_u64().unwrap_or(if vxlan {
        u64::from(podnet_conventions::VXLAN_OVERHEAD)
    } else {
        0
    });
    let size = mtu + overhead - 28;
    let big = ping(&under, size)?;
    b.check(
        "underlay", "mtu", big == "reply",
        if big == "reply" { format!("the physical path carries {} bytes with DF set (pod MTU {mtu} + {overhead})", mtu + overhead) } else { format!("the physical path drops {}-byte packets with DF set ({big}): smaller than pod MTU {mtu} + {overhead} of overlay", mtu + overhead) },
        format!("ping -M do -s {size} {under}: {big}"),
        format!("ping -M do -s {size} {under}   (on {node})"),
        "raise the physical network's MTU, or lower the pod MTU (podnetd sets it to the underlay MTU − 50)",
    );
    Ok(())
}

/// The trace for people: the path as a vertical list.
pub fn render(t: &Trace) -> String {
    let mut out = format!(
        "trace {} → {} ({}): {}\n\n",
        t.src,
        t.dst,
        t.flow,
        match &t.broken_hop {
            Some(h) => format!("BROKEN at {}/{}", h.where_, h.what),
            None => "reachable".into(),
        }
    );
    for h in &t.hops {
        let mark = match h.status.as_str() {
            "ok" => "✓",
            "broken" => "✗",
            "warn" => "!",
            _ => "-",
        };
        out.push_str(&format!(
            "  {mark} {:<9} {:<10} {}\n",
            h.where_, h.what, h.detail
        ));
        if h.status == "broken" {
            out.push_str(&format!(
                "      kernel: {}\n      look:   {}\n      fix:    {}\n",
                h.kernel, h.cmd, h.fix
            ));
        }
    }
    out.push_str(&format!("\n({} ms)\n", t.elapsed_ms));
    out
}

/// The agents of a lab: every node's socket, pod names from the lab's state.
pub struct LabAgents {
    pub nodes: Vec<(String, PathBuf)>,
    pub pods: Vec<(String, Ipv4Addr)>,
}

impl LabAgents {
    pub fn new(lab: &crate::lab::Lab) -> Result<LabAgents> {
        let st = lab
            .load()?
            .with_context(|| format!("no lab {}", lab.name))?;
        Ok(LabAgents {
            nodes: st
                .nodes
                .iter()
                .map(|n| (n.name.clone(), lab.api_socket(&n.name)))
                .collect(),
            // Pods by the lab's name (p1a) and as namespace/name (default/p1a).
            pods: st
                .pods
                .iter()
                .flat_map(|p| [(p.name.clone(), p.ip), (p.key(), p.ip)])
                .collect(),
        })
    }
}

impl Agents for LabAgents {
    fn nodes(&self) -> Vec<(String, PathBuf)> {
        self.nodes.clone()
    }
    fn pod_ip(&self, name: &str) -> Option<Ipv4Addr> {
        self.pods.iter().find(|(n, _)| n == name).map(|(_, ip)| *ip)
    }
}

/// The local node's agent only (a real node, without a lab).
pub struct LocalAgent(pub PathBuf);

impl Agents for LocalAgent {
    fn nodes(&self) -> Vec<(String, PathBuf)> {
        vec![("local".into(), self.0.clone())]
    }
    fn pod_ip(&self, _: &str) -> Option<Ipv4Addr> {
        None
    }
}
