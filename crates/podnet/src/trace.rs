//! `podnet trace SRC DST`: the path a packet takes from one pod to another, hop by hop,
//! each hop read from the real kernel state of the node it is on, plus active probes
//! where reading is not enough (the VXLAN port, the path MTU).
//!
//! Each node's agent reports its own state and runs its own probes (its local API,
//! `crate::agent::api`); this module only asks and combines. A hop is `ok`, `broken`,
//! `warn` or `skipped`; the first broken hop in path order is the verdict.

use anyhow::{Context, Result};
use podnet_agent::probe::Echo;
use podnet_agent::proto::{
    Client, FdbState, LinkState, NeighState, NodeState, PodLink, PodReport, RouteState,
};
use podnet_agent::{PeerStatus, Status};
use podnet_cni_spec::Ipv4Net;
use serde::Serialize;
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

/// The most specific route in `routes` that covers `ip`.
fn lookup(routes: &[RouteState], ip: Ipv4Addr) -> Option<&RouteState> {
    routes
        .iter()
        .filter_map(|r| {
            let net: Ipv4Net = if r.dst == "default" {
                "0.0.0.0/0".parse().ok()?
            } else {
                r.dst.parse().ok()?
            };
            net.contains(ip).then_some((net.prefix(), r))
        })
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| r)
}

fn is_podnets(r: &RouteState) -> bool {
    r.protocol == podnet_conventions::RTPROT_PODNET
}

/// Why `r` (the route the lookup chose) is not the route podnet makes on a node
/// with agent status `st` to `peer`: prefix, protocol, next hop and device
/// (VXLAN: via the peer CIDR's first address on the VXLAN device, onlink;
/// host-gw: via the peer's underlay address on the underlay device).
/// `None` when it is that route.
pub(crate) fn route_to_peer_mismatch(
    r: Option<&RouteState>,
    st: &Status,
    peer: Option<&PeerStatus>,
) -> Option<String> {
    let Some(peer) = peer else {
        return Some("the agent knows no such peer".into());
    };
    let Some(r) = r else {
        return Some("no route covers it".into());
    };
    if r.dst != peer.pod_cidr {
        return Some(format!("the lookup gives {}", route_text(r)));
    }
    if !is_podnets(r) {
        return Some(format!(
            "the route {} was not made by podnet (protocol is not 0x50)",
            route_text(r)
        ));
    }
    let (gw, dev, onlink) = podnet_route(st, peer);
    let rgw = r.gateway.map(|g| g.to_string()).unwrap_or_default();
    if rgw != gw || r.dev.as_deref().unwrap_or("") != dev || r.onlink != onlink {
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
fn podnet_route(st: &Status, peer: &PeerStatus) -> (String, String, bool) {
    let first = || {
        peer.pod_cidr
            .parse::<Ipv4Net>()
            .map(|n| n.network().to_string())
            .unwrap_or_default()
    };
    match (&st.wireguard, st.vxlan_dev.is_empty()) {
        (Some(w), _) => (first(), w.device.clone(), true),
        (None, false) => (first(), st.vxlan_dev.clone(), true),
        (None, true) => (peer.underlay_ip.clone(), st.underlay_dev.clone(), false),
    }
}

/// How long ago Unix time `t` was, for people ("never" for 0).
pub(crate) fn age(t: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    let s = podnet_datastore::now().saturating_sub(t);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// What is wrong with the WireGuard peer `node` (agent status `st`) has for `peer`:
/// the device must hold a peer for the peer's pod CIDR, with the public key the
/// datastore publishes for it, which must be the key the peer's own device holds
/// (`peer_st`, when known), at the peer's underlay address and port. `Ok` gives the
/// peer as configured, for the detail.
pub(crate) fn wireguard_peer_mismatch<'a>(
    st: &'a Status,
    peer: &PeerStatus,
    peer_st: Option<&Status>,
) -> std::result::Result<&'a podnet_agent::WireGuardPeerStatus, String> {
    let Some(w) = &st.wireguard else {
        return Err("the node does not run the wireguard backend".into());
    };
    if let Some(e) = &w.error {
        return Err(format!("its device does not answer: {e}"));
    }
    let Some(c) = w
        .peers
        .iter()
        .find(|c| c.allowed_ips.contains(&peer.pod_cidr))
    else {
        return Err(format!(
            "{} holds no peer for {}'s pod CIDR {}",
            w.device, peer.name, peer.pod_cidr
        ));
    };
    if c.public_key != peer.wireguard_public_key {
        return Err(format!(
            "{} holds key {} for {}, but the datastore publishes {}",
            w.device, c.public_key, peer.name, peer.wireguard_public_key
        ));
    }
    if let Some(real) = peer_st
        .and_then(|p| p.wireguard.as_ref())
        .map(|p| &p.device_public_key)
        .filter(|k| !k.is_empty())
    {
        if *real != c.public_key {
            return Err(format!(
                "{} holds key {} for {} (as the datastore publishes), but {}'s own device has key {real}: handshakes fail",
                w.device, c.public_key, peer.name, peer.name
            ));
        }
    }
    let want = format!("{}:{}", peer.underlay_ip, peer.wireguard_port);
    if c.endpoint != want {
        return Err(format!(
            "{} sends {}'s packets to {}, not to {want}",
            w.device, peer.name, c.endpoint
        ));
    }
    Ok(c)
}

/// The WireGuard peer a node holds for `peer`, as a hop (with the latest handshake's
/// age in its detail).
fn wireguard_peer_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    (st, peer): (&Status, Option<&PeerStatus>),
    peer_st: Option<&Status>,
) {
    let dev = st
        .wireguard
        .as_ref()
        .map(|w| w.device.clone())
        .unwrap_or_default();
    let Some(p) = peer else {
        b.add(
            where_,
            "wireguard-peer",
            "broken",
            "the other node is not among this node's peers".into(),
            "(none)".into(),
            "podnet lab status".into(),
            "is its agent registered? check the datastore",
        );
        return;
    };
    let r = wireguard_peer_mismatch(st, p, peer_st);
    let kernel = st
        .wireguard
        .as_ref()
        .and_then(|w| w.peers.iter().find(|c| c.allowed_ips.contains(&p.pod_cidr)))
        .map(|c| {
            format!(
                "peer {} endpoint {} allowed ips {} latest handshake {}",
                c.public_key,
                c.endpoint,
                c.allowed_ips.join(","),
                age(c.last_handshake)
            )
        })
        .unwrap_or_else(|| "(none)".into());
    let fix = match &r {
        Err(e) if e.contains("own device") => format!(
            "{}'s record is stale or forged: its podnetd publishes its real key at its next lease renewal; restart podnetd on {} to publish it now",
            p.name, p.name
        ),
        _ => format!(
            "podnetd on {node} configures its peers from the datastore within a second unless it runs with --no-repair; restart it"
        ),
    };
    b.check(
        where_,
        "wireguard-peer",
        r.is_ok(),
        match &r {
            Ok(c) => format!(
                "{} is peer {} at {}, latest handshake {}",
                p.name,
                c.public_key,
                c.endpoint,
                age(c.last_handshake)
            ),
            Err(e) => e.clone(),
        },
        kernel,
        format!("podnet wireguard status   (or: wg show {dev}, on {node})"),
        &fix,
    );
}

/// The command that puts podnet's route to `peer` back by hand.
pub(crate) fn route_fix(st: &Status, peer: Option<&PeerStatus>) -> String {
    let add = match peer {
        Some(p) => {
            let (gw, dev, onlink) = podnet_route(st, p);
            format!(
                "ip route replace {} via {gw} dev {dev}{} proto 0x50",
                p.pod_cidr,
                if onlink { " onlink" } else { "" }
            )
        }
        None => "ip route replace <peer CIDR> via <next hop> dev <device> proto 0x50".into(),
    };
    format!(
        "podnetd restores it within a second unless it runs with --no-repair; or by hand: {add}"
    )
}

fn route_text(r: &RouteState) -> String {
    let mut t = r.dst.clone();
    if let Some(g) = r.gateway {
        t.push_str(&format!(" via {g}"));
    }
    if let Some(d) = &r.dev {
        t.push_str(&format!(" dev {d}"));
    }
    if r.onlink {
        t.push_str(" onlink");
    }
    if is_podnets(r) {
        t.push_str(" proto 0x50");
    }
    t
}

fn link<'a>(state: &'a NodeState, name: &str) -> Option<&'a LinkState> {
    state.links.iter().find(|l| l.name == name)
}

/// A link as `ip link` prints it, in short.
fn link_text(name: &str, up: bool, mtu: u32, master: Option<&str>) -> String {
    format!(
        "{name}: <{}> mtu {mtu}{}",
        if up { "UP" } else { "DOWN" },
        master.map(|m| format!(" master {m}")).unwrap_or_default()
    )
}

fn neigh_text(n: &NeighState, dev: Option<&str>) -> String {
    format!(
        "{}{} lladdr {} {}",
        n.ip,
        dev.map(|d| format!(" dev {d}")).unwrap_or_default(),
        n.mac.as_deref().unwrap_or("(none)"),
        n.state
    )
}

/// An echo's outcome as the hops print it: `reply`, `timeout`, `too-big`, `error: …`.
pub(crate) fn echo_text(e: &Echo) -> String {
    match e {
        Echo::Reply => "reply".into(),
        Echo::Timeout => "timeout".into(),
        Echo::TooBig => "too-big".into(),
        Echo::Error(why) => format!("error: {why}"),
    }
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
    let v = match Client::new(sock).verdict(
        ip,
        peer,
        dir,
        &flow.proto.name(),
        flow.port.unwrap_or(0),
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
    let pols = v.policies.join(", ");
    let entry = v.entry.clone().unwrap_or_else(|| "(none)".into());
    let (who, other) = match dir {
        podnet_policy::Direction::Egress => names,
        podnet_policy::Direction::Ingress => (names.1, names.0),
    };
    if v.datapath == "none" {
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
    if !v.enforcement.is_empty() {
        b.check(where_, "policy", false,
            format!("{ip} is OPEN on {node}, whatever its policies say: {}", v.enforcement.join("; ")),
            "(missing from the kernel)".into(), cmd,
            "podnetd puts what is missing back within 2 s (`repairing drift` in its log); if it stays missing, the agent is down or failing: see podnetd's log on that node");
        return;
    }
    if !v.programmed {
        b.check(where_, "policy", false,
            format!("{ip} is closed on {node}: its agent has not programmed this pod's policy, so nothing passes {d}"),
            "(not in set programmed)".into(), cmd,
            "the agent opens a pod once it knows its Pod object (namespace, labels, node and address): check that the object exists, and podnetd's log on that node");
        return;
    }
    if !v.isolated {
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
    if v.allowed {
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

/// With the eBPF fast path (`--datapath ebpf`): which program moves the packet where
/// on the source node. Same node: `from_pod_policy` on the source's host veth
/// redirects into the destination pod (`bpf_redirect_peer`) when the destination is in
/// `local_pods`; across nodes it looks up the route and hands the packet to the
/// overlay device. The bridge hops that follow still matter: ARP and the node's own
/// traffic take the bridge.
fn fast_path_hop(b: &mut Builder, s: &End, d: &End, cross: bool) {
    if s.st.datapath != "ebpf" {
        return;
    }
    let fast = s.agent.policy().ok().and_then(|p| p.fast_path);
    let (node, veth) = (
        &s.node,
        s.pod
            .host_veth
            .as_ref()
            .map(|h| h.name.clone())
            .unwrap_or_default(),
    );
    let look = format!("tc filter show dev {veth} ingress; bpftool map dump pinned <bpf dir>/local_pods   (on {node})");
    let Some(f) = fast else {
        b.add(
            "src-node",
            "fastpath",
            "broken",
            format!("{node} runs --datapath ebpf but its fast path is not in place"),
            "(no fast path status)".into(),
            look,
            "restart podnetd with --policy-datapath ebpf --datapath ebpf; see its log",
        );
        return;
    };
    if cross {
        let (detail, found) = if f.underlay_dev.is_empty() {
            (
                format!("from_pod_policy on {veth} looks up the route (bpf_fib_lookup) and hands the packet to the device it names, skipping the bridge and the IP stack"),
                "fast path on".to_string(),
            )
        } else {
            (
                format!(
                    "from_pod_policy on {veth} looks up the route (bpf_fib_lookup), writes the VXLAN encapsulation {} would write (the peer VTEP's underlay address from its FDB) and sends the frame out of {} (bpf_redirect), skipping the bridge, the IP stack and the VXLAN device",
                    f.overlay_dev, f.underlay_dev
                ),
                format!("fast path on, {} peer VTEPs in overlay_peers", f.overlay_peers),
            )
        };
        b.add("src-node", "fastpath", "ok", detail, found, look, "");
        return;
    }
    let dip = d.ip.to_string();
    let here = f.pods.contains(&dip);
    b.add(
        "src-node",
        "fastpath",
        if here { "ok" } else { "warn" },
        if here {
            format!("from_pod_policy on {veth} judges {dip}'s ingress and redirects into it (bpf_redirect_peer), skipping the bridge")
        } else {
            format!("{dip} is not in local_pods: the bridge carries it (a pod made within the last second, or one without an anti-spoofing entry)")
        },
        format!("local_pods holds {} pods", f.pods.len()),
        look,
        "",
    );
}

/// With the fast path on the destination node: `from_overlay` on its VXLAN device's
/// ingress delivers into the pod.
fn fast_path_in_hop(b: &mut Builder, d: &End) {
    if d.st.datapath != "ebpf" {
        return;
    }
    let f = d.agent.policy().ok().and_then(|p| p.fast_path);
    let node = &d.node;
    let dip = d.ip.to_string();
    let (status, detail) = match &f {
        Some(f) if !f.underlay_dev.is_empty() && f.pods.contains(&dip) => ("ok", format!("from_underlay on {}'s ingress takes the VXLAN encapsulation off, judges {dip}'s ingress and redirects into it (bpf_redirect_peer); frames that still reach {} get the same from from_overlay there", f.underlay_dev, f.overlay_dev)),
        Some(f) if !f.overlay_dev.is_empty() && f.pods.contains(&dip) => ("ok", format!("from_overlay on {}'s ingress judges {dip}'s ingress and redirects into it (bpf_redirect_peer)", f.overlay_dev)),
        Some(f) if f.overlay_dev.is_empty() => ("ok", format!("no overlay program on {node} (host-gw): packets for {dip} take the node's IP stack and the bridge")),
        Some(_) => ("warn", format!("{dip} is not in {node}'s local_pods: the bridge carries it")),
        None => ("broken", format!("{node} runs --datapath ebpf but its fast path is not in place")),
    };
    b.add(
        "dst-node",
        "fastpath",
        status,
        detail,
        f.as_ref()
            .map(|f| {
                format!(
                    "overlay program on {:?}, underlay program on {:?}, {} pods",
                    f.overlay_dev,
                    f.underlay_dev,
                    f.pods.len()
                )
            })
            .unwrap_or_else(|| "(none)".into()),
        match &f {
            Some(f) if !f.underlay_dev.is_empty() => format!(
                "tc filter show dev {} ingress; tc filter show dev {} ingress   (on {node})",
                f.underlay_dev,
                podnet_conventions::VXLAN_DEV
            ),
            _ => format!(
                "tc filter show dev {} ingress   (on {node})",
                podnet_conventions::VXLAN_DEV
            ),
        },
        if status == "broken" {
            "restart podnetd with --policy-datapath ebpf --datapath ebpf; see its log"
        } else {
            ""
        },
    );
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
        if let Ok(st) = Client::new(sock).status() {
            statuses.push((n.clone(), sock.clone(), st));
        }
    }
    let node_of = |ip: Ipv4Addr| {
        statuses
            .iter()
            .find(|(_, _, st)| st.pod_cidr.parse::<Ipv4Net>().is_ok_and(|c| c.contains(ip)))
    };
    let (sn, ssock, sst) = node_of(sip)
        .with_context(|| format!("no node whose agent answers serves {sip}"))?
        .clone();
    let (dn, dsock, dst_st) = node_of(dip)
        .with_context(|| format!("no node whose agent answers serves {dip}"))?
        .clone();
    let cross = sn != dn;
    let (sc, dc) = (Client::new(&ssock), Client::new(&dsock));
    let s_state = sc.state()?;
    let d_state = if cross { dc.state()? } else { s_state.clone() };
    let s_end = End {
        ip: sip,
        pod: sc.pod(sip)?,
        node: sn.clone(),
        agent: sc,
        st: sst.clone(),
        state: s_state,
    };
    let d_end = End {
        ip: dip,
        pod: dc.pod(dip)?,
        node: dn.clone(),
        agent: dc,
        st: dst_st.clone(),
        state: d_state,
    };
    let (s_pod, d_pod, s_state) = (&s_end.pod, &d_end.pod, &s_end.state);
    let mut b = Builder { hops: vec![] };

    // ---- source pod
    pod_hops(&mut b, "src-pod", src, sip, s_pod, &sst, Some(dip));
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
    host_veth_hop(&mut b, "src-node", &sn, s_pod, &sst);
    fast_path_hop(&mut b, &s_end, &d_end, cross);
    bridge_hop(&mut b, "src-node", &sn, s_state, &sst);
    let vx = sst.vxlan_dev.clone();
    if cross && !vx.is_empty() {
        // First: a VXLAN device that is down takes its routes and neighbours with it.
        device_hop(
            &mut b,
            "src-node",
            "link",
            &sn,
            (s_state, &sst),
            &vx,
            "VXLAN device",
        );
    }
    if cross {
        between_nodes(&mut b, &s_end, &d_end)?;
    }
    if cross {
        fast_path_in_hop(&mut b, &d_end);
    }
    dst_node_hops(&mut b, &d_end, cross);

    // ---- destination pod
    pod_hops(&mut b, "dst-pod", dst, dip, d_pod, &dst_st, Some(sip));
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

/// One end of a trace: the pod, its node, and what that node's agent reports.
struct End {
    ip: Ipv4Addr,
    node: String,
    agent: Client,
    st: Status,
    state: NodeState,
    pod: PodReport,
}

/// Between the two nodes: the source node's route, forwarding and overlay entries
/// towards the destination, the destination's way back (read before probing, so a
/// broken return path is not blamed on the physical network), then the physical
/// network probed from the source.
fn between_nodes(b: &mut Builder, s: &End, d: &End) -> Result<()> {
    let (sn, sst, s_state, sip, sc) = (&s.node, &s.st, &s.state, s.ip, &s.agent);
    let (dn, dst_st, d_state, dip) = (&d.node, &d.st, &d.state, d.ip);
    let r = lookup(&s_state.routes, dip);
    let peer = sst.peers.iter().find(|p| &p.name == dn);
    let vx = sst.vxlan_dev.clone();
    let want = peer.map(|p| p.pod_cidr.clone()).unwrap_or_default();
    let bad = route_to_peer_mismatch(r, sst, peer);
    let ok = bad.is_none();
    b.check(
        "src-node",
        "route",
        ok,
        match &bad {
            None => format!("{dip} goes to peer {dn} ({want})"),
            Some(why) => format!("{dn}'s pod CIDR {want} is not routed to {dn}: {why}"),
        },
        r.map(route_text).unwrap_or_else(|| "(none)".into()),
        format!("ip route get {dip}   (on {sn})"),
        &route_fix(sst, peer),
    );
    let fwd = s_state.forwarding;
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
        overlay_hops(b, "src-node", sn, s_state, &vx, peer);
    }
    let wg = sst.wireguard.as_ref().map(|w| w.device.clone());
    if let Some(dev) = &wg {
        device_hop(
            b,
            "src-node",
            "wireguard",
            sn,
            (s_state, sst),
            dev,
            "WireGuard device",
        );
        wireguard_peer_hop(b, "src-node", sn, (sst, peer), Some(dst_st));
    }
    // ---- the destination node's way back to the source (read before probing, so
    // a broken return path is not blamed on the physical network)
    let mut back = Builder { hops: vec![] };
    if let Some(dev) = dst_st.wireguard.as_ref().map(|w| &w.device) {
        device_hop(
            &mut back,
            "dst-node",
            "wireguard",
            dn,
            (d_state, dst_st),
            dev,
            "WireGuard device",
        );
    }
    if !vx.is_empty() {
        device_hop(
            &mut back,
            "dst-node",
            "link",
            dn,
            (d_state, dst_st),
            &vx,
            "VXLAN device",
        );
    }
    let fwd = d_state.forwarding;
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
    let src_peer = dst_st.peers.iter().find(|p| &p.name == sn);
    let back_cidr = src_peer.map(|p| p.pod_cidr.clone()).unwrap_or_default();
    let br = lookup(&d_state.routes, sip);
    let bad = route_to_peer_mismatch(br, dst_st, src_peer);
    let ok = bad.is_none();
    back.check(
        "dst-node",
        "route",
        ok,
        match &bad {
            None => format!("replies to {sip} go back to {sn} ({back_cidr})"),
            Some(why) => {
                format!("{dn} does not route replies back to {sn}'s pod CIDR {back_cidr}: {why}")
            }
        },
        br.map(route_text).unwrap_or_else(|| "(none)".into()),
        format!("ip route get {sip}   (on {dn})"),
        &route_fix(dst_st, src_peer),
    );
    if !vx.is_empty() {
        overlay_hops(&mut back, "dst-node", dn, d_state, &vx, src_peer);
    }
    if dst_st.wireguard.is_some() {
        wireguard_peer_hop(&mut back, "dst-node", dn, (dst_st, src_peer), Some(sst));
    }
    let back_ok = !back.hops.iter().any(|h| h.status == "broken");
    // ---- the physical network, probed from the source node
    let overlay = match (&sst.wireguard, vx.is_empty()) {
        (Some(_), _) => Some(Overlay::WireGuard),
        (None, false) => Some(Overlay::Vxlan),
        (None, true) => None,
    };
    underlay_hops(b, sn, sc, sst, peer, overlay, back_ok)?;
    b.hops.extend(back.hops);
    Ok(())
}

/// The destination node: its route to the pod's bridge, the bridge, the pod's
/// neighbour entry, the pod's host veth.
fn dst_node_hops(b: &mut Builder, d: &End, cross: bool) {
    let (dn, dst_st, d_state, dip, d_pod) = (&d.node, &d.st, &d.state, d.ip, &d.pod);
    let d_bridge = dst_st.bridge.clone();
    let dr = lookup(&d_state.routes, dip);
    let ok = dr.is_some_and(|r| r.dev.as_deref() == Some(d_bridge.as_str()));
    b.check(
        "dst-node",
        "route",
        ok,
        if ok {
            format!("{dip} is on {d_bridge}")
        } else {
            format!("{dn} does not route {dip} to its bridge {d_bridge}")
        },
        dr.map(route_text).unwrap_or_else(|| "(none)".into()),
        format!("ip route get {dip}   (on {dn})"),
        "the bridge must hold the gateway address of the node's pod CIDR; restart podnetd",
    );
    if cross {
        bridge_hop(b, "dst-node", dn, d_state, dst_st);
    }
    let n = d_state.neigh.iter().find(|n| n.ip == dip);
    let failed = n.is_some_and(|n| n.state == "FAILED");
    b.add(
        "dst-node",
        "neigh",
        if failed { "broken" } else { "ok" },
        match n {
            Some(_) if failed => format!("{dn} could not resolve {dip} (ARP FAILED)"),
            Some(n) => format!("{dip} is at {}", n.mac.as_deref().unwrap_or("?")),
            None => format!("{dip} not resolved yet; the first packet resolves it"),
        },
        n.map(|n| neigh_text(n, None))
            .unwrap_or_else(|| "(none)".into()),
        format!("ip neigh show {dip}   (on {dn})"),
        if failed {
            "the pod does not answer ARP: check its link and address (next hops)"
        } else {
            ""
        },
    );
    host_veth_hop(b, "dst-node", dn, d_pod, dst_st);
}

/// The command that runs `ip c` in the pod `pod` describes.
fn cmd(pod: &PodReport, c: &str, name: &str) -> String {
    match pod.netns.as_deref() {
        Some(p) if p.starts_with("/run/netns/") => {
            format!("ip -n {} {c}   (pod {name})", &p["/run/netns/".len()..])
        }
        Some(p) => format!("nsenter --net={p} ip {c}   (pod {name})"),
        None => format!("ip {c}   (inside pod {name})"),
    }
}

/// The pod's own end as doctor checks it for every pod: found, address, link (with
/// the MTU and MAC its node gives pods), on the node whose agent status is `node`.
pub(crate) fn pod_end(pod: &PodReport, ip: Ipv4Addr, node: &Status) -> Vec<Hop> {
    let mut b = Builder { hops: vec![] };
    pod_hops(&mut b, "pod", &ip.to_string(), ip, pod, node, None);
    b.hops
}

/// The gateway podnet gives the pods of the node whose agent status is `node`: the
/// first address of its pod CIDR (the bridge's).
pub(crate) fn pod_gateway(node: &Status) -> Option<Ipv4Addr> {
    node.pod_cidr.parse::<Ipv4Net>().ok().and_then(|c| c.nth(1))
}

/// What is wrong with a link's MTU and MAC against what podnet gives it (`None`: right).
fn link_mismatch(l: &PodLink, name: &str, mtu: u32, mac: [u8; 6]) -> Option<String> {
    let want_mac = podnet_netlink::fmt_mac(&mac);
    if mtu != 0 && l.mtu != mtu {
        return Some(format!(
            "{name} has MTU {}; its node gives pods MTU {mtu}",
            l.mtu
        ));
    }
    if !l.mac.eq_ignore_ascii_case(&want_mac) {
        return Some(format!(
            "{name} has MAC {}; podnet gives it {want_mac}",
            l.mac
        ));
    }
    None
}

/// The pod's own hops; every value is held against what its node (agent status
/// `node`) gives pods: MTU, MAC, gateway.
fn pod_hops(
    b: &mut Builder,
    where_: &str,
    name: &str,
    ip: Ipv4Addr,
    pod: &PodReport,
    node: &Status,
    peer: Option<Ipv4Addr>,
) {
    let Some(p) = pod.pod.as_ref().filter(|_| pod.found) else {
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
    };
    if let Some(e) = &p.error {
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
    let ifname = pod.ifname.clone().unwrap_or_else(|| "eth0".into());
    let has = p.addrs.iter().any(|a| a.starts_with(&format!("{ip}/")));
    b.check(
        where_,
        "addr",
        has,
        if has {
            format!("{ip} on {ifname}")
        } else {
            format!("{ifname} does not hold {ip}")
        },
        p.addrs.join(", "),
        cmd(pod, &format!("addr show {ifname}"), name),
        "delete and re-add the pod (CNI DEL + ADD); its address was removed",
    );
    let up = p.link.as_ref().is_some_and(|l| l.up);
    let wrong = p
        .link
        .as_ref()
        .and_then(|l| link_mismatch(l, &ifname, node.mtu, podnet_conventions::pod_mac(ip)));
    b.check(
        where_,
        "link",
        up && wrong.is_none(),
        match (&wrong, up) {
            (_, false) => format!("{ifname} is down"),
            (Some(w), true) => w.clone(),
            (None, true) => format!("{ifname} is up"),
        },
        p.link
            .as_ref()
            .map(|l| link_text(&l.name, l.up, l.mtu, None))
            .unwrap_or_else(|| "(none)".into()),
        cmd(pod, &format!("link show {ifname}"), name),
        &match wrong {
            Some(_) => format!(
                "ip link set {ifname} mtu {} (inside the pod), or DEL and ADD the pod",
                node.mtu
            ),
            None => format!("ip link set {ifname} up (inside the pod)"),
        },
    );
    let Some(other) = peer else { return };
    let r = lookup(&p.routes, other);
    let want_gw = pod_gateway(node);
    let gw = r.and_then(|r| r.gateway);
    // A gateway other than the bridge's sends the pod's packets nowhere.
    let wrong_gw = matches!((gw, want_gw), (Some(g), Some(w)) if g != w);
    b.check(
        where_,
        "route",
        r.is_some() && !wrong_gw,
        match (r, gw) {
            (Some(_), Some(g)) if wrong_gw => format!(
                "{other} via {g}, but the pod's gateway is {} (its node's bridge)",
                want_gw.map(|w| w.to_string()).unwrap_or_default()
            ),
            (Some(_), Some(g)) => format!("{other} via {g}"),
            (Some(_), None) => format!("{other} via the link"),
            (None, _) => format!("the pod has no route to {other} (no default route)"),
        },
        r.map(route_text).unwrap_or_else(|| "(none)".into()),
        cmd(pod, &format!("route get {other}"), name),
        "re-add the default route via the bridge gateway (ip route add default via <gateway>), or DEL and ADD the pod",
    );
    if let Some(gw) = gw {
        let n = p.neigh.iter().find(|n| n.ip == gw);
        let failed = n.is_some_and(|n| n.state == "FAILED");
        b.add(
            where_,
            "neigh",
            if failed { "broken" } else { "ok" },
            match n {
                Some(_) if failed => format!("the gateway {gw} does not answer ARP"),
                Some(n) => format!("gateway {gw} is at {}", n.mac.as_deref().unwrap_or("?")),
                None => format!("gateway {gw} not resolved yet; the first packet resolves it"),
            },
            n.map(|n| neigh_text(n, None))
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

/// The pod's host veth: up, on the node's bridge, with the node's pod MTU (agent
/// status `st`).
fn host_veth_hop(b: &mut Builder, where_: &str, node: &str, pod: &PodReport, st: &Status) {
    let Some(h) = pod.host_veth.as_ref().filter(|_| pod.found) else {
        return;
    };
    let bridge = &st.bridge;
    let name = &h.name;
    let on = h.master.as_deref() == Some(bridge.as_str());
    let mtu_ok = st.mtu == 0 || h.mtu == st.mtu;
    b.check(
        where_,
        "link",
        h.up && on && mtu_ok,
        if !h.up {
            format!("host veth {name} is down")
        } else if !on {
            format!("host veth {name} is not on bridge {bridge}")
        } else if !mtu_ok {
            format!(
                "host veth {name} has MTU {}; its node gives pods MTU {}",
                h.mtu, st.mtu
            )
        } else {
            format!("host veth {name} is up on {bridge}")
        },
        link_text(name, h.up, h.mtu, h.master.as_deref()),
        format!("ip -d link show {name}   (on {node})"),
        &format!("ip link set {name} up master {bridge}   (on {node})"),
    );
}

/// What is wrong with a node device's values against what its agent (status `st`)
/// makes it: the bridge with the pod MTU and the gateway's MAC, the VXLAN device with
/// the pod MTU, the VTEP MAC, the VXLAN port and the underlay address. `None`: right.
pub(crate) fn device_mismatch(l: &LinkState, st: &Status) -> Option<String> {
    let name = &l.name;
    if st.mtu != 0 && l.mtu != st.mtu {
        return Some(format!(
            "{name} has MTU {}; its agent gives it {} (the pod MTU)",
            l.mtu, st.mtu
        ));
    }
    let want_mac = if *name == st.bridge {
        pod_gateway(st).map(|g| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(g)))
    } else if *name == st.vxlan_dev {
        Some(st.vtep_mac.clone()).filter(|m| !m.is_empty())
    } else {
        // The WireGuard device is a TUN device: no MAC.
        None
    };
    if let Some(m) = want_mac.filter(|m| !l.mac.eq_ignore_ascii_case(m)) {
        return Some(format!("{name} has MAC {}; its agent gives it {m}", l.mac));
    }
    if let Some(v) = &l.vxlan {
        if v.port != st.vxlan_port {
            return Some(format!(
                "{name} uses UDP port {}; the nodes use {}",
                v.port, st.vxlan_port
            ));
        }
        let local = v.local.map(|a| a.to_string()).unwrap_or_default();
        if !st.underlay_ip.is_empty() && local != st.underlay_ip {
            return Some(format!(
                "{name} sends from {local}; the node's underlay address is {}",
                st.underlay_ip
            ));
        }
    }
    None
}

/// A node-level device (bridge, VXLAN device) that must exist, be up, and hold the
/// values its agent gives it.
fn device_hop(
    b: &mut Builder,
    where_: &str,
    what: &str,
    node: &str,
    (state, st): (&NodeState, &Status),
    dev: &str,
    label: &str,
) {
    let l = link(state, dev);
    let up = l.is_some_and(|l| l.up);
    let wrong = l.and_then(|l| device_mismatch(l, st));
    let is = if l.is_none() {
        "missing".to_string()
    } else if !up {
        "down".to_string()
    } else if let Some(w) = &wrong {
        format!("up, but {w}")
    } else {
        "up".to_string()
    };
    b.check(
        where_,
        what,
        up && wrong.is_none(),
        format!("{label} {dev} on {node} is {is}"),
        l.map(|l| link_text(&l.name, l.up, l.mtu, l.master.as_deref()))
            .unwrap_or_else(|| "(none)".into()),
        format!("ip -d link show {dev}   (on {node})"),
        &match wrong {
            Some(_) => format!(
                "restart podnetd on {node}: it recreates {dev} as configured (or delete {dev}; it is remade within a second when repair is on)"
            ),
            None => format!("ip link set {dev} up (podnetd does it when repair is on)"),
        },
    );
}

fn bridge_hop(b: &mut Builder, where_: &str, node: &str, state: &NodeState, st: &Status) {
    device_hop(b, where_, "bridge", node, (state, st), &st.bridge, "bridge");
}

/// The neighbour and FDB entries a node needs to reach `peer` through `vx`.
fn overlay_hops(
    b: &mut Builder,
    where_: &str,
    node: &str,
    state: &NodeState,
    vx: &str,
    peer: Option<&PeerStatus>,
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
    let vtep: Option<Ipv4Addr> = p.pod_cidr.parse::<Ipv4Net>().ok().map(|c| c.network());
    let vtep_s = vtep.map(|v| v.to_string()).unwrap_or_default();
    let mac = &p.vtep_mac;
    let n = state
        .neigh
        .iter()
        .find(|n| Some(n.ip) == vtep && n.dev == vx);
    let ok = n.is_some_and(|n| n.mac.as_deref() == Some(mac.as_str()));
    b.check(
        where_, "neigh", ok,
        if ok { format!("peer VTEP {vtep_s} is at {mac}") } else { format!("no neighbour entry {vtep_s} → {mac} on {vx}") },
        n.map(|n| neigh_text(n, Some(vx))).unwrap_or_else(|| "(none)".into()),
        format!("ip neigh show dev {vx}   (on {node})"),
        &format!("ip neigh replace {vtep_s} lladdr {mac} dev {vx} nud permanent (podnetd does it when repair is on)"),
    );
    let under = &p.underlay_ip;
    let f: Option<&FdbState> = state.fdb.iter().find(|f| &f.mac == mac);
    let ok = f.is_some_and(|f| f.dst.map(|d| d.to_string()).as_deref() == Some(under.as_str()));
    b.check(
        where_, "fdb", ok,
        if ok { format!("{mac} is reached through {under}") } else { format!("no FDB entry {mac} → {under} on {vx}") },
        f.map(|f| format!("{} dev {vx} dst {} self permanent", f.mac, f.dst.map(|d| d.to_string()).unwrap_or_default())).unwrap_or_else(|| "(none)".into()),
        format!("bridge fdb show dev {vx}   (on {node})"),
        &format!("bridge fdb replace {mac} dev {vx} dst {under} self permanent (podnetd does it when repair is on)"),
    );
}

/// The tunnel a node's traffic to peers crosses the physical network in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overlay {
    Vxlan,
    WireGuard,
}

impl Overlay {
    /// Its name, and the UDP port packets to `peer` go to.
    pub(crate) fn describe(self, st: &Status, peer: &PeerStatus) -> (&'static str, u16) {
        match self {
            Overlay::Vxlan => ("VXLAN", st.vxlan_port),
            Overlay::WireGuard => ("WireGuard", peer.wireguard_port),
        }
    }
}

fn underlay_hops(
    b: &mut Builder,
    node: &str,
    agent: &Client,
    st: &Status,
    peer: Option<&PeerStatus>,
    overlay: Option<Overlay>,
    return_ok: bool,
) -> Result<()> {
    let Some(p) = peer else { return Ok(()) };
    let under = p.underlay_ip.clone();
    let ping = |ip: &str, size: u32| -> Result<String> {
        let r = agent.ping(ip.parse()?, u16::try_from(size).unwrap_or(u16::MAX))?;
        Ok(echo_text(&r.result))
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
    if let Some(o) = overlay {
        let (label, port) = o.describe(st, p);
        let vtep = p.pod_cidr.split('/').next().unwrap_or("").to_string();
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
                "ok" => format!("{label} (UDP {port}) carries packets to {under} and back"),
                "broken" => format!("the underlay reaches {under} but {label} (UDP {port}) does not get through: the port is blocked on the way"),
                _ => format!("{label} probe failed, but an overlay entry on one of the two nodes is already broken (listed)"),
            },
            format!("ping {vtep} (through the overlay): {over}"),
            format!("ping -c1 {vtep}   (on {node}); tcpdump -ni eth0 udp port {port}"),
            &fix,
        );
    }
    let (mtu, overhead) = (st.mtu, st.overlay_overhead);
    let size = mtu + overhead - 28;
    let big = ping(&under, size)?;
    b.check(
        "underlay", "mtu", big == "reply",
        if big == "reply" { format!("the physical path carries {} bytes with DF set (pod MTU {mtu} + {overhead})", mtu + overhead) } else { format!("the physical path drops {}-byte packets with DF set ({big}): smaller than pod MTU {mtu} + {overhead} of overlay", mtu + overhead) },
        format!("ping -M do -s {size} {under}: {big}"),
        format!("ping -M do -s {size} {under}   (on {node})"),
        "raise the physical network's MTU, or lower the pod MTU (podnetd sets it to the underlay MTU less its overlay's overhead: 50 for VXLAN, 60 for WireGuard)",
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
