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
//!
//! A trace follows one address family ([`Family`]): the family of the addresses
//! given, or the one asked for. A dual-stack pod's IPv6 takes the same devices
//! (bridge, host veth, VXLAN device, FDB, underlay) and its own routes, neighbour
//! entries, forwarding switch, policy entries and fast-path map (`local_pods6`); each
//! hop reads those of the family traced, so a broken IPv6 route is named while IPv4
//! still works.

use anyhow::{Context, Result};
use podnet_api::Echo;
use podnet_api::{
    Client, FdbState, LinkState, NeighState, NodeState, PodInside, PodLink, PodReport, RouteState,
};
use podnet_api::{PeerStatus, Status};
use podnet_cni_spec::net::Ipv6Net;
use podnet_cni_spec::Ipv4Net;
use podnet_conventions::{Datapath, PolicyDatapath};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
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

/// The address family a trace follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub src: String,
    pub dst: String,
    /// The family traced: `ipv4` or `ipv6`.
    pub family: Family,
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
/// `namespace/name` or `name` in `default`, [`trace_service`]) for `flow`, over
/// `family` (`None`: IPv6 if an address given is one, else IPv4).
pub fn trace(
    agents: &dyn Agents,
    src: &str,
    dst: &str,
    flow: &Flow,
    family: Option<Family>,
) -> Result<Trace> {
    if services::is_service(agents, dst) {
        return trace_service(agents, src, dst, flow, family);
    }
    let t0 = Instant::now();
    let (s_end, d_end, vteps) = ends(agents, src, dst, family)?;
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
        family: if d_end.ip.is_ipv6() {
            Family::Ipv6
        } else {
            Family::Ipv4
        },
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

/// One end of a trace given by address (of either family) or pod name (its IPv4
/// address; [`ends`] turns it into its IPv6 one when that family is traced).
pub(crate) fn target(agents: &dyn Agents, x: &str) -> Result<IpAddr> {
    x.parse()
        .ok()
        .or_else(|| agents.pod_ip(x).map(IpAddr::V4))
        .with_context(|| format!("{x:?} is neither an IP address nor a known pod"))
}

/// Both ends of a trace, each read from its node's agent, and every node's own VTEP
/// MAC and underlay address as its agent reports them (whose a wrong overlay entry
/// holds).
fn ends(
    agents: &dyn Agents,
    src: &str,
    dst: &str,
    family: Option<Family>,
) -> Result<(End, End, Vec<Vtep>)> {
    let (sip, dip) = (target(agents, src)?, target(agents, dst)?);
    let v6 = match family {
        Some(f) => f == Family::Ipv6,
        None => sip.is_ipv6() || dip.is_ipv6(),
    };
    let mut statuses = Vec::new();
    for (n, sock) in &agents.nodes() {
        if let Ok(st) = Client::new(sock).status() {
            statuses.push((n.clone(), sock.clone(), st));
        }
    }
    let node_of = |ip: IpAddr| {
        statuses
            .iter()
            .find(|(_, _, st)| match ip {
                IpAddr::V4(a) => st.pod_cidr.parse::<Ipv4Net>().is_ok_and(|c| c.contains(a)),
                IpAddr::V6(a) => st.pod_cidr6.parse::<Ipv6Net>().is_ok_and(|c| c.contains(a)),
            })
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
    let label = |given: &str, pod: &PodReport| match agents.pod_name(pod.ip) {
        Some(n) => format!("pod {n}"),
        None => format!("pod {given}"),
    };
    let (s_pod, d_pod) = (sc.pod(sip)?, dc.pod(dip)?);
    let (sip, dip) = (
        traced(sip, &s_pod, src, v6, &sn)?,
        traced(dip, &d_pod, dst, v6, &dn)?,
    );
    let s_end = End {
        ip: sip,
        name: label(src, &s_pod),
        pod: s_pod,
        node: sn,
        sock: ssock,
        agent: sc,
        st: sst,
        state: s_state,
    };
    let d_end = End {
        ip: dip,
        name: label(dst, &d_pod),
        pod: d_pod,
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
            underlay: st.tunnel().to_string(),
        })
        .collect();
    Ok((s_end, d_end, vteps))
}

/// The address of one end in the family traced (`v6`): the one given, or the pod's
/// other one as its agent reports it. A pod without an address of that family is an
/// error that says so.
fn traced(given: IpAddr, pod: &PodReport, name: &str, v6: bool, node: &str) -> Result<IpAddr> {
    match (given, v6) {
        (IpAddr::V6(_), true) | (IpAddr::V4(_), false) => Ok(given),
        (IpAddr::V4(_), true) => match pod.ip6 {
            Some(a) => Ok(IpAddr::V6(a)),
            None if !pod.found => anyhow::bail!("no podnet pod with address {given} on {node}: is {name} running?"),
            None => anyhow::bail!(
                "{name} ({given} on {node}) has no IPv6 address: it is not a dual-stack pod (its cluster runs --ip-family ipv4, or it was made before dual-stack was on); trace it over IPv4"
            ),
        },
        (IpAddr::V6(_), false) if pod.found => Ok(IpAddr::V4(pod.ip)),
        (IpAddr::V6(_), false) => {
            anyhow::bail!("no podnet pod with address {given} on {node}: is {name} running?")
        }
    }
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
        let real_mac = |p: &PodReport| {
            p.pod
                .as_ref()
                .and_then(|i| i.link.as_ref())
                .map(|l| l.mac.clone())
                .unwrap_or_else(|| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(p.ip)))
        };
        let path = PodPath {
            macs,
            peer_mac: (!self.cross).then(|| (other.name.clone(), real_mac(&other.pod))),
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
    /// The pod's address in the family traced (`pod.ip` is its IPv4 one).
    ip: IpAddr,
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
        "trace {} → {} ({}{}): {}\n\n",
        t.src,
        t.dst,
        t.flow,
        if t.family == Family::Ipv6 {
            ", IPv6"
        } else {
            ""
        },
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

    /// An address of either family is taken as given; a name the cluster does not
    /// know is refused, saying so.
    #[test]
    fn ends_are_taken_by_address_of_either_family() {
        let agents = LocalAgent("/nonexistent/podnetd.sock".into());
        assert_eq!(
            target(&agents, "fd00:10:244::2").unwrap(),
            "fd00:10:244::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            target(&agents, "10.244.0.2").unwrap(),
            IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2))
        );
        let e = target(&agents, "p9z").unwrap_err().to_string();
        assert!(e.contains("neither an IP address nor a known pod"), "{e}");
    }

    fn report(ip6: Option<&str>, found: bool) -> PodReport {
        PodReport {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            ip6: ip6.map(|a| a.parse().unwrap()),
            found,
            host_veth: None,
            netns: None,
            ifname: None,
            pod: None,
        }
    }

    /// The family traced picks each end's address: a name (its IPv4 address) turns
    /// into the pod's IPv6 one when IPv6 is traced, an IPv6 address into the pod's IPv4
    /// one when IPv4 is; a pod with no IPv6 address is refused with why.
    #[test]
    fn the_family_traced_picks_each_ends_address() {
        let v4: IpAddr = "10.244.1.2".parse().unwrap();
        let v6: IpAddr = "fd00:10:244:1::2".parse().unwrap();
        let dual = report(Some("fd00:10:244:1::2"), true);
        assert_eq!(traced(v4, &dual, "p2a", true, "node2").unwrap(), v6);
        assert_eq!(traced(v4, &dual, "p2a", false, "node2").unwrap(), v4);
        assert_eq!(traced(v6, &dual, "p2a", false, "node2").unwrap(), v4);
        assert_eq!(traced(v6, &dual, "p2a", true, "node2").unwrap(), v6);
        let e = traced(v4, &report(None, true), "p2a", true, "node2")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no IPv6 address") && e.contains("dual-stack"),
            "{e}"
        );
        let e = traced(v6, &report(None, false), "p2a", false, "node2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no podnet pod with address"), "{e}");
    }
}
