//! Overlay tunnels over an IPv6 underlay (`--underlay-family ipv6`): VXLAN and
//! WireGuard between the nodes' underlay IPv6 addresses, carrying pods of both
//! families; the underlay guard admits the overlay ports from peers' IPv6 addresses
//! only (and no IPv4 at all), VXLAN with an inner source of the sender's; trace and
//! doctor probe the IPv6 tunnel ends.

use crate::common::*;
use crate::dual_stack::{tcp, tcp6};
use podnet_api::Echo;
use podnet_lab::traffic::probe::{self, Capture};
use podnet_netlink::parse_mac;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

fn probe_ping(to: Ipv6Addr, payload: usize) -> Echo {
    podnet_api::probe::ping(to, payload, Duration::from_secs(2))
}

fn lab6(extra: &[&str]) -> TestLab {
    let mut args = vec![
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--ip-family",
        "dual",
        "--underlay-family",
        "ipv6",
    ];
    args.extend_from_slice(extra);
    TestLab::up(&args)
}

fn node<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name}: {st}"))
}

/// Sends `payload` over UDP from `from` (an address of node1) to `to`.
fn send_from(lab: &TestLab, from: IpAddr, to: SocketAddr, payload: &[u8]) {
    let payload = payload.to_vec();
    lab.ns("node1")
        .run(move || {
            let s = UdpSocket::bind((from, 0)).expect("bind");
            s.send_to(&payload, to).expect("send");
        })
        .unwrap();
}

/// Frames on a capture that are UDP to `port` over IPv6 (`v6`) or IPv4.
fn udp_to(frames: &[Vec<u8>], port: u16, v6: bool) -> usize {
    frames
        .iter()
        .filter(|f| match v6 {
            true => f.len() > 58 && f[12..14] == [0x86, 0xdd] && f[20] == 17,
            false => f.len() > 38 && f[12..14] == [0x08, 0x00] && f[23] == 17,
        })
        .filter(|f| {
            let udp = if v6 { 54 } else { 34 };
            u16::from_be_bytes([f[udp + 2], f[udp + 3]]) == port
        })
        .count()
}

fn drops(lab: &TestLab, node_name: &str) -> Value {
    let st = lab.json(&["status", "--output", "json"]);
    node(&st, node_name)["underlay_guard"]["drops"].clone()
}

/// VXLAN between the nodes' underlay IPv6 addresses: an IPv6 device (local address,
/// FDB destinations), 70 bytes of overhead, pods of both families reach each other
/// without NAT, the datagrams cross as IPv6 UDP 8472. A peer's datagram with an inner
/// source of its own passes; from an IPv6 address that is no peer's, or over IPv4
/// even from the peer, or with an inner source of another node's pod, the guard
/// refuses it. trace reads the IPv6 FDB entry and probes the IPv6 path's MTU.
#[test]
fn vxlan_runs_over_an_ipv6_underlay_on_the_bridge() {
    vxlan_over_ipv6(&["--datapath", "bridge"]);
}

/// The same on the fast path: the programs write and take off the IPv6 outer
/// headers (`overlay_peers6`), so the pods' packets skip the VXLAN device both ways.
#[test]
fn vxlan_runs_over_an_ipv6_underlay_on_the_fast_path() {
    let lab = vxlan_over_ipv6(&[]);
    let st = lab.json(&["status", "--output", "json"]);
    assert_eq!(st["datapath"], "ebpf", "{st}");
    // Neither VXLAN device carries the pods' packets, of either family: the programs
    // do. 40 TCP exchanges are well over 200 packets through the devices otherwise.
    let (a4, _) = lab_pod(&st, "p1a");
    let (b4, _) = lab_pod(&st, "p2a");
    let (a6, b6) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    let vx = podnet_conventions::VXLAN_DEV;
    let counts = || ["node1", "node2"].map(|n| crate::fastpath::link_packets(&lab, n, vx));
    let before = counts();
    for i in 0..20 {
        assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b6, 7300 + i), Ok(a6));
        assert_eq!(
            tcp(&lab.ns("p1a"), &lab.ns("p2a"), b4.into(), 7400 + i),
            Ok(a4.into())
        );
    }
    let after = counts();
    for (n, (v0, v1)) in ["node1", "node2"]
        .iter()
        .zip(before.iter().zip(after.iter()))
    {
        assert!(
            v1 - v0 <= 10,
            "{n}: the VXLAN device carried {} packets",
            v1 - v0
        );
    }
    // trace says where the fast path finds the peers' IPv6 tunnel ends.
    let o = podnet()
        .args([
            "trace", "p1a", "p2a", "--lab", &lab.name, "--output", "json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("peer VTEPs in overlay_peers6"),
        "{text}"
    );
}

fn vxlan_over_ipv6(extra: &[&str]) -> TestLab {
    let lab = lab6(extra);
    let st = lab.json(&["status", "--output", "json"]);
    let (u1, u2) = (podnet_lab::underlay_ip6(1), podnet_lab::underlay_ip6(2));
    assert_eq!(node(&st, "node2")["tunnel_ip"], u2.to_string(), "{st}");
    let link = lab.sh("node1", &["ip", "-d", "link", "show", "podnet.vxlan"]);
    assert!(link.contains(&format!("local {u1} ")), "{link}");
    assert!(link.contains("mtu 1430 "), "1500 - 70: {link}");
    let fdb = lab.sh("node1", &["bridge", "fdb", "show", "dev", "podnet.vxlan"]);
    assert!(fdb.contains(&format!("dst {u2} self permanent")), "{fdb}");
    // Both families between the pods, over IPv6 on the wire.
    let seen = Capture::open(&lab.ns("node2"), "eth0").unwrap();
    lab.full_mesh();
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7662), Ok(a));
    let frames = seen.frames(Duration::from_millis(300));
    assert!(udp_to(&frames, 8472, true) > 0, "no VXLAN over IPv6 seen");
    assert_eq!(udp_to(&frames, 8472, false), 0, "VXLAN over IPv4 seen");

    // Hostile datagrams to node2's VXLAN port, each with an inner IPv4 frame to p2a.
    let (p1, _) = lab_pod(&st, "p1a");
    let (p2, _) = lab_pod(&st, "p2a");
    let (n1, n2) = (node(&st, "node1"), node(&st, "node2"));
    let v4 = |n: &Value| -> Ipv4Addr { n["underlay_ip"].as_str().unwrap().parse().unwrap() };
    let mac = |n: &Value| parse_mac(n["vtep_mac"].as_str().unwrap()).unwrap();
    let vxlan = |src: Ipv4Addr, tag: &[u8]| {
        let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        p.extend(probe::udp_frame(
            mac(n2),
            mac(n1),
            SocketAddrV4::new(src, 31337),
            SocketAddrV4::new(p2, 7777),
            tag,
        ));
        p
    };
    // A stranger on the underlay: an address of node1's link that is no peer's.
    let stranger: Ipv6Addr = "fd00:192:168:1::99".parse().unwrap();
    lab.sh(
        "node1",
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{stranger}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    let inner = Capture::open(&lab.ns("p2a"), "eth0").unwrap();
    let before = drops(&lab, "node2");
    let to6 = SocketAddr::new(u2.into(), 8472);
    send_from(&lab, u1.into(), to6, &vxlan(p1, b"control"));
    send_from(&lab, stranger.into(), to6, &vxlan(p1, b"stranger"));
    send_from(
        &lab,
        v4(n1).into(),
        SocketAddr::new(v4(n2).into(), 8472),
        &vxlan(p1, b"over ipv4"),
    );
    send_from(&lab, u1.into(), to6, &vxlan(p2, b"inner"));
    // A pod wrapping a frame in VXLAN to its own node's and to node2's IPv6 tunnel
    // end: dropped at its veth (overlay-port), which the guard never sees (its own
    // node's socket would take it).
    let p1a6 = lab_ip6(&st, "p1a");
    for (to, tag) in [(u1, &b"pod to own node"[..]), (u2, b"pod to node2")] {
        let payload = vxlan(p1, tag);
        lab.ns("p1a")
            .run(move || {
                let s = UdpSocket::bind((p1a6, 0)).expect("bind");
                s.send_to(&payload, (to, 8472)).expect("send");
            })
            .unwrap();
    }
    let got = inner.frames(Duration::from_millis(500));
    let carried = |tag: &[u8]| {
        got.iter()
            .any(|f| f.windows(tag.len()).any(|w| w == tag) && f[12..14] == [0x08, 0x00])
    };
    assert!(
        carried(b"control"),
        "the peer's own datagram did not arrive: the checks prove nothing"
    );
    for tag in [
        &b"stranger"[..],
        b"over ipv4",
        b"inner",
        b"pod to own node",
        b"pod to node2",
    ] {
        assert!(
            !carried(tag),
            "{} reached p2a",
            String::from_utf8_lossy(tag)
        );
    }
    let mut after = Value::Null;
    wait_until("node2's guard counts them", Duration::from_secs(5), || {
        after = drops(&lab, "node2");
        let grew = |r: &str| after[r].as_u64().unwrap_or(0) - before[r].as_u64().unwrap_or(0);
        grew("vxlan-src") == 2 && grew("vxlan-inner") == 1
    });
    let (all, overlay) = crate::attack::overlay_port_drops(&lab, &st, "node1", "p1a");
    assert_eq!(overlay, Some(2), "{all:?}");
    assert_eq!(after["vxlan-frame"], 0, "{after}");

    // The IPv6 echo the MTU probes use: 1500 bytes on the wire pass, 1501 do not.
    let echo = |payload: usize| {
        lab.ns("node1")
            .run(move || probe_ping(u2, payload))
            .unwrap()
    };
    assert_eq!(echo(1500 - 48), Echo::Reply);
    assert_eq!(echo(1501 - 48), Echo::TooBig);

    // trace: the FDB entry names node2's IPv6 address; the MTU probe crosses IPv6.
    let o = podnet()
        .args(["trace", "p1a", "p2a", "--lab", &lab.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains(&format!("is reached through {u2}")), "{text}");
    assert!(text.contains("pod MTU 1430 + 70"), "{text}");
    // The device and its FDB entry read back as made: made once, never again (a
    // read-back blind to IPv6 would re-create them every round).
    let log =
        std::fs::read_to_string(format!("/run/podnet/lab/{}/node1/podnetd.log", lab.name)).unwrap();
    assert_eq!(log.matches("creating VXLAN device").count(), 1, "{log}");
    assert!(!log.contains("does not match the configuration"), "{log}");
    assert_eq!(log.matches("bridge fdb replace").count(), 1, "{log}");
    let o = podnet()
        .args(["doctor", "--lab", &lab.name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    lab
}

/// WireGuard between the nodes' underlay IPv6 addresses: each device's peer has the
/// other's IPv6 endpoint, 80 bytes of overhead, pods of both families reach each
/// other; the WireGuard port takes nothing over IPv4, even from the peer.
#[test]
fn wireguard_runs_over_an_ipv6_underlay() {
    let lab = lab6(&["--backend", "wireguard"]);
    let st = lab.json(&["status", "--output", "json"]);
    let u2 = podnet_lab::underlay_ip6(2);
    lab.full_mesh();
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7663), Ok(a));
    let o = podnet()
        .args([
            "wireguard",
            "status",
            "--lab",
            &lab.name,
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let w: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "wireguard status: {e}: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let n1 = w
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "node1")
        .unwrap_or_else(|| panic!("no node1: {w}"));
    let endpoints: Vec<&str> = n1["wireguard"]["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no WireGuard peers: {n1}"))
        .iter()
        .filter_map(|p| p["endpoint"].as_str())
        .collect();
    assert_eq!(endpoints, [format!("[{u2}]:51820")], "{n1}");
    let st = lab.json(&["status", "--output", "json"]);
    let link = lab.sh("node1", &["ip", "link", "show", "podnet.wg"]);
    assert!(link.contains("mtu 1420 "), "1500 - 80: {link}");
    let (n1, n2) = (node(&st, "node1"), node(&st, "node2"));
    let v4 = |n: &Value| -> IpAddr { n["underlay_ip"].as_str().unwrap().parse().unwrap() };
    let before = drops(&lab, "node2");
    send_from(&lab, v4(n1), SocketAddr::new(v4(n2), 51820), &[1, 0, 0, 0]);
    wait_until("node2's guard counts it", Duration::from_secs(5), || {
        let after = drops(&lab, "node2");
        after["wireguard-src"].as_u64().unwrap_or(0)
            == before["wireguard-src"].as_u64().unwrap_or(0) + 1
    });
    lab.full_mesh();
}

/// host-gw has no tunnel to run over an IPv6 underlay: refused before anything is
/// made, saying what to run instead.
#[test]
fn an_ipv6_underlay_refuses_host_gw() {
    require_root();
    let name = format!("u6r{}", std::process::id() % 100_000);
    let o = podnet()
        .args(["lab", "--name", &name, "up", "--nodes", "1"])
        .args(["--underlay-family", "ipv6", "--backend", "host-gw"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("host-gw has no tunnel")
            && err.contains("--ip-family dual"),
        "{err}"
    );
    // Whatever `down` says (there may be no lab at all), nothing may be left.
    podnet()
        .args(["lab", "--name", &name, "down"])
        .output()
        .unwrap();
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&name),
        "a refused lab left a namespace"
    );
}
