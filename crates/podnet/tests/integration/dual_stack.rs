//! Dual-stack pods from podnet-cni alone (no agent): one address of each family from
//! the configured `subnets`, both in the result, the pod and IPAM; IPv6 between pods
//! of a node and to the node; and a pod that forges another's IPv6 address, or
//! advertises it, is dropped and counted.

use crate::common::*;
use podnet_cni::antispoof;
use podnet_lab::traffic::probe::{self, Capture};
use podnet_netlink::{link, parse_mac, Netns};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

const V6_NET: &str = "fd00:209::/64";

struct Pod {
    ns: podnet_lab::scratch::ScratchNs,
    ip6: Ipv6Addr,
    mac: [u8; 6],
    host_veth: String,
    result: Value,
}

fn dual_node() -> Node {
    let mut node = Node::new("10.209.0.0/24");
    let c = node.conf.as_object_mut().unwrap();
    c.remove("subnet");
    c.insert("subnets".into(), json!(["10.209.0.0/24", V6_NET]));
    node
}

fn add(node: &Node, cid: &str) -> Pod {
    let ns = node.pod();
    let r = node.add(cid, &ns);
    let ip6 = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| a.contains(':'))
        .and_then(|a| a.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 address in {r}"));
    Pod {
        ip6,
        mac: parse_mac(r["interfaces"][2]["mac"].as_str().unwrap()).unwrap(),
        host_veth: r["interfaces"][1]["name"].as_str().unwrap().to_string(),
        result: r,
        ns,
    }
}

/// One TCP exchange over IPv6 from `from` to a listener on `to`: the source the
/// listener saw, or the error.
pub(crate) fn tcp6(
    from: &Netns,
    to: &Netns,
    addr: Ipv6Addr,
    port: u16,
) -> Result<Ipv6Addr, String> {
    match tcp(from, to, addr.into(), port)? {
        std::net::IpAddr::V6(a) => Ok(a),
        other => Err(format!("the listener saw {other}, not an IPv6 peer")),
    }
}

/// One TCP exchange from `from` to a listener on `to` at `addr` (either family): the
/// source the listener saw, or the error.
pub(crate) fn tcp(
    from: &Netns,
    to: &Netns,
    addr: std::net::IpAddr,
    port: u16,
) -> Result<std::net::IpAddr, String> {
    let at = std::net::SocketAddr::new(addr, port);
    let l = to
        .run(|| TcpListener::bind(at))
        .unwrap()
        .map_err(|e| format!("bind {at}: {e}"))?;
    let server = std::thread::spawn(move || -> Option<std::net::IpAddr> {
        let (mut c, peer) = l.accept().ok()?;
        c.write_all(b"ok").ok()?;
        Some(peer.ip())
    });
    let client = from
        .run(|| {
            let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            Ok::<_, std::io::Error>(b)
        })
        .unwrap();
    match client {
        Ok(b) if &b == b"ok" => server
            .join()
            .unwrap()
            .ok_or_else(|| "the listener saw no peer".to_string()),
        Ok(b) => Err(format!("unexpected answer {b:?}")),
        Err(e) => {
            // Unblock the listener so its thread ends.
            let _ = to.run(|| TcpStream::connect(at));
            let _ = server.join();
            Err(format!("connect to {at}: {e}"))
        }
    }
}

#[test]
fn dual_stack_pods_get_both_families_and_cannot_forge_ipv6() {
    let node = dual_node();
    let a = add(&node, "dual-a");
    let b = add(&node, "dual-b");
    let attacker = add(&node, "dual-attacker");
    let gw6: Ipv6Addr = "fd00:209::1".parse().unwrap();

    // The result: both addresses on the pod's interface, each with its gateway, and a
    // default route of each family.
    let ips = a.result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{}", a.result);
    assert_eq!(ips[0]["gateway"], "10.209.0.1");
    assert_eq!(ips[1]["address"], format!("{}/64", a.ip6));
    assert_eq!(ips[1]["gateway"], gw6.to_string());
    assert!(ips.iter().all(|i| i["interface"] == 2), "{}", a.result);
    let routes = a.result["routes"].as_array().unwrap();
    assert!(
        routes.contains(&json!({"dst": "::/0", "gw": gw6.to_string()})),
        "{}",
        a.result
    );
    assert_ne!(a.ip6, b.ip6);

    // In the pod: the global address, no link-local one, the default route; on the
    // node: the gateway on the bridge.
    let pod_addrs = ip_out(&["-n", &a.ns.name, "-6", "addr", "show", "dev", "eth0"]);
    assert!(pod_addrs.contains(&format!("{}/64", a.ip6)), "{pod_addrs}");
    assert!(!pod_addrs.contains("fe80"), "{pod_addrs}");
    assert!(
        !pod_addrs.contains("tentative"),
        "usable at once: {pod_addrs}"
    );
    let pod_routes = ip_out(&["-n", &a.ns.name, "-6", "route", "show"]);
    assert!(
        pod_routes.contains(&format!("default via {gw6} dev eth0")),
        "{pod_routes}"
    );
    let br = ip_out(&["-n", &node.ns.name, "-6", "addr", "show", "dev", "podnet0"]);
    assert!(br.contains(&format!("{gw6}/64")), "{br}");

    // IPv6 between pods without NAT, and from the node.
    assert_eq!(tcp6(&a.ns.ns, &b.ns.ns, b.ip6, 7000), Ok(a.ip6));
    assert_eq!(tcp6(&node.ns.ns, &a.ns.ns, a.ip6, 7001), Ok(gw6));

    // CHECK agrees with what ADD made, and notices a missing IPv6 address.
    let mut conf = node.conf.clone();
    conf["prevResult"] = a.result.clone();
    let pod_path = a.ns.path().display().to_string();
    let o = node.call_with(&conf, "CHECK", "dual-a", &pod_path, "eth0");
    assert!(o.ok(), "CHECK: {} {}", o.stdout, o.stderr);

    // The attacker forges b's IPv6 source towards a; the same frame from its own
    // source (the control) arrives, so the frame itself is good.
    let udp =
        a.ns.ns
            .run(|| UdpSocket::bind(SocketAddrV6::new(a.ip6, 9999, 0, 0)))
            .unwrap()
            .unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let to_a = SocketAddrV6::new(a.ip6, 9999, 0, 0);
    let frame = |src: Ipv6Addr, payload: &[u8]| {
        probe::udp6_frame(
            a.mac,
            attacker.mac,
            SocketAddrV6::new(src, 5555, 0, 0),
            to_a,
            payload,
        )
    };
    probe::send_frame(&attacker.ns.ns, "eth0", &frame(b.ip6, b"forged")).unwrap();
    probe::send_frame(&attacker.ns.ns, "eth0", &frame(attacker.ip6, b"control")).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = udp.recv_from(&mut buf).expect("the control datagram");
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"control"[..], std::net::IpAddr::V6(attacker.ip6)),
        "the forged datagram must not arrive (it was sent first)"
    );

    // The attacker advertises b's address as its own, to a that knows b.
    assert_eq!(tcp6(&a.ns.ns, &b.ns.ns, b.ip6, 7002), Ok(a.ip6));
    let seen = Capture::open(&a.ns.ns, "eth0").unwrap();
    probe::send_frame(
        &attacker.ns.ns,
        "eth0",
        &probe::na6_frame(
            a.mac,
            attacker.mac,
            attacker.ip6,
            a.ip6,
            b.ip6,
            attacker.mac,
        ),
    )
    .unwrap();
    probe::send_frame(
        &attacker.ns.ns,
        "eth0",
        &probe::na6_frame(a.mac, attacker.mac, b.ip6, a.ip6, b.ip6, attacker.mac),
    )
    .unwrap();
    let na_seen = seen
        .frames(Duration::from_millis(500))
        .iter()
        .filter(|f| {
            f.len() > 54 && f[12..14] == [0x86, 0xdd] && f[54] == 136 && f[6..12] == attacker.mac
        })
        .count();
    assert_eq!(na_seen, 0, "a forged advertisement reached the pod");
    // a still reaches the real b.
    assert_eq!(tcp6(&a.ns.ns, &b.ns.ns, b.ip6, 7003), Ok(a.ip6));

    // Counted at the attacker's veth, under their reasons.
    let mut s = node.sock();
    let l = link::get_by_name(&mut s, &attacker.host_veth)
        .unwrap()
        .unwrap();
    let st = antispoof::pod_state(&mut s, l.index)
        .unwrap()
        .expect("entry");
    assert_eq!(st.ip6, Some(attacker.ip6));
    let counts: std::collections::HashMap<_, _> = st.drops.into_iter().collect();
    assert_eq!(counts["ipv6-src"], 2, "{counts:?}");
    assert_eq!(counts["ipv6-na"], 1, "{counts:?}");
    // And told, with the forged IPv6 addresses and ports (what `podnet observe` shows).
    let prog = antispoof::installed_prog(&mut s, l.index).unwrap().unwrap();
    let ring = podnet_netlink::antispoof::events_map(prog)
        .unwrap()
        .expect("a drop-event ring");
    let events = node
        .ns
        .ns
        .run(|| podnet_agent::observe::drain_spoof_events(ring))
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let mine: Vec<_> = events.iter().filter(|e| e.ifindex == l.index).collect();
    assert!(
        mine.iter().any(
            |e| podnet_netlink::antispoof::reason_id(e.reason) == "ipv6-src"
                && e.saddr == std::net::IpAddr::V6(b.ip6)
                && e.daddr == std::net::IpAddr::V6(a.ip6)
                && (e.proto, e.sport, e.dport) == (17, 5555, 9999)
        ),
        "{mine:?}"
    );
    assert!(
        mine.iter().any(
            |e| podnet_netlink::antispoof::reason_id(e.reason) == "ipv6-na"
                && e.saddr == std::net::IpAddr::V6(attacker.ip6)
                && e.proto == 58
        ),
        "{mine:?}"
    );

    // CHECK names a missing IPv6 address.
    ip(&[
        "-n",
        &a.ns.name,
        "-6",
        "addr",
        "del",
        &format!("{}/64", a.ip6),
        "dev",
        "eth0",
    ]);
    let o = node.call_with(&conf, "CHECK", "dual-a", &pod_path, "eth0");
    assert!(!o.ok());
    assert!(
        o.stdout
            .contains(&format!("eth0 lacks address {}/64", a.ip6)),
        "{}",
        o.stdout
    );

    // DEL frees both families.
    for (cid, p) in [("dual-a", &a), ("dual-b", &b), ("dual-attacker", &attacker)] {
        node.del(cid, &p.ns);
    }
    let left = podnet_ipam::Store::open(node.dir.path(), "testnet")
        .unwrap()
        .list_all()
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A dual-stack ADD that fails after taking its addresses gives both back.
#[test]
fn a_failed_dual_stack_add_releases_both_addresses() {
    let mut node = dual_node();
    // A bridge name that exists as another kind of link: the ADD fails at the bridge,
    // after IPAM.
    ip(&[
        "-n",
        &node.ns.name,
        "link",
        "add",
        "pnnotbr",
        "type",
        "veth",
        "peer",
        "name",
        "pnnotbr1",
    ]);
    node.conf["bridge"] = "pnnotbr".into();
    let pod = node.pod();
    let o = node.call("ADD", "dual-fail", &pod);
    assert!(!o.ok(), "{}", o.stdout);
    assert!(
        o.stdout.contains("released 10.209.0.2 and fd00:209::2"),
        "{}",
        o.stdout
    );
    let left = podnet_ipam::Store::open(node.dir.path(), "testnet")
        .unwrap()
        .list_all()
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// `ip ARGS` whose output the test reads; its exit status is checked.
fn ip_out(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A dual-stack lab (podnetd with `--cluster-cidr 10.244.0.0/16,fd00:10:244::/56`):
/// every pod gets an IPv6 address from its node's /64, and pods reach each other over
/// IPv6 across nodes, through VXLAN, without NAT; each node routes the peer's /64 as
/// podnet's own route, through its VXLAN device.
#[test]
fn a_dual_stack_lab_carries_ipv6_between_nodes_without_nat() {
    let lab = dual_lab(2, 1, &["--datapath", "bridge", "--policy-datapath", "none"]);
    carries_ipv6_between_nodes_without_nat(&lab);
}

/// The same on the defaults (the eBPF fast path and policy datapath), where the
/// programs write and take off the VXLAN encapsulation of IPv6 themselves and the
/// underlay guard still runs first; then many IPv6 connections, on one node and across
/// nodes, cross neither the bridges nor the VXLAN devices.
#[test]
fn the_fast_path_carries_ipv6_past_the_bridge_and_the_vxlan_device() {
    let lab = dual_lab(2, 2, &[]);
    let st = lab.json(&["status", "--output", "json"]);
    let ip6 = |name: &str| lab_ip6(&st, name);
    let (a, b, c) = (ip6("p1a"), ip6("p1b"), ip6("p2a"));
    // The agents serve every pod by both addresses within a second; doctor checks
    // each node's fast path against its pods, IPv6 addresses included.
    wait_until(
        "doctor finds both nodes' fast paths serving every pod address",
        Duration::from_secs(10),
        || {
            let o = podnet()
                .args(["doctor", "--lab", &lab.name, "--output", "json"])
                .output()
                .unwrap();
            let d: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            d["findings"].as_array().is_some_and(|f| {
                f.iter()
                    .filter(|x| {
                        x["check"] == "fast path"
                            && x["status"] == "ok"
                            && x["detail"]
                                .as_str()
                                .is_some_and(|t| t.contains("2 by their IPv6"))
                    })
                    .count()
                    == 2
            })
        },
    );
    carries_ipv6_between_nodes_without_nat(&lab);
    let vx = podnet_conventions::VXLAN_DEV;
    let counts = || {
        ["node1", "node2"].map(|n| {
            (
                crate::fastpath::link_packets(&lab, n, "podnet0"),
                crate::fastpath::link_packets(&lab, n, vx),
            )
        })
    };
    let before = counts();
    for i in 0..20 {
        for (dst, ns) in [(b, "p1b"), (c, "p2a")] {
            assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns(ns), dst, 7200 + i), Ok(a));
        }
    }
    let after = counts();
    // 40 TCP exchanges are well over 200 packets on the bridge path; a few neighbour
    // solicitations may still cross the bridges.
    for (node, (b0, v0), (b1, v1)) in [
        ("node1", before[0], after[0]),
        ("node2", before[1], after[1]),
    ] {
        assert!(
            b1 - b0 <= 10 && v1 - v0 <= 10,
            "{node}: the bridge carried {} packets, the VXLAN device {}",
            b1 - b0,
            v1 - v0
        );
    }
}

/// A UDP socket in pod `from` bound to its address `a`, and one in pod `to` bound to
/// `[b]:port` whose reads time out after 300 ms: (sender, receiver).
fn udp6_pair(
    lab: &TestLab,
    (from, a): (&str, Ipv6Addr),
    (to, b): (&str, Ipv6Addr),
    port: u16,
) -> (UdpSocket, UdpSocket) {
    let bind = |ns: &str, addr: SocketAddrV6| {
        lab.ns(ns)
            .run(|| UdpSocket::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"))
    };
    let rx = bind(to, SocketAddrV6::new(b, port, 0, 0));
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    (bind(from, SocketAddrV6::new(a, 0, 0, 0)), rx)
}

fn carries_ipv6_between_nodes_without_nat(lab: &TestLab) {
    let st = lab.json(&["status", "--output", "json"]);
    let ip6 = |name: &str| lab_ip6(&st, name);
    let (a, b) = (ip6("p1a"), ip6("p2a"));
    let range: podnet_cni_spec::net::Ipv6Net = "fd00:10:244::/56".parse().unwrap();
    let net = |x: Ipv6Addr| podnet_cni_spec::net::Ipv6Net::truncating(x, 64);
    assert!(range.contains(a) && range.contains(b), "{a} {b}");
    assert_ne!(net(a), net(b), "each node has a /64 of its own");
    // Each agent reports its IPv6 pod CIDR, the /64 its pod's address came from.
    for (node, pod) in [("node1", a), ("node2", b)] {
        let n = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap();
        assert_eq!(n["pod_cidr6"], net(pod).to_string(), "{n}");
    }
    assert_eq!(st["ip_family"], "dual");
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7100), Ok(a));
    assert_eq!(tcp6(&lab.ns("p2a"), &lab.ns("p1a"), a, 7101), Ok(b));
    // The overlay ports are open towards another node's pod over IPv6 as over IPv4:
    // podnetd publishes the cluster's IPv6 range in the node file, podnet-cni puts it
    // in the pod's anti-spoofing entry.
    let (tx, rx) = udp6_pair(lab, ("p1a", a), ("p2a", b), 8472);
    let mut buf = [0u8; 16];
    wait_until(
        "p2a hears p1a's UDP to port 8472 over IPv6",
        Duration::from_secs(10),
        || {
            tx.send_to(b"pod-to-pod", SocketAddrV6::new(b, 8472, 0, 0))
                .unwrap();
            matches!(rx.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"pod-to-pod")
        },
    );
    // No duplicate address detection on the bridges: a bridge's link-local address
    // would stay tentative for a second or two after it is made, and the node's
    // neighbour solicitations for its pods come from it (pods' first IPv6 packets
    // through the node were lost meanwhile).
    for n in ["node1", "node2"] {
        let dad = lab.sh(n, &["cat", "/proc/sys/net/ipv6/conf/podnet0/accept_dad"]);
        assert_eq!(dad.trim(), "0", "{n}");
    }
    // A datagram larger than the pod MTU leaves p1a in fragments (IPv6 routers never
    // fragment): anti-spoofing checks a later fragment by its source, the policy and
    // the overlay carry them, p2a reassembles the whole datagram.
    let (tx, rx) = udp6_pair(lab, ("p1a", a), ("p2a", b), 7102);
    let big = vec![b'o'; 3000];
    let mut buf = vec![0u8; 4000];
    wait_until(
        "p2a receives p1a's 3000-byte datagram over IPv6",
        Duration::from_secs(10),
        || {
            tx.send_to(&big, SocketAddrV6::new(b, 7102, 0, 0)).unwrap();
            matches!(rx.recv_from(&mut buf), Ok((n, _)) if n == big.len())
        },
    );
    // node1's route to node2's pods, and its neighbour entry.
    let routes = lab.sh("node1", &["ip", "-6", "route", "show", "proto", "0x50"]);
    let want = format!("{} via {} dev podnet.vxlan", net(b), net(b).network());
    assert!(routes.contains(&want), "{want:?} not in {routes}");
    let neigh = lab.sh(
        "node1",
        &["ip", "-6", "neigh", "show", "dev", "podnet.vxlan"],
    );
    assert!(
        neigh.contains(&format!("{} lladdr", net(b).network())) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    // A peer node wraps IPv6 "from p2a" (node2's own pod) in VXLAN to node2: its
    // underlay guard refuses an inner source outside the sender's IPv6 pod CIDR. The
    // same datagram from p1a's address (node1's own range) passes: the control.
    let node = |name: &str| {
        let n = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap();
        let ip: std::net::Ipv4Addr = n["underlay_ip"].as_str().unwrap().parse().unwrap();
        (ip, parse_mac(n["vtep_mac"].as_str().unwrap()).unwrap())
    };
    let ((n1, vtep1), (n2, vtep2)) = (node("node1"), node("node2"));
    let seen = Capture::open(&lab.ns("p2a"), "eth0").unwrap();
    for (src, payload) in [(b, &b"forged"[..]), (a, &b"control"[..])] {
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vx.extend(probe::udp6_frame(
            vtep2,
            vtep1,
            SocketAddrV6::new(src, 31337, 0, 0),
            SocketAddrV6::new(b, 7777, 0, 0),
            payload,
        ));
        lab.ns("node1")
            .run(|| {
                let s = UdpSocket::bind((n1, 0)).expect("bind");
                s.send_to(&vx, (n2, 8472)).expect("send");
            })
            .unwrap();
    }
    let frames = seen.frames(Duration::from_millis(500));
    let from = |src: Ipv6Addr| {
        frames
            .iter()
            .filter(|f| f.len() > 62 && f[12..14] == [0x86, 0xdd] && f[22..38] == src.octets())
            .filter(|f| u16::from_be_bytes([f[54], f[55]]) == 31337)
            .count()
    };
    assert_eq!(
        from(a),
        1,
        "the control did not arrive: the check proves nothing"
    );
    assert_eq!(from(b), 0, "forged IPv6 inside VXLAN reached p2a");
    // The guard counted exactly that one, on node2; nothing else was refused. (An
    // agent reports its guard's counters as of its last round, a second at most.)
    let mut after = Value::Null;
    wait_until(
        "node2's guard reports its drop",
        Duration::from_secs(10),
        || {
            after = lab.json(&["status", "--output", "json"]);
            after["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "node2" && n["underlay_guard"]["drops"]["vxlan-inner"] != 0)
        },
    );
    for n in after["nodes"].as_array().unwrap() {
        let drops = &n["underlay_guard"]["drops"];
        for reason in ["vxlan-frame", "vxlan-inner"] {
            let count = drops[reason]
                .as_u64()
                .unwrap_or_else(|| panic!("no {reason} count: {n}"));
            let want = u64::from(n["name"] == "node2" && reason == "vxlan-inner");
            assert_eq!(count, want, "{}: {drops}", n["name"]);
        }
    }
}

/// A dual-stack podnetd on host-gw whose underlay has no global IPv6 address (only
/// link-local) refuses to start, naming the device and what to do, before it
/// registers or makes anything: its pods' IPv6 would have no next hop at its peers.
#[test]
fn dual_stack_host_gw_without_an_underlay_ipv6_address_is_refused() {
    require_root();
    let ns = podnet_lab::scratch::ScratchNs::new(podnet_lab::scratch::unique("hg6")).unwrap();
    let dir = podnet_lab::scratch::ScratchDir::new("hg6").unwrap();
    let sh = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(["-n", &ns.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    sh(&["addr", "add", "192.168.77.10/24", "dev", "eth0"]);
    sh(&["link", "set", "eth1", "up"]);
    sh(&["link", "set", "eth0", "up"]);
    let store = dir.path().join("datastore");
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_podnetd")])
        .args([
            "--node",
            "n1",
            "--underlay-dev",
            "eth0",
            "--backend",
            "host-gw",
        ])
        .args(["--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56"])
        .arg(format!("--datastore=file:{}", store.display()))
        .arg(format!(
            "--api-socket={}",
            dir.path().join("api.sock").display()
        ))
        .arg(format!(
            "--node-file={}",
            dir.path().join("node.json").display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("eth0")
            && err.contains("no global IPv6 address")
            && err.contains("ip -6 addr add"),
        "{err}"
    );
    // No lease was taken: the datastore holds no record of the node, though podnetd
    // opened it (the control: that is where a registration would be).
    assert!(store.exists(), "podnetd never opened the datastore");
    assert!(
        !store.join("nodes").join("n1.json").exists(),
        "it registered"
    );
}

/// A dual-stack lab on a real kube-apiserver, on host-gw: kube-controller-manager
/// gives each Node an IPv6 pod CIDR beside its IPv4 one (`spec.podCIDRs`), podnetd
/// reads it from there and publishes its underlay IPv6 address as an annotation
/// (checked against the Node's IPv6 InternalIP), pods' API status lists both
/// addresses, and IPv6 crosses between nodes via that address. Then a
/// NetworkPolicy applied with kubectl judges the pods' IPv6 addresses as the API lists
/// them (`status.podIPs`): an IPv6 ipBlock admits one pod and not the other.
#[test]
fn a_dual_stack_kubernetes_lab_takes_both_pod_cidrs_from_the_nodes() {
    let lab = dual_lab(
        2,
        1,
        &[
            "--kubernetes",
            "--backend",
            "host-gw",
            "--datapath",
            "bridge",
            "--policy-datapath",
            "nftables",
        ],
    );
    let nodes: Value =
        serde_json::from_str(&lab.kubectl(&["get", "nodes", "-o", "json"], None)).unwrap();
    let range: podnet_cni_spec::net::Ipv6Net = "fd00:10:244::/56".parse().unwrap();
    let mut c6s = vec![];
    for (i, n) in nodes["items"].as_array().unwrap().iter().enumerate() {
        let cidrs = n["spec"]["podCIDRs"].as_array().unwrap();
        assert_eq!(cidrs.len(), 2, "{}", n["spec"]);
        let c6: podnet_cni_spec::net::Ipv6Net = cidrs[1].as_str().unwrap().parse().unwrap();
        assert!(range.contains(c6.network()) && c6.prefix() == 64, "{c6}");
        assert_eq!(n["metadata"]["name"], format!("node{}", i + 1));
        assert_eq!(
            n["metadata"]["annotations"]["podnet.dev/underlay-ip6"],
            podnet_lab::underlay_ip6(i + 1).to_string(),
            "{}",
            n["metadata"]
        );
        c6s.push(c6);
    }
    let routes = lab.sh("node1", &["ip", "-6", "route", "show", "proto", "0x50"]);
    let want = format!("{} via {} dev eth0", c6s[1], podnet_lab::underlay_ip6(2));
    assert!(routes.contains(&want), "{want:?} not in {routes}");
    let st = lab.json(&["status", "--output", "json"]);
    let ip6 = |name: &str| lab_ip6(&st, name);
    let (a, b) = (ip6("p1a"), ip6("p2a"));
    // The API's view of a pod: both of its addresses.
    let pods: Value =
        serde_json::from_str(&lab.kubectl(&["get", "pods", "-A", "-o", "json"], None)).unwrap();
    let listed: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["status"]["podIPs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|i| i["ip"].as_str().map(String::from))
        .collect();
    assert!(
        listed.contains(&a.to_string()) && listed.contains(&b.to_string()),
        "{listed:?}"
    );
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7200), Ok(a));
    assert_eq!(tcp6(&lab.ns("p2a"), &lab.ns("p1a"), a, 7201), Ok(b));
    // Every pod admits IPv4 from the pod range and, over IPv6, p1a's address alone.
    let ns = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "p1a")
        .and_then(|p| p["metadata"]["namespace"].as_str())
        .expect("pod p1a in the API")
        .to_string();
    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: ipv6-from-p1a\n  namespace: {ns}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.244.0.0/16\n    - ipBlock:\n        cidr: {a}/128\n"
    );
    lab.kubectl(&["apply", "-f", "-"], Some(&policy));
    let mut port = 7300;
    wait_until(
        "p1a's ingress refuses p2a's IPv6 address",
        Duration::from_secs(30),
        || {
            port += 1;
            tcp6(&lab.ns("p2a"), &lab.ns("p1a"), a, port).is_err()
        },
    );
    // The control, after the policy is in force: p1a's own IPv6 address is admitted.
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7400), Ok(a));
}

/// A dual-stack lab of `nodes` nodes with `pods` pods each (`--ip-family dual`), with
/// `extra` flags.
fn dual_lab(nodes: u32, pods: u32, extra: &[&str]) -> TestLab {
    let (n, p) = (nodes.to_string(), pods.to_string());
    let mut args = vec!["--nodes", &n, "--pods-per-node", &p, "--ip-family", "dual"];
    args.extend_from_slice(extra);
    TestLab::up(&args)
}

/// DEL forgets the node's conntrack entries of a dual-stack pod's IPv6 address, as of
/// its IPv4 one: the next pod given that address must not inherit the old pod's
/// admitted connections (the nftables datapath admits `ct state established` before
/// any policy). Another pod's entries stay.
#[test]
fn del_forgets_the_connections_of_a_pods_ipv6_address() {
    use podnet_netlink::conntrack;
    let node = dual_node();
    let (a, b) = (add(&node, "ct6-a"), add(&node, "ct6-b"));
    // The node tracks what it receives (an input hook with a conntrack rule).
    for rule in [
        "add table inet pnct6",
        "add chain inet pnct6 in { type filter hook input priority 0; }",
        "add rule inet pnct6 in ct state new accept",
    ] {
        ip(&["netns", "exec", &node.ns.name, "nft", rule]);
    }
    // Each pod sends a datagram to the gateway's IPv6 address (the bridge's), until
    // the node tracks it (the first may wait for neighbour discovery).
    let gw: Ipv6Addr = "fd00:209::1".parse().unwrap();
    let tracked = |p: &Pod| {
        node.ns
            .ns
            .run(|| conntrack::list_family(&mut conntrack::open().unwrap().unwrap(), true))
            .unwrap()
            .unwrap()
            .iter()
            .filter(|e| e.involves(p.ip6))
            .count()
    };
    for p in [&a, &b] {
        let s =
            p.ns.ns
                .run(|| UdpSocket::bind(SocketAddrV6::new(p.ip6, 0, 0, 0)))
                .unwrap()
                .unwrap();
        wait_until(
            "the node tracks the pod's IPv6 datagram",
            Duration::from_secs(10),
            || {
                s.send_to(b"x", SocketAddrV6::new(gw, 9, 0, 0)).unwrap();
                tracked(p) > 0
            },
        );
    }
    node.del("ct6-a", &a.ns);
    assert_eq!(tracked(&a), 0, "DEL left conntrack entries of {}", a.ip6);
    assert_eq!(tracked(&b), 1, "DEL took another pod's entry too");
}

/// A pod's IPv6 multicast reaches no other pod on a dual-stack node with NetworkPolicy
/// (policy datapath `datapath`): isolation tables hold pods' unicast addresses, so
/// multicast to an isolated pod would otherwise pass unjudged. The control: the same
/// listener gets a unicast datagram its policy admits, from the same sender. `doctor`
/// finds nothing broken on such a node.
fn ipv6_multicast_reaches_no_pod_under_policy(datapath: &str) {
    let lab = dual_lab(
        1,
        2,
        &["--datapath", "bridge", "--policy-datapath", datapath],
    );
    let st = lab.json(&["status", "--output", "json"]);
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p1b"));
    // p1b admits p1a's IPv6 address, nothing else.
    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: from-p1a\n  namespace: default\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: {a}/128\n"
    );
    lab.apply(&policy);
    let rx = lab
        .ns("p1b")
        .run(|| UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 9999, 0, 0)))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (tx, eth0) = lab
        .ns("p1a")
        .run(|| {
            let s = UdpSocket::bind(SocketAddrV6::new(a, 0, 0, 0)).unwrap();
            // SAFETY: a NUL-terminated interface name.
            let i = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
            (s, i)
        })
        .unwrap();
    assert_ne!(eth0, 0, "no eth0 in p1a");
    let mut buf = [0u8; 64];
    let mut got = |want: &[u8]| {
        (0..10).any(|_| matches!(rx.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == want))
    };
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    for _ in 0..3 {
        tx.send_to(b"multicast", SocketAddrV6::new(all_nodes, 9999, 0, eth0))
            .unwrap();
    }
    assert!(!got(b"multicast"), "p1b heard p1a's IPv6 multicast");
    // The control: unicast from p1a, which p1b's policy admits (retried while the
    // policy is being programmed).
    wait_until(
        "p1b receives p1a's admitted unicast datagram",
        Duration::from_secs(10),
        || {
            tx.send_to(b"unicast", SocketAddrV6::new(b, 9999, 0, 0))
                .unwrap();
            got(b"unicast")
        },
    );
    // `lab check` probes both families and holds each pair against the policy: over
    // IPv6 p1a reaches p1b with its own address, over IPv4 it is denied, and nothing
    // is unexpected.
    let c = lab.json(&["check", "--output", "json"]);
    let pair = |family: &str, src: &str, dst: &str| -> Value {
        c["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["family"] == family && p["src"] == src && p["dst"] == dst)
            .cloned()
            .unwrap_or_else(|| panic!("no {family} pair {src} → {dst}: {c:#}"))
    };
    let v6 = pair("ipv6", "p1a", "p1b");
    assert_eq!(
        (v6["ok"].as_bool(), v6["no_nat"].as_bool()),
        (Some(true), Some(true)),
        "{v6}"
    );
    let v4 = pair("ipv4", "p1a", "p1b");
    assert_eq!(
        (v4["ok"].as_bool(), v4["allowed_by_policy"].as_bool()),
        (Some(false), Some(false)),
        "{v4}"
    );
    assert_eq!(c["unexpected"], 0, "{c:#}");
    // doctor reads the dual-stack table as podnetd wrote it (the IPv6 rules, sets and
    // chains): nothing broken.
    let o = podnet()
        .args(["doctor", "--lab", &lab.name])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "doctor on a dual-stack {datapath} lab: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn ipv6_multicast_reaches_no_pod_under_policy_nftables() {
    ipv6_multicast_reaches_no_pod_under_policy("nftables");
}

#[test]
fn ipv6_multicast_reaches_no_pod_under_policy_ebpf() {
    ipv6_multicast_reaches_no_pod_under_policy("ebpf");
}

/// A dual-stack lab over WireGuard: each peer's IPv6 pod CIDR is among its allowed IPs
/// and routed straight to the WireGuard device; pods reach each other over IPv6 across
/// nodes without NAT, and what crosses the underlay is encrypted (the payload never
/// appears on node1's underlay, while WireGuard datagrams do).
#[test]
fn a_dual_stack_wireguard_lab_carries_ipv6_encrypted() {
    let lab = dual_lab(2, 1, &["--backend", "wireguard"]);
    let st = lab.json(&["status", "--output", "json"]);
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    let net = |x: Ipv6Addr| podnet_cni_spec::net::Ipv6Net::truncating(x, 64);
    let routes = lab.sh("node1", &["ip", "-6", "route", "show", "proto", "0x50"]);
    let want = format!("{} dev podnet.wg", net(b));
    assert!(routes.contains(&want), "{want:?} not in {routes}");
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
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wg: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        wg.to_string().contains(&format!("\"{}\"", net(b))),
        "node2's IPv6 pod CIDR is no allowed IP: {wg:#}"
    );
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7500), Ok(a));
    assert_eq!(tcp6(&lab.ns("p2a"), &lab.ns("p1a"), a, 7501), Ok(b));
    // A marked datagram over IPv6, p1a → p2a, while node1's underlay is watched.
    let seen = Capture::open(&lab.ns("node1"), "eth0").unwrap();
    let (tx, rx) = udp6_pair(&lab, ("p1a", a), ("p2a", b), 7502);
    let marker = b"podnet-ipv6-plaintext-marker";
    let mut buf = [0u8; 64];
    wait_until(
        "p2a receives the marked datagram",
        Duration::from_secs(10),
        || {
            tx.send_to(marker, SocketAddrV6::new(b, 7502, 0, 0))
                .unwrap();
            matches!(rx.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == marker)
        },
    );
    let frames = seen.frames(Duration::from_millis(300));
    let wireguard = frames
        .iter()
        .filter(|f| f.len() > 42 && f[12..14] == [0x08, 0x00] && f[23] == 17)
        .filter(|f| u16::from_be_bytes([f[36], f[37]]) == 51820)
        .count();
    assert!(
        wireguard > 0,
        "no WireGuard datagram on node1's underlay: the capture proves nothing"
    );
    assert!(
        !frames
            .iter()
            .any(|f| f.windows(marker.len()).any(|w| w == marker)),
        "the IPv6 payload crossed the underlay in the clear"
    );
    // doctor checks the IPv6 route to the WireGuard device: nothing broken.
    let f = lab.doctor_findings("route6 to node2");
    assert!(
        f.iter()
            .any(|f| f["node"] == "node1" && f["status"] == "ok"),
        "{f:?}"
    );
    let o = podnet()
        .args(["doctor", "--lab", &lab.name])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // trace follows the IPv6 path through the WireGuard device: the route straight to
    // the device (no next hop), the peer allowing node2's IPv6 range.
    let o = podnet()
        .args([
            "trace", "p1a", "p2a", "--lab", &lab.name, "--family", "ipv6", "--output", "json",
        ])
        .output()
        .unwrap();
    let t: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success() && t["verdict"] == "reachable", "{t}");
    let hop = |where_: &str, what: &str| {
        t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["where"] == where_ && h["what"] == what)
            .cloned()
            .unwrap_or_else(|| panic!("no {where_}/{what} hop: {t}"))
    };
    let r = hop("src-node", "route");
    assert_eq!(
        r["kernel"].as_str().unwrap(),
        format!("{} dev podnet.wg proto 0x50", net(b)),
        "{r}"
    );
    assert_eq!(hop("src-node", "wireguard-peer")["status"], "ok");
}

/// doctor checks a dual-stack peer's IPv6 route and neighbour: on a lab without repair,
/// node1's route to node2's IPv6 pod CIDR deleted and its neighbour entry given another
/// MAC are both named, with the command that puts each back; run, doctor is clean.
#[test]
fn doctor_names_a_missing_ipv6_route_and_a_wrong_ipv6_neighbour() {
    let lab = dual_lab(
        2,
        1,
        &[
            "--datapath",
            "bridge",
            "--policy-datapath",
            "nftables",
            "--no-repair",
        ],
    );
    let node1 = |check: &str| -> Value {
        let f = lab.doctor_findings(check);
        f.into_iter()
            .find(|f| f["node"] == "node1")
            .unwrap_or_else(|| panic!("no {check} finding for node1"))
    };
    for check in ["route6 to node2", "neighbour6 for node2"] {
        assert_eq!(node1(check)["status"], "ok", "{}", node1(check));
    }
    let st = lab.json(&["status", "--output", "json"]);
    let b = lab_ip6(&st, "p2a");
    let net = podnet_cni_spec::net::Ipv6Net::truncating(b, 64);
    lab.sh("node1", &["ip", "-6", "route", "del", &net.to_string()]);
    lab.sh(
        "node1",
        &[
            "ip",
            "-6",
            "neigh",
            "replace",
            &net.network().to_string(),
            "lladdr",
            "0a:59:de:ad:be:ef",
            "dev",
            "podnet.vxlan",
            "nud",
            "permanent",
        ],
    );
    for check in ["route6 to node2", "neighbour6 for node2"] {
        let f = node1(check);
        assert_eq!(f["status"], "broken", "{f}");
        // Its fix, run as given (`ip -6 …`, after "by hand: " for the route), puts the
        // entry back.
        let fix = f["fix"].as_str().unwrap();
        let fix = fix.rsplit("by hand: ").next().unwrap();
        let cmd: Vec<&str> = fix.split(" (").next().unwrap().split(' ').collect();
        assert_eq!(cmd[..2], ["ip", "-6"], "{fix}");
        lab.sh("node1", &cmd);
    }
    assert!(node1("route6 to node2")["detail"]
        .as_str()
        .unwrap()
        .contains("podnet.vxlan"),);
    for check in ["route6 to node2", "neighbour6 for node2"] {
        assert_eq!(node1(check)["status"], "ok", "{}", node1(check));
    }
    // Pods reach each other over IPv6 again.
    let a = lab_ip6(&st, "p1a");
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7600), Ok(a));
}

/// The underlay guard refuses plain IPv6 whose source is in the cluster's IPv6 range:
/// a host on the underlay (which carries IPv6 in a dual-stack lab) forging p1a's IPv6
/// address towards p2a through node2 is dropped on node2's eth0 and counted as
/// `pod-src`; the same datagram from that host's own underlay IPv6 address reaches
/// p2a, so the negative check can fail. On both datapath pairs (the fast path's
/// from_underlay runs after the guard).
fn the_underlay_guard_refuses_forged_pod_ipv6_sources(extra: &[&str]) {
    let lab = dual_lab(2, 1, extra);
    let st = lab.json(&["status", "--output", "json"]);
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    let (mac1, mac2) = (eth0_mac(&lab, "node1"), eth0_mac(&lab, "node2"));
    let rx = udp6_listener(&lab, "p2a", b, 7650);
    let frame = |src: Ipv6Addr, payload: &[u8]| {
        probe::udp6_frame(
            mac2,
            mac1,
            SocketAddrV6::new(src, 5555, 0, 0),
            SocketAddrV6::new(b, 7650, 0, 0),
            payload,
        )
    };
    let node1 = lab.ns("node1");
    let mut buf = [0u8; 64];
    let own = podnet_lab::underlay_ip6(1);
    wait_until(
        "p2a receives a plain datagram from node1's underlay IPv6 address",
        Duration::from_secs(10),
        || {
            probe::send_frame(&node1, "eth0", &frame(own, b"control")).unwrap();
            matches!(rx.recv_from(&mut buf), Ok((n, f)) if &buf[..n] == b"control" && f.ip() == std::net::IpAddr::V6(own))
        },
    );
    // What the control left queued is read first; then everything until 300 ms of
    // silence, so a forged datagram behind controls is still seen.
    while rx.recv_from(&mut buf).is_ok() {}
    for _ in 0..3 {
        probe::send_frame(&node1, "eth0", &frame(a, b"forged")).unwrap();
    }
    let mut got = false;
    while let Ok((n, _)) = rx.recv_from(&mut buf) {
        got |= &buf[..n] == b"forged";
    }
    assert!(
        !got,
        "a plain datagram forging p1a's IPv6 address reached p2a"
    );
    // The status carries the counters as of the agent's last round.
    assert_eq!(st["nodes"][1]["name"], "node2");
    wait_until("node2's guard counts them", Duration::from_secs(5), || {
        let st = lab.json(&["status", "--output", "json"]);
        st["nodes"][1]["underlay_guard"]["drops"]["pod-src"] == 3
    });
}

#[test]
fn the_underlay_guard_refuses_forged_pod_ipv6_sources_on_the_defaults() {
    the_underlay_guard_refuses_forged_pod_ipv6_sources(&[]);
}

#[test]
fn the_underlay_guard_refuses_forged_pod_ipv6_sources_on_the_bridge() {
    the_underlay_guard_refuses_forged_pod_ipv6_sources(&[
        "--datapath",
        "bridge",
        "--policy-datapath",
        "nftables",
    ]);
}

/// `frame` (Ethernet + IPv6 + UDP) with `n` destination-options headers (8 bytes of
/// padding each) put before its UDP header.
fn behind_dstopts(frame: &[u8], n: usize) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    let len = u16::from_be_bytes([f[18], f[19]]) + 8 * n as u16;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f[20] = 60;
    for i in 0..n {
        let next = if i + 1 == n { 17 } else { 60 };
        f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    f.extend_from_slice(&frame[54..]);
    f
}

/// The overlay's port takes no IPv6 at all: peers speak IPv4 on the underlay, so a
/// datagram to it over IPv6 is from a stranger, even from a peer's own underlay IPv6
/// address, and even behind a destination-options header (counted as `reason`); a
/// chain of five extension headers, which could hide the port, is refused
/// (`ipv6-chain`). The same datagrams to another port of node2 arrive, so the checks
/// can fail.
fn ipv6_to_the_overlay_port_is_refused(extra: &[&str], port_of: &str, reason: &str) {
    let lab = dual_lab(2, 1, extra);
    let st = lab.json(&["status", "--output", "json"]);
    assert_eq!(st["nodes"][1]["name"], "node2");
    let port = st["nodes"][1]["underlay_guard"][port_of]
        .as_u64()
        .unwrap_or_else(|| panic!("node2's guard names no {port_of}: {st}")) as u16;
    assert_ne!(port, 0, "{st}");
    let (mac1, mac2) = (eth0_mac(&lab, "node1"), eth0_mac(&lab, "node2"));
    let (own, to) = (podnet_lab::underlay_ip6(1), podnet_lab::underlay_ip6(2));
    let rx = lab
        .ns("node2")
        .run(|| UdpSocket::bind(SocketAddrV6::new(to, 7660, 0, 0)))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let frame = |dport: u16, payload: &[u8]| {
        probe::udp6_frame(
            mac2,
            mac1,
            SocketAddrV6::new(own, 5555, 0, 0),
            SocketAddrV6::new(to, dport, 0, 0),
            payload,
        )
    };
    let node1 = lab.ns("node1");
    let mut buf = [0u8; 64];
    // The controls: to another port, plain and behind four headers.
    for (f, what) in [
        (frame(7660, b"control"), "plain"),
        (
            behind_dstopts(&frame(7660, b"control"), 4),
            "behind four headers",
        ),
    ] {
        wait_until(
            &format!("node2 receives a datagram {what} from node1's underlay IPv6 address"),
            Duration::from_secs(10),
            || {
                probe::send_frame(&node1, "eth0", &f).unwrap();
                matches!(rx.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"control")
            },
        );
        while rx.recv_from(&mut buf).is_ok() {}
    }
    // A handshake initiation's first bytes (or a VXLAN header's) are enough.
    let junk = [1u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    probe::send_frame(&node1, "eth0", &frame(port, &junk)).unwrap();
    probe::send_frame(&node1, "eth0", &behind_dstopts(&frame(port, &junk), 1)).unwrap();
    probe::send_frame(&node1, "eth0", &behind_dstopts(&frame(7660, b"chain"), 5)).unwrap();
    let mut got = false;
    while let Ok((n, _)) = rx.recv_from(&mut buf) {
        got |= &buf[..n] == b"chain";
    }
    assert!(
        !got,
        "a datagram behind five extension headers passed the guard"
    );
    let mut drops = Value::Null;
    wait_until("node2's guard counts them", Duration::from_secs(5), || {
        let st = lab.json(&["status", "--output", "json"]);
        drops = st["nodes"][1]["underlay_guard"]["drops"].clone();
        drops[reason] == 2 && drops["ipv6-chain"] == 1
    });
    assert_eq!(drops["pod-src"], 0, "{drops}");
    // The overlay still carries both families.
    let st = lab.json(&["status", "--output", "json"]);
    let (a, b) = (lab_ip6(&st, "p1a"), lab_ip6(&st, "p2a"));
    assert_eq!(tcp6(&lab.ns("p1a"), &lab.ns("p2a"), b, 7661), Ok(a));
    lab.full_mesh();
}

#[test]
fn ipv6_to_the_vxlan_port_is_refused() {
    ipv6_to_the_overlay_port_is_refused(&[], "vxlan_port", "vxlan-src");
}

#[test]
fn ipv6_to_the_wireguard_port_is_refused() {
    ipv6_to_the_overlay_port_is_refused(
        &["--backend", "wireguard"],
        "wireguard_port",
        "wireguard-src",
    );
}
