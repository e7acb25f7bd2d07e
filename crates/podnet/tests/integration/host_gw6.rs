//! Dual-stack pods on the host-gw backend: each node routes a peer's IPv6 pod range
//! to the peer's underlay IPv6 address (no overlay, no NAT); the underlay guard binds
//! plain IPv6 pod sources to the MAC of the node that owns them; trace and doctor
//! read the IPv6 route as podnetd makes it.

use crate::common::*;
use crate::dual_stack::tcp6;
use podnet_cni_spec::net::Ipv6Net;
use podnet_lab::traffic::probe;
use serde_json::Value;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

fn net(a: Ipv6Addr) -> Ipv6Net {
    Ipv6Net::truncating(a, 64)
}

/// `podnet trace p1a p2a --family ipv6`: (exit 0, the JSON).
fn trace6(lab: &TestLab) -> (bool, Value) {
    let o = podnet()
        .args([
            "trace", "p1a", "p2a", "--family", "ipv6", "--lab", &lab.name,
        ])
        .args(["--output", "json"])
        .output()
        .unwrap();
    let t = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("trace: {e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.success(), t)
}

fn node<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name}: {st}"))
}

/// A 2-node dual-stack host-gw lab with `extra` flags: pods reach each other over
/// IPv6 both ways with their own source addresses, through podnet's route via the
/// peer's underlay IPv6 address on eth0 (not onlink), reported by status and judged
/// whole by trace and doctor; a pod reaches a peer node's underlay IPv6 address
/// unmasqueraded (the peer's underlay is routed, as for IPv4). Then, on node2's
/// eth0, plain IPv6 from p1a's address passes from node1's MAC (the control) and is
/// dropped and counted from any other MAC, as is plain IPv6 claiming node2's own pod
/// range from node1's MAC.
fn host_gw_carries_and_binds_ipv6(extra: &[&str]) -> TestLab {
    let mut args = vec![
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--ip-family",
        "dual",
        "--backend",
        "host-gw",
    ];
    args.extend_from_slice(extra);
    let lab = TestLab::up(&args);
    let st = lab.json(&["status", "--output", "json"]);
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    let (u1, u2) = (podnet_lab::underlay_ip6(1), podnet_lab::underlay_ip6(2));
    assert_eq!(node(&st, "node1")["underlay_ip6"], u1.to_string(), "{st}");
    assert_eq!(node(&st, "node2")["underlay_ip6"], u2.to_string(), "{st}");
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7100), Ok(a));
    assert_eq!(tcp6(&lab.ns("p2a"), &lab.ns("p1a"), a, 7101), Ok(b));
    let routes = lab.sh("node1", &["ip", "-6", "route", "show", "proto", "0x50"]);
    let want = format!("{} via {u2} dev eth0 ", net(b));
    assert!(routes.contains(&want), "{want:?} not in {routes}");
    assert!(!routes.contains("onlink"), "{routes}");
    // The peer node's underlay IPv6 address is kept from masquerade on host-gw.
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("node2"), u2, 7102), Ok(a));
    let (ok, t) = trace6(&lab);
    assert!(ok && t["verdict"] == "reachable", "{t}");
    let o = podnet()
        .args(["doctor", "--lab", &lab.name, "--output", "json"])
        .output()
        .unwrap();
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "{d}");
    assert!(
        d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "route6 to node2" && f["status"] == "ok"),
        "{d}"
    );

    // The guard on node2 binds IPv6 pod sources once it knows node1's MAC (the
    // traffic above resolved it): both of node1's ranges.
    wait_until(
        "node2's guard binds node1's pod ranges to its MAC",
        Duration::from_secs(10),
        || {
            let st = lab.json(&["status", "--output", "json"]);
            node(&st, "node2")["underlay_guard"]["bound_sources"] == 2
        },
    );
    let (mac1, mac2) = (eth0_mac(&lab, "node1"), eth0_mac(&lab, "node2"));
    let rx = udp6_listener(&lab, "p2a", b, 7650);
    let frame = |from_mac: [u8; 6], src: Ipv6Addr, payload: &[u8]| {
        probe::udp6_frame(
            mac2,
            from_mac,
            SocketAddrV6::new(src, 5555, 0, 0),
            SocketAddrV6::new(b, 7650, 0, 0),
            payload,
        )
    };
    let node1 = lab.ns("node1");
    let mut buf = [0u8; 64];
    wait_until(
        "p2a receives plain IPv6 from p1a's address and node1's MAC",
        Duration::from_secs(10),
        || {
            probe::send_frame(&node1, "eth0", &frame(mac1, a, b"control")).unwrap();
            matches!(rx.recv_from(&mut buf), Ok((n, f)) if &buf[..n] == b"control" && f.ip() == std::net::IpAddr::V6(a))
        },
    );
    while rx.recv_from(&mut buf).is_ok() {}
    let before = node(&lab.json(&["status", "--output", "json"]), "node2")["underlay_guard"]
        ["drops"]["pod-src"]
        .as_u64()
        .unwrap();
    let stranger = [0x02, 0, 0, 0, 0x0b, 0xad];
    let own = net(b).nth(0x99).unwrap();
    for _ in 0..3 {
        probe::send_frame(&node1, "eth0", &frame(stranger, a, b"forged-mac")).unwrap();
        probe::send_frame(&node1, "eth0", &frame(mac1, own, b"forged-own")).unwrap();
    }
    let mut got = vec![];
    while let Ok((n, _)) = rx.recv_from(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(
        !got.iter().any(|g| g.starts_with("forged")),
        "forged plain IPv6 reached p2a: {got:?}"
    );
    wait_until(
        "node2's guard counts all six",
        Duration::from_secs(5),
        || {
            let st = lab.json(&["status", "--output", "json"]);
            node(&st, "node2")["underlay_guard"]["drops"]["pod-src"] == before + 6
        },
    );
    lab
}

#[test]
fn host_gw_carries_and_binds_ipv6_on_the_defaults() {
    host_gw_carries_and_binds_ipv6(&[]);
}

/// The same on the bridge with nftables, without repair; then node1's IPv6 route to
/// node2's pods is deleted, and trace names that hop, with podnetd's route as the fix.
#[test]
fn host_gw_carries_and_binds_ipv6_on_the_bridge() {
    let lab = host_gw_carries_and_binds_ipv6(&[
        "--datapath",
        "bridge",
        "--policy-datapath",
        "nftables",
        "--no-repair",
    ]);
    let st = lab.json(&["status", "--output", "json"]);
    let b = lab_ip6(&st, "p2a");
    let cidr = net(b).to_string();
    lab.sh(
        "node1",
        &["ip", "-6", "route", "del", &cidr, "proto", "0x50"],
    );
    let (ok, t) = trace6(&lab);
    assert!(!ok, "{t}");
    let h = &t["broken_hop"];
    assert_eq!(
        (&h["where"], &h["what"]),
        (&"src-node".into(), &"route".into()),
        "{t}"
    );
    let fix = format!(
        "ip -6 route replace {cidr} via {} dev eth0 proto 0x50",
        podnet_lab::underlay_ip6(2)
    );
    assert!(
        h["fix"].as_str().unwrap().contains(&fix),
        "{fix:?} not in {h}"
    );
}
