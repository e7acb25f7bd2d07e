//! Which peer records the agent programs: a record is checked against this node and
//! the peers already accepted before anything is built from it ([`check_peer`]).

use crate::plan::Peer;
use crate::{vtep_mac, wireguard, Backend};
use podnet_cni_spec::net::{Ipv4Net, Ipv6Net};
use podnet_datastore::NodeRecord;
use podnet_netlink::parse_mac;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a peer's record is left out, and what to fix (logged once per record).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<String> for Refused {
    fn from(why: String) -> Refused {
        Refused(why)
    }
}

impl From<&str> for Refused {
    fn from(why: &str) -> Refused {
        Refused(why.to_string())
    }
}

/// A peer's WireGuard public key and port.
pub type WireGuardEndpoint = (wireguard::Key, u16);

/// This node, as [`check_peer`] compares a peer's record with it.
pub struct Me<'a> {
    pub record: &'a NodeRecord,
    pub cluster: Ipv4Net,
    /// A dual-stack cluster's IPv6 range; `None`: this node carries IPv4 only.
    pub cluster6: Option<Ipv6Net>,
    /// The Service range: virtual addresses, never a node's.
    pub service: Ipv4Net,
    pub backend: Backend,
    /// With the WireGuard backend: this node's public key.
    pub wg_public_key: Option<wireguard::Key>,
}

/// Checks a peer's record before anything is programmed from it; returns its VTEP
/// MAC (zero with host-gw and WireGuard) and, with WireGuard, its public key and
/// port — or why it is left out, and what to fix. A record is refused when its pod
/// CIDR is outside the cluster CIDR or overlaps ours or an accepted peer's (the first
/// by name keeps it), when its underlay address cannot be a node's
/// ([`underlay_problem`]) or is an accepted peer's, (VXLAN) when its VTEP MAC is not the one derived from its
/// underlay address ([`vtep_mac`]: every agent publishes exactly that, so another one
/// is forged or corrupt), or (WireGuard) when it publishes no key, a malformed one,
/// ours, or an accepted peer's (a copied record must not take over another node's
/// tunnel).
pub fn check_peer(
    r: &NodeRecord,
    me: &Me,
    accepted: &[Peer],
) -> std::result::Result<([u8; 6], Option<WireGuardEndpoint>), Refused> {
    let overlaps = |a: Ipv4Net, b: Ipv4Net| a.contains(b.network()) || b.contains(a.network());
    let (cluster, mine) = (me.cluster, me.record);
    let cidr = r.pod_cidr;
    if !cluster.contains(cidr.network()) || cidr.prefix() < cluster.prefix() {
        return Err(format!("its pod CIDR {cidr} is outside the cluster CIDR {cluster}").into());
    }
    if overlaps(cidr, mine.pod_cidr) {
        return Err(format!("its pod CIDR {cidr} overlaps ours ({})", mine.pod_cidr).into());
    }
    if let Some(p) = accepted.iter().find(|p| overlaps(cidr, p.cidr)) {
        return Err(format!("its pod CIDR {cidr} overlaps {}'s ({})", p.name, p.cidr).into());
    }
    if let Some(why) = underlay_problem(r.underlay_ip, me) {
        return Err(why.into());
    }
    let u = r.underlay_ip;
    if let Some(p) = accepted.iter().find(|p| p.underlay == u) {
        return Err(format!(
            "its underlay address {u} is also {}'s: two nodes cannot share one; the peer's podnetd must publish its own underlay interface's address (--underlay-dev); if it does, the record is forged",
            p.name
        ).into());
    }
    let wg = match me.backend {
        Backend::Wireguard => {
            let w = r.wireguard.as_ref().ok_or(format!(
                "it publishes no WireGuard key (its backend is {:?}; every node of a cluster runs the same backend)",
                r.backend
            ))?;
            let k = wireguard::parse_public_key(&w.public_key).map_err(|why| {
                format!(
                    "its WireGuard public key {:?} is malformed: {why}",
                    w.public_key
                )
            })?;
            if Some(k) == me.wg_public_key {
                return Err(format!("its WireGuard public key {} is ours", w.public_key).into());
            }
            if let Some(p) = accepted
                .iter()
                .find(|p| p.wireguard.map(|x| x.0) == Some(k))
            {
                return Err(format!(
                    "its WireGuard public key {} is also {}'s",
                    w.public_key, p.name
                )
                .into());
            }
            if w.port == 0 {
                return Err("its WireGuard port is 0".into());
            }
            Some((k, w.port))
        }
        _ => None,
    };
    match (parse_mac(&r.vtep_mac), me.backend) {
        (Some(m), Backend::Vxlan) if m != vtep_mac(u) => Err(format!(
            "its VTEP MAC {} is not {}, the one its underlay address {u} gives (0a:59 + the address; every podnetd publishes exactly that): the record is forged or corrupt; restart that node's podnetd to publish it again",
            r.vtep_mac,
            podnet_netlink::fmt_mac(&vtep_mac(u))
        ).into()),
        (Some(m), _) => Ok((m, wg)),
        (None, Backend::Vxlan) => Err(format!("its VTEP MAC {:?} cannot be read", r.vtep_mac).into()),
        (None, _) => Ok(([0; 6], wg)),
    }
}

/// What this node takes of a peer's IPv6 side, once [`check_peer`] accepted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer6 {
    /// Its IPv6 pod CIDR (none when this node or the peer carries IPv4 only).
    pub cidr: Option<Ipv6Net>,
    /// Its global IPv6 address on the underlay, if it publishes one.
    pub underlay: Option<Ipv6Addr>,
}

/// The IPv6 pod CIDR (and underlay address) this node routes to a peer that
/// [`check_peer`] accepted: none when this node or the peer carries IPv4 only;
/// refused (the whole record) when the CIDR lies outside the cluster's IPv6 range or
/// overlaps ours or an accepted peer's, as for IPv4 — a record must not draw another
/// node's IPv6 pods to itself — or when its underlay IPv6 address could not be a
/// node's ([`underlay6_problem`]). host-gw routes IPv6 pods to the peer's underlay
/// IPv6 address, so there a dual-stack peer without one is refused too. Every node of
/// a cluster ends its overlay tunnel at the same family (`--underlay-family`: a VXLAN
/// device speaks one), so a peer of the other family is refused, and over an IPv6
/// underlay a peer must publish a valid underlay IPv6 address (its tunnel's end).
pub fn check_peer6(
    r: &NodeRecord,
    me: &Me,
    accepted: &[Peer],
) -> std::result::Result<Peer6, Refused> {
    let (mine, theirs) = (me.record.underlay_family, r.underlay_family);
    if mine != theirs {
        return Err(format!(
            "its overlay tunnel runs over an {theirs} underlay and ours over {mine}: every node of a cluster runs the same --underlay-family (restart the odd ones with the cluster's)"
        )
        .into());
    }
    let cidr = match (me.cluster6, r.pod_cidr6) {
        (Some(range), Some(c6)) => {
            if !range.contains(c6.network()) || c6.prefix() < range.prefix() {
                return Err(format!(
                    "its IPv6 pod CIDR {c6} is outside the IPv6 cluster CIDR {range}"
                )
                .into());
            }
            if let Some(m) = me.record.pod_cidr6.filter(|m| m.overlaps(&c6)) {
                return Err(format!("its IPv6 pod CIDR {c6} overlaps ours ({m})").into());
            }
            if let Some((p, o)) = accepted
                .iter()
                .find_map(|p| p.cidr6.filter(|o| o.overlaps(&c6)).map(|o| (p, o)))
            {
                return Err(format!("its IPv6 pod CIDR {c6} overlaps {}'s ({o})", p.name).into());
            }
            Some(c6)
        }
        _ => None,
    };
    let tunnel6 = mine.is_ipv6();
    if cidr.is_none() && !tunnel6 {
        return Ok(Peer6::default());
    }
    let underlay = match r.underlay_ip6 {
        Some(u) => {
            if let Some(why) = underlay6_problem(u, me.cluster6, me, accepted) {
                return Err(why.into());
            }
            Some(u)
        }
        None if tunnel6 => {
            return Err(
                "it publishes no underlay IPv6 address, and over an IPv6 underlay its overlay tunnel ends there: give its underlay link a global IPv6 address and restart its podnetd"
                    .into(),
            )
        }
        None if me.backend == Backend::HostGw => {
            return Err(format!(
                "it publishes no underlay IPv6 address, and host-gw routes its IPv6 pods ({}) to that address: give its underlay link a global IPv6 address and restart its podnetd",
                cidr.map(|c| c.to_string()).unwrap_or_default()
            )
            .into())
        }
        None => None,
    };
    Ok(Peer6 { cidr, underlay })
}

/// Why `u` cannot be a peer's underlay IPv6 address, if it cannot: as for IPv4
/// ([`underlay_problem`]), a global unicast address outside the cluster's IPv6
/// range (`range`), not this node's nor an accepted peer's.
pub fn underlay6_problem(
    u: Ipv6Addr,
    range: Option<Ipv6Net>,
    me: &Me,
    accepted: &[Peer],
) -> Option<String> {
    let fix = "the peer's podnetd must publish its underlay interface's address (--underlay-dev); if it does, the record is forged";
    let what = if !podnet_conventions::net::is_global_unicast6(u) {
        "not a global unicast address".to_string()
    } else if let Some(range) = range.filter(|r| r.contains(u)) {
        format!("inside the IPv6 cluster CIDR {range} (pod addresses)")
    } else if me.record.underlay_ip6 == Some(u) {
        "ours: two nodes cannot share one".to_string()
    } else if let Some(p) = accepted.iter().find(|p| p.underlay6 == Some(u)) {
        format!("also {}'s: two nodes cannot share one", p.name)
    } else {
        return None;
    };
    Some(format!("its underlay IPv6 address {u} is {what}; {fix}"))
}

/// Why `u` cannot be a peer's underlay address, if it cannot: what peers send the
/// peer's pod traffic to must be a unicast address of a host on the underlay, and not
/// this node. An address inside the cluster CIDR (a pod's, or one a node routes to
/// its pods) or the Service range (a virtual address) would send another node's pod
/// traffic somewhere the record's author chose; loopback and link-local ones are
/// this node's own.
pub fn underlay_problem(u: Ipv4Addr, me: &Me) -> Option<String> {
    let fix = "the peer's podnetd must publish its underlay interface's address (--underlay-dev); if it does, the record is forged";
    let what = if u.is_unspecified() || u.is_multicast() || u.is_broadcast() {
        "not a unicast address".to_string()
    } else if u.is_loopback() {
        "a loopback address (127.0.0.0/8)".to_string()
    } else if u.is_link_local() {
        "link-local (169.254.0.0/16)".to_string()
    } else if me.cluster.contains(u) {
        format!("inside the cluster CIDR {} (pod addresses)", me.cluster)
    } else if me.service.contains(u) {
        format!(
            "inside the service CIDR {} (virtual addresses; podnetd --service-cidr)",
            me.service
        )
    } else if u == me.record.underlay_ip {
        return Some(format!(
            "its underlay address {u} is ours: two nodes cannot share one; {fix}"
        ));
    } else {
        return None;
    };
    Some(format!("its underlay address {u} is {what}; {fix}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bad_peer_records_are_refused_with_why() {
        use super::*;
        use crate::plan::Peer;
        let rec = |name: &str, cidr: &str, ip: [u8; 4], mac: &str| NodeRecord {
            name: name.into(),
            pod_cidr: cidr.parse().unwrap(),
            pod_cidr6: None,
            underlay_ip: Ipv4Addr::from(ip),
            underlay_ip6: None,
            underlay_family: Default::default(),
            vtep_mac: mac.into(),
            backend: "vxlan".into(),
            wireguard: None,
            renewed: 0,
            ttl_secs: 60,
        };
        let mine = rec("a", "10.244.0.0/24", [192, 168, 1, 10], "0a:59:c0:a8:01:0a");
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let me = Me {
            record: &mine,
            cluster,
            cluster6: None,
            service: "10.96.0.0/12".parse().unwrap(),
            backend: Backend::Vxlan,
            wg_public_key: None,
        };
        let good = rec("b", "10.244.1.0/24", [192, 168, 1, 11], "0a:59:c0:a8:01:0b");
        let (mac, _) = check_peer(&good, &me, &[]).unwrap();
        assert_eq!(mac, [0x0a, 0x59, 192, 168, 1, 11]);
        let accepted = vec![Peer {
            name: "b".into(),
            cidr: good.pod_cidr,
            cidr6: None,
            underlay: good.underlay_ip,
            underlay6: None,
            endpoint: good.underlay_ip.into(),
            vtep_mac: mac,
            wireguard: Some(([2; 32], 51820)),
        }];
        let cases = [
            (
                rec("c", "10.99.0.0/24", [192, 168, 1, 12], "0a:59:c0:a8:01:0c"),
                "outside the cluster CIDR",
            ),
            (
                rec(
                    "c",
                    "10.244.0.128/25",
                    [192, 168, 1, 12],
                    "0a:59:c0:a8:01:0c",
                ),
                "overlaps ours",
            ),
            (
                rec("c", "10.244.1.0/24", [192, 168, 1, 12], "0a:59:c0:a8:01:0c"),
                "overlaps b's",
            ),
            (
                rec("c", "10.244.2.0/24", [0, 0, 0, 0], "0a:59:c0:a8:01:0c"),
                "not a unicast",
            ),
            (
                rec("c", "10.244.2.0/24", [224, 0, 0, 1], "0a:59:c0:a8:01:0c"),
                "not a unicast",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 10], "0a:59:c0:a8:01:0c"),
                "is ours",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], "zz"),
                "cannot be read",
            ),
            // Where a forged record would send another node's pod traffic.
            (
                rec(
                    "c",
                    "10.244.2.0/24",
                    [255, 255, 255, 255],
                    "0a:59:ff:ff:ff:ff",
                ),
                "not a unicast",
            ),
            (
                rec("c", "10.244.2.0/24", [127, 0, 0, 1], "0a:59:7f:00:00:01"),
                "is a loopback address",
            ),
            (
                rec("c", "10.244.2.0/24", [169, 254, 1, 1], "0a:59:a9:fe:01:01"),
                "is link-local",
            ),
            (
                rec("c", "10.244.2.0/24", [10, 244, 5, 5], "0a:59:0a:f4:05:05"),
                "is inside the cluster CIDR 10.244.0.0/16",
            ),
            (
                rec("c", "10.244.2.0/24", [10, 244, 1, 1], "0a:59:0a:f4:01:01"),
                "is inside the cluster CIDR",
            ),
            (
                rec("c", "10.244.2.0/24", [10, 100, 0, 1], "0a:59:0a:64:00:01"),
                "is inside the service CIDR 10.96.0.0/12",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 11], "0a:59:c0:a8:01:0b"),
                "is also b's",
            ),
            // A readable MAC that is not the one the address gives: b's, say.
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], "0a:59:c0:a8:01:0b"),
                "is not 0a:59:c0:a8:01:0c",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], "02:00:00:00:00:01"),
                "forged or corrupt",
            ),
        ];
        for (r, why) in cases {
            let e = check_peer(&r, &me, &accepted).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (want {why})");
            // Every refusal says what to do about it.
            assert!(
                e.contains("cannot be read") || e.contains("pod CIDR") || e.contains("podnetd"),
                "{e}: says nothing to fix"
            );
        }
        // Just outside both ranges is a node's address like any other.
        for ip in [[10, 243, 255, 255], [10, 112, 0, 1], [169, 253, 0, 1]] {
            let mac = podnet_netlink::fmt_mac(&vtep_mac(Ipv4Addr::from(ip)));
            let r = rec("c", "10.244.2.0/24", ip, &mac);
            assert!(check_peer(&r, &me, &accepted).is_ok(), "{ip:?}");
        }
        // host-gw needs no MAC; the address is checked all the same.
        let r = rec("c", "10.244.2.0/24", [192, 168, 1, 12], "");
        let hostgw = Me {
            backend: Backend::HostGw,
            ..me
        };
        assert!(check_peer(&r, &hostgw, &accepted).is_ok());
        let r = rec("c", "10.244.2.0/24", [10, 96, 0, 10], "");
        let e = check_peer(&r, &hostgw, &accepted).unwrap_err().to_string();
        assert!(e.contains("service CIDR"), "{e}");
        // WireGuard: a readable key that is neither ours nor another peer's.
        let wg = Me {
            backend: Backend::Wireguard,
            wg_public_key: Some([1; 32]),
            ..hostgw
        };
        let with_key = |key: &str, port: u16| {
            let mut r = rec("c", "10.244.2.0/24", [192, 168, 1, 12], "");
            r.wireguard = Some(podnet_datastore::WireGuardPeer {
                public_key: key.into(),
                port,
            });
            r
        };
        let b64 = |b: u8| wireguard::to_base64(&[b; 32]);
        let (_, k) = check_peer(&with_key(&b64(3), 51820), &wg, &accepted).unwrap();
        assert_eq!(k, Some(([3; 32], 51820)));
        for (r, why) in [
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], ""),
                "publishes no WireGuard key",
            ),
            (with_key("not-a-key", 51820), "is malformed"),
            (
                with_key(&wireguard::to_base64(&[0; 32]), 51820),
                "is malformed",
            ),
            (with_key(&b64(1), 51820), "is ours"),
            (with_key(&b64(2), 51820), "is also b's"),
            (with_key(&b64(3), 0), "port is 0"),
        ] {
            let e = check_peer(&r, &wg, &accepted).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (want {why})");
        }
    }

    /// A dual-stack record's IPv6 pod CIDR: taken inside the cluster's IPv6 range,
    /// refused outside it or over ours or an accepted peer's; ignored on an IPv4 node.
    #[test]
    fn ipv6_pod_cidrs_are_checked_like_ipv4_ones() {
        use super::*;
        let mut mine = NodeRecord {
            name: "a".into(),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            pod_cidr6: Some("fd00:10:244::/64".parse().unwrap()),
            underlay_ip: Ipv4Addr::new(192, 168, 1, 10),
            underlay_ip6: Some("fd00:192:168:1::a".parse().unwrap()),
            underlay_family: Default::default(),
            vtep_mac: "0a:59:c0:a8:01:0a".into(),
            backend: "vxlan".into(),
            wireguard: None,
            renewed: 0,
            ttl_secs: 60,
        };
        let mut me = Me {
            record: &mine.clone(),
            cluster: "10.244.0.0/16".parse().unwrap(),
            cluster6: Some("fd00:10:244::/56".parse().unwrap()),
            service: "10.96.0.0/12".parse().unwrap(),
            backend: Backend::Vxlan,
            wg_public_key: None,
        };
        let base = mine.clone();
        let peer = |c6: Option<&str>| NodeRecord {
            name: "b".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            pod_cidr6: c6.map(|c| c.parse().unwrap()),
            underlay_ip6: None,
            ..base.clone()
        };
        let accepted = vec![Peer {
            name: "c".into(),
            cidr: "10.244.2.0/24".parse().unwrap(),
            cidr6: Some("fd00:10:244:2::/64".parse().unwrap()),
            underlay: Ipv4Addr::new(192, 168, 1, 12),
            underlay6: Some("fd00:192:168:1::c".parse().unwrap()),
            endpoint: Ipv4Addr::new(192, 168, 1, 12).into(),
            vtep_mac: [0; 6],
            wireguard: None,
        }];
        let c1: Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
        assert_eq!(
            check_peer6(&peer(Some("fd00:10:244:1::/64")), &me, &accepted).unwrap(),
            Peer6 {
                cidr: Some(c1),
                underlay: None
            }
        );
        assert_eq!(
            check_peer6(&peer(None), &me, &accepted).unwrap(),
            Peer6::default()
        );
        // Its underlay IPv6 address: taken when it could be a node's, refused when it
        // is a pod's, ours, another peer's, or not global unicast.
        let with_u6 = |u: &str| NodeRecord {
            underlay_ip6: Some(u.parse().unwrap()),
            ..peer(Some("fd00:10:244:1::/64"))
        };
        assert_eq!(
            check_peer6(&with_u6("fd00:192:168:1::b"), &me, &accepted)
                .unwrap()
                .underlay,
            Some("fd00:192:168:1::b".parse().unwrap())
        );
        for (u, why) in [
            ("fd00:10:244:1::5", "inside the IPv6 cluster CIDR"),
            ("fd00:192:168:1::a", "ours"),
            ("fd00:192:168:1::c", "also c's"),
            ("fe80::1", "not a global unicast"),
            ("::1", "not a global unicast"),
            ("ff02::1", "not a global unicast"),
            ("::ffff:192.168.1.11", "not a global unicast"),
        ] {
            let e = check_peer6(&with_u6(u), &me, &accepted).unwrap_err();
            assert!(e.to_string().contains(why), "{u}: {e}");
        }
        // host-gw cannot route a dual-stack peer's IPv6 pods without that address.
        me.backend = Backend::HostGw;
        let e = check_peer6(&peer(Some("fd00:10:244:1::/64")), &me, &accepted).unwrap_err();
        assert!(e.to_string().contains("no underlay IPv6 address"), "{e}");
        assert!(check_peer6(&with_u6("fd00:192:168:1::b"), &me, &accepted).is_ok());
        me.backend = Backend::Vxlan;
        for (c6, why) in [
            ("fd00:99::/64", "outside the IPv6 cluster CIDR"),
            ("fd00:10:244::/64", "overlaps ours"),
            ("fd00:10:244::/56", "overlaps ours"),
            ("fd00:10:244:2::/64", "overlaps c's"),
        ] {
            let e = check_peer6(&peer(Some(c6)), &me, &accepted).unwrap_err();
            assert!(e.to_string().contains(why), "{c6}: {e}");
        }
        // An IPv4 node routes no IPv6, whatever the record says.
        mine.pod_cidr6 = None;
        me.record = &mine;
        me.cluster6 = None;
        assert_eq!(
            check_peer6(&peer(Some("fd00:99::/64")), &me, &accepted).unwrap(),
            Peer6::default()
        );
    }

    /// Over an IPv6 underlay, on an IPv4 cluster too: a peer must run the same
    /// underlay family and publish a valid underlay IPv6 address (its tunnel's end);
    /// a node of the other family is refused either way.
    #[test]
    fn an_ipv6_underlay_needs_peers_of_its_family_with_an_ipv6_address() {
        use super::*;
        use podnet_conventions::UnderlayFamily;
        let mine = NodeRecord {
            name: "a".into(),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            pod_cidr6: None,
            underlay_ip: Ipv4Addr::new(192, 168, 1, 10),
            underlay_ip6: Some("fd00:192:168:1::a".parse().unwrap()),
            underlay_family: UnderlayFamily::Ipv6,
            vtep_mac: "0a:59:c0:a8:01:0a".into(),
            backend: "vxlan".into(),
            wireguard: None,
            renewed: 0,
            ttl_secs: 60,
        };
        let me = Me {
            record: &mine,
            cluster: "10.244.0.0/16".parse().unwrap(),
            cluster6: None,
            service: "10.96.0.0/12".parse().unwrap(),
            backend: Backend::Vxlan,
            wg_public_key: None,
        };
        let peer = |u6: Option<&str>, family| NodeRecord {
            name: "b".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            underlay_ip: Ipv4Addr::new(192, 168, 1, 11),
            underlay_ip6: u6.map(|u| u.parse().unwrap()),
            underlay_family: family,
            vtep_mac: "0a:59:c0:a8:01:0b".into(),
            ..mine.clone()
        };
        let ok = check_peer6(
            &peer(Some("fd00:192:168:1::b"), UnderlayFamily::Ipv6),
            &me,
            &[],
        );
        assert_eq!(
            ok,
            Ok(Peer6 {
                cidr: None,
                underlay: Some("fd00:192:168:1::b".parse().unwrap())
            })
        );
        for (r, why) in [
            (
                peer(None, UnderlayFamily::Ipv6),
                "publishes no underlay IPv6 address",
            ),
            (
                peer(Some("fd00:192:168:1::b"), UnderlayFamily::Ipv4),
                "same --underlay-family",
            ),
            (
                peer(Some("fd00:192:168:1::a"), UnderlayFamily::Ipv6),
                "ours",
            ),
            (
                peer(Some("fe80::b"), UnderlayFamily::Ipv6),
                "not a global unicast",
            ),
        ] {
            let e = check_peer6(&r, &me, &[]).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        // An IPv4-underlay node refuses an IPv6-underlay peer too.
        let mut v4 = mine.clone();
        v4.underlay_family = UnderlayFamily::Ipv4;
        let me4 = Me { record: &v4, ..me };
        let e = check_peer6(
            &peer(Some("fd00:192:168:1::b"), UnderlayFamily::Ipv6),
            &me4,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("over an ipv6 underlay and ours over ipv4"),
            "{e}"
        );
        assert_eq!(
            check_peer6(&peer(None, UnderlayFamily::Ipv4), &me4, &[]),
            Ok(Peer6::default())
        );
    }
}
