//! Upgrades of the eBPF policy datapath: a podnetd that finds pinned maps of another
//! layout, and pod veths running another build's programs, ends on this build's maps
//! and programs everywhere without opening a pod on the way.
//!
//! An "older build" is simulated on a running lab: node1's agent is killed, one pinned
//! map (`pod_policy`) is swapped for a map of another value size and size (the running
//! programs keep the real one, as they would an old build's), and one of p1b's policy
//! filters is made to run another program (drop everything, so a pod left on it
//! shows). `lab up` starts the agent again. With the fast path, its filters on the
//! overlay and underlay devices must end on this build's programs too.

use crate::common::*;
use podnet_netlink::{bpf, link, tc, Socket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const TENANTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tenants.yaml");

/// The probe's verdict: true if it got through (exit 0), false if refused (exit 1).
fn probe(lab: &TestLab, to: &str, port: &str) -> bool {
    let o = lab.run(&["probe", "p1a", to, "--port", port]);
    match o.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "probe failed to run: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> OwnedFd {
    // SAFETY: attr is a buffer we own, of the length given.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    assert!(r >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    // SAFETY: a successful BPF_MAP_CREATE or BPF_PROG_LOAD returns a new fd.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// `BPF_MAP_CREATE` of a hash map; `BPF_OBJ_PIN` at `path`.
fn pin_hash_map(path: &Path, key: u32, value: u32, entries: u32) -> OwnedFd {
    let mut a = [0u8; 128];
    a[0..4].copy_from_slice(&1u32.to_ne_bytes()); // BPF_MAP_TYPE_HASH
    a[4..8].copy_from_slice(&key.to_ne_bytes());
    a[8..12].copy_from_slice(&value.to_ne_bytes());
    a[12..16].copy_from_slice(&entries.to_ne_bytes());
    a[28..38].copy_from_slice(b"pod_policy");
    let map = sys_bpf(0, &mut a);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut a = [0u8; 128];
    a[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    a[8..12].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: as in sys_bpf; BPF_OBJ_PIN returns 0.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 6, a.as_mut_ptr(), a.len()) };
    assert_eq!(
        r,
        0,
        "pin at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    map
}

/// A tc classifier of another build: `r0 = TC_ACT_SHOT; exit`.
fn drop_all_program() -> OwnedFd {
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut a = [0u8; 128];
    a[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    a[4..8].copy_from_slice(&2u32.to_ne_bytes());
    a[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    a[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    sys_bpf(5, &mut a)
}

/// The kernel id of the program pinned at `path`.
fn pinned_prog(path: &Path) -> u32 {
    bpf::prog_id(&bpf::obj_get(path).unwrap()).unwrap()
}

/// podnet's filters of the eBPF datapath and the program pinned for each.
const FILTERS: [(&str, &str); 4] = [
    ("podnet_policy_out", "from_pod_policy"),
    ("podnet_policy_in", "to_pod_policy"),
    ("podnet_fast_in", "from_overlay"),
    ("podnet_fast_ul", "from_underlay"),
];

/// Every such filter on node1's links: (link, filter name, program id).
fn policy_filters(lab: &TestLab) -> Vec<(String, String, u32)> {
    lab.ns("node1")
        .run(|| {
            let mut s = Socket::route().unwrap();
            let mut out = vec![];
            for l in link::list(&mut s).unwrap() {
                let ing = tc::list_ingress(&mut s, l.index).unwrap();
                let eg = tc::list_egress(&mut s, l.index).unwrap();
                for f in ing.into_iter().chain(eg) {
                    if let (Some(n), Some(id)) = (&f.name, f.prog_id) {
                        if FILTERS.iter().any(|(f, _)| f == n) {
                            out.push((l.name.clone(), n.clone(), id));
                        }
                    }
                }
            }
            out
        })
        .unwrap()
}

fn agent_log(lab: &TestLab) -> String {
    std::fs::read_to_string(format!("/run/podnet/lab/{}/node1/podnetd.log", lab.name))
        .expect("node1's agent log")
}

/// `fast`: with the fast path (`--datapath ebpf`), where p1a reaches p1b without
/// passing p1b's host veth: the old program goes on p1b's ingress filter (what p1b
/// sends) instead of its egress.
fn upgrade(fast: bool) {
    let args = [
        "--nodes",
        "2",
        "--policy-datapath",
        "ebpf",
        "--datapath",
        if fast { "ebpf" } else { "bridge" },
    ];
    let lab = TestLab::up(&args);
    let o = lab.run(&["apply", "-f", TENANTS]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Denied: p1a (node1) → tenant-b/db (node1). Allowed: p1a → p1b (node1, open).
    assert!(!probe(&lab, "tenant-b/db", "5432"), "db must be denied");
    assert!(probe(&lab, "p1b", "7777"), "p1b must be reachable");
    let bpf_dir = PathBuf::from(format!("/run/podnet/lab/{}/bpf/node1", lab.name));
    let log_before = agent_log(&lab).len();

    // The older build: its agent is gone…
    let st = lab.json(&["status", "--output", "json"]);
    let pid = st["nodes"][0]["agent_pid"]
        .as_u64()
        .expect("node1's agent pid") as i32;
    // SAFETY: killing the agent process this test's lab started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_until("node1's agent gone", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with(['Z', 'X']))
            })
            .unwrap_or(true)
    });
    // …its pod_policy had 8-byte values and 1024 entries (the running programs keep
    // the real map: they hold it themselves)…
    let pin = bpf_dir.join("pod_policy");
    std::fs::remove_file(&pin).unwrap();
    let old_map = pin_hash_map(&pin, 4, 8, 1024);
    let old_map_id = bpf::map_id(&old_map).unwrap();
    drop(old_map);
    // …and p1b's veth runs another program as a policy filter.
    let (p1b_ip, _) = lab_pod(&st, "p1b");
    let old_prog = drop_all_program();
    let old_prog_id = bpf::prog_id(&old_prog).unwrap();
    let p1b_veth = lab
        .ns("node1")
        .run(|| {
            let mut s = Socket::route().unwrap();
            let l = link::list(&mut s)
                .unwrap()
                .into_iter()
                .find(|l| {
                    podnet_netlink::antispoof::pod_state(&mut s, l.index)
                        .ok()
                        .flatten()
                        .is_some_and(|p| p.ip == p1b_ip)
                })
                .expect("p1b's host veth");
            let req = if fast {
                tc::bpf_ingress_replace_request(l.index, 2, &old_prog, "podnet_policy_out")
            } else {
                tc::bpf_egress_replace_request(l.index, 1, &old_prog, "podnet_policy_in")
            };
            for r in s.ack_all(vec![req]) {
                r.unwrap();
            }
            l.name
        })
        .unwrap();
    drop(old_prog);
    assert!(
        !probe(&lab, "p1b", "7777"),
        "p1b must be cut off by the old program: else the test proves nothing"
    );

    // The new podnetd starts, while a denied flow is probed again and again.
    let stop = AtomicBool::new(false);
    let (probes, leaks) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if probe(&lab, "tenant-b/db", "5432") {
                    leaks.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Whatever happens here, the prober stops (else the scope never ends).
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let o = lab.run(&[&["up"], &args[..]].concat());
            assert!(
                o.status.success(),
                "lab up: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            // This build's programs on every policy filter of node1 (p1b's included).
            let pinned: Vec<(&str, u32)> = FILTERS
                .iter()
                .filter(|(f, _)| fast || f.starts_with("podnet_policy_"))
                .map(|(f, p)| (*f, pinned_prog(&bpf_dir.join(p))))
                .collect();
            wait_until(
                "every podnet filter of node1 runs this build's programs",
                Duration::from_secs(20),
                || {
                    let f = policy_filters(&lab);
                    pinned
                        .iter()
                        .all(|(name, _)| f.iter().any(|(_, n, _)| n == name))
                        && f.iter()
                            .all(|(_, n, id)| pinned.contains(&(n.as_str(), *id)))
                },
            );
            // The allowed flow works again (p1b's old program is gone).
            wait_until("p1a reaches p1b", Duration::from_secs(10), || {
                probe(&lab, "p1b", "7777")
            });
            // Three more denied probes after the switch.
            let n = probes.load(Ordering::Relaxed);
            wait_until("3 more probes", Duration::from_secs(30), || {
                probes.load(Ordering::Relaxed) >= n + 3
            });
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = done {
            std::panic::resume_unwind(p);
        }
    });
    let n = probes.load(Ordering::Relaxed);
    eprintln!("{n} probes of the denied flow during the upgrade");
    assert!(n >= 4, "only {n} probes of the denied flow");
    assert_eq!(
        leaks.load(Ordering::Relaxed),
        0,
        "tenant-b/db was reached during the upgrade ({n} probes)"
    );

    // The pinned map has this build's layout again; the hand-made one is not pinned.
    let m = bpf::obj_get(&pin).unwrap();
    assert_ne!(
        bpf::map_id(&m).unwrap(),
        old_map_id,
        "the old pod_policy is still pinned"
    );
    let info = bpf::map_info(&m).unwrap();
    assert_eq!((info.key_size, info.value_size), (4, 4), "{info:?}");
    assert!(
        policy_filters(&lab)
            .iter()
            .all(|(_, _, id)| *id != old_prog_id),
        "{p1b_veth} still runs the old program"
    );
    // Said in the log: which map, and that programs were replaced.
    let log = agent_log(&lab);
    let log = &log[log_before..];
    for l in log.lines().filter(|l| l.contains("layout")) {
        eprintln!("{l}");
    }
    assert!(
        log.contains("eBPF map layout mismatch")
            && log.contains("pod_policy is type 1, 4-byte keys, 8-byte values, 1024 entries"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("replaced another build's programs") && l.contains(&p1b_veth)),
        "{log}"
    );
    // And the denied flow is still denied; the allowed one still works.
    assert!(!probe(&lab, "tenant-b/db", "5432"));
    assert!(probe(&lab, "p1b", "7777"));
}

#[test]
fn a_new_podnetd_replaces_a_pinned_map_of_another_layout_and_old_programs_without_opening_pods() {
    upgrade(false);
}

#[test]
fn on_the_fast_path_a_new_podnetd_replaces_its_overlay_programs_too() {
    upgrade(true);
}
