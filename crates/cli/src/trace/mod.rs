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
