//! `podnet trace` over IPv6 on a dual-stack lab: the family of an IPv6 address given,
//! or `--family`, picks the hops' routes, neighbour entries, forwarding switch, policy
//! entries and fast-path map; each IPv6 hop broken on purpose is named at its hop
//! while the IPv4 trace of the same pods stays reachable.

use crate::common::*;
use serde_json::Value;

/// `podnet trace SRC DST --lab L --output json EXTRA…`: (exit 0, the JSON).
fn trace(lab: &TestLab, src: &str, dst: &str, extra: &[&str]) -> (bool, Value) {
    let o = podnet()
        .args(["trace", src, dst, "--lab", &lab.name, "--output", "json"])
        .args(extra)
        .output()
        .expect("run podnet trace");
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "trace {src} {dst} {extra:?}: {e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), v)
}

/// The IPv6 trace p1a → p2a (port 80) must be broken at `where_`/`what`, with a fix,
/// and the IPv4 trace of the same pods reachable. The broken hop.
fn broken6(lab: &TestLab, where_: &str, what: &str) -> Value {
    let (ok, t) = trace(lab, "p1a", "p2a", &["--family", "ipv6", "--port", "80"]);
    assert!(!ok, "the IPv6 trace must exit non-zero: {t}");
    assert_eq!(t["family"], "ipv6", "{t}");
    let h = t["broken_hop"].clone();
    assert_eq!(
        (h["where"].as_str(), h["what"].as_str()),
        (Some(where_), Some(what)),
        "wrong hop: {t}"
    );
    assert!(h["fix"].as_str().is_some_and(|f| !f.is_empty()), "{h}");
    let (ok, t4) = trace(lab, "p1a", "p2a", &["--port", "80"]);
    assert!(ok, "the IPv4 trace must stay reachable: {t4}");
    assert_eq!(t4["family"], "ipv4");
    h
}

fn reachable6(lab: &TestLab) {
    let (ok, t) = trace(lab, "p1a", "p2a", &["--family", "ipv6", "--port", "80"]);
    assert!(ok && t["verdict"] == "reachable", "{t}");
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn trace_names_broken_ipv6_hops(datapaths: &[&str]) {
    let (d, p) = (datapaths[0], datapaths[1]);
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--ip-family",
        "dual",
        "--no-repair",
        "--datapath",
        d,
        "--policy-datapath",
        p,
    ]);
    let st = lab.json(&["status", "--output", "json"]);
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));

    // Healthy: both families, each trace on its own addresses; an IPv6 address given
    // picks IPv6 without --family, on one node as across nodes.
    let (ok, ts) = trace(&lab, "p1a", "p2a", &["--family", "both"]);
    assert!(ok, "{ts}");
    let ts = ts.as_array().expect("--family both gives an array");
    assert_eq!(ts.len(), 2);
    assert_eq!(
        (&ts[0]["family"], &ts[1]["family"]),
        (&"ipv4".into(), &"ipv6".into())
    );
    assert!(
        ts[1]["dst"].as_str().unwrap().contains(&b.to_string()),
        "{}",
        ts[1]
    );
    let p1b = lab_ip6(&st, "p1b");
    for (src, dst) in [
        (a.to_string(), b.to_string()),
        (a.to_string(), p1b.to_string()),
    ] {
        let (ok, t) = trace(&lab, &src, &dst, &[]);
        assert!(ok, "{t}");
        assert_eq!(t["family"], "ipv6", "{t}");
        // The fast path's hop reads local_pods6 for a same-node IPv6 destination.
        if d == "ebpf" && dst == p1b.to_string() {
            let fp = t["hops"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["what"] == "fastpath")
                .unwrap_or_else(|| panic!("no fast path hop: {t}"));
            assert!(
                fp["kernel"].as_str().unwrap().contains("local_pods6"),
                "{fp}"
            );
        }
    }
    // Doctor agrees the dual-stack nodes are whole (the bridge's own IPv6 routes and
    // neighbours, which trace reads, are not stale podnet routes).
    let o = podnet()
        .args(["doctor", "--lab", &lab.name, "--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let net1 = podnet_cni_spec::net::Ipv6Net::truncating(a, 64);
    let net2 = podnet_cni_spec::net::Ipv6Net::truncating(b, 64);

    // node1's IPv6 route to node2's pods: its fix, run as given, puts it back.
    lab.sh("node1", &["ip", "-6", "route", "del", &net2.to_string()]);
    let h = broken6(&lab, "src-node", "route");
    let fix = h["fix"].as_str().unwrap();
    let add = fix.split("by hand: ").nth(1).expect("a command by hand");
    assert!(add.starts_with("ip -6 route replace"), "{fix}");
    lab.sh("node1", &add.split(' ').collect::<Vec<_>>());
    reachable6(&lab);

    // IPv6 forwarding off on node2: the way back is named there.
    lab.sh(
        "node2",
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"],
    );
    let h = broken6(&lab, "dst-node", "forwarding");
    assert!(h["detail"].as_str().unwrap().contains("IPv6"), "{h}");
    lab.sh(
        "node2",
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    );
    reachable6(&lab);

    // node2's IPv6 neighbour entry for p2a given p2b's MAC: named with its owner.
    let (_, p2b_mac) = lab_pod(&st, "p2b");
    let target = b.to_string();
    lab.sh(
        "node2",
        &[
            "ip",
            "-6",
            "neigh",
            "replace",
            &target,
            "lladdr",
            &mac_text(p2b_mac),
            "dev",
            "podnet0",
            "nud",
            "permanent",
        ],
    );
    let h = broken6(&lab, "dst-node", "neigh");
    let detail = h["detail"].as_str().unwrap();
    assert!(detail.contains("pod p2b's MAC"), "{h}");
    assert!(detail.contains("neighbour discovery"), "{h}");
    assert!(h["fix"].as_str().unwrap().contains("ipv6-na"), "{h}");
    lab.sh(
        "node2",
        &["ip", "-6", "neigh", "del", &target, "dev", "podnet0"],
    );
    reachable6(&lab);

    // p1a's IPv6 default route: the pod's own route hop.
    lab.sh("p1a", &["ip", "-6", "route", "del", "default"]);
    let h = broken6(&lab, "src-pod", "route");
    let gw = net1.nth(1).unwrap().to_string();
    assert!(h["fix"].as_str().unwrap().contains(&gw), "{h}");
    lab.sh(
        "p1a",
        &[
            "ip", "-6", "route", "add", "default", "via", &gw, "dev", "eth0",
        ],
    );
    reachable6(&lab);

    // A policy that admits p1a's IPv4 address only: IPv6 is denied at p2a's ingress.
    let (a4, _) = lab_pod(&st, "p1a");
    lab.pipe_ok(
        "apply",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: v4-only\n  namespace: default\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: {a4}/32\n"
        ),
    );
    wait_until(
        "p2a's IPv6 ingress is denied",
        std::time::Duration::from_secs(10),
        || {
            let (_, t) = trace(&lab, "p1a", "p2a", &["--family", "ipv6", "--port", "80"]);
            t["broken_hop"]["what"] == "policy"
        },
    );
    let h = broken6(&lab, "dst-pod", "policy");
    assert!(h["detail"].as_str().unwrap().contains("denied"), "{h}");
    assert!(h["cmd"].as_str().unwrap().contains("--ipv6"), "{h}");
}

#[test]
fn trace_names_broken_ipv6_hops_on_the_defaults() {
    trace_names_broken_ipv6_hops(&["ebpf", "ebpf"]);
}

#[test]
fn trace_names_broken_ipv6_hops_on_the_bridge_with_nftables() {
    trace_names_broken_ipv6_hops(&["bridge", "nftables"]);
}

/// doctor checks a dual-stack pod's IPv6 end as its IPv4 one (`addr6`, `route6`,
/// `neighbour6`, `gateway neighbour6`): whole on a fresh lab; p1a's IPv6 default route
/// removed is `route6` broken, with the command that puts it back; p1a's IPv6 entry
/// for its gateway given p1b's MAC is `gateway neighbour6` broken, naming p1b.
#[test]
fn doctor_checks_each_dual_stack_pods_ipv6_end() {
    let lab = TestLab::up(&[
        "--nodes",
        "1",
        "--pods-per-node",
        "2",
        "--ip-family",
        "dual",
        "--no-repair",
    ]);
    let st = lab.json(&["status", "--output", "json"]);
    let (p1a, _) = lab_pod(&st, "p1a");
    let (_, p1b_mac) = lab_pod(&st, "p1b");
    let a = lab_ip6(&st, "p1a");
    let gw = podnet_cni_spec::net::Ipv6Net::truncating(a, 64)
        .nth(1)
        .unwrap()
        .to_string();
    let check = |what: &str| -> Value {
        let c = format!("pod {p1a} {what}");
        lab.doctor_findings(&c)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {c} finding"))
    };
    for what in ["addr6", "route6", "neighbour6", "gateway neighbour6"] {
        assert_eq!(check(what)["status"], "ok", "{}", check(what));
    }
    lab.sh("p1a", &["ip", "-6", "route", "del", "default"]);
    let f = check("route6");
    assert_eq!(f["status"], "broken", "{f}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("no IPv6 default route"),
        "{f}"
    );
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(&format!("ip -6 route replace default via {gw}")),
        "{fix}"
    );
    let cmd: Vec<&str> = fix.split(" inside").next().unwrap().split(' ').collect();
    lab.sh("p1a", &cmd);
    assert_eq!(check("route6")["status"], "ok");
    lab.sh(
        "p1a",
        &[
            "ip",
            "-6",
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &mac_text(p1b_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let f = check("gateway neighbour6");
    assert_eq!(f["status"], "broken", "{f}");
    assert!(
        f["detail"].as_str().unwrap().contains("pod p1b's MAC"),
        "{f}"
    );
}
