//! The overlay hops: each node's VXLAN neighbour and FDB entries for the other node's
//! VTEP (held against what that node's own agent reports), the overlay port and path
//! MTU probes, and the underlay devices.

use super::*;

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
                underlay: p.tunnel().to_string(),
                record_differs: None,
            };
        };
        let mac = state
            .and_then(|s| link(s, &st.vxlan_dev))
            .map(|l| l.mac.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| st.vtep_mac.clone());
        // Where the tunnel ends: its underlay IPv6 address over an IPv6 underlay.
        let underlay = st.tunnel().to_string();
        let mut differs = vec![];
        if !same_mac(&p.vtep_mac, &mac) {
            differs.push(format!("VTEP MAC {} (its device has {mac})", p.vtep_mac));
        }
        if p.tunnel() != underlay {
            differs.push(format!("underlay {} (it is at {underlay})", p.tunnel()));
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
pub(super) fn vtep_owner(vteps: &[Vtep], x: &str, of_mac: bool) -> String {
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

/// The VXLAN neighbour entry for a peer's VTEP address `vtep` on `vx` (the first
/// address of its pod CIDR of either family: IPv6 goes through the same VTEP), held
/// against the peer's own VTEP MAC. `Ok`/`Err`: the detail.
pub(crate) fn vtep_neigh_check<'a>(
    state: &'a NodeState,
    vx: &str,
    vtep: Option<IpAddr>,
    want: &VtepWant,
    vteps: &[Vtep],
) -> (Option<&'a NeighState>, std::result::Result<String, String>) {
    let vtep_s = vtep.map(|v| v.to_string()).unwrap_or_default();
    let mac = &want.mac;
    let n = vtep.and_then(|v| state.neigh_for(v).iter().find(|n| n.ip == v && n.dev == vx));
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
/// `v6`: the next hop of the peer's IPv6 pod CIDR (its first address), on the same
/// device and at the same MAC.
#[allow(clippy::too_many_arguments)]
pub(super) fn overlay_hops(
    b: &mut Builder,
    where_: &str,
    node: &str,
    state: &NodeState,
    vx: &str,
    (peer, real): (Option<&PeerStatus>, &End),
    vteps: &[Vtep],
    v6: bool,
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
    let vtep: Option<IpAddr> = if v6 {
        let c = p.pod_cidr6.parse::<Ipv6Net>().ok();
        c.map(|c| IpAddr::V6(c.network()))
    } else {
        let c = p.pod_cidr.parse::<Ipv4Net>().ok();
        c.map(|c| IpAddr::V4(c.network()))
    };
    let vtep_s = vtep.map(|v| v.to_string()).unwrap_or_default();
    let ip = if v6 { "ip -6" } else { "ip" };
    let (mac, under) = (&want.mac, &want.underlay);
    let (n, r) = vtep_neigh_check(state, vx, vtep, &want, vteps);
    b.check(
        where_,
        "neigh",
        r.is_ok(),
        r.unwrap_or_else(|e| e),
        n.map(|n| neigh_text(n, Some(vx)))
            .unwrap_or_else(|| "(none)".into()),
        format!("{ip} neigh show {vtep_s} dev {vx}   (on {node})"),
        &format!(
            "{ip} neigh replace {vtep_s} lladdr {mac} dev {vx} nud permanent   (on {node}){}",
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
pub(super) fn underlay_dev_hops(b: &mut Builder, s: &End, d: &End) {
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

pub(super) fn underlay_hops(
    b: &mut Builder,
    node: &str,
    agent: &Client,
    st: &Status,
    peer: Option<&PeerStatus>,
    overlay: Option<Overlay>,
    return_ok: bool,
) -> Result<()> {
    let Some(p) = peer else { return Ok(()) };
    // The tunnel's far end: the peer's underlay IPv6 address over an IPv6 underlay.
    let under = p.tunnel().to_string();
    let ping = |ip: &str, size: u32| -> Result<String> {
        let ip: std::net::IpAddr = ip.parse()?;
        let r = agent.ping(ip, u16::try_from(size).unwrap_or(u16::MAX))?;
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
    // The echo's own headers: 28 bytes over IPv4, 48 over IPv6.
    let size = mtu + overhead - if under.contains(':') { 48 } else { 28 };
    let big = ping(&under, size)?;
    b.check(
        "underlay", "mtu", big == "reply",
        if big == "reply" { format!("the physical path carries {} bytes with DF set (pod MTU {mtu} + {overhead})", mtu + overhead) } else { format!("the physical path drops {}-byte packets with DF set ({big}): smaller than pod MTU {mtu} + {overhead} of overlay", mtu + overhead) },
        format!("ping -M do -s {size} {under}: {big}"),
        format!("ping -M do -s {size} {under}   (on {node})"),
        "raise the physical network's MTU, or lower the pod MTU (podnetd sets it to the underlay MTU less its overlay's overhead: 50 for VXLAN, 60 for WireGuard, 20 more over an IPv6 underlay)",
    );
    Ok(())
}
