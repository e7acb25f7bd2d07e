//! Outbound masquerade (podnetd --masquerade, table ip podnet_nat; ip6 podnet_nat for
//! a dual-stack cluster's IPv6): a pod reaching the lab's outside host (192.168.1.254
//! and fd00:192:168:1::fe on the fabric, no route to any pod range) leaves with its
//! node's address; pod → pod keeps the pod's own address; with --masquerade=false the
//! outside host cannot answer.

use crate::common::*;
use podnet_lab::traffic::probe;
use podnet_lab::{ECHO_PORT, OUTSIDE_ADDR, OUTSIDE_ADDR6};
use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

fn ip_of(st: &serde_json::Value, pod: &str) -> Ipv4Addr {
    lab_pod(st, pod).0
}

fn node_ip(st: &serde_json::Value, node: &str) -> Ipv4Addr {
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node}: {st}"))["underlay_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn outside() -> SocketAddrV4 {
    SocketAddrV4::new(OUTSIDE_ADDR, ECHO_PORT)
}

#[test]
fn pod_traffic_leaving_the_cluster_is_masqueraded_and_pod_traffic_is_not() {
    masqueraded(&[]);
}

/// The fast path carries pod → pod only: what leaves the cluster takes the stack.
#[test]
fn the_fast_path_leaves_masquerade_to_the_stack() {
    masqueraded(&["--policy-datapath", "ebpf", "--datapath", "ebpf"]);
}

fn masqueraded(args: &[&str]) {
    let lab = TestLab::up(&[&["--nodes", "2", "--pods-per-node", "1"], args].concat());
    let st = lab.json(&["status", "--output", "json"]);
    let (p1a, p2a) = (ip_of(&st, "p1a"), ip_of(&st, "p2a"));
    let t = Duration::from_secs(3);
    // To the outside host: the node's address.
    let reply = probe::tcp_request(&lab.ns("p1a"), outside(), "out", t).unwrap();
    assert_eq!(reply, format!("from={} out", node_ip(&st, "node1")));
    let reply = probe::tcp_request(&lab.ns("p2a"), outside(), "out", t).unwrap();
    assert_eq!(reply, format!("from={} out", node_ip(&st, "node2")));
    // Between pods (across nodes): the pod's own address.
    let reply =
        probe::tcp_request(&lab.ns("p1a"), SocketAddrV4::new(p2a, ECHO_PORT), "in", t).unwrap();
    assert_eq!(reply, format!("from={p1a} in"));
    // The rule counted what it translated.
    let table = lab.sh("node1", &["nft", "list", "table", "ip", "podnet_nat"]);
    let rule = table
        .lines()
        .find(|l| l.contains("masquerade"))
        .unwrap_or_else(|| panic!("no masquerade rule: {table}"));
    assert!(
        rule.contains("ip saddr 10.244.0.0/16 ip daddr != @keep") && !rule.contains("packets 0 "),
        "{rule}"
    );

    // Flushed by hand (a firewall reload): the agent writes it again, and says so.
    lab.sh("node1", &["nft", "delete", "table", "ip", "podnet_nat"]);
    wait_until(
        "node1's agent puts table ip podnet_nat back",
        Duration::from_secs(10),
        || {
            lab.sh_status("node1", &["nft", "list", "table", "ip", "podnet_nat"])
                .0
        },
    );
    let reply = probe::tcp_request(&lab.ns("p1a"), outside(), "again", t).unwrap();
    assert_eq!(reply, format!("from={} again", node_ip(&st, "node1")));
    let doctor = finding(&lab, "masquerade");
    assert_eq!(doctor["status"], "ok", "{doctor}");
    assert!(
        doctor["detail"]
            .as_str()
            .unwrap()
            .contains("outside 10.244.0.0/16, 169.254.0.0/16"),
        "{doctor}"
    );
    let metrics = lab.metrics_text("node1");
    assert!(
        metrics.contains("object=\"masquerade\""),
        "the repair is not counted: {metrics}"
    );
}

fn outside6() -> SocketAddrV6 {
    SocketAddrV6::new(OUTSIDE_ADDR6, ECHO_PORT, 0, 0)
}

/// A dual-stack pod's IPv6 to the outside host leaves with its node's IPv6 address on
/// the fabric; pod → pod over IPv6 keeps the pod's own; the rule counts; the table,
/// deleted by hand, is put back; doctor's `masquerade6` names the IPv6 ranges kept.
fn masqueraded6(args: &[&str]) {
    let lab = TestLab::up(
        &[
            &[
                "--nodes",
                "2",
                "--pods-per-node",
                "1",
                "--ip-family",
                "dual",
            ],
            args,
        ]
        .concat(),
    );
    let st = lab.json(&["status", "--output", "json"]);
    let (p1a, p2a) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    let t = Duration::from_secs(3);
    let (node1, node2) = (podnet_lab::underlay_ip6(1), podnet_lab::underlay_ip6(2));
    let reply = probe::tcp_request(&lab.ns("p1a"), outside6(), "out", t).unwrap();
    assert_eq!(reply, format!("from={node1} out"));
    let reply = probe::tcp_request(&lab.ns("p2a"), outside6(), "out", t).unwrap();
    assert_eq!(reply, format!("from={node2} out"));
    // IPv4 still leaves with the node's IPv4 address.
    let reply = probe::tcp_request(&lab.ns("p1a"), outside(), "out4", t).unwrap();
    assert_eq!(reply, format!("from={} out4", node_ip(&st, "node1")));
    let reply = probe::tcp_request(
        &lab.ns("p1a"),
        SocketAddrV6::new(p2a, ECHO_PORT, 0, 0),
        "in",
        t,
    )
    .unwrap();
    assert_eq!(reply, format!("from={p1a} in"));
    let table = lab.sh("node1", &["nft", "list", "table", "ip6", "podnet_nat"]);
    let rule = table
        .lines()
        .find(|l| l.contains("masquerade"))
        .unwrap_or_else(|| panic!("no masquerade rule: {table}"));
    assert!(
        rule.contains(&format!(
            "ip6 saddr {} ip6 daddr != @keep",
            podnet_lab::CLUSTER_CIDR6
        )) && !rule.contains("packets 0 "),
        "{rule}"
    );
    lab.sh("node1", &["nft", "delete", "table", "ip6", "podnet_nat"]);
    wait_until(
        "node1's agent puts table ip6 podnet_nat back",
        Duration::from_secs(10),
        || {
            lab.sh_status("node1", &["nft", "list", "table", "ip6", "podnet_nat"])
                .0
        },
    );
    let reply = probe::tcp_request(&lab.ns("p1a"), outside6(), "again", t).unwrap();
    assert_eq!(reply, format!("from={node1} again"));
    let f = finding(&lab, "masquerade6");
    assert_eq!(f["status"], "ok", "{f}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("outside {}, fe80::/10", podnet_lab::CLUSTER_CIDR6)),
        "{f}"
    );
}

#[test]
fn ipv6_leaving_the_cluster_is_masqueraded_on_the_defaults() {
    masqueraded6(&[]);
}

#[test]
fn ipv6_leaving_the_cluster_is_masqueraded_on_the_bridge() {
    masqueraded6(&["--datapath", "bridge", "--policy-datapath", "nftables"]);
}

/// Without masquerade the outside host cannot answer a pod over either family (a
/// dual-stack lab: `--masquerade=false` turns IPv6's off too), and neither table is
/// left.
#[test]
fn without_masquerade_the_outside_host_cannot_answer_a_pod() {
    let lab = TestLab::up(&[
        "--nodes",
        "1",
        "--pods-per-node",
        "1",
        "--no-masquerade",
        "--ip-family",
        "dual",
    ]);
    // The outside host is there: the node itself reaches it.
    let reply =
        probe::tcp_request(&lab.ns("node1"), outside(), "node", Duration::from_secs(3)).unwrap();
    assert!(reply.starts_with("from=192.168.1.10 "), "{reply}");
    // The pod's packets leave with its own address, which the outside host has no
    // route back to.
    let err = probe::tcp_request(&lab.ns("p1a"), outside(), "pod", Duration::from_secs(2))
        .expect_err("the outside host answered a pod address it has no route to");
    assert!(format!("{err:#}").contains("connect to"), "{err:#}");
    assert!(
        !lab.sh_status("node1", &["nft", "list", "table", "ip", "podnet_nat"])
            .0,
        "--masquerade=false left table ip podnet_nat"
    );
    let doctor = finding(&lab, "masquerade");
    assert!(
        doctor["detail"].as_str().unwrap().starts_with("off"),
        "{doctor}"
    );
    // IPv6 the same: the node reaches the outside host, the pod gets no answer.
    let t = Duration::from_secs(2);
    let reply = probe::tcp_request(&lab.ns("node1"), outside6(), "node", t).unwrap();
    assert_eq!(reply, format!("from={} node", podnet_lab::underlay_ip6(1)));
    let err = probe::tcp_request(&lab.ns("p1a"), outside6(), "pod", t)
        .expect_err("the outside host answered a pod IPv6 address it has no route to");
    assert!(format!("{err:#}").contains("connect to"), "{err:#}");
    assert!(
        !lab.sh_status("node1", &["nft", "list", "table", "ip6", "podnet_nat"])
            .0,
        "--masquerade=false left table ip6 podnet_nat"
    );
    let f = finding(&lab, "masquerade6");
    assert!(f["detail"].as_str().unwrap().starts_with("off"), "{f}");
}

/// node1's finding `check` (`masquerade`, `masquerade6`) in `podnet doctor --output
/// json`.
fn finding(lab: &TestLab, check: &str) -> serde_json::Value {
    lab.doctor_findings(check)
        .into_iter()
        .find(|f| f["node"] == "node1")
        .unwrap_or_else(|| panic!("no {check} finding on node1"))
}
