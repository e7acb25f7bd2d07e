//! The eBPF policy programs on test packets (BPF_PROG_TEST_RUN): maps written by the
//! agent's own code from a compiled table, then every verdict checked — admitted
//! peer and port, other peer, other port, a closed address, the node, a reply, a
//! stray reply, a new connection reusing an old flow's ports, IPv6, ARP.
//!
//! The maps are pinned in a bpffs mounted for the test in a scratch directory and
//! unmounted at the end.

use crate::common::require_root;
use podnet_agent::ebpf::{self, EbpfDatapath};
use podnet_netlink::bpf;
use podnet_policy::compile::{Allow, PodTables, Ports, Table};
use podnet_policy::net::Prefix;
use podnet_policy::Proto;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

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

#[test]
fn policy_programs_on_test_packets() {
    require_root();
    let dir = std::env::temp_dir().join(format!("podnet-bpffs-{}", std::process::id()));
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
    let mnt = Bpffs(dir.clone());
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
            ingress: Table::Isolated {
                policies: vec!["x/p".into()],
                allow: BTreeSet::from([Allow {
                    net: Prefix::host(client),
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
    let mut dp = EbpfDatapath::open(&mnt.0.join("node")).expect("load the policy programs");
    dp.program(&ebpf::desired(&tables)).unwrap();
    dp.set_node_addrs(&[node]).unwrap();
    let to_pod = dp.program_fd(ebpf::TO_POD).unwrap();
    let from_pod = dp.program_fd(ebpf::FROM_POD).unwrap();
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
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(name, got, want)| format!("{name}: verdict {got}, want {want}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The refusals were counted per pod and direction, and for the closed address.
    let (per_pod, closed_count) = ebpf::counters(&mnt.0.join("node")).unwrap();
    assert_eq!(
        per_pod.get(&(pod, podnet_policy::Direction::Ingress)),
        Some(&5),
        "{per_pod:?}"
    );
    assert_eq!(closed_count, 1);
    // The kernel holds the pod as programmed, and not the closed address.
    assert!(ebpf::holds(&mnt.0.join("node"), pod));
    assert!(!ebpf::holds(&mnt.0.join("node"), closed));
    drop(dp);
}
