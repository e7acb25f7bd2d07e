//! What podnet-cni, podnetd and the `podnet` tool must agree on, in one place: change a
//! scheme here and every program follows. No I/O and nothing but serde (and clap, as
//! an option), so the plugin, the agent and the tool can all depend on it without
//! depending on each other: names and numbers, the choices ([`Backend`], [`Datapath`],
//! [`PolicyDatapath`]), default paths, and the files and messages passed between the
//! programs ([`NodeFile`], [`CniReport`]).

mod backoff;
mod contracts;
mod kinds;
pub mod net;

pub use backoff::Backoff;
pub use contracts::{CniReport, NodeFile, PolicyPrograms};
pub use kinds::{
    choose_datapaths, underlay_family_fits, Backend, Datapath, IpFamily, PolicyDatapath,
    UnderlayFamily, UnknownChoice,
};
pub use net::{CidrError, IpNet, Ipv4Net, Ipv6Net, PodCidr};

use std::net::Ipv4Addr;

/// The node bridge every pod's host veth joins.
pub const DEFAULT_BRIDGE: &str = "podnet0";
/// Where podnetd publishes the node's pod CIDR, MTU and bridge for podnet-cni.
pub const DEFAULT_NODE_FILE: &str = "/run/podnet/node.json";
/// The built-in IPAM's state.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/podnet/ipam";
/// podnetd's local API socket ([`API_SOCKET_NAME`] in `/run/podnet`).
pub const DEFAULT_API_SOCKET: &str = "/run/podnet/podnetd.sock";
/// The API socket's file name, wherever its directory is (a lab node's state).
pub const API_SOCKET_NAME: &str = "podnetd.sock";

/// Routes podnet makes carry this protocol number (`ip route … proto 80`): what podnet
/// finds and removes, and nothing else.
pub const RTPROT_PODNET: u8 = 0x50;
/// Neighbour state of the entries podnetd keeps (`nud permanent`).
pub const NUD_PERMANENT: u16 = 0x80;

/// The VXLAN device, its VNI and UDP port (8472, as Flannel; 4789 is IANA's).
pub const VXLAN_DEV: &str = "podnet.vxlan";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// VXLAN's cost per packet: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes, so
/// the pod MTU is the underlay's minus 50.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The WireGuard device of the `wireguard` backend, and its UDP port (WireGuard's
/// customary 51820).
pub const WG_DEV: &str = "podnet.wg";
pub const WG_PORT: u16 = 51820;
/// WireGuard's cost per packet over an IPv4 underlay: outer IPv4 20 + UDP 8 + the
/// transport header 16 (type, receiver index, counter) + the Poly1305 tag 16 = 60
/// bytes, so the pod MTU is the underlay's minus 60. WireGuard pads the plaintext to
/// a multiple of 16 but never beyond the device MTU, so padding adds nothing at full
/// size. (`wg-quick`'s 1420 = 1500 − 80 allows for an IPv6 underlay; podnet's
/// underlay is IPv4.)
pub const WG_OVERHEAD: u32 = 60;

/// The pod interface's MAC: `0a:58` + the IPv4 address (locally administered,
/// unicast, unique wherever the IP is).
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The host-side veth's MAC: `0a:5a` + the pod's IPv4 address.
pub fn host_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x5a, o[0], o[1], o[2], o[3]]
}

/// The MAC of a node's VXLAN device: `0a:59` + its underlay IPv4 address — derived,
/// so it survives reboots and re-creation.
pub fn vtep_mac(underlay: Ipv4Addr) -> [u8; 6] {
    let o = underlay.octets();
    [0x0a, 0x59, o[0], o[1], o[2], o[3]]
}

/// The host-side veth name for an attachment: `pn` + 12 hex digits of a hash of the
/// container ID and interface name. Deterministic, so DEL and GC find it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit: stable across versions and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("pn{:012x}", h & 0xffff_ffff_ffff)
}

/// What the host veth's alias records: the attachment it belongs to (GC reads it) and
/// the pod's namespace (the agent reads it to report the pod's own state). The
/// namespace is left out if the alias would exceed the kernel's 255 bytes.
pub fn owner_alias(network: &str, container_id: &str, ifname: &str, netns: &str) -> Option<String> {
    // The kernel keeps at most 255 bytes. The owner part is what DEL, GC and a
    // retried ADD match on, so it is never cut: too long is refused. The namespace
    // path is only for people and `podnet trace`, so it is left out when it does not fit.
    let base = format!("podnet net={network} if={ifname} cid={container_id}");
    let full = format!("{base} ns={netns}");
    if full.len() <= 255 {
        Some(full)
    } else {
        (base.len() <= 255).then_some(base)
    }
}

/// Parses [`owner_alias`]: `(network, ifname, container_id)`.
pub fn parse_owner_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let rest = alias.strip_prefix("podnet net=")?;
    let (net, rest) = rest.split_once(" if=")?;
    let (ifname, rest) = rest.split_once(" cid=")?;
    let cid = rest.split_once(" ns=").map_or(rest, |(c, _)| c);
    Some((net, ifname, cid))
}

/// The pod's namespace path recorded in [`owner_alias`], if there is one.
pub fn alias_netns(alias: &str) -> Option<&str> {
    alias
        .strip_prefix("podnet net=")?
        .split_once(" ns=")
        .map(|(_, ns)| ns)
}

/// The Unix datagram socket podnetd reads podnet-cni's reports on (one JSON object per
/// ADD/DEL/CHECK: verb, result, seconds): beside the node file, whose path both know.
pub fn cni_report_socket(node_file: &std::path::Path) -> std::path::PathBuf {
    node_file.with_file_name("cni-report.sock")
}

/// Seconds since the Unix epoch, the unit of every timestamp podnet stores.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-26T06:40:00Z` for Unix seconds `t` (UTC, proleptic Gregorian).
pub fn rfc3339(t: u64) -> String {
    let (days, secs) = ((t / 86400) as i64, t % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_names_are_derived_and_stable() {
        let ip = Ipv4Addr::new(10, 244, 1, 7);
        assert_eq!(pod_mac(ip), [0x0a, 0x58, 10, 244, 1, 7]);
        assert_eq!(host_mac(ip), [0x0a, 0x5a, 10, 244, 1, 7]);
        assert_eq!(
            vtep_mac(Ipv4Addr::new(192, 168, 1, 10)),
            [0x0a, 0x59, 192, 168, 1, 10]
        );
        // The hash is part of the on-node state: a change strands existing pods.
        assert_eq!(host_veth_name("abc", "eth0"), host_veth_name("abc", "eth0"));
        assert_ne!(host_veth_name("abc", "eth0"), host_veth_name("abc", "eth1"));
        assert_eq!(host_veth_name("abc", "eth0").len(), 14);
    }

    #[test]
    fn aliases_round_trip_and_stay_within_the_kernel_limit() {
        let a = owner_alias("podnet", "cid1", "eth0", "/run/netns/x").unwrap();
        assert_eq!(parse_owner_alias(&a), Some(("podnet", "eth0", "cid1")));
        assert_eq!(alias_netns(&a), Some("/run/netns/x"));
        let long_ns = "n".repeat(300);
        let a = owner_alias("podnet", "cid1", "eth0", &long_ns).unwrap();
        assert!(a.len() <= 255 && alias_netns(&a).is_none());
        assert_eq!(owner_alias("podnet", &"c".repeat(300), "eth0", "x"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_675_306), "2026-11-26T06:41:46Z");
    }
}
