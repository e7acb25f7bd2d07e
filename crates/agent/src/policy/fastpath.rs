//! The eBPF fast path (`--datapath ebpf`): pod traffic skips the bridge and the
//! node's IP stack. Its state in the kernel each round: the switch in `config`,
//! `local_pods` (every pod of the node whose anti-spoofing entry names its MAC and
//! address), `from_overlay` on the VXLAN device and, across nodes, `from_underlay` on
//! the device's underlay link with `overlay_self` and `overlay_peers` (`overlay_peers6`
//! over an IPv6 underlay; module doc of
//! [`super::datapath::ebpf`]).
//!
//! # Kernel objects it owns
//! Besides the eBPF datapath's maps: the tc filters `podnet_fast_in` (the VXLAN
//! device's ingress) and `podnet_fast_ul` at priority 0xc0de on the underlay device's
//! ingress — the node's own device, where podnet adds nothing else and removes only
//! that filter (when the fast path is off).

use super::datapath::ebpf;
use super::filters::pod_veths;
use super::Policy;
use crate::Failure;
use podnet_api::FastPathStatus;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What the fast path needs besides the policy maps.
#[derive(Clone, Debug)]
pub struct FastPath {
    /// The VXLAN device, whose ingress gets `from_overlay` (none with host-gw).
    pub overlay_dev: Option<String>,
}

/// Removes the fast path's filter from every link that has it (the underlay devices
/// are the node's: only podnet's own filter, by priority and name, is touched).
pub(super) fn remove_underlay_filters(
    sock: &mut podnet_netlink::Socket,
    log: &dyn Fn(&str),
) -> Result<(), Failure> {
    for l in podnet_netlink::link::list(sock).map_err(Failure::from)? {
        let ours = podnet_netlink::tc::list_ingress(sock, l.index)
            .map_err(Failure::from)?
            .iter()
            .any(|f| {
                f.prio == ebpf::FILTER_FAST_UNDERLAY_PRIO
                    && f.name.as_deref() == Some(ebpf::FILTER_FAST_UNDERLAY)
            });
        if ours {
            let del =
                podnet_netlink::tc::del_ingress_request(l.index, ebpf::FILTER_FAST_UNDERLAY_PRIO);
            for r in sock.ack_all(vec![del]) {
                r.map_err(Failure::from)?;
            }
            log(&format!(
                "fast path off: removed {} from the ingress of {}",
                ebpf::FILTER_FAST_UNDERLAY,
                l.name
            ));
        }
    }
    Ok(())
}

/// Puts `prog` on the ingress of link `index` as tc filter `filter` (priority `prio`),
/// unless a filter of that name is there already.
#[allow(clippy::too_many_arguments)]
fn attach_ingress(
    sock: &mut podnet_netlink::Socket,
    e: &ebpf::EbpfDatapath,
    index: u32,
    dev: &str,
    prog: &str,
    filter: &str,
    prio: u16,
    log: &dyn Fn(&str),
    does: &str,
) -> Result<(), Failure> {
    let has = podnet_netlink::tc::list_ingress(sock, index)
        .map_err(Failure::from)?
        .iter()
        .any(|f| f.name.as_deref() == Some(filter));
    if has {
        return Ok(());
    }
    let fd = e.program_fd(prog)?;
    for r in sock.ack_all(vec![
        podnet_netlink::tc::clsact_request(index),
        podnet_netlink::tc::bpf_ingress_request(index, prio, &fd, filter),
    ]) {
        if let Err(err) = r {
            if !err.is_exists() {
                return Err(format!("attach {prog} to {dev}: {err}").into());
            }
        }
    }
    log(&format!("fast path: {prog} on the ingress of {dev} {does}"));
    Ok(())
}

impl Policy {
    /// The fast path's state in the kernel: on or off as configured, `local_pods`
    /// holding every pod of the node whose anti-spoofing entry names its MAC and
    /// address, and `from_overlay` on the overlay device. A pod not in `local_pods`
    /// yet (made within the last second) takes the bridge path meanwhile.
    pub(super) fn refresh_fast(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        let Some(e) = self.dp.ebpf() else {
            return Ok(());
        };
        if self.fast.is_none() && self.fast_cleared {
            return Ok(());
        }
        let mut sock = podnet_netlink::Socket::route().map_err(Failure::from)?;
        let gw_mac = podnet_conventions::pod_mac(self.cidr.nth(1).ok_or("no gateway")?);
        let (pods, pods6) = if self.fast.is_some() {
            local_pods(
                &mut sock,
                &mut self.fast_seen,
                self.cidr,
                self.cidr6,
                gw_mac,
            )?
        } else {
            Default::default()
        };
        let mut changed = e.set_fast(self.fast.is_some(), &pods, &pods6)?;
        if self.fast.is_none() {
            // Off (or never on): podnet's filter leaves the underlay devices, which are
            // the node's, not podnet's. (from_overlay stays on podnet's own VXLAN
            // device, inert while the switch is off.)
            remove_underlay_filters(&mut sock, log)?;
        }
        self.fast_cleared = self.fast.is_none();
        let o = match self.fast.as_ref().and_then(|f| f.overlay_dev.clone()) {
            Some(dev) => overlay(&mut sock, e, &dev, log)?,
            None => Overlay::default(),
        };
        let (me, peers) = (o.me, o.peers);
        changed += e.set_overlay(me, &peers)?;
        if changed > 0 && self.fast.is_some() {
            log(&format!(
                "fast path: {} pods served directly ({} entries changed)",
                pods.len(),
                changed
            ));
        }
        self.status.lock().unwrap().fast_path = self.fast.as_ref().map(|_| FastPathStatus {
            pods: pods.keys().map(|ip| ip.to_string()).collect(),
            pods6: pods6.keys().map(|ip| ip.to_string()).collect(),
            overlay_dev: o.overlay,
            underlay_dev: o.underlay,
            overlay_peers: peers.len(),
        });
        Ok(())
    }
}

/// What the fast path knows of a pod by its host veth: address, MAC, IPv6 address
/// (dual-stack), and whether its receiving is shaped.
pub(super) type Seen = (Ipv4Addr, [u8; 6], Option<Ipv6Addr>, bool);

/// The pods `local_pods` and `local_pods6` hold, by address.
type LocalPods = (
    BTreeMap<Ipv4Addr, ebpf::LocalPod>,
    BTreeMap<Ipv6Addr, ebpf::LocalPod>,
);

/// Every pod of the node whose anti-spoofing entry names its address and MAC (read
/// once per host veth, in `seen`: a pod still being made is read next round), by its
/// IPv4 address and, for a dual-stack pod, by its IPv6 address (inside `cidr6`).
fn local_pods(
    sock: &mut podnet_netlink::Socket,
    seen: &mut BTreeMap<u32, Seen>,
    cidr: podnet_cni_spec::Ipv4Net,
    cidr6: Option<podnet_conventions::Ipv6Net>,
    gw_mac: [u8; 6],
) -> Result<LocalPods, Failure> {
    let veths = pod_veths(sock)?;
    seen.retain(|i, _| veths.iter().any(|l| l.index == *i));
    for l in veths {
        if let std::collections::btree_map::Entry::Vacant(v) = seen.entry(l.index) {
            // Not there yet when podnet-cni is still making the pod: next round.
            if let Ok(Some(st)) = podnet_netlink::antispoof::pod_state(sock, l.index) {
                // A pod whose receiving is limited (podnet-cni put a tbf qdisc on its
                // host veth: the bandwidth capability) takes the bridge path, through
                // that qdisc: the fast path's redirect would skip it.
                let shaped = podnet_netlink::tc::root_qdisc(sock, l.index)
                    .map_err(Failure::from)?
                    .is_some_and(|k| k == "tbf");
                v.insert((st.ip, st.mac, st.ip6, shaped));
            }
        }
    }
    let mut out = LocalPods::default();
    for (index, (ip, mac, ip6, shaped)) in seen.iter() {
        if *shaped || !cidr.contains(*ip) {
            continue;
        }
        let entry = ebpf::LocalPod {
            ifindex: *index,
            mac: *mac,
            gw_mac,
        };
        out.0.insert(*ip, entry);
        if let Some(ip6) = ip6.filter(|a| cidr6.is_some_and(|n| n.contains(*a))) {
            out.1.insert(ip6, entry);
        }
    }
    Ok(out)
}

/// The fast path across nodes, as put in place: the overlay device with
/// `from_overlay`, its underlay link with `from_underlay`, this node's encapsulation
/// and the peer VTEPs.
#[derive(Default)]
struct Overlay {
    overlay: String,
    underlay: String,
    me: ebpf::OverlaySelf,
    /// Peer VTEP MAC → its tunnel end (IPv6 over an IPv6 underlay), as the FDB says.
    peers: BTreeMap<[u8; 6], std::net::IpAddr>,
}

/// Puts `from_overlay` on the overlay device `dev` and, when the device has an
/// underlay link and address, `from_underlay` on that link: the encapsulation the
/// device would write is then written by from_pod_policy, and the frames for local
/// pods are taken off the wire.
fn overlay(
    sock: &mut podnet_netlink::Socket,
    e: &ebpf::EbpfDatapath,
    dev: &str,
    log: &dyn Fn(&str),
) -> Result<Overlay, Failure> {
    let mut o = Overlay::default();
    let Some(l) = podnet_netlink::link::get_by_name(sock, dev)? else {
        return Ok(o);
    };
    attach_ingress(
        sock,
        e,
        l.index,
        dev,
        ebpf::FROM_OVERLAY,
        ebpf::FILTER_FAST_IN,
        1,
        log,
        "delivers other nodes' packets straight into pods",
    )?;
    o.overlay = dev.to_string();
    let Some((v, local, dev_index)) = l
        .vxlan
        .as_ref()
        .filter(|v| v.vni != 0 && v.port != 0)
        .and_then(|v| Some((v, v.local?, v.dev?)))
    else {
        return Ok(o);
    };
    let Some(ul) = podnet_netlink::link::get_by_index(sock, dev_index)? else {
        return Ok(o);
    };
    attach_ingress(
        sock,
        e,
        ul.index,
        &ul.name,
        ebpf::FROM_UNDERLAY,
        ebpf::FILTER_FAST_UNDERLAY,
        ebpf::FILTER_FAST_UNDERLAY_PRIO,
        log,
        "takes VXLAN frames for this node's pods off the wire",
    )?;
    o.me = ebpf::overlay_self(l.index, local, v.vni, v.port);
    for f in podnet_netlink::neigh::fdb_list(sock)? {
        // The FDB entries of the device's own family (an IPv6 device has no others).
        if let (true, Some(dst)) = (
            f.index == l.index,
            f.dst.filter(|d| d.is_ipv6() == local.is_ipv6()),
        ) {
            o.peers.insert(f.mac, dst);
        }
    }
    o.underlay = ul.name;
    Ok(o)
}
