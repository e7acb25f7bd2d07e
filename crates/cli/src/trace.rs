//! `podnet trace SRC DST`: the path a packet takes from one pod to another, hop by hop,
//! each hop read from the real kernel state of the node it is on, plus active probes
//! where reading is not enough (the VXLAN port, the path MTU).
//!
//! Each node's agent reports its own state and runs its own probes (its local API,
//! `crate::agent::api`); this module only asks and combines. A hop is `ok`, `broken`,
//! `warn` or `skipped`; the first broken hop in path order is the verdict.
//!
//! Every neighbour and FDB entry on the path is held against the MAC its owner really
//! has, read from the owner: a pod's entry for its gateway against its node's bridge,
//! a node's entry for a pod against the pod's own interface, a VXLAN entry against the
//! VTEP MAC and underlay address the peer's own agent reports (not only the datastore's
//! record). A wrong one is a poisoned entry — how the lesson's ARP attack shows — and
//! the hop names whose MAC it holds ([`Macs::owner`]). Every device on the path (bridge,
//! host veth, pod interface, VXLAN device, underlay device) is named as itself when it
//! is down; what merely follows from it (a connected route the kernel removed, an entry
//! that cannot resolve) is a warning that points at it, never the verdict.

use anyhow::{Context, Result};
use podnet_api::Echo;
use podnet_api::{
    Client, FdbState, LinkState, NeighState, NodeState, PodInside, PodLink, PodReport, RouteState,
};
use podnet_api::{PeerStatus, Status};
use podnet_cni_spec::Ipv4Net;
use podnet_conventions::{Datapath, PolicyDatapath};
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
    /// The name of the pod with address `ip`, if this cluster knows pod names.
    fn pod_name(&self, _ip: Ipv4Addr) -> Option<String> {
        None
    }
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
    let s = podnet_conventions::now().saturating_sub(t);
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
) -> std::result::Result<&'a podnet_api::WireGuardPeerStatus, String> {
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

/// The address podnet's MAC scheme put after `prefix` in `mac` (`0a:58` a pod's
/// interface or its node's bridge, `0a:5a` a pod's host veth, `0a:59` a VTEP), if
/// `mac` follows the scheme.
pub(crate) fn mac_addr(mac: &str, prefix: [u8; 2]) -> Option<Ipv4Addr> {
    let m = podnet_netlink::parse_mac(mac)?;
    (m[..2] == prefix).then(|| Ipv4Addr::new(m[2], m[3], m[4], m[5]))
}

/// First two bytes of a pod interface's MAC ([`podnet_conventions::pod_mac`]).
const POD_MAC_PREFIX: [u8; 2] = [0x0a, 0x58];
/// First two bytes of a host veth's MAC ([`podnet_conventions::host_mac`]).
const HOST_MAC_PREFIX: [u8; 2] = [0x0a, 0x5a];

fn same_mac(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Who has which MAC on one node, asked of its agent: its bridge, its VXLAN device,
/// its host veths, and (through each host veth) the pods' own interfaces. Used to
/// say whose MAC a wrong neighbour entry holds.
pub(crate) struct Macs<'a> {
    pub(crate) node: &'a str,
    pub(crate) state: &'a NodeState,
    pub(crate) st: &'a Status,
    pub(crate) agent: &'a Client,
    /// Pod names by address, where the cluster knows them.
    pub(crate) agents: &'a dyn Agents,
}

impl Macs<'_> {
    /// The MAC the node's bridge really has (the kernel's), or the one podnet gives
    /// it when the bridge is missing (the gateway's pod MAC).
    pub(crate) fn bridge_mac(&self) -> String {
        link(self.state, &self.st.bridge)
            .map(|l| l.mac.clone())
            .or_else(|| {
                pod_gateway(self.st)
                    .map(|g| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(g)))
            })
            .unwrap_or_default()
    }

    /// A pod's name for people: its name if known, else its address.
    pub(crate) fn pod_label(&self, ip: Ipv4Addr) -> String {
        match self.agents.pod_name(ip) {
            Some(n) => format!("pod {n}"),
            None => format!("pod {ip}"),
        }
    }

    /// Whose MAC `mac` is on this node, as a phrase (`pod p1b's MAC (10.244.0.3)`,
    /// `bridge podnet0's MAC`, `host veth pn…'s MAC (pod p1b)`…), with the host veth
    /// of the pod that has it, if a pod here has it. `None`: nobody's here.
    pub(crate) fn owner(&self, mac: &str) -> Option<(String, Option<String>)> {
        if let Some(l) = self.state.links.iter().find(|l| same_mac(&l.mac, mac)) {
            let veth = mac_addr(mac, HOST_MAC_PREFIX).map(|_| l.name.clone());
            let what = if l.name == self.st.bridge {
                format!("bridge {}'s MAC", l.name)
            } else if l.name == self.st.vxlan_dev {
                format!("VXLAN device {}'s MAC", l.name)
            } else if let Some(ip) = mac_addr(mac, HOST_MAC_PREFIX) {
                format!("host veth {}'s MAC ({})", l.name, self.pod_label(ip))
            } else {
                format!("{}'s MAC", l.name)
            };
            return Some((what, veth));
        }
        // The pods' own interfaces, each found through its host veth.
        for l in &self.state.links {
            let Some(ip) = mac_addr(&l.mac, HOST_MAC_PREFIX) else {
                continue;
            };
            let real = self
                .agent
                .pod(ip)
                .ok()
                .and_then(|p| p.pod)
                .and_then(|i| i.link)
                .map(|l| l.mac);
            if real.is_some_and(|m| same_mac(&m, mac)) {
                return Some((
                    format!("{}'s MAC ({ip})", self.pod_label(ip)),
                    Some(l.name.clone()),
                ));
            }
        }
        // Not on this node: podnet's scheme still says whose it would be.
        mac_addr(mac, POD_MAC_PREFIX).map(|ip| {
            (
                format!("the MAC podnet gives {} ({ip})", self.pod_label(ip)),
                None,
            )
        })
    }
}

/// A neighbour entry that holds a MAC other than its owner's.
pub(crate) struct Poisoned {
    /// Both MACs, the wrong one's owner if known, how the entry came to be.
    pub(crate) detail: String,
    /// The host veth of the pod whose MAC it holds, when that pod is on the node.
    pub(crate) culprit_veth: Option<String>,
}

/// What is wrong with neighbour entry `n` (on `node`, for `whose`, e.g. "bridge
/// podnet0" or "pod p1b") that must hold `want`: `None` when it holds `want` or holds
/// nothing yet. The detail names both MACs, the owner of the wrong one when it is
/// known, and how the entry came to be (a permanent entry is written, not learned).
pub(crate) fn poisoned(
    n: &NeighState,
    what: &str,
    whose: &str,
    want: &str,
    macs: &Macs,
) -> Option<Poisoned> {
    let found = n.mac.as_deref()?;
    if want.is_empty() || same_mac(found, want) {
        return None;
    }
    let (owner, culprit_veth) = match macs.owner(found) {
        Some((o, veth)) => (format!("which is {o}"), veth),
        None => (format!("a MAC nothing on {} has", macs.node), None),
    };
    let how = if n.state == "PERMANENT" {
        "the entry was poisoned: it is permanent, so it was written in that namespace (by hand or by a process there), not learned from ARP"
    } else {
        "the entry was poisoned (ARP spoofing?): something answered ARP for an address that is not its own"
    };
    Some(Poisoned {
        detail: format!("{what} holds {found}, {owner}, not {whose}'s {want}: {how}"),
        culprit_veth,
    })
}

/// The fix for a poisoned entry: delete it (`del`; the next packet resolves it
/// again), and check anti-spoofing on the pod whose MAC it held, or on every pod of
/// `macs`'s node when that pod is not known.
pub(crate) fn poisoned_fix(del: &str, macs: &Macs, p: &Poisoned) -> String {
    let veth = p.culprit_veth.as_deref().unwrap_or("<host veth>");
    format!(
        "{del} (the next packet resolves it again from its real owner); then check anti-spoofing on {node}: {whom} must carry the {prog} filter (tc filter show dev {veth} ingress, on {node}), which drops ARP that claims an address or MAC not the pod's own (`podnet observe` lists those drops as arp-spa / arp-sha)",
        node = macs.node,
        whom = if p.culprit_veth.is_some() { format!("host veth {veth}") } else { "every pod's host veth".into() },
        prog = podnet_netlink::antispoof::PROG_NAME,
    )
}

/// Whether a neighbour entry failed to resolve (or is still trying).
fn unresolved(n: &NeighState) -> bool {
    n.state == "FAILED" || n.state == "INCOMPLETE"
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
    if v.datapath == PolicyDatapath::None {
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
    if let Some(why) = &v.refused {
        b.check(where_, "policy", false,
            format!("{ip} is closed on {node}: its agent left it closed: {why}"),
            "(refused: too many entries)".into(), cmd,
            "split or simplify the policies named (fewer ipBlock excepts, fewer ports); `podnet policy stats` lists every pod left closed");
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
    if s.st.datapath != Datapath::Ebpf {
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
    if d.st.datapath != Datapath::Ebpf {
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
    // Pods by name where the cluster knows it, else by what the caller gave.
    let label = |given: &str, ip: Ipv4Addr| match agents.pod_name(ip) {
        Some(n) => format!("pod {n}"),
        None => format!("pod {given}"),
    };
    let s_end = End {
        ip: sip,
        name: label(src, sip),
        pod: sc.pod(sip)?,
        node: sn.clone(),
        agent: sc,
        st: sst.clone(),
        state: s_state,
    };
    let d_end = End {
        ip: dip,
        name: label(dst, dip),
        pod: dc.pod(dip)?,
        node: dn.clone(),
        agent: dc,
        st: dst_st.clone(),
        state: d_state,
    };
    let (s_pod, d_pod, s_state) = (&s_end.pod, &d_end.pod, &s_end.state);
    let (s_macs, d_macs) = (s_end.macs(agents), d_end.macs(agents));
    // Every node's own VTEP MAC and underlay address, as its agent reports them: whose
    // a wrong overlay entry holds.
    let vteps: Vec<Vtep> = statuses
        .iter()
        .map(|(n, _, st)| Vtep {
            node: n.clone(),
            mac: st.vtep_mac.clone(),
            underlay: st.underlay_ip.clone(),
        })
        .collect();
    let mut b = Builder { hops: vec![] };

    // ---- source pod
    let real_mac = |p: &PodReport, ip: Ipv4Addr| {
        p.pod
            .as_ref()
            .and_then(|i| i.link.as_ref())
            .map(|l| l.mac.clone())
            .unwrap_or_else(|| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(ip)))
    };
    let s_path = PodPath {
        macs: &s_macs,
        peer_mac: (!cross).then(|| (d_end.name.clone(), real_mac(d_pod, dip))),
        down: pod_down(&s_macs, s_pod, &s_end.name),
    };
    pod_hops(
        &mut b,
        "src-pod",
        src,
        sip,
        s_pod,
        &sst,
        Some(dip),
        Some(&s_path),
    );
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
    host_veth_hop(&mut b, "src-node", &sn, s_pod, &sst, &s_end.name);
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
        between_nodes(&mut b, &s_end, &d_end, &vteps)?;
    }
    if cross {
        fast_path_in_hop(&mut b, &d_end);
    }
    dst_node_hops(&mut b, &d_end, &d_macs, cross);

    // ---- destination pod
    let d_path = PodPath {
        macs: &d_macs,
        peer_mac: (!cross).then(|| (s_end.name.clone(), real_mac(s_pod, sip))),
        down: pod_down(&d_macs, d_pod, &d_end.name),
    };
    pod_hops(
        &mut b,
        "dst-pod",
        dst,
        dip,
        d_pod,
        &dst_st,
        Some(sip),
        Some(&d_path),
    );
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
    /// The pod for people: `pod p1a`.
    name: String,
    node: String,
    agent: Client,
    st: Status,
    state: NodeState,
    pod: PodReport,
}

impl End {
    fn macs<'a>(&'a self, agents: &'a dyn Agents) -> Macs<'a> {
        Macs {
            node: &self.node,
            state: &self.state,
            st: &self.st,
            agent: &self.agent,
            agents,
        }
    }
}

/// One node's VTEP as its own agent reports it.
pub(crate) struct Vtep {
    pub(crate) node: String,
    pub(crate) mac: String,
    pub(crate) underlay: String,
}

/// Between the two nodes: the source node's route, forwarding and overlay entries
/// towards the destination, the destination's way back (read before probing, so a
/// broken return path is not blamed on the physical network), then the physical
/// network probed from the source.
fn between_nodes(b: &mut Builder, s: &End, d: &End, vteps: &[Vtep]) -> Result<()> {
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
        overlay_hops(b, "src-node", sn, s_state, &vx, (peer, d), vteps);
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
        overlay_hops(
            &mut back,
            "dst-node",
            dn,
            d_state,
            &vx,
            (src_peer, s),
            vteps,
        );
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
    underlay_dev_hops(b, s, d);
    underlay_hops(b, sn, sc, sst, peer, overlay, back_ok)?;
    b.hops.extend(back.hops);
    Ok(())
}

/// The destination node: its bridge, its route to the pod's bridge, the pod's
/// neighbour entry (held against the pod's real MAC), the pod's host veth. The bridge
/// comes first: a bridge that is down takes its connected route with it, and a route
/// missing for that reason is not the cause.
fn dst_node_hops(b: &mut Builder, d: &End, macs: &Macs, cross: bool) {
    let (dn, dst_st, d_state, dip, d_pod) = (&d.node, &d.st, &d.state, d.ip, &d.pod);
    let d_bridge = dst_st.bridge.clone();
    if cross {
        bridge_hop(b, "dst-node", dn, d_state, dst_st);
    }
    let bridge_down = match link(d_state, &d_bridge) {
        None => Some(format!("bridge {d_bridge} on {dn} is missing")),
        Some(l) if !l.up => Some(format!("bridge {d_bridge} on {dn} is down")),
        Some(_) => None,
    };
    let dr = lookup(&d_state.routes, dip);
    let ok = dr.is_some_and(|r| r.dev.as_deref() == Some(d_bridge.as_str()));
    let (status, detail) = match (&bridge_down, ok) {
        (_, true) => ("ok", format!("{dip} is on {d_bridge}")),
        (Some(why), false) => (
            "warn",
            format!("{dn} does not route {dip} to {d_bridge}: the kernel removed the bridge's connected route because {why} (its own hop)"),
        ),
        (None, false) => (
            "broken",
            format!("{dn} does not route {dip} to its bridge {d_bridge}"),
        ),
    };
    b.add(
        "dst-node",
        "route",
        status,
        detail,
        dr.map(route_text).unwrap_or_else(|| "(none)".into()),
        format!("ip route get {dip}   (on {dn})"),
        if status == "broken" {
            "the bridge must hold the gateway address of the node's pod CIDR; restart podnetd"
        } else {
            ""
        },
    );
    b.hops.push(node_neigh_for_pod(
        "dst-node", macs, dip, d_pod, &d.name, cross,
    ));
    host_veth_hop(b, "dst-node", dn, d_pod, dst_st, &d.name);
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
    pod_hops(&mut b, "pod", &ip.to_string(), ip, pod, node, None, None);
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
#[allow(clippy::too_many_arguments)]
fn pod_hops(
    b: &mut Builder,
    where_: &str,
    name: &str,
    ip: Ipv4Addr,
    pod: &PodReport,
    node: &Status,
    peer: Option<Ipv4Addr>,
    path: Option<&PodPath>,
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
    // The entry the pod's frames go out with: its gateway's (the bridge), or on the
    // same node the other pod's own.
    let (target, whose, want) = match (gw, path) {
        (Some(g), Some(pp)) => (g, format!("bridge {}", node.bridge), pp.macs.bridge_mac()),
        (Some(g), None) => (
            g,
            format!("bridge {}", node.bridge),
            podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(g)),
        ),
        (
            None,
            Some(PodPath {
                peer_mac: Some((w, m)),
                ..
            }),
        ) => (other, w.clone(), m.clone()),
        (None, _) => return,
    };
    let role = if gw.is_some() { "gateway " } else { "" };
    let down = path.and_then(|pp| pp.down.as_deref());
    let h = pod_neigh_hop(
        where_,
        name,
        pod,
        p,
        (target, role),
        (&whose, &want),
        path.map(|pp| pp.macs),
        down,
    );
    b.hops.push(h);
}

/// What a pod's neighbour entries on a path must hold, and what to blame otherwise.
struct PodPath<'a> {
    /// The pod's node: who has which MAC there.
    macs: &'a Macs<'a>,
    /// On the same node, without a gateway: the other pod (`pod p1b`) and its real MAC.
    peer_mac: Option<(String, String)>,
    /// A device between the pod and its node's bridge that is down (named by its own
    /// hop): a failed entry follows from it.
    down: Option<String>,
}

/// A pod's neighbour entry for `target` (its gateway when `role` is `"gateway "`, else
/// the other pod), held against the MAC its owner really has (`whose`, `want`).
#[allow(clippy::too_many_arguments)]
fn pod_neigh_hop(
    where_: &str,
    name: &str,
    pod: &PodReport,
    p: &PodInside,
    (target, role): (Ipv4Addr, &str),
    (whose, want): (&str, &str),
    macs: Option<&Macs>,
    down: Option<&str>,
) -> Hop {
    let ifname = pod.ifname.clone().unwrap_or_else(|| "eth0".into());
    let n = p.neigh.iter().find(|n| n.ip == target);
    let bad = n.zip(macs).and_then(|(n, m)| {
        poisoned(
            n,
            &format!("the pod's entry for {role}{target}"),
            whose,
            want,
            m,
        )
    });
    let (status, detail, fix) = match (n, bad.zip(macs)) {
        (_, Some((bad, m))) => (
            "broken",
            bad.detail.clone(),
            poisoned_fix(
                &cmd(pod, &format!("neigh del {target} dev {ifname}"), name),
                m,
                &bad,
            ),
        ),
        (Some(n), _) if unresolved(n) && down.is_some() => (
            "warn",
            format!(
                "{role}{target} does not resolve ({}): {} (its own hop)",
                n.state,
                down.unwrap_or_default()
            ),
            String::new(),
        ),
        (Some(n), _) if n.state == "FAILED" => (
            "broken",
            format!("{role}{target} does not answer ARP"),
            "the pod's host veth or the bridge is down (see the node hops)".into(),
        ),
        (Some(n), _) => (
            "ok",
            format!(
                "{role}{target} is at {} ({whose})",
                n.mac.as_deref().unwrap_or("?")
            ),
            String::new(),
        ),
        (None, _) => (
            "ok",
            format!("{role}{target} not resolved yet; the first packet resolves it"),
            String::new(),
        ),
    };
    Hop {
        where_: where_.into(),
        what: "neigh".into(),
        status: status.into(),
        detail,
        kernel: n
            .map(|n| neigh_text(n, Some(&ifname)))
            .unwrap_or_else(|| "(none)".into()),
        cmd: cmd(pod, &format!("neigh show {target}"), name),
        fix,
    }
}

/// The pod's entry for its gateway as doctor checks it for every pod: it must hold
/// the MAC of its node's bridge. `None`: the pod has no default route (its own check).
/// `label`: the pod for people (`pod p1a`).
pub(crate) fn pod_gateway_neigh(pod: &PodReport, label: &str, macs: &Macs) -> Option<Hop> {
    let name = label.strip_prefix("pod ").unwrap_or(label);
    let p = pod
        .pod
        .as_ref()
        .filter(|i| pod.found && i.error.is_none())?;
    let gw = p
        .routes
        .iter()
        .find(|r| r.dst == "default")
        .and_then(|r| r.gateway)?;
    Some(pod_neigh_hop(
        "pod",
        name,
        pod,
        p,
        (gw, "gateway "),
        (&format!("bridge {}", macs.st.bridge), &macs.bridge_mac()),
        Some(macs),
        pod_down(macs, pod, label).as_deref(),
    ))
}

/// A device between the pod and its node's bridge that is down or missing, named for
/// people: the bridge, the pod's host veth, the pod's own interface.
pub(crate) fn pod_down(macs: &Macs, pod: &PodReport, name: &str) -> Option<String> {
    let (node, bridge) = (macs.node, &macs.st.bridge);
    match link(macs.state, bridge) {
        None => return Some(format!("bridge {bridge} on {node} is missing")),
        Some(l) if !l.up => return Some(format!("bridge {bridge} on {node} is down")),
        _ => {}
    }
    if let Some(h) = &pod.host_veth {
        if !h.up {
            return Some(format!("host veth {} of {name} on {node} is down", h.name));
        }
        if h.master.as_deref() != Some(bridge.as_str()) {
            return Some(format!(
                "host veth {} of {name} on {node} is not on bridge {bridge}",
                h.name
            ));
        }
    }
    let l = pod.pod.as_ref().and_then(|p| p.link.as_ref());
    if let Some(l) = l.filter(|l| !l.up) {
        return Some(format!("{name}'s {} is down", l.name));
    }
    None
}

/// The node's neighbour entry for one of its pods: it must hold the MAC the pod's
/// interface really has (from the pod's own namespace, through the agent; podnet's
/// scheme if the pod cannot be read). `on_path`: routed traffic to the pod takes it
/// (a poisoned entry off the path is a warning). `name`: `pod p1b`.
pub(crate) fn node_neigh_for_pod(
    where_: &str,
    macs: &Macs,
    ip: Ipv4Addr,
    pod: &PodReport,
    name: &str,
    on_path: bool,
) -> Hop {
    let (node, bridge) = (macs.node, &macs.st.bridge);
    let n = macs
        .state
        .neigh
        .iter()
        .filter(|n| n.ip == ip)
        .min_by_key(|n| n.dev != *bridge);
    let want = pod
        .pod
        .as_ref()
        .and_then(|p| p.link.as_ref())
        .map(|l| l.mac.clone())
        .unwrap_or_else(|| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(ip)));
    let bad = n.and_then(|n| poisoned(n, &format!("{node}'s entry for {ip}"), name, &want, macs));
    let down = pod_down(macs, pod, name);
    let (status, detail, fix) = match (n, &bad) {
        (_, Some(bad)) => (
            if on_path { "broken" } else { "warn" },
            format!(
                "{}{}",
                bad.detail,
                if on_path {
                    ""
                } else {
                    " (not on this path: traffic from the node and from other nodes takes it)"
                }
            ),
            poisoned_fix(
                &format!(
                    "ip neigh del {ip} dev {}   (on {node})",
                    n.map(|n| n.dev.as_str()).unwrap_or(bridge)
                ),
                macs,
                bad,
            ),
        ),
        (Some(n), _) if unresolved(n) && down.is_some() => (
            "warn",
            format!(
                "{node} cannot resolve {ip} ({}): {} (its own hop)",
                n.state,
                down.unwrap_or_default()
            ),
            String::new(),
        ),
        (Some(n), _) if n.state == "FAILED" => (
            "broken",
            format!("{node} could not resolve {ip} (ARP FAILED)"),
            "the pod does not answer ARP: check its link and address (next hops)".into(),
        ),
        (Some(n), _) => (
            "ok",
            format!("{ip} is at {} ({name})", n.mac.as_deref().unwrap_or("?")),
            String::new(),
        ),
        (None, _) => (
            "ok",
            format!("{ip} not resolved yet; the first packet resolves it"),
            String::new(),
        ),
    };
    Hop {
        where_: where_.into(),
        what: "neigh".into(),
        status: status.into(),
        detail,
        kernel: n
            .map(|n| neigh_text(n, Some(&n.dev)))
            .unwrap_or_else(|| "(none)".into()),
        cmd: format!("ip neigh show {ip}   (on {node})"),
        fix,
    }
}

/// The pod's host veth: up, on the node's bridge, with the node's pod MTU (agent
/// status `st`). `name`: the pod for people (`pod p1a`).
fn host_veth_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    pod: &PodReport,
    st: &Status,
    name: &str,
) {
    let Some(h) = pod.host_veth.as_ref().filter(|_| pod.found) else {
        return;
    };
    let bridge = &st.bridge;
    let veth = &h.name;
    let on = h.master.as_deref() == Some(bridge.as_str());
    let mtu_ok = st.mtu == 0 || h.mtu == st.mtu;
    b.check(
        where_,
        "link",
        h.up && on && mtu_ok,
        if !h.up {
            format!("host veth {veth} of {name} on {node} is down")
        } else if !on {
            format!("host veth {veth} of {name} on {node} is not on bridge {bridge}")
        } else if !mtu_ok {
            format!(
                "host veth {veth} of {name} has MTU {}; its node gives pods MTU {}",
                h.mtu, st.mtu
            )
        } else {
            format!("host veth {veth} of {name} is up on {bridge}")
        },
        link_text(veth, h.up, h.mtu, h.master.as_deref()),
        format!("ip -d link show {veth}   (on {node})"),
        &format!("ip link set {veth} up master {bridge}   (on {node})"),
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
            None => format!("ip link set {dev} up   (on {node}; podnetd does it when repair is on)"),
        },
    );
}

fn bridge_hop(b: &mut Builder, where_: &str, node: &str, state: &NodeState, st: &Status) {
    device_hop(b, where_, "bridge", node, (state, st), &st.bridge, "bridge");
}

/// What a peer's VTEP really is: the MAC of its VXLAN device and its underlay
/// address as the peer's own agent reports them (its kernel's MAC when it has the
/// device), and what the datastore's record says, when that differs.
pub(crate) struct VtepWant {
    pub(crate) peer: String,
    pub(crate) mac: String,
    pub(crate) underlay: String,
    /// `Some(why)`: the datastore's record for the peer is not what the peer reports.
    pub(crate) record_differs: Option<String>,
}

impl VtepWant {
    /// `p` as the datastore has it, `own` as the peer reports itself (its status and,
    /// if read, its kernel state).
    pub(crate) fn new(p: &PeerStatus, own: Option<(&Status, Option<&NodeState>)>) -> VtepWant {
        let Some((st, state)) = own else {
            return VtepWant {
                peer: p.name.clone(),
                mac: p.vtep_mac.clone(),
                underlay: p.underlay_ip.clone(),
                record_differs: None,
            };
        };
        let mac = state
            .and_then(|s| link(s, &st.vxlan_dev))
            .map(|l| l.mac.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| st.vtep_mac.clone());
        let underlay = st.underlay_ip.clone();
        let mut differs = vec![];
        if !same_mac(&p.vtep_mac, &mac) {
            differs.push(format!("VTEP MAC {} (its device has {mac})", p.vtep_mac));
        }
        if p.underlay_ip != underlay {
            differs.push(format!("underlay {} (it is at {underlay})", p.underlay_ip));
        }
        VtepWant {
            peer: p.name.clone(),
            mac,
            underlay,
            record_differs: (!differs.is_empty()).then(|| {
                format!(
                    "the datastore's record for {} says {}: the record is stale or forged",
                    p.name,
                    differs.join(", ")
                )
            }),
        }
    }

    fn fix_tail(&self) -> String {
        match &self.record_differs {
            Some(_) => format!(
                "; podnetd writes what the datastore's record says, so correct the record first: restart podnetd on {} to publish its own",
                self.peer
            ),
            None => " (podnetd does it when repair is on)".into(),
        }
    }
}

/// Whose VTEP MAC or underlay address `x` is, among the nodes' own reports.
fn vtep_owner(vteps: &[Vtep], x: &str, of_mac: bool) -> String {
    vteps
        .iter()
        .find(|v| {
            if of_mac {
                same_mac(&v.mac, x)
            } else {
                v.underlay == x
            }
        })
        .map(|v| {
            format!(
                ", which is {}'s {}",
                v.node,
                if of_mac {
                    "VTEP MAC"
                } else {
                    "underlay address"
                }
            )
        })
        .unwrap_or_default()
}

/// The VXLAN neighbour entry for a peer's VTEP address `vtep` on `vx`, held against
/// the peer's own VTEP MAC. `Ok`/`Err`: the detail.
pub(crate) fn vtep_neigh_check<'a>(
    state: &'a NodeState,
    vx: &str,
    vtep: Option<Ipv4Addr>,
    want: &VtepWant,
    vteps: &[Vtep],
) -> (Option<&'a NeighState>, std::result::Result<String, String>) {
    let vtep_s = vtep.map(|v| v.to_string()).unwrap_or_default();
    let mac = &want.mac;
    let n = state
        .neigh
        .iter()
        .find(|n| Some(n.ip) == vtep && n.dev == vx);
    let r = match n.and_then(|n| n.mac.as_deref()) {
        None => Err(format!("no neighbour entry {vtep_s} → {mac} on {vx}")),
        Some(m) if !same_mac(m, mac) => Err(format!(
            "the entry for {}'s VTEP {vtep_s} holds {m}{}, not {}'s own VTEP MAC {mac}{}",
            want.peer,
            vtep_owner(vteps, m, true),
            want.peer,
            want.record_differs
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        )),
        Some(_) => Ok(format!(
            "peer VTEP {vtep_s} is at {mac} ({}'s own)",
            want.peer
        )),
    };
    (n, r)
}

/// The VXLAN FDB entry for a peer's VTEP MAC, held against the peer's own underlay
/// address.
pub(crate) fn vtep_fdb_check<'a>(
    state: &'a NodeState,
    vx: &str,
    want: &VtepWant,
    vteps: &[Vtep],
) -> (Option<&'a FdbState>, std::result::Result<String, String>) {
    let (mac, under) = (&want.mac, &want.underlay);
    let f: Option<&FdbState> = state.fdb.iter().find(|f| same_mac(&f.mac, mac));
    let dst = f.and_then(|f| f.dst).map(|d| d.to_string());
    let r = match &dst {
        None => Err(format!(
            "no FDB entry {mac} → {under} on {vx}{}",
            want.record_differs
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        )),
        Some(d) if d != under => Err(format!(
            "{}'s VTEP MAC {mac} is sent to {d}{}, but {} is at {under}{}",
            want.peer,
            vtep_owner(vteps, d, false),
            want.peer,
            want.record_differs
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        )),
        Some(_) => Ok(format!("{mac} is reached through {under}")),
    };
    (f, r)
}

/// The neighbour and FDB entries a node needs to reach `peer` through `vx`, held
/// against the VTEP MAC and underlay address the peer itself reports (`real`, its
/// end of the trace), not only the datastore's record of it.
fn overlay_hops(
    b: &mut Builder,
    where_: &str,
    node: &str,
    state: &NodeState,
    vx: &str,
    (peer, real): (Option<&PeerStatus>, &End),
    vteps: &[Vtep],
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
    let want = VtepWant::new(p, Some((&real.st, Some(&real.state))));
    let vtep: Option<Ipv4Addr> = p.pod_cidr.parse::<Ipv4Net>().ok().map(|c| c.network());
    let vtep_s = vtep.map(|v| v.to_string()).unwrap_or_default();
    let (mac, under) = (&want.mac, &want.underlay);
    let (n, r) = vtep_neigh_check(state, vx, vtep, &want, vteps);
    b.check(
        where_,
        "neigh",
        r.is_ok(),
        r.unwrap_or_else(|e| e),
        n.map(|n| neigh_text(n, Some(vx)))
            .unwrap_or_else(|| "(none)".into()),
        format!("ip neigh show {vtep_s} dev {vx}   (on {node})"),
        &format!(
            "ip neigh replace {vtep_s} lladdr {mac} dev {vx} nud permanent   (on {node}){}",
            want.fix_tail()
        ),
    );
    let (f, r) = vtep_fdb_check(state, vx, &want, vteps);
    b.check(
        where_,
        "fdb",
        r.is_ok(),
        r.unwrap_or_else(|e| e),
        f.map(|f| {
            format!(
                "{} dev {vx} dst {} self permanent",
                f.mac,
                f.dst.map(|d| d.to_string()).unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "(none)".into()),
        format!("bridge fdb show dev {vx}   (on {node})"),
        &format!(
            "bridge fdb replace {mac} dev {vx} dst {under} self permanent   (on {node}){}",
            want.fix_tail()
        ),
    );
}

/// Each node's own link to the physical network (its agent's underlay device): one
/// that is down is named as itself, before the probes that fail because of it.
fn underlay_dev_hops(b: &mut Builder, s: &End, d: &End) {
    for e in [s, d] {
        let dev = &e.st.underlay_dev;
        if dev.is_empty() {
            continue;
        }
        let node = &e.node;
        let l = link(&e.state, dev);
        let is = match l {
            None => "missing",
            Some(l) if !l.up => "down",
            Some(_) => "up",
        };
        b.check(
            "underlay",
            "link",
            is == "up",
            format!("underlay device {dev} on {node} is {is}"),
            l.map(|l| link_text(&l.name, l.up, l.mtu, l.master.as_deref()))
                .unwrap_or_else(|| "(none)".into()),
            format!("ip -d link show {dev}   (on {node})"),
            &format!("ip link set {dev} up   (on {node}); it is the node's own link, not podnet's"),
        );
    }
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
