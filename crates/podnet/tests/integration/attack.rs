//! The lesson's attack: a pod on the same node forges ARP and IP to steal a
//! neighbour's traffic, then changes its own MAC. None of it may work.

use crate::common::*;
use podnet_lab::traffic::probe::{self, Capture, EchoServer};
use podnet_netlink::{link, neigh, parse_mac, Netns, Socket};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

struct Pod {
    ns: podnet_lab::scratch::ScratchNs,
    ip: Ipv4Addr,
    mac: [u8; 6],
    host_veth: String,
}

fn add(node: &Node, cid: &str) -> Pod {
    let ns = node.pod();
    let r = node.add(cid, &ns);
    Pod {
        ip: result_ip(&r),
        mac: parse_mac(r["interfaces"][2]["mac"].as_str().unwrap()).unwrap(),
        host_veth: r["interfaces"][1]["name"].as_str().unwrap().to_string(),
        ns,
    }
}

fn neigh_mac(ns: &Netns, ip: Ipv4Addr) -> Option<[u8; 6]> {
    let mut s = ns.run(Socket::route).unwrap().unwrap();
    neigh::list(&mut s)
        .unwrap()
        .into_iter()
        .find(|n| n.ip == ip)
        .and_then(|n| n.mac)
}

/// Every forged ARP carries this target hardware address, so a capture can tell it
/// from the victim's own ARP.
const MARK: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];

/// The attacker's frames with its own MAC, claiming the victim's IP.
fn forged(a: &Pod, victim: &Pod, other: &Pod, gw: Ipv4Addr, gw_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let bcast = [0xff; 6];
    vec![
        // Gratuitous ARP, request and reply forms.
        probe::arp_frame(bcast, a.mac, 1, a.mac, victim.ip, MARK, victim.ip),
        probe::arp_frame(bcast, a.mac, 2, a.mac, victim.ip, MARK, victim.ip),
        // Unicast ARP replies to the node's gateway and to the bystander.
        probe::arp_frame(gw_mac, a.mac, 2, a.mac, victim.ip, MARK, gw),
        probe::arp_frame(other.mac, a.mac, 2, a.mac, victim.ip, MARK, other.ip),
        // IP with the victim's source address.
        probe::udp_frame(
            other.mac,
            a.mac,
            SocketAddrV4::new(victim.ip, 5555),
            SocketAddrV4::new(other.ip, 9999),
            b"forged",
        ),
    ]
}

#[test]
fn a_pod_cannot_steal_its_neighbours_traffic() {
    let node = Node::new("10.203.0.0/24");
    let victim = add(&node, "victim");
    let attacker = add(&node, "attacker");
    let other = add(&node, "bystander");
    let gw = Ipv4Addr::new(10, 203, 0, 1);
    let gw_mac = [0x0a, 0x58, 10, 203, 0, 1];
    let t = Duration::from_secs(3);

    let _v = EchoServer::start(&victim.ns.ns, victim.ip, 7000).unwrap();
    let _o = EchoServer::start(&other.ns.ns, other.ip, 7000).unwrap();
    // Node and bystander learn the victim's real MAC.
    probe::tcp_request(&node.ns.ns, SocketAddrV4::new(victim.ip, 7000), "node", t).unwrap();
    probe::tcp_request(
        &other.ns.ns,
        SocketAddrV4::new(victim.ip, 7000),
        "bystander",
        t,
    )
    .unwrap();
    assert_eq!(neigh_mac(&node.ns.ns, victim.ip), Some(victim.mac));
    assert_eq!(neigh_mac(&other.ns.ns, victim.ip), Some(victim.mac));

    let udp = probe::udp_bind(&other.ns.ns, SocketAddrV4::new(other.ip, 9999)).unwrap();
    let seen_by_other = Capture::open(&other.ns.ns, "eth0").unwrap();
    let seen_by_node = Capture::open(&node.ns.ns, "podnet0").unwrap();

    let a = &attacker;
    let bcast = [0xff; 6];
    for f in &forged(a, &victim, &other, gw, gw_mac) {
        probe::send_frame(&a.ns.ns, "eth0", f).unwrap();
    }
    // The attacker takes the victim's MAC and impersonates it completely.
    ip(&[
        "-n",
        &a.ns.name,
        "link",
        "set",
        "eth0",
        "address",
        &podnet_netlink::fmt_mac(&victim.mac),
    ]);
    let v = victim.mac;
    for f in [
        probe::arp_frame(bcast, v, 2, v, victim.ip, MARK, victim.ip),
        probe::arp_frame(gw_mac, v, 2, v, victim.ip, MARK, gw),
        probe::udp_frame(
            other.mac,
            v,
            SocketAddrV4::new(victim.ip, 5555),
            SocketAddrV4::new(other.ip, 9999),
            b"forged",
        ),
    ] {
        probe::send_frame(&a.ns.ns, "eth0", &f).unwrap();
    }
    ip(&[
        "-n",
        &a.ns.name,
        "link",
        "set",
        "eth0",
        "address",
        &podnet_netlink::fmt_mac(&a.mac),
    ]);
    std::thread::sleep(Duration::from_millis(100));

    // The caches still hold the victim's MAC.
    assert_eq!(
        neigh_mac(&node.ns.ns, victim.ip),
        Some(victim.mac),
        "node ARP cache poisoned"
    );
    assert_eq!(
        neigh_mac(&other.ns.ns, victim.ip),
        Some(victim.mac),
        "bystander ARP cache poisoned"
    );
    // No forged frame arrived anywhere: no ARP claiming the victim's IP from another
    // MAC, nothing from the attacker using the victim's MAC, no forged datagram.
    let forged_arp = |f: &Vec<u8>| f.len() >= 42 && f[12..14] == [8, 6] && f[32..38] == MARK;
    let forged_datagram = |f: &Vec<u8>| f.windows(6).any(|w| w == b"forged");
    for (where_, cap) in [
        ("bystander", &seen_by_other),
        ("node bridge", &seen_by_node),
    ] {
        let frames = cap.frames(Duration::from_millis(200));
        assert!(
            !frames.iter().any(forged_arp),
            "a forged ARP reached the {where_}"
        );
        assert!(
            !frames.iter().any(forged_datagram),
            "a forged datagram reached the {where_}"
        );
    }
    assert!(
        probe::udp_drain(&udp).is_empty(),
        "the bystander received a forged datagram"
    );

    // Each drop was counted under its reason.
    let mut s = node.sock();
    let idx = link::get_by_name(&mut s, &a.host_veth)
        .unwrap()
        .unwrap()
        .index;
    let counts: std::collections::HashMap<String, u64> =
        podnet_cni::antispoof::counters(&mut s, idx)
            .unwrap()
            .into_iter()
            .collect();
    assert!(counts["arp-spa"] >= 4, "{counts:?}");
    assert!(counts["ip-src"] >= 1, "{counts:?}");
    assert!(counts["src-mac"] >= 3, "{counts:?}");

    // The attacker's own traffic still works, the victim is still reachable.
    let reply =
        probe::tcp_request(&a.ns.ns, SocketAddrV4::new(other.ip, 7000), "legit", t).unwrap();
    assert_eq!(reply, format!("from={} legit", a.ip));
    probe::send_frame(
        &a.ns.ns,
        "eth0",
        &probe::udp_frame(
            other.mac,
            a.mac,
            SocketAddrV4::new(a.ip, 5555),
            SocketAddrV4::new(other.ip, 9999),
            b"honest",
        ),
    )
    .unwrap();
    let got = probe::udp_drain(&udp);
    assert!(
        got.iter()
            .any(|(from, p)| p == b"honest" && from.ip() == std::net::IpAddr::V4(a.ip)),
        "{got:?}"
    );
    // The capture that saw no forged frame does see this one: it was working.
    assert!(
        seen_by_other
            .frames(Duration::from_millis(200))
            .iter()
            .any(|f| f.windows(6).any(|w| w == b"honest")),
        "the bystander's capture saw nothing: its silence above proves nothing"
    );
    let reply =
        probe::tcp_request(&other.ns.ns, SocketAddrV4::new(victim.ip, 7000), "still", t).unwrap();
    assert_eq!(reply, format!("from={} still", other.ip));

    for (cid, p) in [
        ("victim", &victim),
        ("attacker", &attacker),
        ("bystander", &other),
    ] {
        node.del(cid, &p.ns);
    }
}

/// The control: with protection off, the very same frames poison the node's and the
/// bystander's caches and deliver the forged datagram. This proves the attack above is
/// real and the test can fail.
#[test]
fn without_protection_the_attack_works() {
    let mut node = Node::new("10.203.1.0/24");
    node.conf["antiSpoofing"] = serde_json::json!(false);
    let victim = add(&node, "victim");
    let attacker = add(&node, "attacker");
    let other = add(&node, "bystander");
    let (gw, gw_mac) = (Ipv4Addr::new(10, 203, 1, 1), [0x0a, 0x58, 10, 203, 1, 1]);
    let t = Duration::from_secs(3);
    let _v = EchoServer::start(&victim.ns.ns, victim.ip, 7000).unwrap();
    probe::tcp_request(&node.ns.ns, SocketAddrV4::new(victim.ip, 7000), "node", t).unwrap();
    probe::tcp_request(&other.ns.ns, SocketAddrV4::new(victim.ip, 7000), "by", t).unwrap();
    assert_eq!(neigh_mac(&node.ns.ns, victim.ip), Some(victim.mac));
    assert_eq!(neigh_mac(&other.ns.ns, victim.ip), Some(victim.mac));
    let udp = probe::udp_bind(&other.ns.ns, SocketAddrV4::new(other.ip, 9999)).unwrap();
    // The gratuitous ARP request (sender IP = target IP) comes first: Linux lets it
    // override a fresh entry, where an unsolicited reply would wait out the lock time.
    for f in &forged(&attacker, &victim, &other, gw, gw_mac) {
        probe::send_frame(&attacker.ns.ns, "eth0", f).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        neigh_mac(&node.ns.ns, victim.ip),
        Some(attacker.mac),
        "the unprotected node should have been poisoned"
    );
    assert_eq!(
        neigh_mac(&other.ns.ns, victim.ip),
        Some(attacker.mac),
        "the unprotected bystander should have been poisoned"
    );
    let got = probe::udp_drain(&udp);
    assert!(
        got.iter()
            .any(|(from, p)| p == b"forged" && from.ip() == std::net::IpAddr::V4(victim.ip)),
        "the forged datagram should have arrived: {got:?}"
    );
    for (cid, p) in [
        ("victim", &victim),
        ("attacker", &attacker),
        ("bystander", &other),
    ] {
        node.del(cid, &p.ns);
    }
}

/// A VXLAN datagram's payload: the VXLAN header (VNI 1) and an inner Ethernet + IPv4 +
/// UDP frame from `src` to `dst`, between two VTEP MACs.
fn vxlan_payload(
    inner_dst_mac: [u8; 6],
    inner_src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    p.extend(probe::udp_frame(
        inner_dst_mac,
        inner_src_mac,
        src,
        dst,
        b"forged by a pod",
    ));
    p
}

/// Sends one UDP datagram from inside namespace `ns` (from `bind`, or any address).
fn send_udp(ns: &Netns, bind: Ipv4Addr, to: SocketAddrV4, payload: &[u8]) {
    let payload = payload.to_vec();
    ns.run(move || {
        let s = std::net::UdpSocket::bind((bind, 0)).expect("bind");
        s.send_to(&payload, to).expect("send");
    })
    .unwrap();
}

/// The forged inner packets carry this source port, so a capture can tell them apart.
const FORGED_PORT: u16 = 31337;

fn forged_seen(frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && u16::from_be_bytes([f[34], f[35]]) == FORGED_PORT
        })
        .count()
}

/// The overlay injection, on one datapath: a pod wraps a packet with a forged
/// source in VXLAN and sends it to its own node's VXLAN port, to another node's, and
/// to the node addresses inside the pod CIDRs; a node sends VXLAN claiming another
/// node's pod; a host address that is no peer sends VXLAN. None may reach a pod.
fn overlay_injection_reaches_no_pod(args: &[&str]) {
    let lab = TestLab::up(&[&["--nodes", "2", "--pods-per-node", "2"], args].concat());
    let st = lab.json(&["status", "--output", "json"]);
    let node = |name: &str| {
        let n = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node {name}: {st}"));
        let ip: Ipv4Addr = n["underlay_ip"].as_str().unwrap().parse().unwrap();
        let vtep = parse_mac(n["vtep_mac"].as_str().unwrap()).unwrap();
        (ip, vtep)
    };
    let ((n1, vtep1), (n2, vtep2)) = (node("node1"), node("node2"));
    let (p1a, _) = lab_pod(&st, "p1a");
    let (p1b, _) = lab_pod(&st, "p1b");
    let (p2a, _) = lab_pod(&st, "p2a");
    let (p2b, _) = lab_pod(&st, "p2b");
    let cap1 = Capture::open(&lab.ns("p1b"), "eth0").unwrap();
    let cap2 = Capture::open(&lab.ns("p2b"), "eth0").unwrap();
    let v = 8472;
    let forged = |src: Ipv4Addr, dst: Ipv4Addr, vtep_to: [u8; 6], vtep_from: [u8; 6]| {
        vxlan_payload(
            vtep_to,
            vtep_from,
            SocketAddrV4::new(src, FORGED_PORT),
            SocketAddrV4::new(dst, 7777),
        )
    };
    let attacker = lab.ns("p1a");
    let any = Ipv4Addr::UNSPECIFIED;
    let gw1 = Ipv4Addr::from(u32::from(p1a) & 0xffff_ff00 | 1);
    let vtep_addr2 = Ipv4Addr::from(u32::from(p2a) & 0xffff_ff00);
    // A pod: "from node2's pod p2a" to its neighbour p1b, through its own node.
    send_udp(
        &attacker,
        any,
        SocketAddrV4::new(n1, v),
        &forged(p2a, p1b, vtep1, vtep2),
    );
    // A pod: through node2, to node2's pod p2b, "from p1b".
    send_udp(
        &attacker,
        any,
        SocketAddrV4::new(n2, v),
        &forged(p1b, p2b, vtep2, vtep1),
    );
    // A pod: through the node addresses inside the pod CIDRs.
    send_udp(
        &attacker,
        any,
        SocketAddrV4::new(gw1, v),
        &forged(p2a, p1b, vtep1, vtep2),
    );
    send_udp(
        &attacker,
        any,
        SocketAddrV4::new(vtep_addr2, v),
        &forged(p1b, p2b, vtep2, vtep1),
    );
    // A node (a peer, so its datagrams are VXLAN): "from p2a", node2's own pod.
    let node1 = lab.ns("node1");
    send_udp(
        &node1,
        n1,
        SocketAddrV4::new(n2, v),
        &forged(p2a, p2b, vtep2, vtep1),
    );
    // A host on the underlay that is no node: node1's namespace with a second address.
    let stranger = Ipv4Addr::new(n1.octets()[0], n1.octets()[1], n1.octets()[2], 200);
    lab.sh(
        "node1",
        &[
            "ip",
            "addr",
            "add",
            &format!("{stranger}/24"),
            "dev",
            "eth0",
        ],
    );
    send_udp(
        &node1,
        stranger,
        SocketAddrV4::new(n2, v),
        &forged(p1a, p2b, vtep2, vtep1),
    );

    // A host on the underlay sending p1a's traffic plain (no VXLAN): pods' traffic
    // never crosses the wire unencapsulated here.
    let mac2 = eth0_mac(&lab, "node2");
    let mac1 = eth0_mac(&lab, "node1");
    let plain = probe::udp_frame(
        mac2,
        mac1,
        SocketAddrV4::new(p1a, FORGED_PORT),
        SocketAddrV4::new(p2b, 7777),
        b"plain",
    );
    probe::send_frame(&node1, "eth0", &plain).unwrap();

    // The captures work: a real datagram from p2a with the same source port reaches
    // both victims (the negative checks below can fail).
    let real = lab.ns("p2a");
    send_udp(&real, any, SocketAddrV4::new(p1b, 7777), b"real");
    send_udp(&real, any, SocketAddrV4::new(p2b, 7777), b"real");
    let real_seen = |frames: &[Vec<u8>], src: Ipv4Addr| {
        frames.iter().any(|f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[26..30] == src.octets()
        })
    };
    let (f1, f2) = (
        cap1.frames(Duration::from_millis(500)),
        cap2.frames(Duration::from_millis(500)),
    );
    assert!(
        real_seen(&f1, p2a),
        "the capture on p1b saw nothing: it proves nothing"
    );
    assert!(
        real_seen(&f2, p2a),
        "the capture on p2b saw nothing: it proves nothing"
    );
    assert_eq!(
        forged_seen(&f1),
        0,
        "a forged VXLAN frame reached p1b ({args:?})"
    );
    assert_eq!(
        forged_seen(&f2),
        0,
        "a forged VXLAN frame reached p2b ({args:?})"
    );

    // Each was dropped where podnet says: four at the attacker's veth (overlay-port),
    // one as a peer's forged inner source, one from an address that is no peer.
    let st = lab.json(&["status", "--output", "json"]);
    let (drops, overlay) = overlay_port_drops(&lab, &st, "node1", "p1a");
    assert_eq!(overlay, Some(4), "{drops:?}");
    let guard = &st["nodes"][1]["underlay_guard"];
    assert_eq!(st["nodes"][1]["name"], "node2");
    assert_eq!(guard["attached"], true, "{guard}");
    assert_eq!(guard["drops"]["vxlan-inner"], 1, "{guard}");
    assert_eq!(guard["drops"]["vxlan-src"], 1, "{guard}");
    assert_eq!(guard["drops"]["pod-src"], 1, "{guard}");
}

/// Pod `pod`'s anti-spoofing drop counters on `node` (all, and `overlay-port`'s).
pub(crate) fn overlay_port_drops(
    lab: &TestLab,
    st: &serde_json::Value,
    node: &str,
    pod: &str,
) -> (Vec<(String, u64)>, Option<u64>) {
    let p = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap_or_else(|| panic!("no pod {pod}: {st}"));
    let veth = p["host_veth"].as_str().unwrap().to_string();
    let drops = lab
        .ns(node)
        .run(move || {
            let mut s = Socket::route().unwrap();
            let l = link::get_by_name(&mut s, &veth).unwrap().unwrap();
            podnet_netlink::antispoof::pod_state(&mut s, l.index)
                .unwrap()
                .expect("the pod's anti-spoofing entry")
                .drops
        })
        .unwrap();
    let overlay = drops
        .iter()
        .find(|(id, _)| id == "overlay-port")
        .map(|d| d.1);
    (drops, overlay)
}

/// The MAC of `node`'s underlay device.
fn eth0_mac(lab: &TestLab, node: &str) -> [u8; 6] {
    lab.ns(node)
        .run(|| {
            let mut s = Socket::route().unwrap();
            let l = link::get_by_name(&mut s, "eth0").unwrap().unwrap();
            <[u8; 6]>::try_from(&l.mac[..6]).unwrap()
        })
        .unwrap()
}

/// host-gw: pods' traffic crosses the underlay plain, so a pod source must come from
/// the MAC of the peer that owns it. From node1's MAC: its own pod p1a passes; node2's
/// own pod, an address no node owns, and p1a from another MAC are refused.
#[test]
fn host_gw_binds_pod_sources_to_their_nodes() {
    let lab = TestLab::up(&["--nodes", "2", "--backend", "host-gw"]);
    let st = lab.json(&["status", "--output", "json"]);
    assert_eq!(st["nodes"][1]["name"], "node2");
    let (p1a, _) = lab_pod(&st, "p1a");
    let (p2a, _) = lab_pod(&st, "p2a");
    let (p2b, _) = lab_pod(&st, "p2b");
    let (mac1, mac2) = (eth0_mac(&lab, "node1"), eth0_mac(&lab, "node2"));
    // node2 learns node1's MAC, and its agent binds node1's CIDR to it.
    lab.full_mesh();
    let cap = Capture::open(&lab.ns("p2b"), "eth0").unwrap();
    let node1 = lab.ns("node1");
    let frame = |src: Ipv4Addr, from: [u8; 6], port: u16| {
        probe::udp_frame(
            mac2,
            from,
            SocketAddrV4::new(src, port),
            SocketAddrV4::new(p2b, 7777),
            b"host-gw",
        )
    };
    let nobody = Ipv4Addr::new(10, 244, 200, 9);
    wait_until(
        "node2 binds node1's pod CIDR",
        Duration::from_secs(3),
        || {
            lab.json(&["status", "--output", "json"])["nodes"][1]["underlay_guard"]["bound_sources"]
                == 1
        },
    );
    for (src, from, port) in [
        (p2a, mac1, FORGED_PORT),
        (nobody, mac1, FORGED_PORT),
        (p1a, [0x02, 0, 0, 0, 0, 0x66], FORGED_PORT),
        (p1a, mac1, FORGED_PORT + 1),
    ] {
        probe::send_frame(&node1, "eth0", &frame(src, from, port)).unwrap();
    }
    let frames = cap.frames(Duration::from_millis(500));
    let from_port = |port: u16| {
        frames
            .iter()
            .filter(|f| f.len() >= 42 && f[23] == 17 && u16::from_be_bytes([f[34], f[35]]) == port)
            .count()
    };
    assert_eq!(
        from_port(FORGED_PORT + 1),
        1,
        "p1a's own datagram from node1 did not arrive: the capture proves nothing"
    );
    assert_eq!(
        from_port(FORGED_PORT),
        0,
        "a pod source that is not node1's, or not from its MAC, reached p2b"
    );
    let mut guard = serde_json::Value::Null;
    wait_until("node2's guard counts them", Duration::from_secs(3), || {
        guard = lab.json(&["status", "--output", "json"])["nodes"][1]["underlay_guard"].clone();
        guard["drops"]["pod-src"] == 3
    });
    lab.full_mesh();
}

#[test]
fn overlay_injection_reaches_no_pod_on_the_bridge_with_nftables() {
    overlay_injection_reaches_no_pod(&["--policy-datapath", "nftables"]);
}

#[test]
fn overlay_injection_reaches_no_pod_on_the_bridge_with_ebpf_policy() {
    overlay_injection_reaches_no_pod(&["--policy-datapath", "ebpf"]);
}

#[test]
fn overlay_injection_reaches_no_pod_on_the_fast_path() {
    overlay_injection_reaches_no_pod(&["--policy-datapath", "ebpf", "--datapath", "ebpf"]);
}

/// The WireGuard port likewise: a pod cannot send to any node's WireGuard port
/// (`overlay-port` at its veth), and a host address that is no peer is refused at the
/// underlay (`wireguard-src`); the mesh keeps working.
#[test]
fn the_wireguard_port_takes_datagrams_from_peers_only() {
    let lab = TestLab::up(&["--nodes", "2", "--backend", "wireguard"]);
    let st = lab.json(&["status", "--output", "json"]);
    let n1: Ipv4Addr = st["nodes"][0]["underlay_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let n2: Ipv4Addr = st["nodes"][1]["underlay_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(st["nodes"][1]["name"], "node2");
    let port = st["nodes"][1]["underlay_guard"]["wireguard_port"]
        .as_u64()
        .expect("node2's guard names its WireGuard port") as u16;
    let attacker = lab.ns("p1a");
    let any = Ipv4Addr::UNSPECIFIED;
    // A handshake initiation's first bytes are enough: it must not reach the device.
    let junk = [1u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    send_udp(&attacker, any, SocketAddrV4::new(n1, port), &junk);
    send_udp(&attacker, any, SocketAddrV4::new(n2, port), &junk);
    let node1 = lab.ns("node1");
    let stranger = Ipv4Addr::new(n1.octets()[0], n1.octets()[1], n1.octets()[2], 201);
    lab.sh(
        "node1",
        &[
            "ip",
            "addr",
            "add",
            &format!("{stranger}/24"),
            "dev",
            "eth0",
        ],
    );
    send_udp(&node1, stranger, SocketAddrV4::new(n2, port), &junk);
    // From a peer's own address the guard lets it through (WireGuard itself then
    // discards what it cannot authenticate).
    send_udp(&node1, n1, SocketAddrV4::new(n2, port), &junk);

    let st = lab.json(&["status", "--output", "json"]);
    let (drops, overlay) = overlay_port_drops(&lab, &st, "node1", "p1a");
    assert_eq!(overlay, Some(2), "{drops:?}");
    // The agent's status is its last round's (one a second).
    let mut guard = serde_json::Value::Null;
    wait_until(
        "node2's guard counts the stranger",
        Duration::from_secs(3),
        || {
            let st = lab.json(&["status", "--output", "json"]);
            guard = st["nodes"][1]["underlay_guard"].clone();
            guard["drops"]["wireguard-src"] != 0
        },
    );
    assert_eq!(guard["drops"]["wireguard-src"], 1, "{guard}");
    assert_eq!(guard["drops"]["vxlan-src"], 0, "{guard}");
    lab.full_mesh();
}
