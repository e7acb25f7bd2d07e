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

mod routes;
pub(crate) use routes::*;
mod macs;
pub(crate) use macs::*;
mod policy;
use policy::*;
mod nodes;
use nodes::*;
mod pods;
pub(crate) use pods::*;
mod overlay;
pub(crate) use overlay::*;
mod services;
pub use services::{trace_service, translation};

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

/// Traces `src` to `dst` (pod names or addresses, or a Service: its ClusterIP,
/// `namespace/name` or `name` in `default`, [`trace_service`]) for `flow`.
pub fn trace(agents: &dyn Agents, src: &str, dst: &str, flow: &Flow) -> Result<Trace> {
    if services::is_service(agents, dst) {
        return trace_service(agents, src, dst, flow);
    }
    let t0 = Instant::now();
    let (s_end, d_end, vteps) = ends(agents, src, dst)?;
    let cross = s_end.node != d_end.node;
    let (s_macs, d_macs) = (s_end.macs(agents), d_end.macs(agents));
    let mut b = Builder { hops: vec![] };
    let pods = PodEnds {
        given: (src, dst),
        flow,
        cross,
    };

    // ---- source pod
    pods.hops(&mut b, (&s_end, &s_macs), &d_end, true);

    // ---- source node
    let (sn, sst, s_state) = (&s_end.node, &s_end.st, &s_end.state);
    host_veth_hop(&mut b, "src-node", sn, &s_end.pod, sst, &s_end.name);
    fast_path_hop(&mut b, &s_end, &d_end, cross);
    bridge_hop(&mut b, "src-node", sn, s_state, sst);
    let vx = sst.vxlan_dev.clone();
    if cross && !vx.is_empty() {
        // First: a VXLAN device that is down takes its routes and neighbours with it.
        device_hop(
            &mut b,
            "src-node",
            "link",
            sn,
            (s_state, sst),
            &vx,
            "VXLAN device",
        );
    }
    if cross {
        between_nodes(&mut b, &s_end, &d_end, &vteps)?;
        fast_path_in_hop(&mut b, &d_end);
    }
    dst_node_hops(&mut b, &d_end, &d_macs, cross);

    // ---- destination pod
    pods.hops(&mut b, (&d_end, &d_macs), &s_end, false);

    let broken = b.hops.iter().find(|h| h.status == "broken").cloned();
    Ok(Trace {
        src: format!("{src} ({} on {})", s_end.ip, s_end.node),
        dst: format!("{dst} ({} on {})", d_end.ip, d_end.node),
        flow: flow.describe(),
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

/// One end of a trace given by IPv4 address or pod name. An IPv6 address is refused
/// with what to do instead: the hops trace checks (routes, neighbours, FDB, policy
/// tables, the agent's probes) are IPv4 ones so far.
pub(crate) fn target(agents: &dyn Agents, x: &str) -> Result<Ipv4Addr> {
    if x.parse::<std::net::Ipv6Addr>().is_ok() {
        anyhow::bail!(
            "{x} is an IPv6 address: podnet trace follows IPv4 only so far; trace the pods by name or IPv4 address (a dual-stack pod's IPv6 takes the same bridge and VXLAN device: `ip -6 route show proto 0x50` and `ip -6 neigh show dev podnet.vxlan` on each node show its path; `podnet policy explain A B --port N --ipv6` gives its policy verdict)"
        );
    }
    x.parse()
        .ok()
        .or_else(|| agents.pod_ip(x))
        .with_context(|| format!("{x:?} is neither an IPv4 address nor a known pod"))
}

/// Both ends of a trace, each read from its node's agent, and every node's own VTEP
/// MAC and underlay address as its agent reports them (whose a wrong overlay entry
/// holds).
fn ends(agents: &dyn Agents, src: &str, dst: &str) -> Result<(End, End, Vec<Vtep>)> {
    let (sip, dip) = (target(agents, src)?, target(agents, dst)?);
    let mut statuses = Vec::new();
    for (n, sock) in &agents.nodes() {
        if let Ok(st) = Client::new(sock).status() {
            statuses.push((n.clone(), sock.clone(), st));
        }
    }
    let node_of = |ip: Ipv4Addr| {
        statuses
            .iter()
            .find(|(_, _, st)| st.pod_cidr.parse::<Ipv4Net>().is_ok_and(|c| c.contains(ip)))
            .cloned()
            .with_context(|| format!("no node whose agent answers serves {ip}"))
    };
    let (sn, ssock, sst) = node_of(sip)?;
    let (dn, dsock, dst_st) = node_of(dip)?;
    let (sc, dc) = (Client::new(&ssock), Client::new(&dsock));
    let s_state = sc.state()?;
    let d_state = if sn != dn {
        dc.state()?
    } else {
        s_state.clone()
    };
    // Pods by name where the cluster knows it, else by what the caller gave.
    let label = |given: &str, ip: Ipv4Addr| match agents.pod_name(ip) {
        Some(n) => format!("pod {n}"),
        None => format!("pod {given}"),
    };
    let s_end = End {
        ip: sip,
        name: label(src, sip),
        pod: sc.pod(sip)?,
        node: sn,
        sock: ssock,
        agent: sc,
        st: sst,
        state: s_state,
    };
    let d_end = End {
        ip: dip,
        name: label(dst, dip),
        pod: dc.pod(dip)?,
        node: dn,
        sock: dsock,
        agent: dc,
        st: dst_st,
        state: d_state,
    };
    let vteps = statuses
        .iter()
        .map(|(n, _, st)| Vtep {
            node: n.clone(),
            mac: st.vtep_mac.clone(),
            underlay: st.underlay_ip.clone(),
        })
        .collect();
    Ok((s_end, d_end, vteps))
}

/// What the pod hops of both ends share: the names the caller gave, the flow, and
/// whether the pods are on different nodes.
struct PodEnds<'a> {
    given: (&'a str, &'a str),
    flow: &'a Flow,
    cross: bool,
}

impl PodEnds<'_> {
    /// One pod's hops (its interface, routes and neighbours) and its policy hop: the
    /// source's egress (`src`) or the destination's ingress.
    fn hops(&self, b: &mut Builder, (end, macs): (&End, &Macs), other: &End, src: bool) {
        let real_mac = |p: &PodReport, ip: Ipv4Addr| {
            p.pod
                .as_ref()
                .and_then(|i| i.link.as_ref())
                .map(|l| l.mac.clone())
                .unwrap_or_else(|| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(ip)))
        };
        let path = PodPath {
            macs,
            peer_mac: (!self.cross).then(|| (other.name.clone(), real_mac(&other.pod, other.ip))),
            down: pod_down(macs, &end.pod, &end.name),
        };
        let (where_, given, dir) = if src {
            ("src-pod", self.given.0, podnet_policy::Direction::Egress)
        } else {
            ("dst-pod", self.given.1, podnet_policy::Direction::Ingress)
        };
        pod_hops(
            b,
            where_,
            given,
            end.ip,
            &end.pod,
            &end.st,
            Some(other.ip),
            Some(&path),
        );
        policy_hop(
            b, where_, &end.node, &end.sock, end.ip, other.ip, dir, self.flow, self.given,
        );
    }
}

/// One end of a trace: the pod, its node, and what that node's agent reports.
struct End {
    ip: Ipv4Addr,
    /// The pod for people: `pod p1a`.
    name: String,
    node: String,
    /// Its node's agent, and where it answers.
    sock: PathBuf,
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

#[cfg(test)]
mod target_tests {
    use super::*;

    /// An IPv6 end is refused before any agent is asked, saying what to do instead;
    /// an IPv4 one is taken as given.
    #[test]
    fn an_ipv6_end_is_refused_with_what_to_do() {
        let agents = LocalAgent("/nonexistent/podnetd.sock".into());
        let e = target(&agents, "fd00:10:244::2").unwrap_err().to_string();
        assert!(e.contains("IPv4 only") && e.contains("ip -6 route"), "{e}");
        assert_eq!(
            target(&agents, "10.244.0.2").unwrap(),
            Ipv4Addr::new(10, 244, 0, 2)
        );
        let e = target(&agents, "p9z").unwrap_err().to_string();
        assert!(e.contains("neither an IPv4 address nor a known pod"), "{e}");
    }
}
