//! The eBPF datapath's budgets against a spraying pod: new flow-table entries are
//! charged to the sender (20 000 a second, bursts of 50 000), drop events to their pod
//! (50 a second, bursts of 200). The spray fills neither the shared flow table nor the
//! event log; verdicts never change; another pod's connection goes on meanwhile.

use crate::common::*;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: srv, namespace: a}
spec:
  nodeName: node1
  containers: [{name: c, image: x, ports: [{containerPort: 9000, protocol: UDP}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: Pod
metadata: {name: closed, namespace: b, labels: {app: closed}}
spec:
  nodeName: node1
  containers: [{name: c, image: x, ports: [{containerPort: 9000, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
spec:
  nodeName: node1
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: closed, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

/// Entries of node1's flow table whose source is `ip`.
fn flows_from(lab: &TestLab, ip: Ipv4Addr) -> usize {
    let path = format!("/run/podnet/lab/{}/bpf/node1/flows", lab.name);
    let map =
        podnet_netlink::bpf::obj_get(std::path::Path::new(&path)).expect("the pinned flow table");
    let info = podnet_netlink::bpf::map_info(&map).unwrap();
    podnet_netlink::bpf::raw_keys(&map, &info)
        .unwrap()
        .iter()
        .filter(|k| k[0..4] == ip.octets())
        .count()
}

fn budget(lab: &TestLab, what: &str) -> u64 {
    let m = lab.metrics_text("node1");
    let key = format!("podnet_datapath_budget_total{{what=\"{what}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("no {key} in the metrics: {m}"))
}

#[test]
fn a_spraying_pod_fills_neither_the_flow_table_nor_the_event_log() {
    let lab = TestLab::up(&["--nodes", "1", "--policy-datapath", "ebpf"]);
    lab.pipe_ok("apply", OBJECTS);
    let st = lab.json(&["status", "--output", "json"]);
    let (sprayer, _) = lab_pod(&st, "p1a");
    let (open, _) = lab_pod(&st, "p1b");
    let (closed, _) = lab_pod(&st, "b.closed");
    let (srv, _) = lab_pod(&st, "a.srv");

    // The victim: b/client, whose ingress is closed, talks to a/srv: its echoes come
    // back only because its flow is remembered.
    let client = lab.ns("b.client");
    let talk = move || {
        client
            .run(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let t = Instant::now();
                s.send_to(b"hello", (srv, 9000)).unwrap();
                let mut buf = [0u8; 16];
                s.recv_from(&mut buf).ok().map(|_| t.elapsed())
            })
            .unwrap()
    };
    let before = talk().expect("the victim's flow works before the spray");

    // 200 000 distinct flows from p1a to the open pod p1b (4 source ports × 50 000
    // destination ports), as fast as it can.
    let spray = 200_000u32;
    let t = Instant::now();
    lab.ns("p1a")
        .run(move || {
            for _ in 0..4 {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                for i in 0..50_000u32 {
                    let _ = s.send_to(b"x", (open, 10_000 + i as u16));
                }
            }
        })
        .unwrap();
    let during = talk();
    let took = t.elapsed().as_secs_f64();
    let recorded = flows_from(&lab, sprayer);
    // Both sides of every flow (p1a's egress, p1b's ingress) are charged to p1a.
    let bound = (50_000.0 + 20_000.0 * (took + 1.0)) as usize;
    eprintln!(
        "spray: {spray} flows in {took:.2} s; flow entries from the sprayer: {recorded} (bound {bound}); victim round trip before {before:?}, after {during:?}"
    );
    assert!(
        recorded > 0,
        "nothing was recorded: the count proves nothing"
    );
    assert!(
        recorded <= bound,
        "the sprayer got {recorded} flow entries, over its budget {bound}"
    );
    assert!(budget(&lab, "flows-unrecorded") > 0);
    assert!(during.is_some(), "the victim's flow broke during the spray");

    // Denied packets: every one refused (verdicts never change), events held back.
    let limited_before = budget(&lab, "events-limited");
    let denied = 3_000u32;
    let t = Instant::now();
    lab.ns("p1a")
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..denied {
                let _ = s.send_to(b"x", (closed, 9000));
            }
        })
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let stats = podnet()
        .args(["policy", "stats", "--lab", &lab.name, "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let refused: u64 = v[0]["denied"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["pod"] == "b/closed")
        .map(|d| d["packets"].as_u64().unwrap())
        .sum();
    assert!(
        refused >= denied as u64,
        "only {refused} of {denied} denied packets were refused"
    );
    let limited = budget(&lab, "events-limited") - limited_before;
    let most_told = 200.0 + 50.0 * (took + 1.0);
    eprintln!("denied spray: {denied} packets in {took:.2} s, events held back {limited}");
    assert!(
        limited as f64 >= denied as f64 - most_told,
        "only {limited} events held back of {denied}: the event log was flooded"
    );
    // Forged frames: every one dropped by anti-spoofing, their events held back too.
    let spoof_before = budget(&lab, "antispoof-events-limited");
    let (p1b_ip, _) = lab_pod(&st, "p1b");
    let (_, p1a_mac) = lab_pod(&st, "p1a");
    let forged = 3_000u32;
    let t = Instant::now();
    let frame = podnet_lab::traffic::probe::arp_frame(
        [0xff; 6], p1a_mac, 2, p1a_mac, p1b_ip, [0; 6], p1b_ip,
    );
    lab.ns("p1a")
        .run(move || {
            // One packet socket for all of them (send_frame opens one a frame).
            // SAFETY: a raw packet socket, closed below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(fd >= 0);
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) } as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            for _ in 0..forged {
                // SAFETY: valid buffer and address.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr() as *const _,
                        frame.len(),
                        0,
                        &sll as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert!(n > 0, "send: {}", std::io::Error::last_os_error());
            }
            unsafe { libc::close(fd) };
        })
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let held = budget(&lab, "antispoof-events-limited") - spoof_before;
    eprintln!("forged spray: {forged} frames in {took:.2} s, events held back {held}");
    assert!(
        held as f64 >= forged as f64 - (200.0 + 50.0 * (took + 1.0)),
        "only {held} anti-spoofing events held back of {forged}"
    );
}
