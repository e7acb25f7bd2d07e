//! The multi-node lab: real agents, the VXLAN overlay on a namespace fabric, drift
//! repair, agent death, re-convergence, node removal, host-gw, and a clean teardown.
//! Each test owns a uniquely named lab and takes it down on drop.

use crate::common::{podnet, require_root, wait_until, TestLab};
use podnet_lab::traffic::probe::{self, Capture};
use podnet_netlink::netns;
use serde_json::Value;
use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Duration;

#[test]
fn three_nodes_full_mesh_without_nat_over_vxlan() {
    let lab = TestLab::up(&["--nodes", "3", "--pods-per-node", "2"]);
    let c = lab.full_mesh();
    assert_eq!(c["total"], 30);

    // lab status as scripts read it.
    let st = lab.json(&["status", "--output", "json"]);
    assert_eq!(st["fabric"]["bridge"], "fabric0");
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3);
    for n in st["nodes"].as_array().unwrap() {
        for k in [
            "name",
            "netns",
            "underlay_ip",
            "pod_cidr",
            "bridge",
            "vxlan_dev",
            "vtep_mac",
            "agent_pid",
        ] {
            assert!(!n[k].is_null(), "node field {k} missing: {n}");
        }
        assert_eq!(n["peers"], 2);
    }
    for p in st["pods"].as_array().unwrap() {
        for k in ["name", "node", "netns", "ip", "mac", "host_veth"] {
            assert!(!p[k].is_null(), "pod field {k} missing: {p}");
        }
    }

    // On the physical network: VXLAN (UDP 8472, VNI 1) between underlay IPs,
    // carrying the pods' own addresses.
    let pods = st["pods"].as_array().unwrap();
    let ip_of = |n: &str| {
        pods.iter().find(|p| p["name"] == n).unwrap()["ip"]
            .as_str()
            .unwrap()
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
    };
    let (src, dst) = (ip_of("p1a"), ip_of("p2a"));
    // node1's port on the fabric switch sees everything node1 sends.
    let cap = Capture::open(&lab.ns("fabric"), "node1").unwrap();
    let reply = probe::tcp_request(
        &lab.ns("p1a"),
        SocketAddrV4::new(dst, 7777),
        "wire",
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(reply, format!("from={src} wire"));
    let frames = cap.frames(Duration::from_millis(200));
    let vxlan: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| {
            f.len() > 14 + 20 + 8 + 8 + 14 + 20
                && f[12..14] == [8, 0]
                && f[23] == 17
                && f[36..38] == 8472u16.to_be_bytes()
        })
        .collect();
    assert!(
        !vxlan.is_empty(),
        "no VXLAN frame on the fabric among {} frames",
        frames.len()
    );
    let f = vxlan.iter().find(|f| {
        let inner = 14 + 20 + 8 + 8 + 14;
        f[26..30] == [192, 168, 1, 10]
            && f[30..34] == [192, 168, 1, 11]
            && f[inner + 12..inner + 16] == src.octets()
            && f[inner + 16..inner + 20] == dst.octets()
    });
    let f = f.expect("a VXLAN frame from node1 to node2 carrying p1a -> p2a");
    assert_eq!(f[42] & 0x08, 0x08, "VXLAN flags: VNI present");
    assert_eq!(&f[46..49], &[0, 0, 1], "VNI 1");
}

#[test]
fn drift_repair_agent_death_and_re_up() {
    let lab = TestLab::up(&["--nodes", "2", "--pods-per-node", "1"]);
    lab.full_mesh();
    let st = lab.json(&["status", "--output", "json"]);
    let node2 = &st["nodes"][1];
    let (cidr2, mac2) = (
        node2["pod_cidr"].as_str().unwrap().to_string(),
        node2["vtep_mac"].as_str().unwrap().to_string(),
    );

    // Someone deletes node1's FDB entry and route to node2: restored within 5 s.
    assert!(Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-node1", lab.name),
            "bridge",
            "fdb",
            "del",
            &mac2,
            "dev",
            "podnet.vxlan",
            "dst",
            "192.168.1.11",
            "self",
        ])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ip")
        .args(["-n", &format!("{}-node1", lab.name), "route", "del", &cidr2])
        .status()
        .unwrap()
        .success());
    assert!(
        !lab.sh("node1", &["bridge", "fdb", "show", "dev", "podnet.vxlan"])
            .contains(&mac2),
        "the FDB entry must be gone before the agent repairs it"
    );
    let took = wait_until("drift repaired", Duration::from_secs(5), || {
        lab.sh("node1", &["ip", "route", "show", &cidr2])
            .contains("podnet.vxlan")
            && lab
                .sh("node1", &["bridge", "fdb", "show", "dev", "podnet.vxlan"])
                .contains(&mac2)
    });
    eprintln!("drift repaired in {took:?}");
    let log =
        std::fs::read_to_string(format!("/run/podnet/lab/{}/node1/podnetd.log", lab.name)).unwrap();
    // The repair is logged as the command a person would type, devices by name.
    assert!(
        log.lines()
            .any(|l| l.contains("repairing drift: ip route add")
                && l.contains(&cidr2)
                && l.contains("dev podnet.vxlan")),
        "{log}"
    );

    // kill -9 of node1's agent: pod traffic goes on.
    let pid = st["nodes"][0]["agent_pid"].as_u64().unwrap() as i32;
    // SAFETY: killing the agent process this test's lab started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    lab.full_mesh();

    // `up` never changes a built lab's backend (the live agent would keep the old
    // one), and a pod name stays on its node.
    let o = lab.run(&[
        "up",
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--backend",
        "host-gw",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("backend vxlan (asked: host-gw)"),
        "{err}"
    );
    let o = lab.run(&["pod", "add", "p1a", "--node", "node2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("already exists on node1"),
        "{err}"
    );

    // `lab up` again: a new agent, adopting what exists — one route, one neighbour and
    // one FDB entry per peer, no duplicates.
    let o = lab.run(&["up", "--nodes", "2", "--pods-per-node", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st2 = lab.json(&["status", "--output", "json"]);
    assert_ne!(st2["nodes"][0]["agent_pid"], st["nodes"][0]["agent_pid"]);
    assert!(!st2["nodes"][0]["agent_pid"].is_null());
    assert_eq!(
        st2["pods"].as_array().unwrap().len(),
        2,
        "re-up duplicated pods"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let routes = lab.sh("node1", &["ip", "route", "show", "proto", "80"]);
    assert_eq!(routes.lines().count(), 1, "{routes}");
    let fdb = lab.sh("node1", &["bridge", "fdb", "show", "dev", "podnet.vxlan"]);
    assert_eq!(
        fdb.lines().filter(|l| l.contains("dst")).count(),
        1,
        "{fdb}"
    );
    let neigh = lab.sh("node1", &["ip", "neigh", "show", "dev", "podnet.vxlan"]);
    assert_eq!(neigh.lines().count(), 1, "{neigh}");
    lab.full_mesh();
}

#[test]
fn host_gw_and_node_removal() {
    let lab = TestLab::up(&[
        "--nodes",
        "3",
        "--pods-per-node",
        "1",
        "--backend",
        "host-gw",
    ]);
    lab.full_mesh();
    let st = lab.json(&["status", "--output", "json"]);
    let cidr3 = st["nodes"][2]["pod_cidr"].as_str().unwrap().to_string();
    let r = lab.sh("node1", &["ip", "route", "show", &cidr3]);
    assert!(
        r.contains("via 192.168.1.12 dev eth0"),
        "host-gw routes via the peer's underlay IP: {r}"
    );
    let (ok, _, err) = lab.sh_status("node1", &["ip", "link", "show", "podnet.vxlan"]);
    assert!(
        !ok && err.contains("does not exist"),
        "no VXLAN device with host-gw: {err}"
    );
    let mtu = lab.sh("p1a", &["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1500", "host-gw pods get the full underlay MTU");

    let o = lab.run(&["node", "del", "node3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(
        "node3 removed from its peers",
        Duration::from_secs(10),
        || {
            lab.sh("node1", &["ip", "route", "show", &cidr3]).is_empty()
                && lab.sh("node2", &["ip", "route", "show", &cidr3]).is_empty()
        },
    );
    let c = lab.full_mesh();
    assert_eq!(c["total"], 2);
}

#[test]
fn lab_down_leaves_nothing() {
    let lab = TestLab::up(&["--nodes", "2", "--pods-per-node", "2"]);
    let st = lab.json(&["status", "--output", "json"]);
    let pids: Vec<i64> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["agent_pid"].as_i64().unwrap())
        .collect();
    let o = lab.run(&["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left: Vec<String> = std::fs::read_dir(netns::NETNS_RUN_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{}-", lab.name)))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let lock = format!("/run/podnet/lab/.{}.lock", lab.name);
    assert!(!std::path::Path::new(&lock).exists(), "{lock} left behind");
    assert!(!std::path::Path::new(&format!("/run/podnet/lab/{}", lab.name)).exists());
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z') && !r.starts_with('X'));
        assert!(!running, "agent {pid} still running");
    }
    let o = lab.run(&["status"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no lab"));
}

#[test]
fn the_same_lab_on_a_real_etcd() {
    let lab = TestLab::up(&[
        "--nodes",
        "3",
        "--pods-per-node",
        "1",
        "--datastore",
        "etcd",
    ]);
    let c = lab.full_mesh();
    assert_eq!(c["total"], 6);
    let st = lab.json(&["status", "--output", "json"]);
    let cidrs: std::collections::HashSet<&str> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["pod_cidr"].as_str().unwrap())
        .collect();
    assert_eq!(
        cidrs.len(),
        3,
        "each node leased its own CIDR from etcd: {st}"
    );
    let log =
        std::fs::read_to_string(format!("/run/podnet/lab/{}/node1/podnetd.log", lab.name)).unwrap();
    assert!(log.contains("datastore etcd://192.168.1.2:2379"), "{log}");
    let cidr3 = st["nodes"][2]["pod_cidr"].as_str().unwrap().to_string();
    let o = lab.run(&["node", "del", "node3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(
        "node3 removed from its peers through etcd",
        Duration::from_secs(10),
        || lab.sh("node1", &["ip", "route", "show", &cidr3]).is_empty(),
    );
}

#[test]
fn no_repair_leaves_hand_made_breakage_alone() {
    let lab = TestLab::up(&["--nodes", "2", "--pods-per-node", "1", "--no-repair"]);
    lab.full_mesh();
    let st = lab.json(&["status", "--output", "json"]);
    let cidr2 = st["nodes"][1]["pod_cidr"].as_str().unwrap().to_string();
    Command::new("ip")
        .args(["-n", &format!("{}-node1", lab.name), "route", "del", &cidr2])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.sh("node1", &["ip", "route", "show", &cidr2]).is_empty(),
        "--no-repair must not restore the route"
    );
    let c = lab.json(&["check", "--output", "json"]);
    assert_ne!(
        c["reachable"], c["total"],
        "with the route gone, node1's pod cannot reach node2's"
    );
}

/// `podnet bench ARGS --output json`, which must succeed: its report.
fn bench_json(args: &[&str]) -> Value {
    let o = podnet()
        .arg("bench")
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn datapath_benchmark_measures_every_path() {
    require_root();
    let r = bench_json(&[
        "datapath",
        "--seconds",
        "1",
        "--round-trips",
        "200",
        "--rounds",
        "1",
    ]);
    let paths = r["paths"].as_array().unwrap();
    let names: Vec<&str> = paths.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 20, "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.contains("IPv6")).count(),
        6,
        "{names:?}"
    );
    assert!(r["ipv6_underlay_vs_ipv4_fast_cross_node"].as_f64().unwrap() > 0.0);
    assert!(
        r["ipv6_underlay_vs_ipv4_bridge_cross_node"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(r["ipv6_fast_vs_bridge_cross_node"].as_f64().unwrap() > 0.0);
    assert!(r["fast_same_node_vs_veth"].as_f64().unwrap() > 0.0);
    assert!(r["bridge_policy_vs_bridge_same_node"].as_f64().unwrap() > 0.0);
    assert!(r["bridge_vs_peer_cross_node"].as_f64().unwrap() > 0.0);
    assert!(r["allowed_events_vs_drop_events"].as_f64().unwrap() > 0.0);
    assert!(names.iter().any(|n| n.contains("wireguard")), "{names:?}");
    for p in paths {
        assert!(p["gbit_per_s"].as_f64().unwrap() > 0.01, "{p}");
        assert!(p["rtt_us"].as_f64().unwrap() > 0.0, "{p}");
        let cpu = p["cpu_cores_per_gbit_s"].as_f64().unwrap();
        assert!(cpu > 0.0 && cpu.is_finite(), "{p}");
    }
    assert!(r["podnet_vs_peer_cross_node"].as_f64().unwrap().is_finite());
    assert!(r["wireguard_vs_vxlan"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_new_peer_is_routed_within_a_second() {
    let lab = TestLab::up(&["--nodes", "2", "--pods-per-node", "0"]);
    let record = std::path::PathBuf::from(format!(
        "/run/podnet/lab/{}/datastore/nodes/node3.json",
        lab.name
    ));
    let child = podnet()
        .args([
            "lab",
            "--name",
            &lab.name,
            "up",
            "--nodes",
            "3",
            "--pods-per-node",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // node3 appears in the datastore…
    wait_until("node3 registered", Duration::from_secs(10), || {
        record.exists()
    });
    let rec: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let cidr = rec["pod_cidr"].as_str().unwrap().to_string();
    // …and node1 routes its CIDR within a second.
    let took = wait_until("node1 routes node3's CIDR", Duration::from_secs(1), || {
        lab.sh("node1", &["ip", "route", "show", &cidr])
            .contains("podnet.vxlan")
    });
    eprintln!("peer routed {took:?} after it registered");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
}

#[test]
fn damaged_and_conflicting_peer_records_are_skipped() {
    let lab = TestLab::up(&["--nodes", "2", "--pods-per-node", "1"]);
    let nodes = format!("/run/podnet/lab/{}/datastore/nodes", lab.name);
    let st = lab.json(&["status", "--output", "json"]);
    let cidr2 = st["nodes"][1]["pod_cidr"].as_str().unwrap().to_string();
    // One record that is not JSON, one that claims node2's CIDR from elsewhere.
    std::fs::write(format!("{nodes}/zz-damaged.json"), "{\"name\": \"zz\", ").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let thief = serde_json::json!({
        "name": "yy-thief", "pod_cidr": cidr2, "underlay_ip": "192.168.1.99",
        "vtep_mac": "0a:59:c0:a8:01:63", "backend": "vxlan", "renewed": now, "ttl_secs": 600,
    });
    std::fs::write(format!("{nodes}/yy-thief.json"), thief.to_string()).unwrap();
    let log = format!("/run/podnet/lab/{}/node1/podnetd.log", lab.name);
    wait_until(
        "node1 reports both records",
        Duration::from_secs(10),
        || {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            l.contains("zz-damaged.json") && l.contains("ignoring peer yy-thief: its pod CIDR")
        },
    );
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(l.contains(&format!("overlaps node2's ({cidr2})")), "{l}");
    // node2 keeps its route on node1; the mesh holds; the agent did not stop.
    let route = lab.sh("node1", &["ip", "route", "show", &cidr2]);
    assert!(route.contains("podnet.vxlan"), "{route}");
    let m = lab.full_mesh();
    assert_eq!(m["reachable"], m["total"], "{m}");
    let st = lab.json(&["status", "--output", "json"]);
    assert!(st["nodes"][0]["agent_pid"].is_number(), "{st}");
}

/// SIGTERM stops podnetd at once and takes nothing down: the WireGuard device process
/// (a session of its own) keeps every tunnel, pods keep reaching each other, and `lab
/// up` starts a new agent that adopts it all.
#[test]
fn sigterm_stops_the_agent_promptly_and_leaves_the_datapath() {
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--backend",
        "wireguard",
    ]);
    lab.full_mesh();
    let st = lab.json(&["status", "--output", "json"]);
    let agent = st["nodes"][0]["agent_pid"].as_i64().unwrap() as i32;
    let cidr = st["nodes"][0]["pod_cidr"].as_str().unwrap().to_string();
    let dir = format!("/run/podnet/lab/{}", lab.name);
    let device: i32 = std::fs::read_to_string(format!("{dir}/pids/node1-wireguard.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Running, not a zombie waiting for its parent.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, r)| !r.starts_with(['Z', 'X']))
            })
            .unwrap_or(false)
    };
    assert!(alive(agent) && alive(device));

    // SAFETY: signalling the agent process this test's lab started.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGTERM) }, 0);
    let took = wait_until(
        "node1's agent exits on SIGTERM",
        Duration::from_secs(2),
        || !alive(agent),
    );
    eprintln!("podnetd exited {took:?} after SIGTERM");
    let log = std::fs::read_to_string(format!("{dir}/node1/podnetd.log")).unwrap();
    assert!(
        log.contains("podnetd: SIGTERM: stopping; the datapath stays as it is"),
        "{log}"
    );
    assert!(
        alive(device),
        "the WireGuard device process died with the agent"
    );
    // Nothing was taken down: the agent's route and every pair of pods still work.
    let routes = lab.sh("node1", &["ip", "route", "show", "proto", "80"]);
    assert_eq!(routes.lines().count(), 1, "{routes}");
    let m = lab.full_mesh();
    assert_eq!(m["reachable"], 2, "{m}");

    // `lab up` again: a new agent, the same lease, its peer, the same device.
    let o = lab.run(&["up", "--nodes", "2", "--pods-per-node", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(
        "node1's new agent converges",
        Duration::from_secs(10),
        || {
            let st = lab.json(&["status", "--output", "json"]);
            let n = &st["nodes"][0];
            n["agent_pid"].as_i64().is_some_and(|p| p as i32 != agent)
                && n["pod_cidr"] == cidr.as_str()
                && n["peers"] == 1
        },
    );
    assert!(
        alive(device),
        "the new agent replaced the running device process"
    );
    lab.full_mesh();
}

/// The default is the eBPF fast path with the eBPF policy datapath, as the agents run
/// it (not only as the lab records it); a combination that cannot work is refused
/// before anything is made, naming the flag to change.
#[test]
fn the_fast_path_is_the_default_and_impossible_combinations_are_refused() {
    let lab = TestLab::up(&["--nodes", "1", "--pods-per-node", "1"]);
    let st = lab.json(&["status", "--output", "json"]);
    assert_eq!(
        (st["datapath"].as_str(), st["policy_datapath"].as_str()),
        (Some("ebpf"), Some("ebpf")),
        "{st}"
    );
    let agent = podnet_lab::Lab::open(&lab.name).unwrap().agent("node1");
    let status = agent.status().expect("node1's agent answers");
    assert_eq!(status.datapath, podnet_conventions::Datapath::Ebpf);
    let policy = agent.policy().expect("node1's agent answers");
    assert_eq!(policy.datapath, podnet_conventions::PolicyDatapath::Ebpf);
    assert!(
        policy.fast_path.is_some(),
        "node1 runs no fast path: {policy:?}"
    );

    let refused = TestLab {
        name: format!("{}r", lab.name),
    };
    let o = refused.run(&["up", "--datapath", "ebpf", "--policy-datapath", "nftables"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the fast path ran with nftables: {err}"
    );
    assert!(
        err.contains("Drop --policy-datapath") && err.contains("--datapath bridge"),
        "{err}"
    );
    assert!(
        !std::path::Path::new(&format!("/run/podnet/lab/{}", refused.name)).exists(),
        "a refused lab left its directory"
    );
}

/// `bench cni` breaks podnet-cni's invocations down step by step (from the plugin's
/// timing marks), measures dual-stack pods too, and leaves no bpffs mounted.
#[test]
fn cni_benchmark_breaks_every_add_down() {
    require_root();
    let r = bench_json(&["cni", "--pods", "12", "--concurrency", "3"]);
    assert_eq!(r["rows"].as_array().unwrap().len(), 4, "{r}");
    for mode in ["sequential", "concurrent ×3"] {
        let steps: Vec<&str> = r["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["mode"] == mode && b["verb"] == "ADD")
            .map(|b| b["step"].as_str().unwrap())
            .collect();
        for want in [
            "exec (spawn to main)",
            "anti-spoofing program ready",
            "address assigned",
            "veth pair created",
            "anti-spoofing installed",
            "pod side configured",
            "result written, exit",
        ] {
            assert!(steps.contains(&want), "{mode}: no {want:?} in {steps:?}");
        }
    }
    // `--ip-family dual`: both plugins give dual-stack pods (a plugin's failed ADD or
    // DEL fails the benchmark) and the report says which family it measured. (In this
    // test: the mount check below sees every benchmark's bpffs.)
    let r = bench_json(&[
        "cni",
        "--pods",
        "6",
        "--concurrency",
        "2",
        "--ip-family",
        "dual",
    ]);
    assert_eq!(r["ip_family"], "dual", "{r}");
    assert_eq!(r["rows"].as_array().unwrap().len(), 4, "{r}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("podnet-bench"), "a bpffs stayed mounted");
}
