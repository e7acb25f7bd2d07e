//! What both policy datapaths (and the fast path) do with the packets NetworkPolicy
//! says nothing explicit about, the same way: later fragments follow their first
//! fragment, ICMP errors follow the flow they quote, broadcast and multicast reach no
//! pod. Each is checked with real packets against an isolated pod.

use crate::common::*;
use podnet_lab::traffic::probe::Capture;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

/// `iso` (node1) is isolated both ways: ingress only UDP 9000 from anywhere, egress
/// anything. `far` (node2) serves UDP 9000 too.
const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: sem}
---
apiVersion: v1
kind: Pod
metadata: {name: iso, namespace: sem, labels: {app: iso}}
spec:
  nodeName: node1
  containers: [{name: c, image: x, ports: [{containerPort: 9000, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: sem, labels: {app: far}}
spec:
  nodeName: node2
  containers: [{name: c, image: x, ports: [{containerPort: 9000, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: iso, namespace: sem}
spec:
  podSelector: {matchLabels: {app: iso}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: 9000, protocol: UDP}]
  egress: [{}]
"#;

fn pod_ip(lab: &TestLab, name: &str) -> Ipv4Addr {
    lab_pod(&lab.json(&["status", "--output", "json"]), name).0
}

/// A datagram of `len` bytes from pod `from` to `to`:9000, and whether the whole echo
/// came back within a second — up to three tries: every use is a positive check, and
/// one datagram lost on a loaded machine is not a verdict (a policy that drops
/// fragments drops every try).
fn echoed(lab: &TestLab, from: &str, to: Ipv4Addr, len: usize) -> bool {
    (0..3).any(|_| {
        lab.ns(from)
            .run(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
                s.send_to(&msg, (to, 9000)).unwrap();
                let mut buf = vec![0u8; 65536];
                matches!(s.recv_from(&mut buf), Ok((n, _)) if buf[..n] == msg[..])
            })
            .unwrap()
    })
}

fn semantics(args: &[&str]) {
    let lab = TestLab::up(&[&["--nodes", "2"], args].concat());
    lab.pipe_ok("apply", OBJECTS);
    let iso = pod_ip(&lab, "sem.iso");
    let far = pod_ip(&lab, "sem.far");
    let p1b = pod_ip(&lab, "p1b");

    // Fragments: a datagram three times the pod MTU, to the isolated pod (same node
    // and across nodes), and its echo back through the isolated pod's egress.
    assert!(
        echoed(&lab, "p1a", iso, 100),
        "iso does not answer at all ({args:?})"
    );
    assert!(
        echoed(&lab, "p1a", iso, 4000),
        "fragments to iso from the same node were lost ({args:?})"
    );
    assert!(
        echoed(&lab, "p2a", iso, 4000),
        "fragments to iso from another node were lost ({args:?})"
    );
    assert!(
        echoed(&lab, "sem.iso", far, 4000),
        "fragments from iso's egress were lost ({args:?})"
    );

    // An ICMP error about iso's own flow: port unreachable from p1b, where nothing
    // listens on 9999. iso's ingress admits only UDP 9000, yet the error is related.
    let refused = lab
        .ns("sem.iso")
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect((p1b, 9999)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s.send(b"anyone?").unwrap();
            let mut buf = [0u8; 64];
            s.recv(&mut buf).err().map(|e| e.kind())
        })
        .unwrap();
    assert_eq!(
        refused,
        Some(std::io::ErrorKind::ConnectionRefused),
        "the port-unreachable error for iso's own flow did not reach it ({args:?})"
    );
    // Broadcast and multicast from p1a reach neither the isolated pod nor an open one;
    // an ICMP error quoting a flow iso never sent is no reply of anything: refused.
    let (cap_iso, cap_open) = (
        Capture::open(&lab.ns("sem.iso"), "eth0").unwrap(),
        Capture::open(&lab.ns("p1b"), "eth0").unwrap(),
    );
    let bcast = Ipv4Addr::from(u32::from(iso) | 0xff);
    lab.ns("p1a")
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_broadcast(true).unwrap();
            for to in [bcast, Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 251)] {
                s.send_to(b"podnet-broadcast", SocketAddrV4::new(to, 9000))
                    .unwrap();
            }
        })
        .unwrap();
    let forged = icmp_unreachable(iso, p1b, 4444, 5555);
    lab.ns("p1a")
        .run(move || {
            // SAFETY: a raw ICMP socket, closed below; the kernel writes the IP header.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes(iso.octets());
            // SAFETY: valid buffer and address for the call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    forged.as_ptr() as *const _,
                    forged.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            unsafe { libc::close(fd) };
            assert!(n > 0, "send the forged ICMP error");
        })
        .unwrap();
    // The captures work: a unicast datagram from p1a to both is seen.
    for to in [iso, p1b] {
        lab.ns("p1a")
            .run(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.send_to(b"podnet-unicast", (to, 9000)).unwrap();
            })
            .unwrap();
    }
    let has = |frames: &[Vec<u8>], what: &[u8]| {
        frames
            .iter()
            .any(|f| f.windows(what.len()).any(|w| w == what))
    };
    for (name, cap) in [("iso", &cap_iso), ("p1b", &cap_open)] {
        let frames = cap.frames(Duration::from_millis(500));
        assert!(
            has(&frames, b"podnet-unicast"),
            "the capture on {name} saw nothing: it proves nothing"
        );
        assert!(
            !has(&frames, b"podnet-broadcast"),
            "broadcast or multicast reached {name} ({args:?})"
        );
        if name == "iso" {
            assert!(
                !has(&frames, b"podnet-unrelated"),
                "an ICMP error about no flow of iso's reached it ({args:?})"
            );
        }
    }
}

/// ICMP port unreachable quoting a UDP datagram `src:sport -> dst:dport` (which the
/// receiver of this error would have sent), with a marker in the quoted payload.
fn icmp_unreachable(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut quoted = vec![0x45, 0, 0, 44, 0, 1, 0, 0, 64, 17, 0, 0];
    quoted.extend_from_slice(&src.octets());
    quoted.extend_from_slice(&dst.octets());
    quoted.extend_from_slice(&sport.to_be_bytes());
    quoted.extend_from_slice(&dport.to_be_bytes());
    quoted.extend_from_slice(&[0, 24, 0, 0]);
    quoted.extend_from_slice(b"podnet-unrelated");
    let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
    m.extend(quoted);
    let mut sum: u32 = m
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    m[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    m
}

#[test]
fn fragments_icmp_errors_and_broadcast_with_nftables() {
    semantics(&["--policy-datapath", "nftables"]);
}

#[test]
fn fragments_icmp_errors_and_broadcast_with_ebpf() {
    semantics(&["--policy-datapath", "ebpf"]);
}

#[test]
fn fragments_icmp_errors_and_broadcast_on_the_fast_path() {
    semantics(&["--policy-datapath", "ebpf", "--datapath", "ebpf"]);
}
