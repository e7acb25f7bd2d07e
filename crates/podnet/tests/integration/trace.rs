//! `podnet trace` and `podnet doctor` against a lab: a healthy lab traces reachable on
//! both paths, and every fault kind is named at the right hop and flagged by doctor.

use crate::common::require_root;
use podnet_lab::scratch::unique;
use serde_json::Value;
use std::process::Command;

fn podnet(args: &[&str]) -> (bool, Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_podnet"))
        .args(args)
        .output()
        .expect("run podnet");
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.success(), v)
}

struct Lab(String);

impl Lab {
    fn up(args: &[&str]) -> Lab {
        require_root();
        let name = unique("tr").replace('-', "x");
        let mut a = vec![
            "lab",
            "--name",
            &name,
            "up",
            "--no-repair",
            "--output",
            "json",
        ];
        a.extend_from_slice(args);
        let (ok, v) = podnet(&a);
        assert!(ok, "lab up failed: {v}");
        Lab(name)
    }
    fn trace(&self, src: &str, dst: &str) -> (bool, Value) {
        podnet(&["trace", src, dst, "--lab", &self.0, "--output", "json"])
    }
    fn doctor(&self) -> (bool, Value) {
        podnet(&["doctor", "--lab", &self.0, "--output", "json"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = podnet(&["lab", "--name", &self.0, "down"]);
    }
}

#[test]
fn a_healthy_lab_traces_reachable_on_both_paths() {
    let lab = Lab::up(&["--nodes", "3", "--pods-per-node", "2"]);
    for (src, dst) in [("p1a", "p1b"), ("p1a", "p2a"), ("p3b", "p1a")] {
        let (ok, t) = lab.trace(src, dst);
        assert!(ok, "{src} -> {dst}: {t}");
        assert_eq!(t["verdict"], "reachable", "{t}");
        assert!(t["broken_hop"].is_null());
        assert!(
            t["elapsed_ms"].as_u64().unwrap() < 2000,
            "trace took {} ms",
            t["elapsed_ms"]
        );
        for h in t["hops"].as_array().unwrap() {
            for k in ["where", "what", "status", "detail", "kernel"] {
                assert!(h[k].is_string(), "hop without {k}: {h}");
            }
        }
        let cross = src[1..2] != dst[1..2];
        let has_overlay = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["where"] == "underlay");
        assert_eq!(has_overlay, cross, "overlay hops only across nodes: {t}");
    }
    let (ok, d) = lab.doctor();
    assert!(ok, "{d}");
    assert_eq!(d["broken"], 0, "{d}");
    assert_eq!(d["nodes"].as_array().unwrap().len(), 3);
    // Every pod's own end is checked: 6 pods, each with address, link, veth, route.
    for what in ["addr", "link", "veth", "route"] {
        let n = d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                f["status"] == "ok"
                    && f["check"].as_str().is_some_and(|c| {
                        c.starts_with("pod 10.") && c.ends_with(&format!(" {what}"))
                    })
            })
            .count();
        assert_eq!(n, 6, "pod {what} checks: {d}");
    }
    // A node that does not exist is an error, not an empty success.
    let (ok, v) = podnet(&[
        "doctor", "--lab", &lab.0, "--node", "node9", "--output", "json",
    ]);
    assert!(!ok && v.is_null(), "doctor --node node9 must fail: {v}");
    assert!(
        d["elapsed_ms"].as_u64().unwrap() < 3000,
        "doctor took {} ms",
        d["elapsed_ms"]
    );
}

#[test]
fn every_fault_is_named_by_trace_and_flagged_by_doctor() {
    // (fault, where, what, a doctor check that must be broken)
    let cases = [
        (
            "vxlan-port-blocked",
            "underlay",
            "port",
            "vxlan port to node2",
        ),
        ("underlay-mtu", "underlay", "mtu", "mtu to node2"),
        ("missing-route", "src-node", "route", "route to node2"),
        ("misrouted", "src-node", "route", "route to node2"),
        ("missing-fdb", "src-node", "fdb", "fdb for node2"),
        ("missing-neigh", "src-node", "neigh", "neighbour for node2"),
        ("veth-down", "src-node", "link", "pod * veth"),
        ("pod-no-default-route", "src-pod", "route", "pod * route"),
        // Present and up, but not what podnet gives it: values are checked.
        ("pod-mtu", "src-pod", "link", "pod * link"),
        ("pod-wrong-gateway", "src-pod", "route", "pod * route"),
        ("forwarding-off", "src-node", "forwarding", "forwarding"),
        ("vxlan-down", "src-node", "link", "vxlan"),
    ];
    for (fault, where_, what, check) in cases {
        let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1"]);
        let (ok, _) = lab.trace("p1a", "p2a");
        assert!(ok, "{fault}: the lab must be healthy before the fault");
        let o = Command::new(env!("CARGO_BIN_EXE_podnet"))
            .args([
                "lab", "--name", &lab.0, "fault", "inject", fault, "--node", "node1", "--pod",
                "p1a",
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{fault}: inject failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (ok, t) = lab.trace("p1a", "p2a");
        assert!(!ok, "{fault}: trace must exit non-zero");
        assert_eq!(t["verdict"], "broken", "{fault}: {t}");
        let h = &t["broken_hop"];
        assert_eq!(
            (h["where"].as_str(), h["what"].as_str()),
            (Some(where_), Some(what)),
            "{fault}: wrong hop: {h}"
        );
        assert!(
            h["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "{fault}: no fix: {h}"
        );
        let (ok, d) = lab.doctor();
        assert!(!ok, "{fault}: doctor must exit non-zero: {d}");
        let flagged = d["findings"].as_array().unwrap().iter().any(|f| {
            f["status"] == "broken"
                && f["check"]
                    .as_str()
                    .is_some_and(|c| match check.split_once(" * ") {
                        // `pod * veth`: that check of some pod, by its address.
                        Some((pre, post)) => {
                            c.starts_with(&format!("{pre} ")) && c.ends_with(&format!(" {post}"))
                        }
                        None => c == check,
                    })
        });
        assert!(flagged, "{fault}: doctor did not flag {check:?}: {d}");
        // Clearing the fault makes the path whole again.
        let o = Command::new(env!("CARGO_BIN_EXE_podnet"))
            .args(["lab", "--name", &lab.0, "fault", "clear"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{fault}: clear failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (ok, t) = lab.trace("p1a", "p2a");
        assert!(ok, "{fault}: still broken after clear: {t}");
    }
}

#[test]
fn faults_on_the_destination_node_are_named_there() {
    let cases = [
        ("missing-route", "route"),
        ("misrouted", "route"),
        ("missing-fdb", "fdb"),
        ("missing-neigh", "neigh"),
        ("forwarding-off", "forwarding"),
        ("vxlan-down", "link"),
    ];
    for (fault, what) in cases {
        let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1"]);
        let o = Command::new(env!("CARGO_BIN_EXE_podnet"))
            .args([
                "lab", "--name", &lab.0, "fault", "inject", fault, "--node", "node2", "--pod",
                "p2a",
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{fault}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (ok, t) = lab.trace("p1a", "p2a");
        assert!(!ok, "{fault} on node2: trace must exit non-zero");
        let h = &t["broken_hop"];
        assert_eq!(
            (h["where"].as_str(), h["what"].as_str()),
            (Some("dst-node"), Some(what)),
            "{fault} on node2: wrong hop: {h}"
        );
        let port = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["where"] == "underlay" && h["what"] == "port")
            .cloned();
        assert!(
            port.is_some_and(|p| p["status"] != "broken"),
            "{fault} on node2 must not be blamed on the port: {t}"
        );
    }
}

#[test]
fn a_device_with_the_wrong_values_is_named() {
    // Up and present, but not as its agent made it: trace and doctor compare values.
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1"]);
    let ns = format!("{}-node1", lab.0);
    let o = Command::new("ip")
        .args(["-n", &ns, "link", "set", "podnet.vxlan", "mtu", "1400"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ok, t) = lab.trace("p1a", "p2a");
    assert!(!ok, "{t}");
    let h = &t["broken_hop"];
    assert_eq!(
        (h["where"].as_str(), h["what"].as_str()),
        (Some("src-node"), Some("link")),
        "{h}"
    );
    assert!(h["detail"].as_str().unwrap().contains("MTU 1400"), "{h}");
    let (ok, d) = lab.doctor();
    assert!(!ok, "{d}");
    assert!(
        d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "vxlan"
                && f["status"] == "broken"
                && f["detail"].as_str().unwrap().contains("MTU 1400")),
        "{d}"
    );
}

#[test]
fn wireguard_paths_and_faults_are_named_by_trace_and_doctor() {
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--backend",
        "wireguard",
    ]);
    // The first trace's probes make the first handshake; agents read their device
    // every second: a later trace reports its age.
    let mut t = Value::Null;
    for _ in 0..50 {
        let (ok, v) = lab.trace("p1a", "p2a");
        assert!(ok, "{v}");
        t = v;
        if !t.to_string().contains("handshake never") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let hops = t["hops"].as_array().unwrap();
    let hop = |w: &str, what: &str| {
        hops.iter()
            .find(|h| h["where"] == w && h["what"] == what)
            .unwrap_or_else(|| panic!("no hop {w}/{what}: {t}"))
    };
    // Both ends' devices and peers, the latest handshake's age, the port probed.
    assert!(hop("src-node", "wireguard")["detail"]
        .as_str()
        .unwrap()
        .contains("podnet.wg"));
    for w in ["src-node", "dst-node"] {
        let d = hop(w, "wireguard-peer")["detail"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(d.contains("latest handshake"), "{d}");
        assert!(
            !d.contains("handshake never"),
            "traffic made a handshake: {d}"
        );
    }
    assert!(hop("underlay", "port")["detail"]
        .as_str()
        .unwrap()
        .contains("WireGuard (UDP 51820)"));
    assert!(!hops
        .iter()
        .any(|h| h["what"] == "fdb" || h["what"] == "neigh" && h["where"] == "src-node"));
    let (ok, d) = lab.doctor();
    assert!(ok && d["broken"] == 0, "{d}");

    // (fault, node, where, what, a doctor check that must be broken)
    let cases = [
        (
            "wireguard-port-blocked",
            "node1",
            "underlay",
            "port",
            "wireguard port to node2",
        ),
        // node2's record publishes a key node2's device does not hold: node1 holds it
        // for node2 and the handshake fails.
        (
            "wireguard-wrong-key",
            "node2",
            "src-node",
            "wireguard-peer",
            "wireguard peer node2",
        ),
        // node1's record: node2 holds the wrong key for node1, the way back breaks.
        (
            "wireguard-wrong-key",
            "node1",
            "dst-node",
            "wireguard-peer",
            "wireguard peer node1",
        ),
        (
            "missing-route",
            "node1",
            "src-node",
            "route",
            "route to node2",
        ),
    ];
    for (fault, node, where_, what, check) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_podnet"))
            .args([
                "lab", "--name", &lab.0, "fault", "inject", fault, "--node", node,
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{fault}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // A record changed in the datastore reaches the agents within a second or so.
        let mut last = Value::Null;
        let named = (0..60).any(|_| {
            let (ok, t) = lab.trace("p1a", "p2a");
            let h = &t["broken_hop"];
            let hit = !ok && h["where"] == where_ && h["what"] == what;
            last = t;
            if !hit {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            hit
        });
        assert!(
            named,
            "{fault} on {node}: not named at {where_}/{what}: {last}"
        );
        let (ok, d) = lab.doctor();
        assert!(!ok, "{fault}: doctor must fail: {d}");
        assert!(
            d["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["status"] == "broken" && f["check"] == check),
            "{fault}: doctor did not flag {check:?}: {d}"
        );
        let o = Command::new(env!("CARGO_BIN_EXE_podnet"))
            .args(["lab", "--name", &lab.0, "fault", "clear"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let healed = (0..100).any(|_| {
            let ok = lab.trace("p1a", "p2a").0;
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            ok
        });
        assert!(healed, "{fault}: still broken 10 s after clear");
    }
}

/// Runs `ip ARGS` (tests only use it to break a lab on purpose).
fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Lab {
    /// A pod's address and MAC, as the lab's state records them.
    fn pod(&self, name: &str) -> (String, String) {
        let (ok, st) = podnet(&["lab", "--name", &self.0, "status", "--output", "json"]);
        assert!(ok, "lab status: {st}");
        let p = st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no pod {name}: {st}"))
            .clone();
        (
            p["ip"].as_str().unwrap().to_string(),
            p["mac"].as_str().unwrap().to_string(),
        )
    }
    /// The namespace of a lab node or pod.
    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.0)
    }
    /// The gateway of a pod's default route.
    fn gateway(&self, pod: &str) -> String {
        let r = ip(&["-n", &self.ns(pod), "route", "show", "default"]);
        r.split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .unwrap_or_else(|| panic!("no default route in {pod}: {r}"))
            .to_string()
    }
    /// The host veth of the pod with address `pod_ip` on `node`: the link whose MAC is
    /// 0a:5a + the pod's address.
    fn host_veth(&self, node: &str, pod_ip: &str) -> String {
        let o: Vec<u8> = pod_ip.split('.').map(|x| x.parse().unwrap()).collect();
        let mac = format!("0a:5a:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        let links = ip(&["-n", &self.ns(node), "-o", "link", "show"]);
        links
            .lines()
            .find(|l| l.contains(&mac))
            .and_then(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no host veth with {mac} on {node}: {links}"))
    }
}

/// A doctor finding that is broken, whose check is `check` and whose detail holds
/// every one of `words`.
fn doctor_flags(d: &Value, check: &str, words: &[&str]) -> bool {
    d["findings"].as_array().unwrap().iter().any(|f| {
        f["status"] == "broken"
            && f["check"] == check
            && words
                .iter()
                .all(|w| f["detail"].as_str().unwrap_or("").contains(w))
    })
}

fn broken_hop(t: &Value) -> (&str, &str, &str) {
    let h = &t["broken_hop"];
    (
        h["where"].as_str().unwrap_or(""),
        h["what"].as_str().unwrap_or(""),
        h["detail"].as_str().unwrap_or(""),
    )
}

#[test]
fn a_poisoned_gateway_entry_in_the_pod_is_named_with_the_owner_of_its_mac() {
    // The lesson's ARP attack as the victim sees it: p1a's entry for its gateway holds
    // p1b's MAC, so everything p1a sends off-node goes to p1b.
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "2"]);
    let (p1a_ip, _) = lab.pod("p1a");
    let (_, p1b_mac) = lab.pod("p1b");
    let gw = lab.gateway("p1a");
    let (ok, t) = lab.trace("p1a", "p2a");
    assert!(ok, "healthy before the poison: {t}");
    ip(&[
        "-n",
        &lab.ns("p1a"),
        "neigh",
        "replace",
        &gw,
        "lladdr",
        &p1b_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let (ok, t) = lab.trace("p1a", "p2a");
    assert!(!ok, "a poisoned gateway entry must break the trace: {t}");
    let (w, what, detail) = broken_hop(&t);
    assert_eq!((w, what), ("src-pod", "neigh"), "{t}");
    for word in [p1b_mac.as_str(), "pod p1b", "poisoned", &gw] {
        assert!(detail.contains(word), "{word:?} not in {detail:?}");
    }
    let h = &t["broken_hop"];
    let cmd = h["cmd"].as_str().unwrap();
    assert!(
        cmd.contains(&format!("neigh show {gw}")) && cmd.contains(&lab.ns("p1a")),
        "{h}"
    );
    let fix = h["fix"].as_str().unwrap();
    assert!(fix.contains(&format!("neigh del {gw}")), "{h}");
    assert!(fix.contains("anti-spoofing"), "{h}");
    // Doctor sees it too, on p1a's node.
    let (ok, d) = lab.doctor();
    assert!(!ok, "{d}");
    assert!(
        doctor_flags(
            &d,
            &format!("pod {p1a_ip} gateway neighbour"),
            &[&p1b_mac, "pod p1b", "poisoned"]
        ),
        "{d}"
    );
}

#[test]
fn a_poisoned_node_entry_for_a_pod_is_named_with_the_owner_of_its_mac() {
    // The lesson's attack as it lands: node1's ARP cache says p1b is at p1a's MAC, so
    // traffic routed to p1b (from other nodes, from the node) goes to p1a.
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "2"]);
    let (p1a_ip, p1a_mac) = lab.pod("p1a");
    let (p1b_ip, p1b_mac) = lab.pod("p1b");
    let (ok, t) = lab.trace("p2a", "p1b");
    assert!(ok, "healthy before the poison: {t}");
    ip(&[
        "-n",
        &lab.ns("node1"),
        "neigh",
        "replace",
        &p1b_ip,
        "lladdr",
        &p1a_mac,
        "dev",
        "podnet0",
        "nud",
        "permanent",
    ]);
    let (ok, t) = lab.trace("p2a", "p1b");
    assert!(
        !ok,
        "a poisoned entry for the destination must break the trace: {t}"
    );
    let (w, what, detail) = broken_hop(&t);
    assert_eq!((w, what), ("dst-node", "neigh"), "{t}");
    for word in [p1a_mac.as_str(), p1b_mac.as_str(), "pod p1a", "poisoned"] {
        assert!(detail.contains(word), "{word:?} not in {detail:?}");
    }
    let h = &t["broken_hop"];
    assert!(
        h["cmd"]
            .as_str()
            .unwrap()
            .contains(&format!("neigh show {p1b_ip}")),
        "{h}"
    );
    assert!(
        h["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("neigh del {p1b_ip} dev podnet0")),
        "{h}"
    );
    let (ok, d) = lab.doctor();
    assert!(!ok, "{d}");
    assert!(
        doctor_flags(
            &d,
            &format!("pod {p1b_ip} neighbour"),
            &[&p1a_mac, "pod p1a", "poisoned"]
        ),
        "{d}"
    );
    // p1a's own entry is not touched.
    assert!(
        !doctor_flags(&d, &format!("pod {p1a_ip} neighbour"), &[]),
        "{d}"
    );
}

#[test]
fn a_bridge_down_on_the_destination_node_is_named_as_the_bridge() {
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1"]);
    let (ok, t) = lab.trace("p1a", "p2a");
    assert!(ok, "healthy first: {t}");
    ip(&["-n", &lab.ns("node2"), "link", "set", "podnet0", "down"]);
    let (ok, t) = lab.trace("p1a", "p2a");
    assert!(!ok, "{t}");
    let (w, what, detail) = broken_hop(&t);
    assert_eq!((w, what), ("dst-node", "bridge"), "{t}");
    assert!(
        detail.contains("bridge podnet0 on node2 is down"),
        "{detail:?}"
    );
    assert!(
        t["broken_hop"]["fix"]
            .as_str()
            .unwrap()
            .contains("ip link set podnet0 up"),
        "{t}"
    );
    // The route the kernel took away with the bridge is not what the trace blames.
    assert!(
        !t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["what"] == "route" && h["status"] == "broken"),
        "{t}"
    );
    let (ok, d) = lab.doctor();
    assert!(!ok, "{d}");
    assert!(
        d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["node"] == "node2"
                && f["check"] == "bridge"
                && f["status"] == "broken"
                && f["detail"]
                    .as_str()
                    .unwrap()
                    .contains("bridge podnet0 on node2 is down")),
        "{d}"
    );
}

#[test]
fn a_host_veth_down_on_the_destination_node_is_named_as_itself() {
    host_veth_down_named(&["--datapath", "bridge"]);
}

/// On the fast path (the default) the packet is redirected into the pod past the
/// node's neighbour table: no FAILED entry follows, and the veth is still the hop.
#[test]
fn a_host_veth_down_on_the_fast_path_is_named_as_itself() {
    host_veth_down_named(&[]);
}

fn host_veth_down_named(args: &[&str]) {
    let lab = Lab::up(&[&["--nodes", "2", "--pods-per-node", "1"], args].concat());
    let bridge = !args.is_empty();
    let (p2a_ip, _) = lab.pod("p2a");
    let veth = lab.host_veth("node2", &p2a_ip);
    let (ok, t) = lab.trace("p1a", "p2a");
    assert!(ok, "healthy first: {t}");
    ip(&["-n", &lab.ns("node2"), "link", "set", &veth, "down"]);
    // Traffic to p2a after the veth went down: node2 cannot resolve p2a any more, its
    // neighbour entry ends FAILED. That is a consequence; the veth is the cause.
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("p1a"),
            "timeout",
            "2",
            "bash",
            "-c",
        ])
        .arg(format!("echo > /dev/tcp/{p2a_ip}/7777"))
        .output()
        .expect("run ip netns exec");
    assert!(
        !o.status.success(),
        "p1a reached p2a with its host veth down"
    );
    let failed = !bridge
        || (0..100).any(|_| {
            let n = ip(&["-n", &lab.ns("node2"), "neigh", "show", &p2a_ip]);
            if n.contains("FAILED") {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        });
    assert!(failed, "node2's entry for p2a never failed");
    let (ok, t) = lab.trace("p1a", "p2a");
    assert!(!ok, "{t}");
    let (w, what, detail) = broken_hop(&t);
    assert_eq!((w, what), ("dst-node", "link"), "{t}");
    assert!(
        detail.contains(&format!("host veth {veth} of pod p2a on node2 is down")),
        "{detail:?}"
    );
    assert!(
        t["broken_hop"]["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("ip link set {veth} up")),
        "{t}"
    );
}
