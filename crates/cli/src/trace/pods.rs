//! The hops in and next to a pod: its interface, its neighbour entries, its host
//! veth, the node's entry for it, the devices and the bridge on its node.

use super::*;

/// The command that runs `ip c` in the pod `pod` describes.
pub(super) fn cmd(pod: &PodReport, c: &str, name: &str) -> String {
    match pod.netns.as_deref() {
        Some(p) if p.starts_with("/run/netns/") => {
            format!("ip -n {} {c}   (pod {name})", &p["/run/netns/".len()..])
        }
        Some(p) => format!("nsenter --net={p} ip {c}   (pod {name})"),
        None => format!("ip {c}   (inside pod {name})"),
    }
}

/// What is wrong with a link's MTU and MAC against what podnet gives it (`None`: right).
pub(super) fn link_mismatch(l: &PodLink, name: &str, mtu: u32, mac: [u8; 6]) -> Option<String> {
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

/// The pod's own end as doctor checks it for every pod: found, address, link (with
/// the MTU and MAC its node gives pods), on the node whose agent status is `node`.
pub(crate) fn pod_end(pod: &PodReport, ip: IpAddr, node: &Status) -> Vec<Hop> {
    let mut b = Builder { hops: vec![] };
    pod_hops(&mut b, "pod", &ip.to_string(), ip, pod, node, None, None);
    b.hops
}

/// The gateway podnet gives the pods of the node whose agent status is `node`: the
/// first address of its pod CIDR (the bridge's).
pub(crate) fn pod_gateway(node: &Status) -> Option<Ipv4Addr> {
    node.pod_cidr.parse::<Ipv4Net>().ok().and_then(|c| c.nth(1))
}

/// The gateway of one family (`v6`: the first address of the node's IPv6 pod CIDR,
/// which its bridge holds too).
pub(crate) fn pod_gateway_of(node: &Status, v6: bool) -> Option<IpAddr> {
    if v6 {
        let c = node.pod_cidr6.parse::<Ipv6Net>().ok()?;
        c.nth(1).map(IpAddr::V6)
    } else {
        pod_gateway(node).map(IpAddr::V4)
    }
}

/// The MAC podnet gives the bridge of the node whose agent status is `node`.
fn bridge_scheme_mac(node: &Status) -> String {
    pod_gateway(node)
        .map(|g| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(g)))
        .unwrap_or_default()
}

/// The pod's own hops; every value is held against what its node (agent status
/// `node`) gives pods: MTU, MAC, gateway.
#[allow(clippy::too_many_arguments)]
pub(super) fn pod_hops(
    b: &mut Builder,
    where_: &str,
    name: &str,
    ip: IpAddr,
    pod: &PodReport,
    node: &Status,
    peer: Option<IpAddr>,
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
    pod_iface_hops(b, where_, name, ip, pod, p, node);
    let Some(other) = peer else { return };
    let gw = pod_route_hop(b, where_, name, pod, p, node, other);
    // The entry the pod's frames go out with: its gateway's (the bridge), or on the
    // same node the other pod's own.
    let (target, whose, want) = match (gw, path) {
        (Some(g), Some(pp)) => (g, format!("bridge {}", node.bridge), pp.macs.bridge_mac()),
        (Some(g), None) => (
            g,
            format!("bridge {}", node.bridge),
            bridge_scheme_mac(node),
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

/// The pod's interface: it holds the pod's address, and is up with the node's pod MTU
/// and the pod's MAC.
fn pod_iface_hops(
    b: &mut Builder,
    where_: &str,
    name: &str,
    ip: IpAddr,
    pod: &PodReport,
    p: &PodInside,
    node: &Status,
) {
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
        .and_then(|l| link_mismatch(l, &ifname, node.mtu, podnet_conventions::pod_mac(pod.ip)));
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
}

/// The pod's route to `other`: present, and through its node's bridge. Returns the
/// gateway it names, if any.
fn pod_route_hop(
    b: &mut Builder,
    where_: &str,
    name: &str,
    pod: &PodReport,
    p: &PodInside,
    node: &Status,
    other: IpAddr,
) -> Option<IpAddr> {
    let r = lookup(p.routes_for(other), other);
    let want_gw = pod_gateway_of(node, other.is_ipv6());
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
        &format!(
            "re-add the default route via the bridge gateway ({} route add default via {}), or DEL and ADD the pod",
            if other.is_ipv6() { "ip -6" } else { "ip" },
            want_gw.map(|g| g.to_string()).unwrap_or_else(|| "<gateway>".into())
        ),
    );
    gw
}

/// What a pod's neighbour entries on a path must hold, and what to blame otherwise.
pub(super) struct PodPath<'a> {
    /// The pod's node: who has which MAC there.
    pub(super) macs: &'a Macs<'a>,
    /// On the same node, without a gateway: the other pod (`pod p1b`) and its real MAC.
    pub(super) peer_mac: Option<(String, String)>,
    /// A device between the pod and its node's bridge that is down (named by its own
    /// hop): a failed entry follows from it.
    pub(super) down: Option<String>,
}

/// A pod's neighbour entry for `target` (its gateway when `role` is `"gateway "`, else
/// the other pod), held against the MAC its owner really has (`whose`, `want`).
#[allow(clippy::too_many_arguments)]
pub(super) fn pod_neigh_hop(
    where_: &str,
    name: &str,
    pod: &PodReport,
    p: &PodInside,
    (target, role): (IpAddr, &str),
    (whose, want): (&str, &str),
    macs: Option<&Macs>,
    down: Option<&str>,
) -> Hop {
    let ifname = pod.ifname.clone().unwrap_or_else(|| "eth0".into());
    let n = p.neigh_for(target).iter().find(|n| n.ip == target);
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
            format!("{role}{target} does not answer {}", resolution(target)),
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

/// How a node or pod resolves `ip`'s MAC: ARP, or IPv6 neighbour solicitation.
pub(super) fn resolution(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "neighbour solicitation"
    } else {
        "ARP"
    }
}

/// The pod's entry for its gateway (of one family, `v6`) as doctor checks it for
/// every pod: it must hold the MAC of its node's bridge. `None`: the pod has no
/// default route of that family (its own check). `label`: the pod for people (`pod
/// p1a`).
pub(crate) fn pod_gateway_neigh(
    pod: &PodReport,
    label: &str,
    macs: &Macs,
    v6: bool,
) -> Option<Hop> {
    let name = label.strip_prefix("pod ").unwrap_or(label);
    let p = pod
        .pod
        .as_ref()
        .filter(|i| pod.found && i.error.is_none())?;
    let routes = if v6 { &p.routes6 } else { &p.routes };
    let gw = routes
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
    ip: IpAddr,
    pod: &PodReport,
    name: &str,
    on_path: bool,
) -> Hop {
    let (node, bridge) = (macs.node, &macs.st.bridge);
    let n = macs
        .state
        .neigh_for(ip)
        .iter()
        .filter(|n| n.ip == ip)
        .min_by_key(|n| n.dev != *bridge);
    let want = pod
        .pod
        .as_ref()
        .and_then(|p| p.link.as_ref())
        .map(|l| l.mac.clone())
        .unwrap_or_else(|| podnet_netlink::fmt_mac(&podnet_conventions::pod_mac(pod.ip)));
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
            format!("{node} could not resolve {ip} ({} FAILED)", resolution(ip)),
            format!(
                "the pod does not answer {}: check its link and address (next hops)",
                resolution(ip)
            ),
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
pub(super) fn host_veth_hop(
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
        if !st.tunnel().is_empty() && local != st.tunnel() {
            return Some(format!(
                "{name} sends from {local}; the node's tunnel ends at its underlay address {}",
                st.tunnel()
            ));
        }
    }
    None
}

/// A node-level device (bridge, VXLAN device) that must exist, be up, and hold the
/// values its agent gives it.
pub(super) fn device_hop(
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

pub(super) fn bridge_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    state: &NodeState,
    st: &Status,
) {
    device_hop(b, where_, "bridge", node, (state, st), &st.bridge, "bridge");
}
