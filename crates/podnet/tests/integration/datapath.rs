//! The eBPF datapath on test packets (BPF_PROG_TEST_RUN): every verdict and every
//! drop reason, without a network.

use crate::common::*;
use podnet_cni::antispoof;
use podnet_lab::traffic::probe;
use podnet_netlink::bpf;
use std::net::{Ipv4Addr, SocketAddrV4};

/// TC_ACT_UNSPEC: the frame passes on to the next filter (the policy program).
const OK: u32 = u32::MAX;
const SHOT: u32 = 2;

/// The link-local address the kernel gives an interface with MAC `mac` (EUI-64).
fn link_local(mac: [u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

fn ipv6_from(src: [u8; 6], src_ip: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 255]);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(l4);
    f
}

/// An IPv6 frame from the pod with MAC `src`, from its own link-local address.
fn ipv6_frame(src: [u8; 6], next: u8, l4: &[u8]) -> Vec<u8> {
    ipv6_from(src, link_local(src), next, l4)
}

/// A neighbour advertisement for `target`, with a target link-layer address option.
fn na(target: [u8; 16], tlla: [u8; 6]) -> Vec<u8> {
    let mut l4 = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    l4.extend_from_slice(&target);
    l4.extend_from_slice(&[2, 1]);
    l4.extend_from_slice(&tlla);
    l4
}

#[test]
fn every_verdict_and_reason() {
    let node = Node::new("10.204.0.0/24");
    let dir = node.dir.path().to_path_buf();
    let mac = [0x0a, 0x58, 10, 204, 0, 5];
    let ip = Ipv4Addr::new(10, 204, 0, 5);
    let other_ip = Ipv4Addr::new(10, 204, 0, 9);
    let peer = [0x0a, 0x58, 10, 204, 0, 9];
    let gw = [0x0a, 0x58, 10, 204, 0, 1];
    let (verdicts, state) = node
        .ns
        .ns
        .run(move || {
            let dp = antispoof::datapath(&dir).expect("load the datapath");
            // Test runs see the loopback device (index 1) as the ingress link.
            let run = |f: &[u8]| bpf::test_run(&dp.prog, f).expect("test run");
            let missing = run(&probe::arp_frame(gw, mac, 1, mac, ip, [0; 6], ip));
            // The node's overlay ports as podnetd publishes them: VXLAN 8472, WireGuard
            // 51820, cluster 10.204.0.0/16, node pod CIDRs /24.
            let guard = antispoof::OverlayGuard {
                ports: [8472, 51820],
                cluster: Some((Ipv4Addr::new(10, 204, 0, 0), 16)),
                node_prefix: 24,
                cluster6_prefix: 0,
            };
            antispoof::set_pod(&dp, 1, mac, ip, None, &guard).unwrap();
            let udp_to = |dst: [u8; 4], port: u16| {
                probe::udp_frame(
                    gw,
                    mac,
                    SocketAddrV4::new(ip, 40000),
                    SocketAddrV4::new(dst.into(), port),
                    b"\x08\0\0\0\0\0\x01\0",
                )
            };
            let mut bad_arp = probe::arp_frame(gw, mac, 1, mac, ip, [0; 6], ip);
            bad_arp[18] = 8; // hlen 8: not Ethernet ARP
            let mut vlan = probe::udp_frame(
                peer,
                mac,
                SocketAddrV4::new(ip, 1),
                SocketAddrV4::new(other_ip, 2),
                b"x",
            );
            vlan[12..14].copy_from_slice(&[0x81, 0x00]);
            let hbh_ra = {
                let mut l4 = vec![58, 0, 5, 2, 0, 0, 1, 0]; // hop-by-hop, router alert
                l4.extend_from_slice(&[134, 0, 0, 0, 64, 0, 0, 0]);
                ipv6_frame(mac, 0, &l4)
            };
            let deep_ra = {
                let mut l4 = Vec::new();
                for _ in 0..4 {
                    l4.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // destination options, padding
                }
                l4.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
                l4.extend_from_slice(&[134, 0, 0, 0, 64, 0, 0, 0]);
                ipv6_frame(mac, 60, &l4)
            };
            let cases: Vec<(&str, Vec<u8>, u32)> = vec![
                (
                    "VXLAN port at another pod",
                    udp_to([10, 204, 7, 9], 8472),
                    OK,
                ),
                (
                    "WireGuard port at another pod",
                    udp_to([10, 204, 7, 9], 51820),
                    OK,
                ),
                (
                    "another port at a node's underlay address",
                    udp_to([192, 168, 1, 10], 8473),
                    OK,
                ),
                (
                    "VXLAN port at a node's underlay address",
                    udp_to([192, 168, 1, 10], 8472),
                    SHOT,
                ),
                (
                    "WireGuard port at a node's underlay address",
                    udp_to([192, 168, 1, 11], 51820),
                    SHOT,
                ),
                (
                    "VXLAN port at a node's VTEP address (.0)",
                    udp_to([10, 204, 7, 0], 8472),
                    SHOT,
                ),
                (
                    "VXLAN port at a node's bridge gateway (.1)",
                    udp_to([10, 204, 0, 1], 8472),
                    SHOT,
                ),
                (
                    "VXLAN port at a bridge broadcast (.255)",
                    udp_to([10, 204, 3, 255], 8472),
                    SHOT,
                ),
                (
                    "VXLAN port at a multicast group",
                    udp_to([239, 1, 1, 1], 8472),
                    SHOT,
                ),
                (
                    "VXLAN port at the broadcast address",
                    udp_to([255, 255, 255, 255], 8472),
                    SHOT,
                ),
                (
                    "VXLAN port outside the cluster",
                    udp_to([203, 0, 113, 9], 8472),
                    SHOT,
                ),
                (
                    "own ARP request",
                    probe::arp_frame(gw, mac, 1, mac, ip, [0; 6], Ipv4Addr::new(10, 204, 0, 1)),
                    OK,
                ),
                (
                    "ARP claiming another IP",
                    probe::arp_frame(gw, mac, 2, mac, other_ip, gw, Ipv4Addr::new(10, 204, 0, 1)),
                    SHOT,
                ),
                (
                    "ARP with another sender MAC",
                    probe::arp_frame(gw, mac, 2, peer, ip, gw, Ipv4Addr::new(10, 204, 0, 1)),
                    SHOT,
                ),
                ("ARP that is not Ethernet/IPv4", bad_arp, SHOT),
                (
                    "own IPv4",
                    probe::udp_frame(
                        peer,
                        mac,
                        SocketAddrV4::new(ip, 1),
                        SocketAddrV4::new(other_ip, 2),
                        b"x",
                    ),
                    OK,
                ),
                (
                    "IPv4 from another source",
                    probe::udp_frame(
                        peer,
                        mac,
                        SocketAddrV4::new(other_ip, 1),
                        SocketAddrV4::new(ip, 2),
                        b"x",
                    ),
                    SHOT,
                ),
                (
                    "frame from another MAC",
                    probe::udp_frame(
                        gw,
                        peer,
                        SocketAddrV4::new(ip, 1),
                        SocketAddrV4::new(other_ip, 2),
                        b"x",
                    ),
                    SHOT,
                ),
                ("VLAN-tagged frame", vlan, SHOT),
                (
                    "IPv6 router advertisement",
                    ipv6_frame(mac, 58, &[134, 0, 0, 0, 64, 0, 0, 0]),
                    SHOT,
                ),
                ("IPv6 RA behind hop-by-hop", hbh_ra, SHOT),
                (
                    "IPv6 echo request",
                    ipv6_frame(mac, 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
                    OK,
                ),
                (
                    "IPv6 redirect",
                    ipv6_frame(mac, 58, &[137, 0, 0, 0, 0, 0, 0, 0]),
                    SHOT,
                ),
                ("IPv6 RA behind five extension headers", deep_ra, SHOT),
                (
                    "IPv6 RA in a first fragment",
                    ipv6_frame(mac, 44, &[58, 0, 0, 1, 0, 0, 0, 1, 134, 0, 0, 0]),
                    SHOT,
                ),
                (
                    "IPv6 echo request in a first fragment",
                    ipv6_frame(
                        mac,
                        44,
                        &[58, 0, 0, 1, 0, 0, 0, 1, 128, 0, 0, 0, 0, 1, 0, 1],
                    ),
                    OK,
                ),
                (
                    "VXLAN port in a first IPv6 fragment",
                    ipv6_frame(mac, 44, &{
                        let mut l4 = vec![17, 0, 0, 1, 0, 0, 0, 1];
                        l4.extend_from_slice(&udp6(8472));
                        l4
                    }),
                    SHOT,
                ),
                (
                    "IPv6 echo request behind a first fragment's destination options",
                    ipv6_frame(
                        mac,
                        44,
                        &[
                            60, 0, 0, 1, 0, 0, 0, 1, // fragment: offset 0, more
                            58, 0, 1, 4, 0, 0, 0, 0, // destination options: PadN
                            128, 0, 0, 0, 0, 1, 0, 1,
                        ],
                    ),
                    OK,
                ),
                (
                    "IPv6 RA behind a first fragment's destination options",
                    ipv6_frame(
                        mac,
                        44,
                        &[
                            60, 0, 0, 1, 0, 0, 0, 1, 58, 0, 1, 4, 0, 0, 0, 0, 134, 0, 0, 0, 64, 0,
                            0, 0,
                        ],
                    ),
                    SHOT,
                ),
                (
                    "a later IPv6 fragment whose next header is destination options",
                    ipv6_frame(mac, 44, &[60, 0, 0x05, 0x78, 0, 0, 0, 1, b'o', b'o']),
                    OK,
                ),
                (
                    "a later IPv6 fragment (offset 1400)",
                    ipv6_frame(mac, 44, &[17, 0, 0x05, 0x78, 0, 0, 0, 1, b'o', b'o']),
                    OK,
                ),
                (
                    "a later IPv6 fragment from a global address not the pod's",
                    ipv6_from(
                        mac,
                        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
                        44,
                        &[17, 0, 0x05, 0x78, 0, 0, 0, 1, b'o', b'o'],
                    ),
                    SHOT,
                ),
                (
                    "IPv6 from the neighbour's link-local address",
                    ipv6_from(mac, link_local(peer), 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
                    SHOT,
                ),
                (
                    "IPv6 from a global address",
                    ipv6_from(
                        mac,
                        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
                        58,
                        &[128, 0, 0, 0, 0, 1, 0, 1],
                    ),
                    SHOT,
                ),
                (
                    "echo request from ::",
                    ipv6_from(mac, [0; 16], 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
                    SHOT,
                ),
                (
                    "duplicate-address detection from ::",
                    ipv6_from(mac, [0; 16], 58, &{
                        let mut l4 = vec![135, 0, 0, 0, 0, 0, 0, 0];
                        l4.extend_from_slice(&link_local(mac));
                        l4
                    }),
                    OK,
                ),
                (
                    "own neighbour advertisement",
                    ipv6_frame(mac, 58, &na(link_local(mac), mac)),
                    OK,
                ),
                (
                    "advertisement of the neighbour's address",
                    ipv6_frame(mac, 58, &na(link_local(peer), mac)),
                    SHOT,
                ),
                (
                    "advertisement of the pod's address at another MAC",
                    ipv6_frame(mac, 58, &na(link_local(mac), peer)),
                    SHOT,
                ),
            ];
            let verdicts: Vec<(String, u32, u32)> = cases
                .into_iter()
                .map(|(n, f, want)| (n.to_string(), run(&f), want))
                .collect();
            let state = antispoof::read_state(bpf::prog_id(&dp.prog).unwrap(), 1)
                .unwrap()
                .expect("entry");
            ((missing, verdicts), state)
        })
        .unwrap();
    let (missing, verdicts) = verdicts;
    assert_eq!(
        missing, SHOT,
        "a veth without an entry must drop everything"
    );
    for (name, got, want) in &verdicts {
        assert_eq!(got, want, "{name}");
    }
    let counts: std::collections::HashMap<_, _> = state.drops.into_iter().collect();
    assert_eq!(counts["arp-spa"], 1);
    assert_eq!(counts["arp-sha"], 1);
    assert_eq!(counts["malformed"], 2, "{counts:?}");
    assert_eq!(counts["ipv6-redirect"], 1);
    assert_eq!(counts["ip-src"], 1);
    assert_eq!(counts["src-mac"], 1);
    assert_eq!(counts["ethertype"], 1);
    assert_eq!(counts["ipv6-ra"], 4, "{counts:?}");
    assert_eq!(counts["ipv6-src"], 4, "{counts:?}");
    assert_eq!(counts["ipv6-na"], 2, "{counts:?}");
    assert_eq!(counts["overlay-port"], 9, "{counts:?}");
    assert_eq!(state.mac, mac);
    assert_eq!(state.ip, ip);
}

/// A neighbour solicitation for `target` (duplicate-address detection when sent from ::).
fn ns(target: [u8; 16]) -> Vec<u8> {
    let mut l4 = vec![135, 0, 0, 0, 0, 0, 0, 0];
    l4.extend_from_slice(&target);
    l4
}

/// UDP to `dst` port `port` (ports only: the program reads no further).
fn udp6(dport: u16) -> Vec<u8> {
    let mut l4 = vec![0x9c, 0x40];
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 8, 0, 0]);
    l4
}

fn ipv6_to(src: [u8; 6], src_ip: [u8; 16], dst_ip: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = ipv6_from(src, src_ip, next, l4);
    f[38..54].copy_from_slice(&dst_ip);
    f
}

/// A dual-stack pod (no link-local address, as podnet makes pods): its global IPv6
/// address is its own, another pod's is not, in sources, in neighbour advertisements
/// and in duplicate-address detection; the overlay guard over IPv6 admits pods of
/// every node (the cluster's IPv6 range), never a node's gateway or subnet-router
/// anycast address, nor anything outside the range.
#[test]
fn a_dual_stack_pod_sends_as_its_own_ipv6_address_only() {
    let node = Node::new("10.208.0.0/24");
    let dir = node.dir.path().to_path_buf();
    let mac = [0x0a, 0x58, 10, 208, 0, 5];
    let peer = [0x0a, 0x58, 10, 208, 0, 9];
    let ip = Ipv4Addr::new(10, 208, 0, 5);
    let g = |last: u8| {
        let mut a = [0xfd, 0, 0, 0x0a, 0x02, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        a[15] = last;
        a
    };
    let (own, other, gw) = (g(5), g(9), g(1));
    let (verdicts, state) = node
        .ns
        .ns
        .run(move || {
            let dp = antispoof::datapath(&dir).expect("load the datapath");
            let run = |f: &[u8]| bpf::test_run(&dp.prog, f).expect("test run");
            let guard = antispoof::OverlayGuard {
                ports: [8472, 51820],
                cluster: Some((Ipv4Addr::new(10, 208, 0, 0), 16)),
                node_prefix: 24,
                // The cluster's IPv6 range: fd00:0:a02::/48, one /64 per node.
                cluster6_prefix: 48,
            };
            antispoof::set_pod(&dp, 1, mac, ip, Some((own.into(), 64)), &guard).unwrap();
            let echo = [128, 0, 0, 0, 0, 1, 0, 1];
            // fd00:0:a02:801::9, ::1 and ::0: a pod, the gateway and the anycast
            // address of another node's /64; fd00:0:a03:800::9: outside the cluster.
            let (mut off_node, mut off_gw, mut off_anycast, mut outside) = (other, gw, g(0), other);
            off_node[7] = 1;
            off_gw[7] = 1;
            off_anycast[7] = 1;
            outside[5] = 3;
            let cases: Vec<(&str, Vec<u8>, u32)> = vec![
                (
                    "echo from its own address",
                    ipv6_from(mac, own, 58, &echo),
                    OK,
                ),
                (
                    "echo from another pod's address",
                    ipv6_from(mac, other, 58, &echo),
                    SHOT,
                ),
                (
                    "echo from its link-local address",
                    ipv6_frame(mac, 58, &echo),
                    OK,
                ),
                (
                    "its own advertisement",
                    ipv6_from(mac, own, 58, &na(own, mac)),
                    OK,
                ),
                (
                    "an advertisement of another pod's address",
                    ipv6_from(mac, own, 58, &na(other, mac)),
                    SHOT,
                ),
                (
                    "its own address at another MAC",
                    ipv6_from(mac, own, 58, &na(own, peer)),
                    SHOT,
                ),
                (
                    "detection of its own address",
                    ipv6_from(mac, [0; 16], 58, &ns(own)),
                    OK,
                ),
                (
                    "detection of another pod's address",
                    ipv6_from(mac, [0; 16], 58, &ns(other)),
                    SHOT,
                ),
                (
                    "a solicitation for the gateway from its own address",
                    ipv6_from(mac, own, 58, &ns(gw)),
                    OK,
                ),
                (
                    "a router advertisement from its own address",
                    ipv6_from(mac, own, 58, &[134, 0, 0, 0, 64, 0, 0, 0]),
                    SHOT,
                ),
                (
                    "VXLAN port at a pod of its node",
                    ipv6_to(mac, own, other, 17, &udp6(8472)),
                    OK,
                ),
                (
                    "VXLAN port at the gateway",
                    ipv6_to(mac, own, gw, 17, &udp6(8472)),
                    SHOT,
                ),
                (
                    "WireGuard port at the subnet-router anycast address",
                    ipv6_to(mac, own, g(0), 17, &udp6(51820)),
                    SHOT,
                ),
                (
                    "VXLAN port at a pod of another node",
                    ipv6_to(mac, own, off_node, 17, &udp6(8472)),
                    OK,
                ),
                (
                    "VXLAN port at another node's gateway",
                    ipv6_to(mac, own, off_gw, 17, &udp6(8472)),
                    SHOT,
                ),
                (
                    "WireGuard port at another node's anycast address",
                    ipv6_to(mac, own, off_anycast, 17, &udp6(51820)),
                    SHOT,
                ),
                (
                    "VXLAN port outside the cluster's IPv6 range",
                    ipv6_to(mac, own, outside, 17, &udp6(8472)),
                    SHOT,
                ),
                (
                    "another port at the gateway",
                    ipv6_to(mac, own, gw, 17, &udp6(8473)),
                    OK,
                ),
            ];
            let verdicts: Vec<(String, u32, u32)> = cases
                .into_iter()
                .map(|(n, f, want)| (n.to_string(), run(&f), want))
                .collect();
            let state = antispoof::read_state(bpf::prog_id(&dp.prog).unwrap(), 1)
                .unwrap()
                .expect("entry");
            (verdicts, state)
        })
        .unwrap();
    for (name, got, want) in &verdicts {
        assert_eq!(got, want, "{name}");
    }
    let counts: std::collections::HashMap<_, _> = state.drops.into_iter().collect();
    assert_eq!(counts["ipv6-src"], 1, "{counts:?}");
    assert_eq!(counts["ipv6-na"], 2, "{counts:?}");
    assert_eq!(counts["ipv6-dad"], 1, "{counts:?}");
    assert_eq!(counts["ipv6-ra"], 1, "{counts:?}");
    assert_eq!(counts["overlay-port"], 5, "{counts:?}");
    assert_eq!(state.ip6, Some(own.into()));
}

/// The anti-spoofing program on a pod's host veth, by kernel id.
fn antispoof_prog(node: &Node, host_veth: &str) -> u32 {
    let mut s = node.sock();
    let l = podnet_netlink::link::get_by_name(&mut s, host_veth)
        .unwrap()
        .expect("the pod's host veth");
    antispoof::installed_prog(&mut s, l.index)
        .unwrap()
        .expect("an anti-spoofing filter")
}

/// With a bpffs to hold them (`bpfDir`, or podnetd's node file), the anti-spoofing
/// program and its map outlive the node's last pod, so the next ADD finds them instead
/// of loading them again (40–70 ms); without one the kernel frees them with the last
/// pod. A `bpfDir` that is not a bpffs, or not absolute, is refused and leaves nothing.
#[test]
fn a_bpffs_holds_the_anti_spoofing_program_between_pods() {
    let node = Node::new("10.206.0.0/24");
    let bpffs = podnet_lab::scratch::ScratchBpffs::mount(&node.dir.path().join("bpf")).unwrap();
    let mut conf = node.conf.clone();
    conf["bpfDir"] = serde_json::json!(bpffs.path());
    let add = |conf: &serde_json::Value, cid: &str, pod: &podnet_lab::scratch::ScratchNs| {
        let o = node.call_with(conf, "ADD", cid, &pod.path().display().to_string(), "eth0");
        assert!(o.ok(), "ADD {cid}: {}", o.stdout);
        o.json()["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let del = |conf: &serde_json::Value, cid: &str, pod: &podnet_lab::scratch::ScratchNs| {
        let o = node.call_with(conf, "DEL", cid, &pod.path().display().to_string(), "eth0");
        assert!(o.ok(), "DEL {cid}: {}", o.stdout);
    };

    // Held: the node's only pod goes; the pins hold its program.
    let (p1, p2) = (node.pod(), node.pod());
    let first = antispoof_prog(&node, &add(&conf, "held1", &p1));
    del(&conf, "held1", &p1);
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    let pinned: Vec<u32> = std::fs::read_dir(bpffs.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("antispoof-ns"))
        .filter_map(|e| bpf::obj_get(&e.path().join("prog")).ok())
        .map(|p| bpf::prog_id(&p).unwrap())
        .collect();
    assert_eq!(
        pinned,
        vec![first],
        "the pins in {}",
        bpffs.path().display()
    );

    // Not held (a node without a bpffs): freed with the last pod. Once the kernel has
    // freed that one, it would have freed the first too, had the pins not held it.
    let other = Node::new("10.207.0.0/24");
    let p3 = other.pod();
    let netns3 = p3.path().display().to_string();
    let o = other.call_with(&other.conf, "ADD", "free1", &netns3, "eth0");
    assert!(o.ok(), "{}", o.stdout);
    let freed = antispoof_prog(&other, o.json()["interfaces"][1]["name"].as_str().unwrap());
    assert_ne!(freed, first);
    let o = other.call_with(&other.conf, "DEL", "free1", &netns3, "eth0");
    assert!(o.ok(), "{}", o.stdout);
    wait_until(
        "the unheld program is freed with its last pod",
        std::time::Duration::from_secs(10),
        || bpf::prog_by_id(freed).is_err(),
    );
    assert!(
        bpf::prog_by_id(first).is_ok(),
        "the pinned program was freed"
    );
    let second = antispoof_prog(&node, &add(&conf, "held2", &p2));
    assert_eq!(second, first, "the next pod's ADD loaded the program again");
    del(&conf, "held2", &p2);

    // Refused: a directory that is no bpffs, and a relative path.
    let p4 = node.pod();
    let mut bad = node.conf.clone();
    bad["bpfDir"] = serde_json::json!(node.dir.path());
    let o = node.call_with(
        &bad,
        "ADD",
        "bad1",
        &p4.path().display().to_string(),
        "eth0",
    );
    assert!(!o.ok(), "pinned on a plain directory: {}", o.stdout);
    assert!(
        o.json()["details"]
            .as_str()
            .unwrap()
            .contains("mounted bpffs"),
        "{}",
        o.stdout
    );
    assert!(
        node.host_veths().is_empty(),
        "a refused ADD left {:?}",
        node.host_veths()
    );
    bad["bpfDir"] = serde_json::json!("sys/fs/bpf");
    let o = node.call_with(
        &bad,
        "ADD",
        "bad2",
        &p4.path().display().to_string(),
        "eth0",
    );
    assert_eq!(o.json()["code"], 7, "{}", o.stdout);
}
