//! The eBPF fast path (`--datapath ebpf`): pod packets skip the bridge on both the
//! same-node and the cross-node path, while anti-spoofing, the node's own traffic to
//! pods, the MTU, trace and doctor keep working. (NetworkPolicy on the fast path: the
//! conformance suite, `policy::conformance_ebpf_fast_path`.)

use crate::common::{wait_until, TestLab};
use podnet::probe;
use podnet_agent::probe::Echo;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::common::lab_pod as pod;

/// Packets the node's bridge received and sent so far.
fn bridge_packets(lab: &TestLab, node: &str) -> u64 {
    let out = lab.sh(node, &["ip", "-s", "-j", "link", "show", "podnet0"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let s = &v[0]["stats64"];
    s["rx"]["packets"].as_u64().unwrap() + s["tx"]["packets"].as_u64().unwrap()
}

fn podnet_json(args: &[&str]) -> (bool, Value) {
    let o = crate::common::podnet().args(args).output().unwrap();
    (
        o.status.success(),
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
    )
}

#[test]
fn the_fast_path_skips_the_bridge_and_keeps_every_protection() {
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--policy-datapath",
        "ebpf",
        "--datapath",
        "ebpf",
    ]);
    lab.full_mesh();
    // The agents put every pod in local_pods within a second of its making.
    wait_until(
        "every node's fast path serves its pods",
        Duration::from_secs(10),
        || {
            let (_, d) = podnet_json(&["doctor", "--lab", &lab.name, "--output", "json"]);
            d["findings"].as_array().is_some_and(|f| {
                f.iter()
                    .filter(|x| x["check"] == "fast path" && x["status"] == "ok")
                    .count()
                    == 2
            })
        },
    );
    let st = lab.json(&["status", "--output", "json"]);
    let ((ip1a, mac1a), (ip1b, mac1b), (ip2a, _)) =
        (pod(&st, "p1a"), pod(&st, "p1b"), pod(&st, "p2a"));

    // Same node and across nodes, many packets; the bridges see (almost) none of them.
    let (b1, b2) = (bridge_packets(&lab, "node1"), bridge_packets(&lab, "node2"));
    for _ in 0..20 {
        for dst in [ip1b, ip2a] {
            let r = probe::tcp_request(
                &lab.ns("p1a"),
                SocketAddrV4::new(dst, 7777),
                "fast",
                Duration::from_secs(3),
            )
            .unwrap();
            assert_eq!(r, format!("from={ip1a} fast"));
        }
    }
    let (d1, d2) = (
        bridge_packets(&lab, "node1") - b1,
        bridge_packets(&lab, "node2") - b2,
    );
    // 40 TCP exchanges are well over 200 packets through the bridge path; a handful
    // of ARP refreshes may still cross the bridges.
    assert!(
        d1 <= 10 && d2 <= 10,
        "the bridges carried {d1} and {d2} packets"
    );

    // Anti-spoofing holds on the fast path: a forged source never reaches p1b; the
    // same frame with p1a's own address does (so the negative check can fail).
    let sink = probe::udp_bind(&lab.ns("p1b"), SocketAddrV4::new(ip1b, 9999)).unwrap();
    let frame = |src: Ipv4Addr, tag: &[u8]| {
        probe::udp_frame(
            mac1b,
            mac1a,
            SocketAddrV4::new(src, 5000),
            SocketAddrV4::new(ip1b, 9999),
            tag,
        )
    };
    let forged = Ipv4Addr::new(ip1a.octets()[0], ip1a.octets()[1], ip1a.octets()[2], 99);
    probe::send_frame(&lab.ns("p1a"), "eth0", &frame(forged, b"forged")).unwrap();
    probe::send_frame(&lab.ns("p1a"), "eth0", &frame(ip1a, b"genuine")).unwrap();
    let mut got = Vec::new();
    wait_until(
        "the genuine datagram arrives",
        Duration::from_secs(3),
        || {
            got.extend(probe::udp_drain(&sink).into_iter().map(|(_, d)| d));
            got.iter().any(|d| d == b"genuine")
        },
    );
    assert!(
        !got.iter().any(|d| d == b"forged"),
        "a forged source got through"
    );

    // The node's own traffic to its pods, and full-size packets across nodes.
    let agent = podnet_agent::proto::Client::new(format!(
        "/run/podnet/lab/{}/node1/podnetd.sock",
        lab.name
    ));
    assert_eq!(agent.ping(ip1a, 56).unwrap().result, Echo::Reply);
    let mtu: usize = 1450;
    let p1a = lab.ns("p1a");
    let big = p1a
        .run(move || podnet_agent::probe::ping(ip2a, mtu - 28, Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        big,
        Echo::Reply,
        "a {mtu}-byte packet must cross with DF set"
    );

    // trace says which program moves the packet where.
    for (dst, want) in [("p1b", "bpf_redirect_peer"), ("p2a", "bpf_fib_lookup")] {
        let (ok, t) = podnet_json(&["trace", "--lab", &lab.name, "p1a", dst, "--output", "json"]);
        assert!(ok, "{t}");
        let hop = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["where"] == "src-node" && h["what"] == "fastpath")
            .unwrap_or_else(|| panic!("no fastpath hop: {t}"));
        assert!(hop["detail"].as_str().unwrap().contains(want), "{hop}");
    }
    let (_, t) = podnet_json(&[
        "trace", "--lab", &lab.name, "p1a", "p2a", "--output", "json",
    ]);
    assert!(t["hops"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["where"] == "dst-node" && h["what"] == "fastpath" && h["status"] == "ok"));
}
