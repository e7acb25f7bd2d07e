//! The WireGuard backend in a lab: a full mesh without NAT, nothing but WireGuard on
//! the wire (no pod address, no payload), keys kept on the nodes, tunnels that
//! outlive a killed agent, key rotation under traffic, bad keys in the datastore
//! skipped, and its faults named by trace and doctor.

use crate::common::{podnet, wait_until, TestLab};
use podnet_lab::scratch::unique;
use podnet_lab::traffic::probe::{self, Capture};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn wg_lab(nodes: &str) -> TestLab {
    TestLab::up(&[
        "--nodes",
        nodes,
        "--pods-per-node",
        "1",
        "--backend",
        "wireguard",
    ])
}

fn ip_of(st: &Value, pod: &str) -> Ipv4Addr {
    st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap_or_else(|| panic!("no pod {pod}: {st}"))["ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `podnet wireguard …` against the lab, as JSON.
fn wg(lab: &TestLab, args: &[&str]) -> (bool, Value) {
    let o = podnet()
        .arg("wireguard")
        .args(args)
        .args(["--lab", &lab.name, "--output", "json"])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "wireguard {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), v)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn three_nodes_over_wireguard_show_nothing_but_wireguard_on_the_wire() {
    let lab = wg_lab("3");
    let c = lab.full_mesh();
    assert_eq!(c["total"], 6);
    let st = lab.json(&["status", "--output", "json"]);
    let (src, dst) = (ip_of(&st, "p1a"), ip_of(&st, "p2a"));

    // Pod MTU: the underlay's 1500 less WireGuard's 60.
    let link = lab.sh("p1a", &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1440 "), "{link}");
    // A full-size packet crosses with DF set; one byte more does not leave the pod.
    use podnet_api::{probe::ping, Echo};
    let p1a = lab.ns("p1a");
    let echo = |size: usize| {
        p1a.run(move || ping(dst, size, Duration::from_secs(2)))
            .unwrap()
    };
    assert_eq!(
        echo(1440 - 28),
        Echo::Reply,
        "a 1440-byte packet must cross"
    );
    assert_eq!(
        echo(1441 - 28),
        Echo::TooBig,
        "1441 bytes must not leave with DF"
    );

    // Each node: its WireGuard device, a peer per other node, keys only on the node.
    let (ok, w) = wg(&lab, &["status"]);
    assert!(ok, "{w}");
    // What the agents say of the kernel is what the kernel says (`ip link add … type
    // wireguard`, in a node's namespace).
    let kernel = lab
        .ns("node1")
        .run(|| {
            let mut s = podnet_netlink::Socket::route().unwrap();
            podnet_netlink::link::kind_supported(&mut s, "pnwgtest", "wireguard").unwrap()
        })
        .unwrap();
    let datastore = format!("/run/podnet/lab/{}/datastore", lab.name);
    let mut published = Vec::new();
    for n in w.as_array().unwrap() {
        let dev = &n["wireguard"];
        assert_eq!(dev["device"], "podnet.wg", "{n}");
        assert!(dev["implementation"]
            .as_str()
            .unwrap()
            .contains("userspace"));
        assert_eq!(dev["kernel_has_wireguard"], kernel, "{n}");
        assert_eq!(dev["public_key"], dev["device_public_key"], "{n}");
        assert_eq!(dev["peers"].as_array().unwrap().len(), 2, "{n}");
        published.push(dev["public_key"].as_str().unwrap().to_string());
        let node = n["node"].as_str().unwrap();
        let key = format!("/run/podnet/lab/{}/{node}/wireguard.key", lab.name);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
        let private = std::fs::read_to_string(&key).unwrap();
        for e in std::fs::read_dir(format!("{datastore}/nodes"))
            .unwrap()
            .flatten()
        {
            let rec = std::fs::read_to_string(e.path()).unwrap();
            assert!(
                !rec.contains(private.trim()),
                "{node}'s private key in {rec}"
            );
        }
        // The record publishes the public key and port.
        let rec: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{datastore}/nodes/{node}.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["wireguard"]["public_key"], dev["public_key"], "{rec}");
        assert_eq!(rec["wireguard"]["port"], 51820, "{rec}");
        assert_eq!(rec["backend"], "wireguard", "{rec}");
    }
    published.sort();
    published.dedup();
    assert_eq!(published.len(), 3, "every node its own key");

    // On the physical network, while p1a sends a known payload to p2a: only UDP to or
    // from the WireGuard port between node addresses; neither the pods' addresses nor
    // the payload anywhere in any frame.
    let marker = unique("wire-secret");
    let cap = Capture::open(&lab.ns("fabric"), "node1").unwrap();
    let reply = probe::tcp_request(
        &lab.ns("p1a"),
        SocketAddrV4::new(dst, 7777),
        &marker,
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(reply, format!("from={src} {marker}"));
    let frames = cap.frames(Duration::from_millis(300));
    let nodes: Vec<[u8; 4]> = (10..13).map(|i| [192, 168, 1, i]).collect();
    let mut wireguard = 0;
    for f in &frames {
        assert!(
            !contains(f, marker.as_bytes()),
            "the payload is on the wire in clear"
        );
        for pod in [src, dst] {
            assert!(
                !contains(f, &pod.octets()),
                "pod address {pod} on the wire: {f:02x?}"
            );
        }
        match (f.len() >= 14 + 20 + 8, f.get(12..14)) {
            (true, Some([8, 0])) => {
                let (proto, s, d) = (f[23], &f[26..30], &f[30..34]);
                // Multicast group membership reports (IGMP to 224.0.0.0/24): link
                // control of the switch and the nodes, nothing of the pods.
                if proto == 2 && d[..3] == [224, 0, 0] {
                    continue;
                }
                let (sport, dport) = (
                    u16::from_be_bytes([f[34], f[35]]),
                    u16::from_be_bytes([f[36], f[37]]),
                );
                assert_eq!(proto, 17, "IPv4 frame that is not UDP: {f:02x?}");
                assert!(
                    nodes.iter().any(|n| n == s) && nodes.iter().any(|n| n == d),
                    "UDP not between node addresses: {f:02x?}"
                );
                assert!(
                    sport == 51820 || dport == 51820,
                    "UDP {sport} -> {dport} is not WireGuard"
                );
                wireguard += 1;
            }
            // Address resolution between the nodes' own addresses, and the nodes'
            // IPv6 link-local chatter: neither carries anything of the pods (checked
            // above for every frame).
            (_, Some([8, 6])) | (_, Some([0x86, 0xdd])) => {}
            _ => panic!("unexpected frame on the fabric: {f:02x?}"),
        }
    }
    assert!(
        wireguard >= 2,
        "no WireGuard traffic among {} frames",
        frames.len()
    );
}

#[test]
fn tunnels_outlive_a_killed_agent_and_a_rotation_keeps_the_mesh() {
    let lab = wg_lab("3");
    lab.full_mesh();
    let st = lab.json(&["status", "--output", "json"]);
    let agent = st["nodes"][0]["agent_pid"].as_i64().unwrap() as i32;
    let pid_file = format!("/run/podnet/lab/{}/pids/node1-wireguard.pid", lab.name);
    let device = std::fs::read_to_string(&pid_file).unwrap();
    // SAFETY: killing the lab's own agent process.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGKILL) }, 0);
    wait_until("node1's agent is gone", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{agent}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true)
    });
    // Without its agent node1 still carries every tunnel.
    let m = lab.full_mesh();
    assert_eq!(m["reachable"], 6, "{m}");
    let dev_pid = device.trim();
    assert!(
        std::path::Path::new(&format!("/proc/{dev_pid}")).exists(),
        "the device process died with the agent"
    );
    // The agent comes back and adopts the running device.
    let o = lab.run(&["up", "--nodes", "3", "--pods-per-node", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(
        "node1's agent reports its device",
        Duration::from_secs(10),
        || wg(&lab, &["status"]).1[0]["wireguard"]["pid"].as_i64() == dev_pid.parse::<i64>().ok(),
    );
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), device);

    // Re-key node2 while pods on node1 and node3 ping a pod on node2.
    let (_, before) = wg(&lab, &["status"]);
    let old = before[1]["wireguard"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, r) = wg(&lab, &["rotate", "--node", "node2"]);
    assert!(ok, "{r}");
    assert_eq!(r["public_key_before"], old.as_str());
    assert_ne!(r["public_key"], old.as_str());
    let traffic = r["traffic"].as_array().unwrap();
    assert_eq!(traffic.len(), 2, "{r}");
    for f in traffic {
        let (sent, received) = (f["sent"].as_u64().unwrap(), f["received"].as_u64().unwrap());
        assert!(sent >= 100, "{f}");
        // The flow recovered: most echoes, and the last second's, came back.
        assert!(received * 2 > sent, "{f}");
        assert!(f["longest_gap_ms"].as_u64().unwrap() < 1000, "{f}");
        eprintln!("rotation loss: {f}");
    }
    // Every node holds node2's new key; the key file has it; the mesh holds.
    let (_, after) = wg(&lab, &["status"]);
    for n in [0, 2] {
        assert!(
            after[n]["wireguard"]["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["public_key"] == r["public_key"]),
            "{after}"
        );
    }
    assert_eq!(after[1]["wireguard"]["device_public_key"], r["public_key"]);
    lab.full_mesh();
}

#[test]
fn malformed_and_duplicate_keys_are_skipped_without_harm() {
    let lab = wg_lab("2");
    let nodes = format!("/run/podnet/lab/{}/datastore/nodes", lab.name);
    let (_, w) = wg(&lab, &["status"]);
    let key2 = w[1]["wireguard"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rec = |name: &str, cidr: &str, ip: &str, key: &str| {
        serde_json::json!({
            "name": name, "pod_cidr": cidr, "underlay_ip": ip, "vtep_mac": "",
            "backend": "wireguard", "wireguard": {"public_key": key, "port": 51820},
            "renewed": now, "ttl_secs": 600,
        })
    };
    std::fs::write(
        format!("{nodes}/node8.json"),
        rec("node8", "10.244.8.0/24", "192.168.1.98", "bm90IGEga2V5").to_string(),
    )
    .unwrap();
    std::fs::write(
        format!("{nodes}/node9.json"),
        rec("node9", "10.244.9.0/24", "192.168.1.99", &key2).to_string(),
    )
    .unwrap();
    let log = format!("/run/podnet/lab/{}/node1/podnetd.log", lab.name);
    wait_until("node1 logs both records", Duration::from_secs(10), || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("ignoring peer node8: its WireGuard public key")
            && l.contains("ignoring peer node9: its WireGuard public key")
    });
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(l.contains("is malformed"), "{l}");
    assert!(l.contains("is also node2's"), "{l}");
    // node1's device holds node2 only, and the mesh holds.
    let (_, w) = wg(&lab, &["status"]);
    let peers = w[0]["wireguard"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{w}");
    assert_eq!(peers[0]["public_key"], key2.as_str());
    lab.full_mesh();
}
