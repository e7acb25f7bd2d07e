//! Enforcement drift: what an operator's firewall reload or a careless `tc` does to a
//! node's enforcement objects is put back by the agent within 2 s, counted and logged,
//! and `trace`/`doctor` say the truth meanwhile (a missing table is *open*).

use crate::common::*;
use podnet_netlink::{link, Socket};
use std::time::Duration;

const TENANTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tenants.yaml");

fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// p1a (node1) → tenant-b/db (node1, default-denied): a same-node denied flow.
fn db_denied(lab: &TestLab) -> bool {
    let o = lab.run(&["probe", "p1a", "tenant-b/db", "--port", "5432"]);
    match o.status.code() {
        Some(1) => true,
        Some(0) => false,
        _ => panic!(
            "probe failed to run: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

fn log(lab: &TestLab, node: &str) -> String {
    std::fs::read_to_string(format!("/run/podnet/lab/{}/{node}/podnetd.log", lab.name))
        .expect("the agent's log")
}

fn repairs(lab: &TestLab) -> usize {
    log(lab, "node1").matches("repairing drift").count()
}

#[test]
fn a_flushed_ruleset_and_a_reset_bridge_sysctl_are_put_back_within_2s() {
    let lab = TestLab::up(&["--nodes", "2", "--policy-datapath", "nftables"]);
    ok(lab.run(&["apply", "-f", TENANTS]));
    assert!(
        db_denied(&lab),
        "tenant-b/db must be denied to p1a before anything"
    );
    let before = repairs(&lab);
    // A denied flow probed throughout, from before the flush until after the repair:
    // TCP connections from p1a to tenant-b/db, 50 ms each, one after another.
    let db = lab_pod(&lab.json(&["status", "--output", "json"]), "tenant-b.db").0;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (ns, stop) = (lab.ns("p1a"), stop.clone());
        std::thread::spawn(move || {
            ns.run(move || {
                let (mut tries, mut passed) = (0, 0);
                let to = std::net::SocketAddr::from((db, 5432));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tries += 1;
                    if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(50)).is_ok()
                    {
                        passed += 1;
                    }
                }
                (tries, passed)
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // A firewall reload.
    lab.sh("node1", &["nft", "flush", "ruleset"]);
    let took = wait_until(
        "table inet podnet back on node1",
        Duration::from_secs(2),
        || {
            lab.sh_status("node1", &["nft", "list", "table", "inet", "podnet"])
                .0
        },
    );
    eprintln!("table inet podnet back {took:?} after nft flush ruleset");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, passed) = prober.join().unwrap();
    assert!(tries >= 8, "the denied flow was probed only {tries} times");
    assert_eq!(
        passed, 0,
        "{passed} of {tries} probes of the denied flow got through around the flush"
    );
    assert!(db_denied(&lab), "tenant-b/db is reachable after the repair");
    wait_until("the repair logged", Duration::from_secs(2), || {
        repairs(&lab) > before
    });
    assert!(log(&lab, "node1").contains("table inet podnet is gone"));
    // A flushed isolation set opens isolated pods: also drift.
    lab.sh(
        "node1",
        &["nft", "flush", "set", "inet", "podnet", "ingress_isolated"],
    );
    wait_until("ingress_isolated refilled", Duration::from_secs(2), || {
        lab.sh(
            "node1",
            &["nft", "list", "set", "inet", "podnet", "ingress_isolated"],
        )
        .contains("10.")
    });
    assert!(
        db_denied(&lab),
        "tenant-b/db is reachable after the set repair"
    );
    // br_netfilter switched off: same-node traffic would skip nftables.
    let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let ns = lab.ns("node1");
    let set = |v: &'static str| ns.run(move || std::fs::write(sysctl, v)).unwrap().unwrap();
    let get = || ns.run(|| std::fs::read_to_string(sysctl)).unwrap().unwrap();
    set("0");
    wait_until(
        "bridge-nf-call-iptables back to 1",
        Duration::from_secs(2),
        || get().trim() == "1",
    );
    assert!(
        db_denied(&lab),
        "tenant-b/db is reachable after the sysctl repair"
    );
    // Counted: the metric names each repaired object.
    let m = lab.metrics_text("node1");
    assert!(m.contains("object=\"nftables-table\""), "{m}");
    assert!(m.contains("object=\"bridge-nf-call\""), "{m}");
    // And doctor finds nothing missing now.
    let d = ok(podnet()
        .args(["doctor", "--lab", &lab.name])
        .output()
        .unwrap());
    assert!(d.contains("policy enforcement"), "{d}");
    assert!(!d.contains("OPEN"), "{d}");
}

/// The nftables backstop: with the agent stopped, so that nothing repairs, a flushed
/// ruleset closes the node's pods instead of opening them — the denied flow stays
/// denied, and even a flow policy allows is dropped — until the agent runs again.
#[test]
fn with_its_agent_stopped_a_flushed_ruleset_closes_the_node_until_it_runs_again() {
    let lab = TestLab::up(&["--nodes", "2", "--policy-datapath", "nftables"]);
    ok(lab.run(&["apply", "-f", TENANTS]));
    assert!(db_denied(&lab));
    let open = || {
        lab.run(&["probe", "p1a", "p1b", "--port", "7777"])
            .status
            .code()
            == Some(0)
    };
    assert!(open(), "p1a → p1b must be open before anything");
    let st = lab.json(&["status", "--output", "json"]);
    let pid = st["nodes"][0]["agent_pid"]
        .as_u64()
        .expect("node1's agent pid") as i32;
    // SAFETY: signalling the lab's own agent.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    lab.sh("node1", &["nft", "flush", "ruleset"]);
    let denied = db_denied(&lab);
    let allowed_blocked = !open();
    // Without the backstop (removed by hand from both ends: the reply is forwarded
    // too) the same flush opens the denied pod.
    for pod in ["tenant-b.db", "p1a"] {
        let veth = st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap()["host_veth"]
            .as_str()
            .unwrap()
            .to_string();
        lab.sh(
            "node1",
            &["tc", "filter", "del", "dev", &veth, "egress", "prio", "2"],
        );
    }
    let opened_without = !db_denied(&lab);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert!(
        denied,
        "a flushed ruleset opened the denied pod despite the backstop"
    );
    assert!(
        allowed_blocked,
        "forwarded traffic passed the backstop without nftables' mark"
    );
    assert!(
        opened_without,
        "without the backstop the flush did not open the pod: the check proves nothing"
    );
    wait_until("open flows work again", Duration::from_secs(3), open);
    wait_until("denied again", Duration::from_secs(3), || db_denied(&lab));
}

/// Each pod veth's filters, removed by hand, are back within 2 s on both datapaths.
fn removed_filters_are_put_back(datapath: &str) {
    let lab = TestLab::up(&["--nodes", "2", "--policy-datapath", datapath]);
    ok(lab.run(&["apply", "-f", TENANTS]));
    let st = lab.json(&["status", "--output", "json"]);
    let db = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tenant-b.db")
        .expect("tenant-b.db");
    let veth = db["host_veth"].as_str().unwrap().to_string();
    let ns = lab.ns("node1");
    let filters = |v: &str| {
        let v = v.to_string();
        ns.run(move || {
            let mut s = Socket::route().unwrap();
            let l = link::get_by_name(&mut s, &v).unwrap().unwrap();
            let mut names: Vec<String> = podnet_netlink::tc::list_ingress(&mut s, l.index)
                .unwrap()
                .into_iter()
                .chain(podnet_netlink::tc::list_egress(&mut s, l.index).unwrap())
                .filter_map(|f| f.name)
                .collect();
            names.sort();
            names
        })
        .unwrap()
    };
    if datapath == "nftables" {
        // The agent attaches the backstop at its next round after the pod is made.
        wait_until("the backstop on the pod", Duration::from_secs(3), || {
            filters(&veth).iter().any(|n| n == "podnet_nft_backstop")
        });
    }
    let want = filters(&veth);
    assert!(want.iter().any(|n| n == "podnet_from_pod"), "{want:?}");
    let before = repairs(&lab);
    lab.sh("node1", &["tc", "filter", "del", "dev", &veth, "ingress"]);
    if datapath == "ebpf" {
        lab.sh("node1", &["tc", "filter", "del", "dev", &veth, "egress"]);
    }
    assert_ne!(filters(&veth), want, "the filters were not removed");
    let took = wait_until("the filters back", Duration::from_secs(2), || {
        filters(&veth) == want
    });
    eprintln!("{datapath}: filters back {took:?} after tc filter del");
    assert!(repairs(&lab) > before);
    assert!(db_denied(&lab), "tenant-b/db is reachable after the repair");
}

#[test]
fn removed_pod_filters_are_put_back_with_nftables() {
    removed_filters_are_put_back("nftables");
}

#[test]
fn removed_pod_filters_are_put_back_with_ebpf() {
    removed_filters_are_put_back("ebpf");
}

/// The underlay guard's filter, removed by hand, is back within 2 s and the repair is
/// logged and counted.
#[test]
fn a_removed_underlay_guard_is_put_back_within_2s() {
    let lab = TestLab::up(&["--nodes", "2"]);
    let attached = || {
        lab.sh("node2", &["tc", "filter", "show", "dev", "eth0", "ingress"])
            .contains("podnet_guard")
    };
    assert!(attached(), "node2 has no underlay guard to remove");
    lab.sh(
        "node2",
        &[
            "tc", "filter", "del", "dev", "eth0", "ingress", "prio", "49360",
        ],
    );
    assert!(!attached(), "the guard was not removed");
    let took = wait_until("the guard back on node2", Duration::from_secs(2), attached);
    eprintln!("underlay guard back {took:?} after tc filter del");
    wait_until("the repair logged", Duration::from_secs(2), || {
        log(&lab, "node2").contains("the underlay guard's filter podnet_guard was gone")
    });
    lab.full_mesh();
}
