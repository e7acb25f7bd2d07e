//! Anti-spoofing: the kernel objects that stop one pod from stealing another's traffic.
//!
//! # What exists, per pod
//! On the **ingress of the pod's host-side veth** — every frame the pod sends, before
//! the bridge sees it (before MAC learning, before ARP reaches the node or another
//! pod):
//! - a `clsact` qdisc;
//! - one tc filter, `bpf` in direct-action mode, named `podnet_from_pod`: the program
//!   `bpf/from_pod.c`, loaded for this pod alone;
//! - that program's array map `podnet_pod` with one entry: the pod's MAC and IP, and
//!   one drop counter per reason in `bpf/drop_reasons.h`.
//!
//! `tc filter show dev <host veth> ingress` shows the filter; `podnet` reads the
//! counters through the filter's program id.
//!
//! # Why this shape
//! Everything is created while the veth is still down and off the bridge, and
//! everything dies with the veth: DEL has nothing extra to remove and can leave no
//! stale rule behind. (An nftables chain per pod was tried first: removing one makes
//! every later close of an nftables socket wait for an RCU grace period while holding
//! the nftables commit lock, which serialized concurrent DELs at ~10 ms each. This
//! kernel has no flower or gact for plain tc rules; eBPF it is.)

use podnet_netlink::socket::Request;
use podnet_netlink::{bpf, tc, Error, Result, Socket};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

include!(concat!(env!("OUT_DIR"), "/drop_reasons.rs"));

/// The compiled datapath program (see build.rs).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/from_pod.o"));

/// The tc filter's and the program's name.
pub const PROG_NAME: &str = "podnet_from_pod";
const MAP_NAME: &str = "podnet_pod";
const SECTION: &str = "tc";
const MAP_SYMBOL: &str = "pod_state";

/// Size of `struct pod_state` in from_pod.c: mac[6], pad[2], ip, pad2, drops[N].
fn state_size() -> usize {
    16 + 8 * DROP_REASONS.len()
}

/// The initial map value for a pod: its MAC and IP, counters at zero.
fn state_bytes(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut v = vec![0u8; state_size()];
    v[..6].copy_from_slice(&mac);
    v[8..12].copy_from_slice(&ip.octets());
    v
}

/// Loads the program for one pod (its own map holding `mac` and `ip`). The returned
/// program holds the map; a tc filter holding the program keeps both alive.
pub fn load(mac: [u8; 6], ip: Ipv4Addr) -> Result<OwnedFd> {
    if OBJECT.is_empty() {
        return Err(Error::Malformed {
            op: "load BPF program",
            obj: PROG_NAME.into(),
            why: "podnet-cni was built without clang, so it has no anti-spoofing program; install clang and rebuild".into(),
        });
    }
    let prog = bpf::parse_object(OBJECT, SECTION)?;
    let map = bpf::create_array(MAP_NAME, state_size() as u32, 1)?;
    bpf::update(&map, 0, &state_bytes(mac, ip))?;
    bpf::load(&prog, PROG_NAME, &[(MAP_SYMBOL, &map)])
}

/// The requests that put `prog` on the ingress of host veth `ifindex`: the clsact
/// qdisc, then the filter. Send them in one pipelined write.
pub fn install_requests(ifindex: u32, prog: &OwnedFd) -> Vec<Request> {
    vec![
        tc::clsact_request(ifindex),
        tc::bpf_ingress_request(ifindex, 1, prog, PROG_NAME),
    ]
}

/// The program id of podnet's filter on `ifindex`, if installed.
pub fn installed_prog(sock: &mut Socket, ifindex: u32) -> Result<Option<u32>> {
    Ok(tc::list_ingress(sock, ifindex)?
        .into_iter()
        .find(|f| f.kind == "bpf" && f.name.as_deref() == Some(PROG_NAME))
        .and_then(|f| f.prog_id))
}

/// True if the protection is on the host veth `ifindex`.
pub fn is_installed(sock: &mut Socket, ifindex: u32) -> Result<bool> {
    Ok(installed_prog(sock, ifindex)?.is_some())
}

/// What the pod's program holds: its MAC, IP and drop counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    /// `(reason, packets dropped)` for every reason, in table order.
    pub drops: Vec<(String, u64)>,
}

/// Reads the state of the program with kernel id `prog_id`.
pub fn read_state(prog_id: u32) -> Result<PodState> {
    let prog = bpf::prog_by_id(prog_id)?;
    let ids = bpf::prog_map_ids(&prog)?;
    let id = *ids.first().ok_or_else(|| Error::Malformed {
        op: "read pod state",
        obj: format!("program {prog_id}"),
        why: "the program uses no map".into(),
    })?;
    let v = bpf::lookup(&bpf::map_by_id(id)?, 0, state_size())?;
    Ok(PodState {
        mac: v[..6].try_into().unwrap(),
        ip: Ipv4Addr::new(v[8], v[9], v[10], v[11]),
        drops: DROP_REASONS
            .iter()
            .map(|(n, id, _)| {
                let at = 16 + 8 * *n as usize;
                (
                    id.to_string(),
                    u64::from_ne_bytes(v[at..at + 8].try_into().unwrap()),
                )
            })
            .collect(),
    })
}

/// Drop counters of the pod behind host veth `ifindex` (in the socket's namespace).
pub fn counters(sock: &mut Socket, ifindex: u32) -> Result<Vec<(String, u64)>> {
    match installed_prog(sock, ifindex)? {
        Some(id) => Ok(read_state(id)?.drops),
        None => Err(Error::NotFound {
            op: "read drop counters of",
            obj: format!("link {ifindex}"),
            ext: Some("no podnet filter on it".into()),
        }),
    }
}

/// What the host veth's alias records: the attachment it belongs to (GC reads it).
pub fn owner_alias(network: &str, container_id: &str, ifname: &str) -> String {
    let mut s = format!("podnet net={network} if={ifname} cid={container_id}");
    s.truncate(255);
    s
}

/// Parses [`owner_alias`]: `(network, ifname, container_id)`.
pub fn parse_owner_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let rest = alias.strip_prefix("podnet net=")?;
    let (net, rest) = rest.split_once(" if=")?;
    let (ifname, cid) = rest.split_once(" cid=")?;
    Some((net, ifname, cid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_is_dense_and_named() {
        for (i, (n, id, what)) in DROP_REASONS.iter().enumerate() {
            assert_eq!(*n as usize, i);
            assert!(!id.is_empty() && !what.is_empty());
        }
        assert!(DROP_REASONS.iter().any(|(_, id, _)| *id == "arp-spa"));
    }

    #[test]
    fn state_layout_matches_the_c_struct() {
        let v = state_bytes([1, 2, 3, 4, 5, 6], Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(v.len(), 16 + 8 * DROP_REASONS.len());
        assert_eq!(&v[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&v[8..12], &[10, 0, 0, 5]);
    }

    #[test]
    fn alias_roundtrip() {
        let a = owner_alias("net1", "abc", "eth0");
        assert_eq!(parse_owner_alias(&a), Some(("net1", "eth0", "abc")));
        assert_eq!(parse_owner_alias("something else"), None);
    }

    #[test]
    fn object_has_the_program_and_one_map_reference() {
        let p = bpf::parse_object(OBJECT, SECTION).expect("from_pod.o parses");
        assert!(p.insns.len() > 8 && p.insns.len() % 8 == 0);
        assert!(!p.map_refs.is_empty());
        assert!(p.map_refs.iter().all(|(_, s)| s == MAP_SYMBOL));
    }
}
