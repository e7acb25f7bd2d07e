//! The eBPF policy datapath's kernel objects (`bpf/policy.c`), loaded with aya.
//!
//! # Kernel objects it owns
//! In the node's bpffs directory (`--bpf-dir`, default `/sys/fs/bpf/podnet`), pinned
//! so that they outlive podnetd (a restart or `kill -9` changes nothing in force):
//! - the maps `pod_policy`, `ingress_peers`, `egress_peers`, `port_sets`,
//!   `node_addrs`, `flows` and `policy_drops` (their roles: `bpf/policy.c`), their IPv6
//!   twins for dual-stack pods (`pod_policy6`, `ingress_peers6`, `egress_peers6`,
//!   `node_addrs6`, `flows6`, `policy_drops6`; `port_sets` is shared), the ring
//!   buffer `policy_events` (every refused packet, and admitted flows while
//!   asked through the switches in `config`; read by [`crate::observe`]);
//! - the programs `from_pod_policy` and `to_pod_policy`, which podnet-cni attaches to
//!   every new pod's host veth (tc ingress after anti-spoofing, and tc egress) before
//!   the veth comes up on the bridge; the agent attaches them to pods that lack them.
//! - the fast path (`--datapath ebpf`, [`crate::policy::FastPath`]): the maps
//!   switch in `config` and `local_pods` (this node's pods: host veth, MAC, the
//!   gateway's MAC), and the program `from_overlay`, which the agent attaches as the
//!   tc filter `podnet_fast_in` on the VXLAN device's ingress. With the fast path on,
//!   `from_pod_policy` delivers a packet it admits straight into a local destination
//!   pod (`bpf_redirect_peer`, after judging that pod's ingress, since the redirect
//!   skips its host veth) or hands it to the device the node's routes name
//!   (`bpf_fib_lookup`, TTL minus one, `bpf_redirect`); `from_overlay` delivers other
//!   nodes' packets into local pods the same way. Everything it cannot settle (ARP, the
//!   node's own addresses, an unresolved neighbour, TTL 1) takes the bridge path.
//! - across nodes over VXLAN, the maps `overlay_self` (this node's VXLAN device: index,
//!   underlay address, VNI, port; its IPv6 address over an IPv6 underlay) and
//!   `overlay_peers` (peer VTEP MAC → its underlay address, copied from the device's
//!   FDB; `overlay_peers6` holds the IPv6 ones over an IPv6 underlay: the programs then
//!   write and take off IPv6 outer headers, UDP checksum zero), and the program `from_underlay`, attached
//!   as tc filter `podnet_fast_ul` at priority 0xc0de on the ingress of the VXLAN
//!   device's underlay link — the node's own device, where podnet adds nothing else and
//!   removes only that filter (when the fast path is off). `from_pod_policy` writes
//!   the encapsulation the VXLAN device would and sends the frame out of the underlay
//!   device; `from_underlay` takes VXLAN frames for local pods off the wire. The frames
//!   are the device's own, byte for byte in every field the receiver reads, so nodes
//!   with and without the fast path talk to each other.
//!
//! A pod missing from `pod_policy` (its IPv6 address from `pod_policy6`) is closed both
//! ways, so a pod is never open before its verdicts are in the maps.
//!
//! # How it changes
//! The agent keeps what it wrote (read back from the maps when it starts) and writes
//! only the difference, in an order that never opens more than the old or the new
//! state allows: port sets, then peers, then pod flags are added; then stale peers,
//! port sets and pods removed. Port ranges become prefixes of the port number in
//! `port_sets`, under a set id derived from the set's content; a peer entry names its
//! set (0: every protocol and port). One changed label touches only the entries of
//! the pods whose tables it changes.
//!
//! # Upgrades
//! aya reuses a map pinned under a declared name without comparing it with the
//! object's definition (`MapData::create_pinned_by_name` opens the pin and keeps the
//! object's definition for its own size checks), so a map of another build would be
//! used as it is: the verifier refuses a program only when a value is smaller than what
//! it reads, and a smaller `max_entries` or another hash flavour passes unnoticed.
//! [`EbpfDatapath::open`] therefore first makes this build's maps fresh in a staging
//! directory (`<dir>/next_generation`), compares each with the one pinned under its name (type,
//! key size, value size, max entries, flags, as the kernel holds them), and:
//! - all equal (or not pinned yet): the staged maps go and the pinned ones are reused;
//! - any differs: the staged maps are a new *generation*: each is renamed over its
//!   pinned name (one `rename` each: readers of the pins never find a name missing),
//!   and this build's programs use them only. Running pods keep their programs, which
//!   hold the old maps themselves (pins or not) with the verdicts they had: nothing
//!   opens. The agent's first round programs the whole desired state into the new
//!   maps (it writes the difference from what it read back: everything).
//!
//! The layout version is a hash of the staged maps' definitions, logged at start
//! ([`EbpfDatapath::layout`]). The price: every start makes the maps twice for a
//! moment (the preallocated ones — `flows`, `policy_drops` — cost their memory until
//! the staged copies go).
//!
//! Then, after the first round has written the verdicts ([`EbpfDatapath::program`]),
//! every podnet filter that runs another program than this build's — the pod veths'
//! `podnet_policy_out` (ingress, from_pod_policy) and `podnet_policy_in` (egress,
//! to_pod_policy), the fast path's `podnet_fast_in` and `podnet_fast_ul` — gets this
//! build's with `tc filter replace` (same priority and handle: one kernel operation, the
//! veth is never without its filter). "Another program" is another id whose tag (a
//! hash of its instructions) or maps differ: a plain restart replaces nothing. Once no
//! filter runs the old programs, the kernel frees them and the old generation's maps.
//! podnet-cni attaches the programs pinned under their names, re-pinned by `open` (a
//! rename too) before the agent writes the node file: new pods get this build's.

use crate::Failure;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::HashMap;
use aya::programs::SchedClassifier;
use aya::{Ebpf, Pod};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::generations::{on_bpffs, ProgIdent, FILTERS};
use super::pinned::switch;
use super::tables::{in6, peer6_key, peer_key, port_key, Desired};

pub(super) static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policy.o"));

pub const FROM_POD: &str = "from_pod_policy";
pub const TO_POD: &str = "to_pod_policy";
/// The fast path's program on the overlay device's ingress.
pub const FROM_OVERLAY: &str = "from_overlay";
/// Its tc filter name.
pub const FILTER_FAST_IN: &str = "podnet_fast_in";
/// The fast path's program on the underlay device's ingress (VXLAN frames for local
/// pods lose their encapsulation there), and its tc filter name and priority: the
/// underlay device is the node's, not podnet's, so podnet's filter keeps to a priority
/// of its own and is the only one podnet ever removes there.
pub const FROM_UNDERLAY: &str = "from_underlay";
pub const FILTER_FAST_UNDERLAY: &str = "podnet_fast_ul";
pub const FILTER_FAST_UNDERLAY_PRIO: u16 = 0xc0de;
/// Service traffic ([`crate::policy::services`]): the program on the egress of the
/// overlay and underlay devices (Ethernet devices, and the WireGuard device without a
/// link-layer header), their tc filter names, and the priority: the underlay device is
/// the node's, so podnet keeps to a priority of its own there too.
pub const AFTER_TRANSLATION: &str = "after_translation";
pub const AFTER_TRANSLATION_L3: &str = "after_translation_l3";
pub const FILTER_SVC_OUT: &str = "podnet_svc_out";
pub const FILTER_SVC_OUT_L3: &str = "podnet_svc_out3";
pub const FILTER_SVC_PRIO: u16 = 0xc0df;
/// tc filter names on the host veth.
pub const FILTER_OUT: &str = "podnet_policy_out";
pub const FILTER_IN: &str = "podnet_policy_in";

pub(super) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

// The structs and constants shared with bpf/policy.c, generated from bpf/abi.h.
use podnet_bpf_abi::{
    In6, Peer6Data, PeerData, PortData, SvcConfig, SvcConfig6, VtepKey, CONFIG_FAST_PATH,
};
pub use podnet_bpf_abi::{LocalPod, OverlaySelf};

/// This node's VXLAN device as the fast path writes its encapsulation (`overlay_self`):
/// its index, underlay address (an IPv6 one: outer IPv6 headers), VNI and UDP port.
pub fn overlay_self(vxlan_ifindex: u32, local: IpAddr, vni: u32, port: u16) -> OverlaySelf {
    let (local, local6, ipv6) = match local {
        IpAddr::V4(a) => (raw(a), [0; 16], 0),
        IpAddr::V6(a) => (0, a.octets(), 1),
    };
    OverlaySelf {
        vxlan_ifindex,
        local,
        vni,
        port: port.to_be(),
        pad: 0,
        local6,
        ipv6,
    }
}

/// Makes hash map `name` exactly `want` (every entry when `want` is empty); how many
/// entries changed.
fn sync_hash<V: Pod + PartialEq>(
    bpf: &mut Ebpf,
    name: &str,
    want: &BTreeMap<VtepKey, V>,
) -> Result<usize, Failure> {
    let mut m: HashMap<_, VtepKey, V> =
        HashMap::try_from(bpf.map_mut(name).ok_or_else(|| format!("no map {name}"))?)
            .map_err(|e| err(name, e))?;
    let have: BTreeMap<VtepKey, V> = m.iter().filter_map(|kv| kv.ok()).collect();
    let mut changed = 0;
    for (k, v) in &have {
        if want.get(k) != Some(v) {
            m.remove(k)
                .map_err(|e| err(&format!("remove from {name}"), e))?;
            changed += 1;
        }
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            m.insert(k, v, 0)
                .map_err(|e| err(&format!("write {name}"), e))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// An address as the programs read it from a packet (bytes in network order).
pub(super) fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(super) fn unraw(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

pub(super) fn err(what: &str, e: impl Into<crate::BoxError>) -> Failure {
    Failure::op(what, e)
}

/// An fd of the loaded tc program `name` of `bpf`, for attaching it (the policy
/// datapath's and the underlay guard's programs alike).
pub(crate) fn classifier_fd(bpf: &Ebpf, name: &str) -> Result<OwnedFd, Failure> {
    let prog: &SchedClassifier = bpf
        .program(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e| err(name, e))?;
    prog.fd()
        .map_err(|e| err(name, e))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err(name, e))
}

pub struct EbpfDatapath {
    bpf: Ebpf,
    dir: PathBuf,
    /// What the maps hold (read back when the agent starts).
    current: Desired,
    /// The map layout's version: a hash of this build's map definitions.
    layout: String,
    /// Filters running another build's programs are still to be replaced (after the
    /// first programming, when the maps hold every pod's verdicts).
    adopt_pending: bool,
}

impl EbpfDatapath {
    /// Loads the programs (maps pinned by name in `dir`, reused if pinned already) and
    /// pins the programs for podnet-cni.
    pub fn open(dir: &Path) -> Result<EbpfDatapath, Failure> {
        if OBJECT.is_empty() {
            return Err("podnetd was built with PODNET_SKIP_BPF=1 and has no eBPF policy program: build it again with clang".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
        if !on_bpffs(dir) {
            return Err(format!(
                "{} is not on a bpffs, so the policy maps could not outlive podnetd: mount one (mount -t bpf bpf /sys/fs/bpf) or give --bpf-dir a directory on one",
                dir.display()
            ).into());
        }
        let (mut bpf, layout) = Self::maps(dir)?;
        for name in [
            FROM_POD,
            TO_POD,
            FROM_OVERLAY,
            FROM_UNDERLAY,
            AFTER_TRANSLATION,
            AFTER_TRANSLATION_L3,
        ] {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| format!("bpf/policy.c has no program {name}"))?
                .try_into()
                .map_err(|e| err(name, e))?;
            prog.load().map_err(|e| {
                err(
                    &format!("load program {name} (the verifier's log follows)"),
                    e,
                )
            })?;
            let pin = dir.join(name);
            // A program pinned by an earlier run stays attached where it is until the
            // first round replaces it; new pods get this one. Pinned aside and renamed
            // over the name, so podnet-cni never finds the name missing.
            let tmp = dir.join(format!("{name}_new"));
            let _ = std::fs::remove_file(&tmp);
            prog.pin(&tmp)
                .map_err(|e| err(&format!("pin {name} at {}", tmp.display()), e))?;
            std::fs::rename(&tmp, &pin)
                .map_err(|e| err(&format!("pin {name} at {}", pin.display()), e))?;
        }
        let mut dp = EbpfDatapath {
            bpf,
            dir: dir.to_path_buf(),
            current: Desired::default(),
            layout,
            adopt_pending: true,
        };
        dp.current = dp.read_back()?;
        Ok(dp)
    }

    /// The map layout's version (a hash of this build's map definitions).
    pub fn layout(&self) -> &str {
        &self.layout
    }

    /// Puts this build's programs on every podnet filter that runs another (an older
    /// podnetd's, or this build's on another generation of maps), each with one
    /// `tc filter replace`. Returns how many filters it replaced.
    fn adopt_running(&self) -> Result<usize, Failure> {
        let mut ours = Vec::new();
        for (prog, filter, egress) in FILTERS {
            let fd = self.program_fd(prog)?;
            let ident = ProgIdent::of(fd.as_fd()).map_err(|e| err(prog, e))?;
            ours.push((fd, ident, filter, egress));
        }
        let mut sock = podnet_netlink::Socket::route().map_err(Failure::from)?;
        let mut replaced = Vec::new();
        let mut failed = Vec::new();
        for l in podnet_netlink::link::list(&mut sock).map_err(Failure::from)? {
            for egress in [false, true] {
                let filters = if egress {
                    podnet_netlink::tc::list_egress(&mut sock, l.index)
                } else {
                    podnet_netlink::tc::list_ingress(&mut sock, l.index)
                }
                .map_err(Failure::from)?;
                for f in filters.iter().filter(|f| f.kind == "bpf") {
                    let Some((fd, ident, name, _)) = ours
                        .iter()
                        .find(|o| o.3 == egress && f.name.as_deref() == Some(o.2))
                    else {
                        continue;
                    };
                    let theirs = f
                        .prog_id
                        .and_then(|id| podnet_netlink::bpf::prog_by_id(id).ok())
                        .and_then(|p| ProgIdent::of(p.as_fd()).ok());
                    if theirs.is_some_and(|t| t.same(ident)) {
                        continue;
                    }
                    let req = if egress {
                        podnet_netlink::tc::bpf_egress_replace_request(l.index, f.prio, fd, name)
                    } else {
                        podnet_netlink::tc::bpf_ingress_replace_request(l.index, f.prio, fd, name)
                    };
                    match sock.ack_all(vec![req]).pop() {
                        Some(Err(e)) => failed.push(format!("{} {name}: {e}", l.name)),
                        _ => replaced.push(format!("{} {name}", l.name)),
                    }
                }
            }
        }
        if !replaced.is_empty() {
            tracing::warn!(
                "policy: replaced another build's programs with this build's (layout {}) on {} filters: {}",
                self.layout,
                replaced.len(),
                replaced.join(", ")
            );
        }
        if !failed.is_empty() {
            return Err(format!(
                "cannot replace another build's programs (they keep the verdicts they had): {}",
                failed.join("; ")
            )
            .into());
        }
        Ok(replaced.len())
    }

    pub fn program_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// An fd of one of the programs, for attaching it.
    pub fn program_fd(&self, name: &str) -> Result<OwnedFd, Failure> {
        classifier_fd(&self.bpf, name)
    }

    /// The fast path: on or off (its switch in `config`), and `local_pods` made exactly
    /// `pods` (pod address → its entry), `local_pods6` exactly `pods6` (a dual-stack
    /// pod's IPv6 address → the same entry). Returns how many entries changed.
    pub fn set_fast(
        &mut self,
        on: bool,
        pods: &BTreeMap<Ipv4Addr, LocalPod>,
        pods6: &BTreeMap<Ipv6Addr, LocalPod>,
    ) -> Result<usize, Failure> {
        let mut changed = 0;
        if switch(&self.dir, CONFIG_FAST_PATH, on)? {
            changed += 1;
        }
        let want: BTreeMap<u32, LocalPod> = pods
            .iter()
            .filter(|_| on)
            .map(|(ip, p)| (raw(*ip), *p))
            .collect();
        let want6: BTreeMap<In6, LocalPod> = pods6
            .iter()
            .filter(|_| on)
            .map(|(ip, p)| (in6(*ip), *p))
            .collect();
        let bpf = &mut self.bpf;
        let have = read_hash(bpf, "local_pods")?;
        changed += drop_hash(bpf, "local_pods", &have, &want)?;
        changed += put_hash(bpf, "local_pods", &have, &want)?;
        let have = read_hash(bpf, "local_pods6")?;
        changed += drop_hash(bpf, "local_pods6", &have, &want6)?;
        changed += put_hash(bpf, "local_pods6", &have, &want6)?;
        Ok(changed)
    }

    /// The fast path across nodes over VXLAN: `me` (this node's VXLAN device; default:
    /// off) and `overlay_peers` made exactly `peers` (VTEP MAC → the peer's underlay
    /// address; the IPv6 ones in `overlay_peers6`). Peers are written before the device
    /// is switched on and removed after it is switched off. Returns how many entries
    /// changed.
    pub fn set_overlay(
        &mut self,
        me: OverlaySelf,
        peers: &BTreeMap<[u8; 6], IpAddr>,
    ) -> Result<usize, Failure> {
        let mut changed = 0;
        let write_self = |bpf: &mut Ebpf, v: OverlaySelf| -> Result<usize, Failure> {
            let mut a: aya::maps::Array<_, OverlaySelf> = aya::maps::Array::try_from(
                bpf.map_mut("overlay_self").ok_or("no map overlay_self")?,
            )
            .map_err(|e| err("overlay_self", e))?;
            if a.get(&0, 0).map_err(|e| err("read overlay_self", e))? == v {
                return Ok(0);
            }
            a.set(0, v, 0).map_err(|e| err("write overlay_self", e))?;
            Ok(1)
        };
        let on = me != OverlaySelf::default();
        if !on {
            changed += write_self(&mut self.bpf, me)?;
        }
        let key = |mac: &[u8; 6]| VtepKey { mac: *mac, pad: 0 };
        let mut want4: BTreeMap<VtepKey, u32> = BTreeMap::new();
        let mut want6: BTreeMap<VtepKey, In6> = BTreeMap::new();
        for (mac, ip) in peers.iter().filter(|_| on) {
            match ip {
                IpAddr::V4(a) => {
                    want4.insert(key(mac), raw(*a));
                }
                IpAddr::V6(a) => {
                    want6.insert(key(mac), In6 { a: a.octets() });
                }
            }
        }
        changed += sync_hash(&mut self.bpf, "overlay_peers", &want4)?;
        changed += sync_hash(&mut self.bpf, "overlay_peers6", &want6)?;
        if on {
            changed += write_self(&mut self.bpf, me)?;
        }
        Ok(changed)
    }

    /// The Service range, the node's pod CIDR and the cluster CIDR (`svc_config`), as
    /// the programs read them; a node CIDR wider than /22 is left out (its offsets do not fit the
    /// mark, `bpf/abi.h`). Says whether the value changed.
    pub fn set_services(
        &mut self,
        service: podnet_cni_spec::Ipv4Net,
        node: podnet_cni_spec::Ipv4Net,
        cluster: podnet_cni_spec::Ipv4Net,
        cluster6: Option<podnet_conventions::Ipv6Net>,
    ) -> Result<bool, Failure> {
        let mask = |n: podnet_cni_spec::Ipv4Net| n.mask().to_be();
        let want = SvcConfig {
            service_net: raw(service.network()),
            service_mask: mask(service),
            node_net: if node.prefix() >= 22 {
                raw(node.network())
            } else {
                0
            },
            node_mask: if node.prefix() >= 22 { mask(node) } else { 0 },
            cluster_net: raw(cluster.network()),
            cluster_mask: mask(cluster),
            cluster6_net: cluster6.map_or(In6::default(), |n| in6(n.network())),
            cluster6_prefix: cluster6.map_or(0, |n| u32::from(n.prefix())),
        };
        let mut a: aya::maps::Array<_, SvcConfig> =
            aya::maps::Array::try_from(self.bpf.map_mut("svc_config").ok_or("no map svc_config")?)
                .map_err(|e| err("svc_config", e))?;
        if a.get(&0, 0).map_err(|e| err("read svc_config", e))? == want {
            return Ok(false);
        }
        a.set(0, want, 0).map_err(|e| err("write svc_config", e))?;
        Ok(true)
    }

    /// A dual-stack cluster's IPv6 Service range and the node's IPv6 pod CIDR
    /// (`svc_config6`); `None` clears it (no IPv6 Service is deferred). Says whether
    /// the value changed.
    pub fn set_services6(
        &mut self,
        six: Option<(podnet_conventions::Ipv6Net, podnet_conventions::Ipv6Net)>,
    ) -> Result<bool, Failure> {
        let want = six.map_or(SvcConfig6::default(), |(service, node)| SvcConfig6 {
            service_net: in6(service.network()),
            service_prefix: u32::from(service.prefix()),
            node_net: in6(node.network()),
            node_prefix: u32::from(node.prefix()),
        });
        let mut a: aya::maps::Array<_, SvcConfig6> = aya::maps::Array::try_from(
            self.bpf
                .map_mut("svc_config6")
                .ok_or("no map svc_config6")?,
        )
        .map_err(|e| err("svc_config6", e))?;
        if a.get(&0, 0).map_err(|e| err("read svc_config6", e))? == want {
            return Ok(false);
        }
        a.set(0, want, 0).map_err(|e| err("write svc_config6", e))?;
        Ok(true)
    }

    fn read_back(&mut self) -> Result<Desired, Failure> {
        let bpf = &self.bpf;
        let mut d = Desired {
            pods: read_hash(bpf, "pod_policy")?,
            pods6: read_hash(bpf, "pod_policy6")?,
            ..Desired::default()
        };
        for (i, dir) in ["ingress", "egress"].into_iter().enumerate() {
            for (k, v) in read_trie::<PeerData>(bpf, &format!("{dir}_peers"))? {
                let data = k.data();
                d.peers[i].insert((data.pod, data.peer, (k.prefix_len() - 32) as u8), v);
            }
            for (k, v) in read_trie::<Peer6Data>(bpf, &format!("{dir}_peers6"))? {
                let data = k.data();
                d.peers6[i].insert((data.pod, data.peer, (k.prefix_len() - 128) as u8), v);
            }
        }
        for (k, _) in read_trie::<PortData>(bpf, "port_sets")? {
            let data = k.data();
            d.ports.insert((
                u32::from_be_bytes(data.set),
                data.proto,
                u16::from_be_bytes(data.port),
                (k.prefix_len() - 40) as u8,
            ));
        }
        Ok(d)
    }

    /// Writes the difference between what the maps hold and `want`; returns the
    /// number of entries changed. Additions first (port sets, then peers, then pods'
    /// flags), removals after (peers, port sets, pods), so that no moment admits more
    /// than the old or the new state.
    pub fn program(&mut self, want: &Desired) -> Result<usize, Failure> {
        let cur = self.current.clone();
        let ports = |d: &Desired| -> BTreeMap<(u32, u8, u16, u8), u32> {
            d.ports.iter().map(|k| (*k, 1)).collect()
        };
        let (cur_ports, want_ports) = (ports(&cur), ports(want));
        let bpf = &mut self.bpf;
        let mut n = put_trie(bpf, "port_sets", &cur_ports, &want_ports, port_key)?;
        for (i, dir) in ["ingress", "egress"].into_iter().enumerate() {
            let name = format!("{dir}_peers");
            n += put_trie(bpf, &name, &cur.peers[i], &want.peers[i], peer_key)?;
            let name = format!("{dir}_peers6");
            n += put_trie(bpf, &name, &cur.peers6[i], &want.peers6[i], peer6_key)?;
        }
        n += put_hash(bpf, "pod_policy", &cur.pods, &want.pods)?;
        n += put_hash(bpf, "pod_policy6", &cur.pods6, &want.pods6)?;
        for (i, dir) in ["ingress", "egress"].into_iter().enumerate() {
            let name = format!("{dir}_peers");
            n += drop_trie(bpf, &name, &cur.peers[i], &want.peers[i], peer_key)?;
            let name = format!("{dir}_peers6");
            n += drop_trie(bpf, &name, &cur.peers6[i], &want.peers6[i], peer6_key)?;
        }
        n += drop_trie(bpf, "port_sets", &cur_ports, &want_ports, port_key)?;
        n += drop_hash(bpf, "pod_policy", &cur.pods, &want.pods)?;
        n += drop_hash(bpf, "pod_policy6", &cur.pods6, &want.pods6)?;
        self.current = want.clone();
        if self.adopt_pending {
            // The maps hold every pod's verdicts now: pods still running another
            // build's programs (or this build's on older maps) get this build's.
            self.adopt_running()?;
            self.adopt_pending = false;
        }
        Ok(n)
    }

    /// Keeps `node_addrs` and `node_addrs6` equal to the node's own addresses.
    pub fn set_node_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), Failure> {
        let mut v4 = BTreeMap::new();
        let mut v6 = BTreeMap::new();
        for a in addrs {
            match a {
                IpAddr::V4(a) => v4.insert(raw(*a), 1u32),
                IpAddr::V6(a) => v6.insert(in6(*a), 1u32),
            };
        }
        let have = read_hash(&self.bpf, "node_addrs")?;
        put_hash(&mut self.bpf, "node_addrs", &have, &v4)?;
        drop_hash(&mut self.bpf, "node_addrs", &have, &v4)?;
        let have = read_hash(&self.bpf, "node_addrs6")?;
        put_hash(&mut self.bpf, "node_addrs6", &have, &v6)?;
        drop_hash(&mut self.bpf, "node_addrs6", &have, &v6)?;
        Ok(())
    }
}

/// Every entry of the hash map `name`.
fn read_hash<K: Pod + Ord, V: Pod>(bpf: &Ebpf, name: &str) -> Result<BTreeMap<K, V>, Failure> {
    let m: HashMap<_, K, V> = HashMap::try_from(
        bpf.map(name)
            .ok_or_else(|| format!("bpf/policy.c has no map {name}"))?,
    )
    .map_err(|e| err(name, e))?;
    m.iter()
        .map(|kv| kv.map_err(|e| err(&format!("read {name}"), e)))
        .collect()
}

/// Every entry of the LPM trie `name`.
fn read_trie<D: Pod>(bpf: &Ebpf, name: &str) -> Result<Vec<(Key<D>, u32)>, Failure> {
    let t: LpmTrie<_, D, u32> = LpmTrie::try_from(
        bpf.map(name)
            .ok_or_else(|| format!("bpf/policy.c has no map {name}"))?,
    )
    .map_err(|e| err(name, e))?;
    t.iter()
        .map(|kv| kv.map_err(|e| err(&format!("read {name}"), e)))
        .collect()
}

fn hash_mut<'a, K: Pod, V: Pod>(
    bpf: &'a mut Ebpf,
    name: &str,
) -> Result<HashMap<&'a mut aya::maps::MapData, K, V>, Failure> {
    HashMap::try_from(
        bpf.map_mut(name)
            .ok_or_else(|| format!("bpf/policy.c has no map {name}"))?,
    )
    .map_err(|e| err(name, e))
}

fn trie_mut<'a, D: Pod>(
    bpf: &'a mut Ebpf,
    name: &str,
) -> Result<LpmTrie<&'a mut aya::maps::MapData, D, u32>, Failure> {
    LpmTrie::try_from(
        bpf.map_mut(name)
            .ok_or_else(|| format!("bpf/policy.c has no map {name}"))?,
    )
    .map_err(|e| err(name, e))
}

/// Writes into the hash map `name` the entries of `want` that `cur` lacks or holds
/// with another value; returns how many.
fn put_hash<K: Pod + Ord, V: Pod + PartialEq>(
    bpf: &mut Ebpf,
    name: &str,
    cur: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> Result<usize, Failure> {
    let mut m = hash_mut::<K, V>(bpf, name)?;
    let mut n = 0;
    for (k, v) in want.iter().filter(|(k, v)| cur.get(*k) != Some(*v)) {
        m.insert(k, v, 0)
            .map_err(|e| err(&format!("write {name}"), e))?;
        n += 1;
    }
    Ok(n)
}

/// Removes from the hash map `name` the entries of `cur` that `want` lacks.
fn drop_hash<K: Pod + Ord, V: Pod>(
    bpf: &mut Ebpf,
    name: &str,
    cur: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> Result<usize, Failure> {
    let mut m = hash_mut::<K, V>(bpf, name)?;
    let mut n = 0;
    for k in cur.keys().filter(|k| !want.contains_key(*k)) {
        gone(m.remove(k), name)?;
        n += 1;
    }
    Ok(n)
}

/// A removal from map `name` that must have happened: an entry already gone is fine;
/// any other failure is an error, since the entry could go on admitting what the
/// policy no longer does while the agent believes it gone.
fn gone(r: Result<(), aya::maps::MapError>, name: &str) -> Result<(), Failure> {
    match r {
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r.map_err(|e| err(&format!("remove from {name}"), e)),
    }
}

/// [`put_hash`] for the LPM trie `name`, its keys made by `key`.
fn put_trie<K: Ord, D: Pod>(
    bpf: &mut Ebpf,
    name: &str,
    cur: &BTreeMap<K, u32>,
    want: &BTreeMap<K, u32>,
    key: fn(&K) -> Key<D>,
) -> Result<usize, Failure> {
    let mut t = trie_mut::<D>(bpf, name)?;
    let mut n = 0;
    for (k, v) in want.iter().filter(|(k, v)| cur.get(*k) != Some(*v)) {
        t.insert(&key(k), *v, 0)
            .map_err(|e| err(&format!("write {name}"), e))?;
        n += 1;
    }
    Ok(n)
}

/// [`drop_hash`] for the LPM trie `name`.
fn drop_trie<K: Ord, D: Pod>(
    bpf: &mut Ebpf,
    name: &str,
    cur: &BTreeMap<K, u32>,
    want: &BTreeMap<K, u32>,
    key: fn(&K) -> Key<D>,
) -> Result<usize, Failure> {
    let mut t = trie_mut::<D>(bpf, name)?;
    let mut n = 0;
    for k in cur.keys().filter(|k| !want.contains_key(*k)) {
        gone(t.remove(&key(k)), name)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stale entry already gone is removed; one the kernel refused to remove is an
    /// error, not a belief that it went.
    #[test]
    fn only_an_entry_already_gone_counts_as_removed() {
        let failed = |errno| {
            Err(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_delete_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(gone(Ok(()), "m").is_ok());
        assert!(gone(failed(libc::ENOENT), "m").is_ok());
        let e = gone(failed(libc::EPERM), "egress_peers6").unwrap_err();
        assert!(e.to_string().contains("remove from egress_peers6"), "{e}");
    }

    /// aya's LPM trie key (the prefix length, then the data, packed) is the C key:
    /// the data's own layout is checked against the programs' BTF by podnet-bpf-abi.
    #[test]
    fn lpm_keys_are_the_c_keys() {
        use std::mem::size_of;
        assert_eq!(
            size_of::<Key<PeerData>>(),
            size_of::<podnet_bpf_abi::PeerKey>()
        );
        assert_eq!(
            size_of::<Key<PortData>>(),
            size_of::<podnet_bpf_abi::PortKey>()
        );
    }
}
