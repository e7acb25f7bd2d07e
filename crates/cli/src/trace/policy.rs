//! The policy hops (each end's NetworkPolicy verdict, from its agent) and the eBPF
//! fast path's hops.

use super::*;
use podnet_api::PodVerdict;

/// The policy hop of one end: what that pod's node programmed for it, asked of its
/// agent (`verdict`), with the kernel's view of whether the pod is programmed at all.
#[allow(clippy::too_many_arguments)]
pub(super) fn policy_hop(
    b: &mut Builder,
    where_: &str,
    node: &str,
    sock: &std::path::Path,
    ip: IpAddr,
    peer: IpAddr,
    dir: podnet_policy::Direction,
    flow: &Flow,
    names: (&str, &str),
) {
    let d = dir.as_str();
    let explain = format!(
        "podnet policy explain {} {}{}{}",
        names.0,
        names.1,
        flow.port
            .map(|p| format!(" --port {p} --protocol {}", flow.proto.name()))
            .unwrap_or_default(),
        if ip.is_ipv6() { " --ipv6" } else { "" }
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
                explain,
                "",
            );
            return;
        }
    };
    let cmd = format!("{}; {explain}", look_at(v.datapath, dir, node));
    let end = PolicyEnd {
        node,
        ip,
        peer,
        dir,
        flow,
        names,
    };
    let j = judge(&v, &end);
    b.add(where_, "policy", j.status, j.detail, j.kernel, cmd, j.fix);
}

/// Where an operator sees what `node`'s policy datapath holds for one direction.
fn look_at(
    dp: podnet_conventions::PolicyDatapath,
    dir: podnet_policy::Direction,
    node: &str,
) -> String {
    use podnet_conventions::PolicyDatapath as P;
    match dp {
        P::Nftables => format!("nft list table inet podnet   (on {node})"),
        P::Ebpf => {
            let prog = match dir {
                podnet_policy::Direction::Ingress => "to_pod_policy",
                podnet_policy::Direction::Egress => "from_pod_policy",
            };
            format!("bpftool prog show name {prog}; bpftool map show   (on {node}: the eBPF policy's programs and maps, pinned in podnetd's --bpf-dir)")
        }
        P::None => format!("podnetd runs --policy-datapath none on {node}: nothing is enforced"),
    }
}

/// One end of a flow as its policy hop judges it.
pub(super) struct PolicyEnd<'a> {
    pub(super) node: &'a str,
    pub(super) ip: IpAddr,
    pub(super) peer: IpAddr,
    pub(super) dir: podnet_policy::Direction,
    pub(super) flow: &'a Flow,
    /// The names the caller gave: (source, destination).
    pub(super) names: (&'a str, &'a str),
}

/// A policy hop's finding.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Judged {
    pub(super) status: &'static str,
    pub(super) detail: String,
    pub(super) kernel: String,
    pub(super) fix: &'static str,
}

/// What an agent's verdict says of the flow at one end — the diagnosis, apart from
/// asking (so it is tested on recorded answers). The kernel's truth comes first:
/// something missing opens the pod whatever its policies say; a pod left closed or not
/// programmed passes nothing; only then do its tables decide.
pub(super) fn judge(v: &PodVerdict, e: &PolicyEnd) -> Judged {
    let (node, ip, d) = (e.node, e.ip, e.dir.as_str());
    let j = |status, detail: String, kernel: String, fix| Judged {
        status,
        detail,
        kernel,
        fix,
    };
    let pols = v.policies.join(", ");
    let entry = v.entry.clone().unwrap_or_else(|| "(none)".into());
    let (who, other) = match e.dir {
        podnet_policy::Direction::Egress => e.names,
        podnet_policy::Direction::Ingress => (e.names.1, e.names.0),
    };
    if v.datapath == PolicyDatapath::None {
        return j(
            "ok",
            format!("{node} runs without a NetworkPolicy datapath: nothing filters {d}"),
            "(none)".into(),
            "",
        );
    }
    if !v.enforcement.is_empty() {
        return j("broken",
            format!("{ip} is OPEN on {node}, whatever its policies say: {}", v.enforcement.join("; ")),
            "(missing from the kernel)".into(),
            "podnetd puts what is missing back within 2 s (`repairing drift` in its log); if it stays missing, the agent is down or failing: see podnetd's log on that node");
    }
    if let Some(why) = &v.refused {
        return j("broken",
            format!("{ip} is closed on {node}: its agent left it closed: {why}"),
            "(refused: too many entries)".into(),
            "split or simplify the policies named (fewer ipBlock excepts, fewer ports); `podnet policy stats` lists every pod left closed");
    }
    if !v.programmed {
        return j("broken",
            format!("{ip} is closed on {node}: its agent has not programmed this pod's policy, so nothing passes {d}"),
            "(not in set programmed)".into(),
            "the agent opens a pod once it knows its Pod object (namespace, labels, node and address): check that the object exists, and podnetd's log on that node");
    }
    if !v.isolated {
        return j(
            "ok",
            format!("not isolated for {d}: no policy selects {who}"),
            "(open)".into(),
            "",
        );
    }
    if e.flow.port.is_none() && e.flow.proto.has_ports() {
        return j(
            "warn",
            format!("isolated for {d} by {pols}; give --port to judge its rules"),
            format!("isolated by {pols}"),
            "",
        );
    }
    if v.allowed {
        return j(
            "ok",
            format!("isolated for {d} by {pols}; admitted: {entry}"),
            entry,
            "",
        );
    }
    j("broken",
        format!("denied on {d}: {who} is isolated by {pols} and no rule admits {other} {}", e.flow.describe()),
        format!("no entry for {} {}", e.peer, e.flow.describe()),
        "`podnet policy explain` shows the rules tried; add a rule that admits this flow, or leave it denied if that is the intent")
}

/// With the eBPF fast path (`--datapath ebpf`): which program moves the packet where
/// on the source node. Same node: `from_pod_policy` on the source's host veth
/// redirects into the destination pod (`bpf_redirect_peer`) when the destination is in
/// `local_pods`; across nodes it looks up the route and hands the packet to the
/// overlay device. The bridge hops that follow still matter: ARP and the node's own
/// traffic take the bridge.
pub(super) fn fast_path_hop(b: &mut Builder, s: &End, d: &End, cross: bool) {
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
    let map = if d.ip.is_ipv6() {
        "local_pods6"
    } else {
        "local_pods"
    };
    let look = format!(
        "tc filter show dev {veth} ingress; bpftool map dump pinned <bpf dir>/{map}   (on {node})"
    );
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
                    "from_pod_policy on {veth} looks up the route (bpf_fib_lookup), writes the VXLAN encapsulation {} would write (the peer VTEP's underlay address from its FDB, IPv6 over an IPv6 underlay) and sends the frame out of {} (bpf_redirect), skipping the bridge, the IP stack and the VXLAN device",
                    f.overlay_dev, f.underlay_dev
                ),
                // Over an IPv6 underlay the peers' tunnel ends are IPv6 (overlay_peers6).
                format!(
                    "fast path on, {} peer VTEPs in overlay_peers{}",
                    f.overlay_peers,
                    if s.st.tunnel().contains(':') { "6" } else { "" }
                ),
            )
        };
        b.add("src-node", "fastpath", "ok", detail, found, look, "");
        return;
    }
    let dip = d.ip.to_string();
    let pods = if d.ip.is_ipv6() { &f.pods6 } else { &f.pods };
    let here = pods.contains(&dip);
    b.add(
        "src-node",
        "fastpath",
        if here { "ok" } else { "warn" },
        if here {
            format!("from_pod_policy on {veth} judges {dip}'s ingress and redirects into it (bpf_redirect_peer), skipping the bridge")
        } else {
            format!("{dip} is not in {map}: the bridge carries it (a pod made within the last second, or one without an anti-spoofing entry)")
        },
        format!("{map} holds {} pods", pods.len()),
        look,
        "",
    );
}

/// With the fast path on the destination node: `from_overlay` on its VXLAN device's
/// ingress delivers into the pod.
pub(super) fn fast_path_in_hop(b: &mut Builder, d: &End) {
    if d.st.datapath != Datapath::Ebpf {
        return;
    }
    let f = d.agent.policy().ok().and_then(|p| p.fast_path);
    let node = &d.node;
    let dip = d.ip.to_string();
    // A pod's IPv6 address is in local_pods6, its IPv4 one in local_pods.
    let map = if d.ip.is_ipv6() {
        "local_pods6"
    } else {
        "local_pods"
    };
    let f = f.map(|mut f| {
        if d.ip.is_ipv6() {
            f.pods = std::mem::take(&mut f.pods6);
        }
        f
    });
    let (status, detail) = match &f {
        Some(f) if !f.underlay_dev.is_empty() && f.pods.contains(&dip) => ("ok", format!("from_underlay on {}'s ingress takes the VXLAN encapsulation off, judges {dip}'s ingress and redirects into it (bpf_redirect_peer); frames that still reach {} get the same from from_overlay there", f.underlay_dev, f.overlay_dev)),
        Some(f) if !f.overlay_dev.is_empty() && f.pods.contains(&dip) => ("ok", format!("from_overlay on {}'s ingress judges {dip}'s ingress and redirects into it (bpf_redirect_peer)", f.overlay_dev)),
        Some(f) if f.overlay_dev.is_empty() => ("ok", format!("no overlay program on {node} (host-gw): packets for {dip} take the node's IP stack and the bridge")),
        Some(_) => ("warn", format!("{dip} is not in {node}'s {map}: the bridge carries it")),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A verdict as an agent answers `{"get":"verdict"}` (recorded from a lab node).
    fn recorded(json: &str) -> PodVerdict {
        serde_json::from_str(json).expect("a recorded verdict")
    }

    fn end(flow: &Flow) -> PolicyEnd<'_> {
        PolicyEnd {
            node: "node2",
            ip: "10.244.1.2".parse().unwrap(),
            peer: "10.244.0.2".parse().unwrap(),
            dir: podnet_policy::Direction::Ingress,
            flow,
            names: ("p1a", "p2a"),
        }
    }

    const TCP80: Flow = Flow {
        proto: podnet_policy::Proto::Tcp,
        port: Some(80),
    };

    /// The command to look with names the datapath the node runs, not another one.
    #[test]
    fn the_look_command_follows_the_nodes_policy_datapath() {
        use podnet_conventions::PolicyDatapath as P;
        let ing = podnet_policy::Direction::Ingress;
        assert!(look_at(P::Nftables, ing, "node1").starts_with("nft list table inet podnet"));
        let e = look_at(P::Ebpf, ing, "node1");
        assert!(e.contains("to_pod_policy") && !e.contains("nft"), "{e}");
        let e = look_at(P::Ebpf, podnet_policy::Direction::Egress, "node1");
        assert!(e.contains("from_pod_policy"), "{e}");
        assert!(look_at(P::None, ing, "node1").contains("none"));
    }

    #[test]
    fn an_admitted_flow_names_its_entry_and_a_denied_one_the_isolating_policy() {
        let admitted = recorded(
            r#"{"pod":"default/p2a","direction":"ingress","isolated":true,"policies":["default/web"],
                "allowed":true,"entry":"10.244.0.0/24 TCP 80-80","programmed":true,"datapath":"nftables"}"#,
        );
        let j = judge(&admitted, &end(&TCP80));
        assert_eq!(j.status, "ok");
        assert!(
            j.detail.contains("admitted: 10.244.0.0/24 TCP 80-80"),
            "{j:?}"
        );
        let denied = recorded(
            r#"{"pod":"default/p2a","direction":"ingress","isolated":true,"policies":["default/web"],
                "allowed":false,"entry":null,"programmed":true,"datapath":"ebpf"}"#,
        );
        let j = judge(&denied, &end(&TCP80));
        assert_eq!(j.status, "broken");
        assert!(
            j.detail
                .contains("p2a is isolated by default/web and no rule admits p1a"),
            "{j:?}"
        );
        assert!(j.kernel.contains("no entry for 10.244.0.2"), "{j:?}");
    }

    #[test]
    fn the_kernel_comes_before_the_tables() {
        // The tables admit the flow, but the agent reports the table deleted: the pod
        // is open, and that is the broken hop.
        let open = recorded(
            r#"{"pod":"default/p2a","direction":"ingress","isolated":true,"policies":["default/web"],
                "allowed":true,"entry":"10.244.0.0/24 any protocol","programmed":true,"datapath":"nftables",
                "enforcement":["table inet podnet is missing"]}"#,
        );
        let j = judge(&open, &end(&TCP80));
        assert_eq!(j.status, "broken");
        assert!(j.detail.contains("is OPEN on node2"), "{j:?}");
        assert!(j.detail.contains("table inet podnet is missing"), "{j:?}");
        // Not programmed: closed, whatever the tables say.
        let closed = recorded(
            r#"{"pod":null,"direction":"ingress","isolated":false,"policies":[],"allowed":false,
                "entry":null,"programmed":false,"datapath":"ebpf"}"#,
        );
        let j = judge(&closed, &end(&TCP80));
        assert_eq!(j.status, "broken");
        assert!(j.detail.contains("has not programmed"), "{j:?}");
        // Left closed for its size: says why.
        let refused = recorded(
            r#"{"pod":null,"direction":"ingress","isolated":false,"policies":[],"allowed":false,
                "entry":null,"programmed":false,"datapath":"nftables","refused":"default/big: 120000 entries"}"#,
        );
        let j = judge(&refused, &end(&TCP80));
        assert!(j.detail.contains("left it closed: default/big"), "{j:?}");
    }

    #[test]
    fn no_datapath_no_isolation_and_no_port_are_said_plainly() {
        let none = recorded(
            r#"{"pod":"default/p2a","direction":"ingress","isolated":false,"policies":[],"allowed":true,
                "entry":null,"programmed":false,"datapath":"none"}"#,
        );
        assert_eq!(judge(&none, &end(&TCP80)).status, "ok");
        let open = recorded(
            r#"{"pod":"default/p2a","direction":"ingress","isolated":false,"policies":[],"allowed":true,
                "entry":null,"programmed":true,"datapath":"nftables"}"#,
        );
        let j = judge(&open, &end(&TCP80));
        assert_eq!(
            (j.status, j.detail.as_str()),
            ("ok", "not isolated for ingress: no policy selects p2a")
        );
        let any_port = Flow {
            proto: podnet_policy::Proto::Tcp,
            port: None,
        };
        let isolated = recorded(
            r#"{"pod":"default/p2a","direction":"ingress","isolated":true,"policies":["default/web"],
                "allowed":false,"entry":null,"programmed":true,"datapath":"nftables"}"#,
        );
        assert_eq!(judge(&isolated, &end(&any_port)).status, "warn");
    }
}
