//! The eBPF policy programs on test packets (BPF_PROG_TEST_RUN): maps written by the
//! agent's own code from a compiled table, then every verdict checked — admitted
//! peer and port, other peer, other port, a closed address, the node, a reply, a
//! stray reply, a new connection reusing an old flow's ports, IPv6, ARP.
//!
//! The maps are pinned in a bpffs mounted for the test in a scratch directory and
//! unmounted at the end.
//!
//! Then, on both policy datapaths in a lab, an address reused by a new pod inherits
//! nothing of the deleted pod's connections (conntrack, the eBPF flow table); and GC,
//! which frees addresses too, forgets their connections as DEL does.

use crate::common::{lab_pod, podnet, require_root, result_ip, wait_until, Node, TestLab};
use podnet_agent::ebpf::{self, EbpfDatapath};
use podnet_netlink::bpf;
use podnet_policy::compile::{Allow, PodTables, Ports, Table};
use podnet_policy::net::Prefix;
use podnet_policy::Proto;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

const OK: u32 = 0;
const SHOT: u32 = 2;

/// Ethernet + IPv4 + TCP with `flags`, as a pod's veth sees it.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0x0a, 0x58, 0, 0, 0, 2, 0x0a, 0x58, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;

struct Bpffs(std::path::PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: unmounting the test's own mount point.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bpffs of the test's own (`tag` tells two tests of one process apart), unmounted
/// and removed when dropped.
fn bpffs(tag: &str) -> Bpffs {
    let dir = std::env::temp_dir().join(format!("podnet-bpffs-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let fs = std::ffi::CString::new("bpf").unwrap();
    // SAFETY: a new bpffs instance on the test's own directory.
    assert_eq!(
        unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) },
        0,
        "mount a bpffs on {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    Bpffs(dir)
}

/// The programs loaded with their maps pinned in `mnt`, holding `tables` and the node
/// address `node`: the datapath, and the programs of a pod's ingress and egress.
fn load(
    mnt: &Bpffs,
    tables: &BTreeMap<String, PodTables>,
    node: std::net::IpAddr,
) -> (EbpfDatapath, std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut dp = EbpfDatapath::open(&mnt.0.join("node")).expect("load the policy programs");
    dp.program(&ebpf::desired(tables)).unwrap();
    dp.set_node_addrs(&[node]).unwrap();
    let to_pod = dp.program_fd(ebpf::TO_POD).unwrap();
    let from_pod = dp.program_fd(ebpf::FROM_POD).unwrap();
    (dp, to_pod, from_pod)
}

/// Every (case, verdict, wanted verdict) agrees; else the ones that do not, named.
fn assert_verdicts(cases: &[(&str, u32, u32)]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(name, got, want)| format!("{name}: verdict {got}, want {want}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The kernel's counters: `ingress` packets refused at `pod`'s ingress, `closed` to or
/// from closed addresses.
fn assert_counted(mnt: &Bpffs, pod: std::net::IpAddr, ingress: u64, closed: u64) {
    let (per_pod, closed_count) = ebpf::counters(&mnt.0.join("node")).unwrap();
    assert_eq!(
        per_pod.get(&(pod, podnet_policy::Direction::Ingress)),
        Some(&ingress),
        "{per_pod:?}"
    );
    assert_eq!(closed_count, closed);
}

#[test]
fn policy_programs_on_test_packets() {
    require_root();
    let mnt = bpffs("v4");
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let (pod, client, other, node, closed) = (
        ip("10.0.0.5"),
        ip("10.0.0.9"),
        ip("10.0.0.8"),
        ip("10.0.0.1"),
        ip("10.0.0.6"),
    );
    // Pod 10.0.0.5: ingress isolated, admitting 10.0.0.9 on TCP 80; egress open.
    let tables = BTreeMap::from([(
        "x/a".to_string(),
        PodTables {
            ip: pod,
            ip6: None,
            ingress: Table::Isolated {
                policies: vec!["x/p".into()],
                allow: BTreeSet::from([Allow {
                    net: Prefix::host(client.into()),
                    ports: Some(Ports {
                        proto: Proto::Tcp,
                        first: 80,
                        last: 80,
                    }),
                }]),
            },
            egress: Table::Open,
        },
    )]);
    let (dp, to_pod, from_pod) = load(&mnt, &tables, node.into());
    let run = |prog: &std::os::fd::OwnedFd, f: &[u8]| bpf::test_run(prog, f).expect("test run");

    let cases: Vec<(&str, u32, u32)> = vec![
        (
            "admitted peer and port",
            run(&to_pod, &tcp(client, 40000, pod, 80, SYN)),
            OK,
        ),
        (
            "another peer",
            run(&to_pod, &tcp(other, 40000, pod, 80, SYN)),
            SHOT,
        ),
        (
            "another port",
            run(&to_pod, &tcp(client, 40001, pod, 81, SYN)),
            SHOT,
        ),
        (
            "the node itself",
            run(&to_pod, &tcp(node, 40000, pod, 22, SYN)),
            OK,
        ),
        (
            "a closed address",
            run(&to_pod, &tcp(client, 40000, closed, 80, SYN)),
            SHOT,
        ),
        (
            "the pod's egress (open)",
            run(&from_pod, &tcp(pod, 50000, other, 443, SYN)),
            OK,
        ),
        (
            "the reply to it",
            run(&to_pod, &tcp(other, 443, pod, 50000, SYN_ACK)),
            OK,
        ),
        (
            "a stray reply",
            run(&to_pod, &tcp(other, 443, pod, 50001, SYN_ACK)),
            SHOT,
        ),
        (
            "a stray ACK",
            run(&to_pod, &tcp(other, 7000, pod, 80, ACK)),
            SHOT,
        ),
        (
            "the admitted flow goes on",
            run(&to_pod, &tcp(client, 40000, pod, 80, ACK)),
            OK,
        ),
        (
            "a new connection on an old flow's ports meets the policy",
            {
                let r1 = run(&from_pod, &tcp(pod, 50002, other, 80, SYN));
                assert_eq!(r1, OK);
                // `other` opens a connection towards the pod reusing the reversed
                // ports: a SYN is new, whatever the flow table holds.
                run(&to_pod, &tcp(other, 80, pod, 50002, SYN))
            },
            SHOT,
        ),
        (
            "ARP",
            run(&to_pod, &{
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&[0x0a, 0x58, 0, 0, 0, 1, 0x08, 0x06]);
                f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&[
                    0x0a, 0x58, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 5,
                ]);
                f
            }),
            OK,
        ),
        (
            "IPv6 that is not neighbour discovery",
            run(&to_pod, &{
                let mut f = vec![0x0a, 0x58, 0, 0, 0, 2, 0x0a, 0x58, 0, 0, 0, 1, 0x86, 0xdd];
                f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
                f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
                f.extend_from_slice(&[0, 53, 0, 53, 0, 8, 0, 0]);
                f
            }),
            SHOT,
        ),
    ];
    assert_verdicts(&cases);

    // The refusals were counted per pod and direction, and for the closed address.
    assert_counted(&mnt, pod.into(), 5, 1);
    // The kernel holds the pod as programmed, and not the closed address.
    assert!(ebpf::holds(&mnt.0.join("node"), pod.into()));
    assert!(!ebpf::holds(&mnt.0.join("node"), closed.into()));
    drop(dp);
}

/// Ethernet + IPv6 (hop limit `hops`) + `payload` after next header `nh`.
fn ip6(src: Ipv6Addr, dst: Ipv6Addr, hops: u8, nh: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x0a, 0x58, 0, 0, 0, 2, 0x0a, 0x58, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[nh, hops]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// A TCP header with `flags`.
fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    ip6(src, dst, 64, 6, &tcp_hdr(sport, dport, flags))
}

/// An IPv6 extension header of 8 bytes: hop-by-hop or destination options (PadN),
/// next header `nh`.
fn ext(nh: u8) -> Vec<u8> {
    vec![nh, 0, 1, 4, 0, 0, 0, 0]
}

/// A fragment header: next header `nh`, offset in 8-byte units, more fragments, id.
fn frag(nh: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![nh, 0];
    h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// The eBPF programs judge pods' IPv6 addresses with the IPv6 maps the agent writes
/// from the same compiled tables: admitted /128 peer and port, a /64 block, other peers
/// and ports, the node, a closed address, replies and stray replies, extension headers
/// that must not hide a port, fragments (a later fragment follows its first, or is
/// refused), ICMPv6 errors about a known flow and about none, neighbour discovery
/// (hop limit 255 only), link-local and multicast, and an endless header chain.
#[test]
fn policy_programs_judge_ipv6_test_packets() {
    require_root();
    let mnt = bpffs("v6");
    let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let (pod, client, other, node, closed, block_peer, router) = (
        ip("fd00::5"),
        ip("fd00::9"),
        ip("fd00::8"),
        ip("fd00::1"),
        ip("fd00::6"),
        ip("fd00:2::77"),
        ip("fd00:3::1"),
    );
    let tcp80 = Some(Ports {
        proto: Proto::Tcp,
        first: 80,
        last: 80,
    });
    // Pod fd00::5 (10.0.0.5): ingress isolated, admitting fd00::9 on TCP 80 and
    // fd00:2::/64 on everything; egress open.
    let tables = BTreeMap::from([(
        "x/a".to_string(),
        PodTables {
            ip: "10.0.0.5".parse().unwrap(),
            ip6: Some(pod),
            ingress: Table::Isolated {
                policies: vec!["x/p".into()],
                allow: BTreeSet::from([
                    Allow {
                        net: Prefix::host(client.into()),
                        ports: tcp80,
                    },
                    Allow {
                        net: podnet_policy::net::parse_cidr("fd00:2::/64").unwrap(),
                        ports: None,
                    },
                ]),
            },
            egress: Table::Open,
        },
    )]);
    let (dp, to_pod, from_pod) = load(&mnt, &tables, node.into());
    // What trace and doctor read: the pod's IPv6 address is programmed
    // (pod_policy6), a closed one is not.
    assert!(ebpf::holds(&mnt.0.join("node"), pod.into()));
    assert!(!ebpf::holds(&mnt.0.join("node"), closed.into()));
    let run = |prog: &std::os::fd::OwnedFd, f: &[u8]| bpf::test_run(prog, f).expect("test run");
    let with = |parts: &[&[u8]]| parts.concat();
    let udp = |sport: u16, dport: u16| {
        let mut h = sport.to_be_bytes().to_vec();
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0, 8, 0, 0]);
        h
    };
    // ICMPv6 destination unreachable quoting `quoted` (an IPv6 packet without its
    // Ethernet header).
    let unreachable = |quoted: &[u8]| with(&[&[1, 4, 0, 0, 0, 0, 0, 0], &quoted[14..]]);
    let ns = |hops: u8| {
        let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&pod.octets());
        ip6(client, ip("ff02::1:ff00:5"), hops, 58, &icmp)
    };

    let cases: Vec<(&str, u32, u32)> = vec![
        (
            "admitted peer and port",
            run(&to_pod, &tcp6(client, 40000, pod, 80, SYN)),
            OK,
        ),
        (
            "another peer",
            run(&to_pod, &tcp6(other, 40000, pod, 80, SYN)),
            SHOT,
        ),
        (
            "another port",
            run(&to_pod, &tcp6(client, 40001, pod, 81, SYN)),
            SHOT,
        ),
        (
            "a peer in the admitted /64, any port",
            run(&to_pod, &ip6(block_peer, pod, 64, 17, &udp(5000, 9999))),
            OK,
        ),
        (
            "the node itself",
            run(&to_pod, &tcp6(node, 40000, pod, 22, SYN)),
            OK,
        ),
        (
            "a closed address",
            run(&to_pod, &tcp6(client, 40000, closed, 80, SYN)),
            SHOT,
        ),
        (
            "the pod's egress (open)",
            run(&from_pod, &tcp6(pod, 50000, other, 443, SYN)),
            OK,
        ),
        (
            "the reply to it",
            run(&to_pod, &tcp6(other, 443, pod, 50000, SYN_ACK)),
            OK,
        ),
        (
            "a stray reply",
            run(&to_pod, &tcp6(other, 443, pod, 50001, SYN_ACK)),
            SHOT,
        ),
        (
            "an admitted port behind two extension headers",
            run(
                &to_pod,
                &ip6(
                    client,
                    pod,
                    64,
                    0,
                    &with(&[&ext(60), &ext(6), &tcp_hdr(40002, 80, SYN)]),
                ),
            ),
            OK,
        ),
        (
            "another port behind an extension header",
            run(
                &to_pod,
                &ip6(
                    client,
                    pod,
                    64,
                    0,
                    &with(&[&ext(6), &tcp_hdr(40003, 81, SYN)]),
                ),
            ),
            SHOT,
        ),
        (
            "a later fragment without its first",
            run(
                &to_pod,
                &ip6(
                    other,
                    pod,
                    64,
                    44,
                    &with(&[&frag(6, 100, false, 7), &[0; 16]]),
                ),
            ),
            SHOT,
        ),
        (
            "an admitted first fragment",
            run(
                &to_pod,
                &ip6(
                    client,
                    pod,
                    64,
                    44,
                    &with(&[&frag(6, 0, true, 9), &tcp_hdr(40004, 80, SYN)]),
                ),
            ),
            OK,
        ),
        (
            "its later fragment",
            run(
                &to_pod,
                &ip6(
                    client,
                    pod,
                    64,
                    44,
                    &with(&[&frag(6, 100, false, 9), &[0; 16]]),
                ),
            ),
            OK,
        ),
        (
            "an ICMPv6 error about the pod's flow",
            run(
                &to_pod,
                &ip6(
                    router,
                    pod,
                    64,
                    58,
                    &unreachable(&tcp6(pod, 50000, other, 443, ACK)),
                ),
            ),
            OK,
        ),
        (
            "an ICMPv6 error about no flow",
            run(
                &to_pod,
                &ip6(
                    router,
                    pod,
                    64,
                    58,
                    &unreachable(&tcp6(pod, 50009, other, 443, ACK)),
                ),
            ),
            SHOT,
        ),
        ("a neighbour solicitation", run(&to_pod, &ns(255)), OK),
        (
            "a neighbour solicitation that was routed",
            run(&to_pod, &ns(64)),
            SHOT,
        ),
        (
            "UDP from a link-local address",
            run(&to_pod, &ip6(ip("fe80::9"), pod, 64, 17, &udp(53, 53))),
            SHOT,
        ),
        (
            "UDP to a multicast address",
            run(&from_pod, &ip6(pod, ip("ff02::1"), 64, 17, &udp(53, 53))),
            SHOT,
        ),
        (
            "nine extension headers",
            run(
                &to_pod,
                &ip6(
                    client,
                    pod,
                    64,
                    0,
                    &with(&[&ext(0).repeat(8), &ext(6), &tcp_hdr(40005, 80, SYN)]),
                ),
            ),
            SHOT,
        ),
    ];
    assert_verdicts(&cases);

    // The refusals the policy made were counted under the pod's IPv6 address (the
    // malformed and link-scoped ones are dropped before any pod is judged), and the
    // one to the closed address as closed.
    assert_counted(&mnt, pod.into(), 6, 1);
    // A removed pod's IPv6 flows are forgotten (DEL, and agents for other nodes' pods):
    // the reply that passed above is a stray one afterwards.
    let flows = mnt.0.join("node").join(podnet_netlink::flows::FLOWS_MAP);
    let n = podnet_netlink::flows::forget(&flows, pod.into()).unwrap();
    assert!(n >= 3, "forgot {n} IPv6 flows of {pod}");
    assert_eq!(
        run(&to_pod, &tcp6(other, 443, pod, 50000, ACK)),
        SHOT,
        "a forgotten flow's reply"
    );
    drop(dp);
}

/// A pod on node1 labelled `app: NAME` serving UDP 5353, at `ip` if given.
fn udp_pod(ns: &str, name: &str, ip: Option<Ipv4Addr>) -> String {
    let ann = ip
        .map(|ip| format!("  annotations:\n    podnet.dev/ip: \"{ip}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {name}\n{ann}spec:\n  nodeName: node1\n  containers:\n  - ports:\n    - containerPort: 5353\n      protocol: UDP\n"
    )
}

/// A policy in `ns` isolating the ingress of every pod there, admitting `from` (pods
/// of namespace t1 labelled `app: from`) if given.
fn ingress_policy(ns: &str, name: &str, from: Option<&str>) -> String {
    let rule = from
        .map(|f| {
            format!(
                "  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: t1\n      podSelector:\n        matchLabels:\n          app: {f}\n"
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n{rule}"
    )
}

/// Sends `tries` datagrams on `sock` to `to`, 300 ms apart; whether any was echoed.
fn echoed(sock: &std::net::UdpSocket, to: std::net::SocketAddrV4, tries: usize) -> bool {
    sock.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    // Whatever an earlier exchange left unread is not an answer to these.
    sock.set_nonblocking(true).unwrap();
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    (0..tries).any(|i| {
        let msg = format!("continued {i}");
        sock.send_to(msg.as_bytes(), to).unwrap();
        matches!(sock.recv_from(&mut buf), Ok((n, from)) if from == to.into() && buf[..n] == *msg.as_bytes())
    })
}

/// Pod `old` (t1, address X) has a UDP flow with `peer` (t1) that its policy admits.
/// `old` is deleted and `new` (t2, same address X, ingress closed to everyone) takes
/// its address. The peer's next datagrams of the *same* flow (same socket, same
/// 5-tuple) must not reach `new`: neither the node's conntrack entry nor the eBPF
/// flow table entry of the old flow may vouch for them. Once t2 admits the peer, the
/// same datagrams are answered (the path and new's server work).
fn reused_address_inherits_no_connections(datapath: &str) {
    require_root();
    let lab = TestLab::up(&[
        "--nodes",
        "1",
        "--pods-per-node",
        "0",
        "--policy-datapath",
        datapath,
    ]);
    let node: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/podnet/lab/{}/node1/node.json", lab.name)).unwrap(),
    )
    .unwrap();
    let net: Ipv4Addr = node["podCIDR"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let o = net.octets();
    let x = Ipv4Addr::new(o[0], o[1], o[2], 77);
    lab.pipe_ok(
        "apply",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: t1\n".to_string(),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: t2\n".to_string(),
            ingress_policy("t1", "only-peer", Some("peer")),
            ingress_policy("t2", "deny", None),
            udp_pod("t1", "peer", None),
            udp_pod("t1", "old", Some(x)),
        ]
        .join("---\n"),
    );
    let st = lab.json(&["status", "--output", "json"]);
    let (peer_ip, _) = lab_pod(&st, "t1.peer");
    assert_eq!(lab_pod(&st, "t1.old").0, x);
    let peer_ns = podnet_netlink::Netns::open(podnet_netlink::netns::named_path(&format!(
        "{}-t1.peer",
        lab.name
    )))
    .unwrap();
    let sock = peer_ns
        .run(|| std::net::UdpSocket::bind((peer_ip, 40001)))
        .unwrap()
        .unwrap();
    let to = std::net::SocketAddrV4::new(x, 5353);
    assert!(
        echoed(&sock, to, 10),
        "{datapath}: the peer's flow to old ({x}) is not answered"
    );

    // What the node remembers of connections of X: its conntrack entries, and on the
    // eBPF datapath the keys of the pinned flow table.
    let remembered = || -> (usize, usize) {
        let ct = lab
            .ns("node1")
            .run(|| {
                podnet_netlink::conntrack::open()
                    .unwrap()
                    .map(|mut s| podnet_netlink::conntrack::list(&mut s).unwrap())
            })
            .unwrap()
            .unwrap_or_default()
            .iter()
            .filter(|e| e.involves(x))
            .count();
        let flows = node["policyPrograms"]["fromPod"].as_str().map_or(0, |p| {
            let path = std::path::Path::new(p).parent().unwrap().join("flows");
            let map = bpf::obj_get(&path).unwrap();
            let info = bpf::map_info(&map).unwrap();
            bpf::raw_keys(&map, &info)
                .unwrap()
                .iter()
                .filter(|k| k[0..4] == x.octets() || k[4..8] == x.octets())
                .count()
        });
        (ct, flows)
    };
    let (ct, flows) = remembered();
    if datapath == "nftables" {
        assert!(ct > 0, "no conntrack entry for the flow to {x}");
    } else {
        assert!(flows > 0, "no flow-table entry for the flow to {x}");
    }
    lab.pipe_ok("delete", &udp_pod("t1", "old", Some(x)));
    assert_eq!(
        remembered(),
        (0, 0),
        "{datapath}: DEL of old left connections of {x}"
    );
    lab.pipe_ok("apply", &udp_pod("t2", "new", Some(x)));
    let st = lab.json(&["status", "--output", "json"]);
    assert_eq!(lab_pod(&st, "t2.new").0, x);
    assert!(
        !echoed(&sock, to, 5),
        "{datapath}: new ({x}, ingress closed) answered the peer's datagrams of old's flow: the flow's allowance outlived old"
    );
    // A fresh flow is denied too (the policy is in force at all).
    let fresh = peer_ns
        .run(|| std::net::UdpSocket::bind((peer_ip, 40002)))
        .unwrap()
        .unwrap();
    assert!(
        !echoed(&fresh, to, 2),
        "{datapath}: new admitted a fresh flow"
    );
    // Once t2 admits the peer, the same datagrams are answered by new.
    lab.pipe_ok("apply", &ingress_policy("t2", "deny", Some("peer")));
    assert!(
        echoed(&sock, to, 10),
        "{datapath}: new does not answer the peer even once admitted"
    );
}

#[test]
fn reused_address_inherits_no_connections_nftables() {
    reused_address_inherits_no_connections("nftables");
}

#[test]
fn reused_address_inherits_no_connections_ebpf() {
    reused_address_inherits_no_connections("ebpf");
}

/// GC frees the addresses of attachments the runtime no longer lists: their conntrack
/// entries in the node go with them, and the node's other entries stay.
#[test]
fn gc_forgets_the_connections_of_the_addresses_it_frees() {
    use podnet_netlink::conntrack;
    let node = Node::new("10.201.9.0/24");
    let mut conf = node.conf.clone();
    // No agent here: no eBPF flow table to look for.
    conf["nodeFile"] = serde_json::json!(node.dir.path().join("no-agent.json"));
    let pod = node.pod();
    let o = node.call_with(
        &conf,
        "ADD",
        "gc1",
        &pod.path().display().to_string(),
        "eth0",
    );
    assert!(o.ok(), "ADD: {} {}", o.stdout, o.stderr);
    let ip = result_ip(&o.json());
    // The node tracks what it sends (an nftables rule using conntrack), and sends UDP
    // to the pod and to an address of no pod.
    let other = Ipv4Addr::new(10, 201, 9, 200);
    for rule in [
        "add table inet pngc",
        "add chain inet pngc out { type filter hook output priority 0; }",
        "add rule inet pngc out ct state new accept",
    ] {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &node.ns.name, "nft", rule])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "nft {rule}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let entries = || {
        node.ns
            .ns
            .run(|| conntrack::list(&mut conntrack::open().unwrap().unwrap()))
            .unwrap()
            .unwrap()
    };
    node.ns
        .ns
        .run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for to in [ip, other] {
                s.send_to(b"x", (to, 9)).unwrap();
            }
        })
        .unwrap();
    wait_until(
        "conntrack entries for both",
        std::time::Duration::from_secs(2),
        || {
            let es = entries();
            es.iter().any(|e| e.involves(ip)) && es.iter().any(|e| e.involves(other))
        },
    );
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    let o = node.call_with(&gc, "GC", "", "", "");
    assert!(o.ok(), "GC: {} {}", o.stdout, o.stderr);
    assert!(node.allocations().is_empty());
    let es = entries();
    assert!(
        !es.iter().any(|e| e.involves(ip)),
        "{ip} still tracked: {es:?}"
    );
    assert!(
        es.iter().any(|e| e.involves(other)),
        "other entries went too: {es:?}"
    );
}

/// A DEL that cannot tell whether connections of the address remain (here: the
/// agent's node file, which names the flow table, is unreadable) fails and keeps the
/// address allocated; once the file is sound, the retried DEL releases it.
#[test]
fn del_keeps_the_address_while_its_connections_cannot_be_forgotten() {
    let node = Node::new("10.201.10.0/24");
    let file = node.dir.path().join("node.json");
    let mut conf = node.conf.clone();
    conf["nodeFile"] = serde_json::json!(file);
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    let o = node.call_with(&conf, "ADD", "keep1", &netns, "eth0");
    assert!(o.ok(), "ADD: {} {}", o.stdout, o.stderr);
    let ip = result_ip(&o.json());
    std::fs::write(&file, b"{half a json").unwrap();
    let o = node.call_with(&conf, "DEL", "keep1", &netns, "eth0");
    assert!(!o.ok(), "DEL succeeded without knowing the flow table");
    let e = o.json();
    assert_eq!(e["code"], 5, "{e}");
    assert!(
        e["details"].as_str().unwrap().contains("stays allocated"),
        "{e}"
    );
    assert!(node.host_veths().is_empty(), "the pod was not disconnected");
    assert_eq!(node.allocations(), vec![(ip, "keep1".to_string())]);
    // The agent rewrote its file (a node without the eBPF datapath): DEL completes.
    std::fs::write(&file, br#"{"podCIDR":"10.201.10.0/24"}"#).unwrap();
    let o = node.call_with(&conf, "DEL", "keep1", &netns, "eth0");
    assert!(o.ok(), "retried DEL: {} {}", o.stdout, o.stderr);
    assert!(node.allocations().is_empty());
}

/// p's ingress closed to everyone.
const CLOSE_P: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: close-p\n  namespace: t1\nspec:\n  podSelector:\n    matchLabels:\n      app: p\n  policyTypes: [Ingress]\n";

/// The peer's side of a removed pod: `p` (node2, ingress closed to everyone) sent UDP
/// to `old` (node1, address X) and got its echo, so node2 tracks the flow p ↔ X. `old`
/// goes and `new` (no labels, same X) sends "replies" of that flow to p. Node2's agent
/// must have forgotten the flow when `old` went: they are refused at p's ingress.
fn peer_node_forgets_a_removed_pods_connections(datapath: &str) {
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "0",
        "--policy-datapath",
        datapath,
    ]);
    let p = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: t1\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: t1\n  labels:\n    app: p\nspec:\n  nodeName: node2\n---\n";
    lab.pipe_ok(
        "apply",
        &format!("{p}{}---\n{CLOSE_P}", udp_pod("t1", "old", None)),
    );
    let st = lab.json(&["status", "--output", "json"]);
    let (x, _) = lab_pod(&st, "t1.old");
    let (pip, _) = lab_pod(&st, "t1.p");
    // p → old:5353 from p:4000, echoed: a reply admitted through p's closed ingress.
    let pns = lab.ns("t1.p");
    let sock = pns
        .run(|| std::net::UdpSocket::bind("0.0.0.0:4000").unwrap())
        .unwrap();
    let to = std::net::SocketAddrV4::new(x, 5353);
    assert!(
        echoed(&sock, to, 3),
        "{datapath}: p never heard old's echo: the flow was never there"
    );
    // old goes; new takes X, with no server (its test socket is the "reply").
    lab.pipe_ok("delete", &udp_pod("t1", "old", None));
    let new = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: new\n  namespace: t1\n  annotations:\n    podnet.dev/ip: \"{x}\"\nspec:\n  nodeName: node1\n"
    );
    lab.pipe_ok("apply", &new);
    assert_eq!(
        lab_pod(&lab.json(&["status", "--output", "json"]), "t1.new").0,
        x
    );
    sock.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let forged = lab.ns("t1.new").run(move || {
        let s = std::net::UdpSocket::bind((x, 5353)).unwrap();
        for i in 0..5 {
            s.send_to(format!("reply {i}").as_bytes(), (pip, 4000))
                .unwrap();
        }
    });
    forged.unwrap();
    let mut buf = [0u8; 64];
    let heard = sock
        .recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (from, buf[..n].to_vec()));
    assert_eq!(
        heard, None,
        "{datapath}: p, whose ingress is closed, heard new at the removed pod's address"
    );
    // The path itself works: once p's ingress admits new's namespace, it is heard.
    lab.pipe_ok("delete", CLOSE_P);
    lab.ns("t1.new")
        .run(move || {
            let s = std::net::UdpSocket::bind((x, 5353)).unwrap();
            s.send_to(b"reply after", (pip, 4000)).unwrap();
        })
        .unwrap();
    assert!(
        sock.recv_from(&mut buf).is_ok(),
        "{datapath}: p hears nothing from new even when open: the check above proves nothing"
    );
}

#[test]
fn peer_node_forgets_a_removed_pods_connections_nftables() {
    peer_node_forgets_a_removed_pods_connections("nftables");
}

#[test]
fn peer_node_forgets_a_removed_pods_connections_ebpf() {
    peer_node_forgets_a_removed_pods_connections("ebpf");
}

/// One tenant's oversized policy: an ipBlock with 1 000 excepts times 150 ports (1.2
/// million entries, more than the eBPF maps hold). The pod it selects stays closed,
/// said in `policy stats` and `trace`; a pod made after it is programmed as usual.
fn an_oversized_policy_closes_only_the_pods_it_selects(datapath: &str) {
    let lab = TestLab::up(&["--nodes", "1", "--policy-datapath", datapath]);
    let excepts: String = (0..1000)
        .map(|i| format!("        - 10.{}.{}.7/32\n", i / 250, i % 250))
        .collect();
    let ports: String = (0..150)
        .map(|i| format!("    - port: {}\n", 2000 + 2 * i))
        .collect();
    let big = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: victim\n  namespace: big\n  labels:\n    app: victim\nspec:\n  nodeName: node1\n  containers:\n  - ports:\n    - containerPort: 2000\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: huge\n  namespace: big\nspec:\n  podSelector:\n    matchLabels:\n      app: victim\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 0.0.0.0/0\n        except:\n{excepts}    ports:\n{ports}"
    );
    lab.pipe_ok("apply", &big);
    let later = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: later\nspec:\n  nodeName: node1\n  containers:\n  - ports:\n    - containerPort: 8080\n";
    lab.pipe_ok("apply", later);
    let probe = |to: &str, port: &str| lab.run(&["probe", "p1a", to, "--port", port]).status.code();
    assert_eq!(
        probe("later", "8080"),
        Some(0),
        "{datapath}: a pod made after the oversized policy is not programmed"
    );
    assert_eq!(
        probe("p1b", "7777"),
        Some(0),
        "{datapath}: another pod lost its network"
    );
    assert_eq!(
        probe("big/victim", "2000"),
        Some(1),
        "{datapath}: the oversized pod is open"
    );
    let stats = podnet()
        .args(["policy", "stats", "--lab", &lab.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(
        text.contains("big/victim") && text.contains("left closed") && text.contains("big/huge"),
        "{datapath}: policy stats does not say why: {text}"
    );
    let trace = podnet()
        .args([
            "trace",
            "--lab",
            &lab.name,
            "p1a",
            "big/victim",
            "--port",
            "2000",
        ])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&trace.stdout);
    assert!(
        t.contains("left it closed"),
        "{datapath}: trace does not say why: {t}"
    );
    let metrics = lab.metrics_text("node1");
    assert!(
        metrics.lines().any(|l| l == "podnet_policy_pods_refused 1"),
        "{datapath}: the metric does not count the pod left closed"
    );
}

#[test]
fn an_oversized_policy_closes_only_the_pods_it_selects_nftables() {
    an_oversized_policy_closes_only_the_pods_it_selects("nftables");
}

#[test]
fn an_oversized_policy_closes_only_the_pods_it_selects_ebpf() {
    an_oversized_policy_closes_only_the_pods_it_selects("ebpf");
}
