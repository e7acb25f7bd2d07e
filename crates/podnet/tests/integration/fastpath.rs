//! The eBPF fast path (`--datapath ebpf`): pod packets skip the bridge on both the
//! same-node and the cross-node path, while anti-spoofing, the node's own traffic to
//! pods, the MTU, trace and doctor keep working. (NetworkPolicy on the fast path: the
//! conformance suite, `policy::conformance_ebpf_fast_path`.)

use crate::common::{wait_until, TestLab};
use podnet_api::Echo;
use podnet_lab::traffic::probe;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::common::lab_pod as pod;

/// Packets the node's bridge received and sent so far.
fn bridge_packets(lab: &TestLab, node: &str) -> u64 {
    link_packets(lab, node, "podnet0")
}

/// Packets a link of a node received and sent so far.
pub(crate) fn link_packets(lab: &TestLab, node: &str, link: &str) -> u64 {
    let out = lab.sh(node, &["ip", "-s", "-j", "link", "show", link]);
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

    // Same node and across nodes, many packets; the bridges see (almost) none of them,
    // and neither do the VXLAN devices: the programs write and remove the
    // encapsulation themselves.
    let vx = podnet_conventions::VXLAN_DEV;
    let (b1, b2) = (bridge_packets(&lab, "node1"), bridge_packets(&lab, "node2"));
    let (v1, v2) = (
        link_packets(&lab, "node1", vx),
        link_packets(&lab, "node2", vx),
    );
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
    let (e1, e2) = (
        link_packets(&lab, "node1", vx) - v1,
        link_packets(&lab, "node2", vx) - v2,
    );
    assert!(
        e1 <= 10 && e2 <= 10,
        "the VXLAN devices carried {e1} and {e2} packets"
    );

    // The frames on the wire are the VXLAN device's own: with node2's underlay program
    // taken away, its VXLAN device receives node1's frames and delivers them (a node
    // on the bridge datapath would do just that). The agent puts the program back.
    let ul_filter = || lab.sh("node2", &["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(ul_filter().contains("podnet_fast_ul"), "{}", ul_filter());
    let prio = podnet_agent::ebpf::FILTER_FAST_UNDERLAY_PRIO.to_string();
    lab.sh(
        "node2",
        &[
            "tc", "filter", "del", "dev", "eth0", "ingress", "pref", &prio,
        ],
    );
    let v2 = link_packets(&lab, "node2", vx);
    let r = probe::tcp_request(
        &lab.ns("p1a"),
        SocketAddrV4::new(ip2a, 7777),
        "via the device",
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(r, format!("from={ip1a} via the device"));
    assert!(
        link_packets(&lab, "node2", vx) > v2,
        "node2's VXLAN device saw none of it: the exchange did not take the path meant"
    );
    wait_until(
        "node2's agent puts its underlay program back",
        Duration::from_secs(10),
        || ul_filter().contains("podnet_fast_ul"),
    );
    // And the other way round: node1's own traffic leaves through its VXLAN device
    // and node2's underlay program takes it off the wire.
    let agent1 =
        podnet_api::Client::new(format!("/run/podnet/lab/{}/node1/podnetd.sock", lab.name));
    assert_eq!(agent1.ping(ip2a, 56).unwrap().result, Echo::Reply);

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
    let agent = podnet_api::Client::new(format!("/run/podnet/lab/{}/node1/podnetd.sock", lab.name));
    assert_eq!(agent.ping(ip1a, 56).unwrap().result, Echo::Reply);
    let mtu: usize = 1450;
    let p1a = lab.ns("p1a");
    let big = p1a
        .run(move || podnet_api::probe::ping(ip2a, mtu - 28, Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        big,
        Echo::Reply,
        "a {mtu}-byte packet must cross with DF set"
    );

    // trace says which program moves the packet where.
    for (dst, want) in [
        ("p1b", "bpf_redirect_peer"),
        ("p2a", "bpf_fib_lookup"),
        ("p2a", "writes the VXLAN encapsulation"),
    ] {
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
        .any(|h| h["where"] == "dst-node"
            && h["what"] == "fastpath"
            && h["status"] == "ok"
            && h["detail"].as_str().unwrap().contains("from_underlay")));
}

/// Kills and reaps the process on drop (the agent this test started by hand), also
/// when the test fails.
struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fast path's filter sits on the node's own underlay device, so podnet must take
/// it away again: a node's agent restarted without the eBPF datapaths removes it (and
/// only it: the device keeps its qdisc).
#[test]
fn an_agent_without_the_fast_path_removes_its_filter_from_the_underlay() {
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--policy-datapath",
        "ebpf",
        "--datapath",
        "ebpf",
    ]);
    let filters = || lab.sh("node2", &["tc", "filter", "show", "dev", "eth0", "ingress"]);
    wait_until(
        "node2's agent attaches its underlay program",
        Duration::from_secs(10),
        || filters().contains("podnet_fast_ul"),
    );
    // node2's agent, again, with the same options but the bridge datapath and the
    // nftables policy datapath.
    let st = lab.json(&["status", "--output", "json"]);
    let pid = st["nodes"][1]["agent_pid"].as_u64().unwrap() as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let mut args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(args.iter().any(|a| a == "--datapath"), "{args:?}");
    for i in 0..args.len() - 1 {
        match args[i].as_str() {
            "--datapath" => args[i + 1] = "bridge".into(),
            "--policy-datapath" => args[i + 1] = "nftables".into(),
            _ => {}
        }
    }
    // SAFETY: killing the agent process this test's lab started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let log = std::fs::File::create(format!(
        "/run/podnet/lab/{}/node2/podnetd-bridge.log",
        lab.name
    ))
    .unwrap();
    let _agent = Kill(
        std::process::Command::new("ip")
            .args(["netns", "exec", &format!("{}-node2", lab.name)])
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the restarted agent removes podnet_fast_ul",
        Duration::from_secs(15),
        || !filters().contains("podnet_fast_ul"),
    );
    // Only podnet's filter went: the clsact qdisc it sat in is still there.
    let qdiscs = lab.sh("node2", &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
    let log = std::fs::read_to_string(format!(
        "/run/podnet/lab/{}/node2/podnetd-bridge.log",
        lab.name
    ))
    .unwrap();
    assert!(
        log.contains("removed podnet_fast_ul from the ingress of eth0"),
        "{log}"
    );
}
