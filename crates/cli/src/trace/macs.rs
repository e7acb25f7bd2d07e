//! Whose MAC a neighbour or FDB entry holds: every entry on the path is held against
//! the MAC its owner really has ([`Macs::owner`]); a wrong one is a poisoned entry.

use super::*;

/// First two bytes of a pod interface's MAC ([`podnet_conventions::pod_mac`]).
pub(super) const POD_MAC_PREFIX: [u8; 2] = [0x0a, 0x58];

/// First two bytes of a host veth's MAC ([`podnet_conventions::host_mac`]).
pub(super) const HOST_MAC_PREFIX: [u8; 2] = [0x0a, 0x5a];

pub(super) fn same_mac(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The address podnet's MAC scheme put after `prefix` in `mac` (`0a:58` a pod's
/// interface or its node's bridge, `0a:5a` a pod's host veth, `0a:59` a VTEP), if
/// `mac` follows the scheme.
pub(crate) fn mac_addr(mac: &str, prefix: [u8; 2]) -> Option<Ipv4Addr> {
    let m = podnet_netlink::parse_mac(mac)?;
    (m[..2] == prefix).then(|| Ipv4Addr::new(m[2], m[3], m[4], m[5]))
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
    /// An IPv6 entry (learned from neighbour advertisements, not ARP).
    pub(crate) v6: bool,
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
    let v6 = n.ip.is_ipv6();
    let how = match (n.state == "PERMANENT", v6) {
        (true, false) => "the entry was poisoned: it is permanent, so it was written in that namespace (by hand or by a process there), not learned from ARP",
        (true, true) => "the entry was poisoned: it is permanent, so it was written in that namespace (by hand or by a process there), not learned from neighbour discovery",
        (false, false) => "the entry was poisoned (ARP spoofing?): something answered ARP for an address that is not its own",
        (false, true) => "the entry was poisoned (neighbour advertisement spoofing?): something advertised an address that is not its own",
    };
    Some(Poisoned {
        detail: format!("{what} holds {found}, {owner}, not {whose}'s {want}: {how}"),
        culprit_veth,
        v6,
    })
}

/// The fix for a poisoned entry: delete it (`del`; the next packet resolves it
/// again), and check anti-spoofing on the pod whose MAC it held, or on every pod of
/// `macs`'s node when that pod is not known.
pub(crate) fn poisoned_fix(del: &str, macs: &Macs, p: &Poisoned) -> String {
    let veth = p.culprit_veth.as_deref().unwrap_or("<host veth>");
    let (what, reasons) = if p.v6 {
        ("neighbour advertisements", "ipv6-na")
    } else {
        ("ARP", "arp-spa / arp-sha")
    };
    format!(
        "{del} (the next packet resolves it again from its real owner); then check anti-spoofing on {node}: {whom} must carry the {prog} filter (tc filter show dev {veth} ingress, on {node}), which drops {what} that claim an address or MAC not the pod's own (`podnet observe` lists those drops as {reasons})",
        node = macs.node,
        whom = if p.culprit_veth.is_some() { format!("host veth {veth}") } else { "every pod's host veth".into() },
        prog = podnet_netlink::antispoof::PROG_NAME,
    )
}

/// Whether a neighbour entry failed to resolve (or is still trying).
pub(super) fn unresolved(n: &NeighState) -> bool {
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
