//! The underlay guard: which datagrams the node's overlay ports take from the wire.
//!
//! # Kernel objects it owns
//! - On the **ingress of the node's underlay device** (the node's own link, not
//!   podnet's): one tc filter, `podnet_guard` at priority [`PRIO`] — before the fast
//!   path's `podnet_fast_ul` — running `underlay_guard` from `bpf/underlay.c`. The
//!   clsact qdisc is shared with whatever else the node runs there and never removed.
//! - The program's maps, unpinned: peers (tunnel end → pod CIDRs), the guarded
//!   ports, the drop counters, and (host-gw) the pod CIDRs of each family → owning
//!   peer's MAC. The filter holds them, so they outlive a killed
//!   agent unchanged; a starting agent loads them anew, fills them with the peers it
//!   reads, and only then swaps its filter in (`tc filter replace`: the device is
//!   never without one).
//!
//! # Why
//! The kernel decapsulates any VXLAN datagram that reaches its port and forwards the
//! inner packet as if a peer had routed it: no anti-spoofing sees it, NetworkPolicy
//! judges its forged source. So VXLAN passes only from a peer's underlay address, with
//! an inner source of that peer's (its pod CIDR or its underlay address), and the
//! WireGuard port takes datagrams only from peers. Pods are kept off both ports by
//! anti-spoofing (`bpf/from_pod.c`, reason `overlay-port`). Plain traffic with a pod
//! source never comes off the wire with an overlay; with host-gw it must come from the
//! MAC of the peer owning the source (`podnet_ulcidrs`, filled each round from the
//! node's neighbour table) and never claim this node's own pods. Plain IPv6 with a
//! source in a dual-stack cluster's IPv6 range is bound the same way
//! (`podnet_ulcidrs6`): never off the wire with an overlay (pods' IPv6 crosses in
//! it), only from the owning peer's MAC with host-gw, so an underlay that carries
//! IPv6 cannot forge it either. Over an IPv4 underlay neither overlay port takes
//! IPv6 (the WireGuard socket is bound to both families), even behind extension
//! headers; over an IPv6 underlay (`--underlay-family ipv6`) the ports take IPv6
//! from peers' underlay IPv6 addresses only (`podnet_ulpeers6`, VXLAN with an inner
//! source of the sender's, as over IPv4) and no IPv4 at all. A chain of extension
//! headers too long to find the port behind is refused.
//! Every backend runs the guard.
//!
//! Every round the filter is verified like a route: missing, or replaced by another
//! program, it is put back and the repair is logged and counted.

use crate::Failure;
use aya::maps::{Array, HashMap};
use aya::programs::SchedClassifier;
use aya::Ebpf;
pub use podnet_api::GuardStatus;
use podnet_cni_spec::net::Ipv6Net;
use podnet_cni_spec::Ipv4Net;
use podnet_netlink::{tc, Socket};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;

pub use podnet_netlink::antispoof::UNDERLAY_DROP_REASONS;

/// The compiled guard (see build.rs).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/underlay.o"));

/// The tc filter's name.
pub const FILTER: &str = "podnet_guard";
/// Its priority on the underlay ingress: before the fast path's filter (0xc0de).
pub const PRIO: u16 = 0xc0d0;
const PROGRAM: &str = "underlay_guard";
/// The nftables datapath's backstop (`nft_backstop` in underlay.c), on every pod veth's
/// egress: forwarded packets nftables did not mark are dropped.
const BACKSTOP: &str = "nft_backstop";
/// Its tc filter's name and priority on a pod veth's egress.
pub const BACKSTOP_FILTER: &str = "podnet_nft_backstop";
pub const BACKSTOP_PRIO: u16 = 2;
/// The mark nftables' forward chain sets on packets to pods (nft.rs renders it).
pub use podnet_bpf_abi::PODNET_NFT_MARK as NFT_MARK;
// The guard's map values, generated from bpf/abi.h.
use podnet_bpf_abi::{UlCidr, UlConfig, UlPeer, UlPeer6Key};

/// What the guard binds pod sources to, with the host-gw backend: each peer's pod CIDR
/// → its underlay MAC if the node's neighbour table knows it; this node's own CIDR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub own: Option<Ipv4Net>,
    pub peers: Vec<(Ipv4Net, Option<[u8; 6]>)>,
    /// A dual-stack cluster's IPv6 pod CIDRs, the same way.
    pub own6: Option<Ipv6Net>,
    pub peers6: Vec<(Ipv6Net, Option<[u8; 6]>)>,
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - p as u32),
    }
}

fn err(what: &str, e: impl Into<crate::BoxError>) -> Failure {
    Failure::op(format!("underlay guard: {what}"), e)
}

/// The loaded guard.
pub struct Guard {
    bpf: Ebpf,
    prog_id: u32,
    config: UlConfig,
    /// What the peers maps hold (tunnel end → entry): IPv4 ones in `podnet_ulpeers`,
    /// IPv6 ones in `podnet_ulpeers6`.
    peers: BTreeMap<IpAddr, UlPeer>,
    /// What the pod-source map holds (host-gw): `(prefix, raw network)` → entry.
    cidrs: BTreeMap<(u32, u32), UlCidr>,
    /// The same for IPv6 pod CIDRs (a dual-stack cluster on host-gw).
    cidrs6: BTreeMap<(u32, [u8; 16]), UlCidr>,
    /// Whether this agent attached the filter once already: a missing one is drift.
    attached_once: bool,
}

fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Whether this podnetd was built with its eBPF programs.
pub fn available() -> bool {
    !OBJECT.is_empty()
}

impl Guard {
    /// Loads the program and its maps, guarding `vxlan_port` and `wireguard_port`
    /// (0: none) and binding plain traffic with a source in `cluster` (with `host_gw`,
    /// to its owner's MAC; without, it is refused); plain IPv6 with a source in
    /// `cluster6` (a dual-stack cluster's IPv6 range) likewise. With `underlay6` the
    /// ports take datagrams from peers' underlay IPv6 addresses, and no IPv4. Nothing
    /// is attached yet: see [`Guard::sync`].
    pub fn load(
        vxlan_port: u16,
        wireguard_port: u16,
        (cluster, cluster6): (Ipv4Net, Option<podnet_cni_spec::net::Ipv6Net>),
        host_gw: bool,
        underlay6: bool,
    ) -> Result<Guard, Failure> {
        if OBJECT.is_empty() {
            return Err("podnetd was built with PODNET_SKIP_BPF=1 and has no underlay guard (bpf/underlay.c): build it again with clang; without the guard any pod or host could inject encapsulated traffic".into());
        }
        let mut bpf = Ebpf::load(OBJECT).map_err(|e| err("load bpf/underlay.c", e))?;
        let prog: &mut SchedClassifier = bpf
            .program_mut(PROGRAM)
            .ok_or_else(|| format!("bpf/underlay.c has no program {PROGRAM}"))?
            .try_into()
            .map_err(|e| err(PROGRAM, e))?;
        prog.load()
            .map_err(|e| err(&format!("load {PROGRAM} (the verifier's log follows)"), e))?;
        let backstop: &mut SchedClassifier = bpf
            .program_mut(BACKSTOP)
            .ok_or_else(|| format!("bpf/underlay.c has no program {BACKSTOP}"))?
            .try_into()
            .map_err(|e| err(BACKSTOP, e))?;
        backstop
            .load()
            .map_err(|e| err(&format!("load {BACKSTOP} (the verifier's log follows)"), e))?;
        let prog: &SchedClassifier = bpf
            .program(PROGRAM)
            .ok_or("no guard program")?
            .try_into()
            .map_err(|e| err(PROGRAM, e))?;
        let prog_id = prog
            .info()
            .map_err(|e| err("read the program's id", e))?
            .id();
        let config = UlConfig {
            vxlan_port,
            wireguard_port,
            cluster_net: u32::from(cluster.network()) & mask(cluster.prefix()),
            cluster_mask: mask(cluster.prefix()),
            host_gw: host_gw as u32,
            cluster6_net: cluster6.map_or([0; 16], |c| c.network().octets()),
            cluster6_prefix: cluster6.map_or(0, |c| u32::from(c.prefix())),
            underlay6: underlay6 as u32,
        };
        let mut g = Guard {
            bpf,
            prog_id,
            config,
            peers: BTreeMap::new(),
            cidrs: BTreeMap::new(),
            cidrs6: BTreeMap::new(),
            attached_once: false,
        };
        let mut c: Array<_, UlConfig> = Array::try_from(
            g.bpf
                .map_mut("podnet_ulconf")
                .ok_or("no map podnet_ulconf")?,
        )
        .map_err(|e| err("podnet_ulconf", e))?;
        c.set(0, config, 0)
            .map_err(|e| err("write podnet_ulconf", e))?;
        Ok(g)
    }

    fn program_fd(&self) -> Result<OwnedFd, Failure> {
        self.fd_of(PROGRAM)
    }

    fn fd_of(&self, name: &str) -> Result<OwnedFd, Failure> {
        crate::ebpf::classifier_fd(&self.bpf, name).map_err(|e| err("program", e))
    }

    /// The nftables backstop program, for the policy thread to attach to pod veths.
    pub fn backstop_fd(&self) -> Result<OwnedFd, Failure> {
        self.fd_of(BACKSTOP)
    }

    /// One round: the peers maps made exactly `peers` (keyed by each one's tunnel end,
    /// with its pod CIDRs and underlay IPv4 address), then the filter verified on
    /// `device` (index `index`) and put back if missing or not this agent's. Returns
    /// `Some(why)` when the filter had to be repaired (drift, not the first attach).
    pub fn sync(
        &mut self,
        sock: &mut Socket,
        index: u32,
        device: &str,
        peers: &[crate::plan::Peer],
        sources: &Sources,
    ) -> Result<Option<String>, Failure> {
        if self.config.host_gw != 0 {
            self.sync_sources(sources)?;
        }
        let want: BTreeMap<IpAddr, UlPeer> = peers
            .iter()
            .map(|p| {
                (
                    p.endpoint,
                    UlPeer {
                        net: u32::from(p.cidr.network()),
                        mask: mask(p.cidr.prefix()),
                        net6: p.cidr6.map_or([0; 16], |c| c.network().octets()),
                        prefix6: p.cidr6.map_or(0, |c| c.prefix()),
                        underlay: u32::from(p.underlay),
                        ..Default::default()
                    },
                )
            })
            .collect();
        if want != self.peers {
            // Additions first: a peer that changed CIDR is never missing in between.
            let changed: Vec<(IpAddr, Option<UlPeer>)> = want
                .iter()
                .filter(|(k, v)| self.peers.get(k) != Some(v))
                .map(|(k, v)| (*k, Some(*v)))
                .chain(
                    self.peers
                        .keys()
                        .filter(|k| !want.contains_key(k))
                        .map(|k| (*k, None)),
                )
                .collect();
            let mut m4: HashMap<_, u32, UlPeer> = HashMap::try_from(
                self.bpf
                    .map_mut("podnet_ulpeers")
                    .ok_or("no map podnet_ulpeers")?,
            )
            .map_err(|e| err("podnet_ulpeers", e))?;
            for (k, v) in &changed {
                if let IpAddr::V4(a) = k {
                    match v {
                        Some(v) => m4.insert(raw(*a), v, 0),
                        None => m4.remove(&raw(*a)),
                    }
                    .map_err(|e| err(&format!("write podnet_ulpeers ({k})"), e))?;
                }
            }
            let mut m6: HashMap<_, UlPeer6Key, UlPeer> = HashMap::try_from(
                self.bpf
                    .map_mut("podnet_ulpeers6")
                    .ok_or("no map podnet_ulpeers6")?,
            )
            .map_err(|e| err("podnet_ulpeers6", e))?;
            for (k, v) in &changed {
                if let IpAddr::V6(a) = k {
                    let key = UlPeer6Key { addr: a.octets() };
                    match v {
                        Some(v) => m6.insert(key, v, 0),
                        None => m6.remove(&key),
                    }
                    .map_err(|e| err(&format!("write podnet_ulpeers6 ({k})"), e))?;
                }
            }
            self.peers = want;
        }
        let filters = tc::list_ingress(sock, index).map_err(|e| err(device, e))?;
        let mine = filters
            .iter()
            .find(|f| f.prio == PRIO && f.name.as_deref() == Some(FILTER));
        if mine.is_some_and(|f| f.prog_id == Some(self.prog_id)) {
            return Ok(None);
        }
        let why = match mine {
            None if self.attached_once => Some(format!(
                "the underlay guard's filter {FILTER} was gone from the ingress of {device}"
            )),
            Some(_) if self.attached_once => Some(format!(
                "the filter {FILTER} on {device} ran another program"
            )),
            _ => None,
        };
        let fd = self.program_fd()?;
        for r in sock.ack_all(vec![
            tc::clsact_request(index),
            tc::bpf_ingress_replace_request(index, PRIO, &fd, FILTER),
        ]) {
            if let Err(e) = r {
                if !e.is_exists() {
                    return Err(err(&format!("attach {FILTER} to {device}"), e));
                }
            }
        }
        self.attached_once = true;
        Ok(why)
    }

    /// host-gw: the pod-source maps (one per family) made exactly `sources`.
    fn sync_sources(&mut self, sources: &Sources) -> Result<(), Failure> {
        let peer = |mac: &Option<[u8; 6]>| UlCidr {
            mac: mac.unwrap_or_default(),
            local: 0,
            pad: 0,
        };
        let local = UlCidr {
            mac: [0; 6],
            local: 1,
            pad: 0,
        };
        let want: BTreeMap<(u32, u32), UlCidr> = sources
            .peers
            .iter()
            .map(|(c, mac)| (*c, peer(mac)))
            .chain(sources.own.map(|c| (c, local)))
            .map(|(c, v)| {
                let key = u32::from_ne_bytes(c.network().octets());
                ((u32::from(c.prefix()), key), v)
            })
            .collect();
        let want6: BTreeMap<(u32, [u8; 16]), UlCidr> = sources
            .peers6
            .iter()
            .map(|(c, mac)| (*c, peer(mac)))
            .chain(sources.own6.map(|c| (c, local)))
            .map(|(c, v)| ((u32::from(c.prefix()), c.network().octets()), v))
            .collect();
        sync_trie(&mut self.bpf, "podnet_ulcidrs", &mut self.cidrs, want)?;
        sync_trie(&mut self.bpf, "podnet_ulcidrs6", &mut self.cidrs6, want6)
    }

    /// The guard's state now, read from its maps and the device.
    pub fn status(&self, sock: &mut Socket, index: u32, device: &str) -> GuardStatus {
        let attached = tc::list_ingress(sock, index).is_ok_and(|fs| {
            fs.iter().any(|f| {
                f.prio == PRIO
                    && f.name.as_deref() == Some(FILTER)
                    && f.prog_id == Some(self.prog_id)
            })
        });
        let mut drops = BTreeMap::new();
        if let Some(Ok(a)) = self
            .bpf
            .map("podnet_uldrops")
            .map(Array::<_, u64>::try_from)
        {
            for (n, id, _) in UNDERLAY_DROP_REASONS {
                if let Ok(v) = a.get(n, 0) {
                    drops.insert(id.to_string(), v);
                }
            }
        }
        GuardStatus {
            device: device.to_string(),
            vxlan_port: self.config.vxlan_port,
            wireguard_port: self.config.wireguard_port,
            host_gw: self.config.host_gw != 0,
            program_id: self.prog_id,
            bound_sources: self
                .cidrs
                .values()
                .chain(self.cidrs6.values())
                .filter(|c| c.local == 0 && c.mac != [0; 6])
                .count(),
            peers: self.peers.len(),
            attached,
            drops,
        }
    }
}

/// The LPM trie `name` made exactly `want` (`(prefix, network)` → entry), from `have`
/// (what this agent wrote last): additions and changes first, then removals.
fn sync_trie<K: aya::Pod + Ord>(
    bpf: &mut Ebpf,
    name: &str,
    have: &mut BTreeMap<(u32, K), UlCidr>,
    want: BTreeMap<(u32, K), UlCidr>,
) -> Result<(), Failure> {
    if want == *have {
        return Ok(());
    }
    let mut m: aya::maps::lpm_trie::LpmTrie<_, K, UlCidr> = aya::maps::lpm_trie::LpmTrie::try_from(
        bpf.map_mut(name).ok_or_else(|| format!("no map {name}"))?,
    )
    .map_err(|e| err(name, e))?;
    for ((len, addr), v) in &want {
        if have.get(&(*len, *addr)) != Some(v) {
            m.insert(&aya::maps::lpm_trie::Key::new(*len, *addr), v, 0)
                .map_err(|e| err(&format!("write {name}"), e))?;
        }
    }
    for (len, addr) in have.keys().filter(|k| !want.contains_key(k)) {
        m.remove(&aya::maps::lpm_trie::Key::new(*len, *addr))
            .map_err(|e| err(&format!("remove from {name}"), e))?;
    }
    *have = want;
    Ok(())
}

/// Whether `device`'s ingress holds podnet's guard filter running program `prog_id`,
/// read from the kernel now.
pub fn attached_now(device: &str, prog_id: u32) -> bool {
    let Ok(mut sock) = Socket::route() else {
        return false;
    };
    let Ok(Some(l)) = podnet_netlink::link::get_by_name(&mut sock, device) else {
        return false;
    };
    tc::list_ingress(&mut sock, l.index).is_ok_and(|fs| {
        fs.iter().any(|f| {
            f.prio == PRIO && f.name.as_deref() == Some(FILTER) && f.prog_id == Some(prog_id)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_holds_the_program_and_maps_with_the_rust_layouts() {
        let obj = aya_obj::Object::parse(OBJECT).expect("underlay.o parses");
        assert!(obj.programs.contains_key(PROGRAM));
        assert_eq!(
            obj.maps["podnet_ulpeers"].value_size() as usize,
            std::mem::size_of::<UlPeer>()
        );
        assert_eq!(obj.maps["podnet_ulpeers"].key_size(), 4);
        assert_eq!(
            obj.maps["podnet_ulpeers6"].value_size() as usize,
            std::mem::size_of::<UlPeer>()
        );
        assert_eq!(obj.maps["podnet_ulpeers6"].key_size(), 16);
        // The pod-source tries: prefix length + address, a ul_cidr value.
        for (map, key) in [("podnet_ulcidrs", 8), ("podnet_ulcidrs6", 20)] {
            assert_eq!(obj.maps[map].key_size(), key, "{map}");
            assert_eq!(
                obj.maps[map].value_size() as usize,
                std::mem::size_of::<UlCidr>(),
                "{map}"
            );
        }
        assert_eq!(
            obj.maps["podnet_ulconf"].value_size() as usize,
            std::mem::size_of::<UlConfig>()
        );
        assert_eq!(
            obj.maps["podnet_uldrops"].max_entries() as usize,
            UNDERLAY_DROP_REASONS.len()
        );
        assert_eq!(
            podnet_bpf_abi::PODNET_UNDERLAY_DROP_MAX as usize,
            UNDERLAY_DROP_REASONS.len()
        );
    }
}
