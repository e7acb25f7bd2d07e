//! NetworkPolicy as objects change: no leak window for a new pod (even across an agent
//! kill), manifests checked whole and pods updated in place, and trace and stats
//! naming the policy hop and counting the drops.

use crate::common::{podnet, require_root, TestLab};
use crate::policy::{model_yaml, np};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Probes `target:port` from inside `from_ns` in a tight loop (TCP connects with a
/// short timeout) until `min_after` tries after `done` was set; returns the tries,
/// the successes, and the tries made before `done`.
fn hammer(
    from_ns: &str,
    target: std::net::SocketAddr,
    done: &std::sync::atomic::AtomicBool,
    min_after: usize,
) -> (usize, usize, usize) {
    let ns = podnet_netlink::Netns::open(podnet_netlink::netns::named_path(from_ns)).unwrap();
    ns.run(|| {
        let (mut tries, mut ok, mut before) = (0, 0, None);
        loop {
            if before.is_none() && done.load(std::sync::atomic::Ordering::Relaxed) {
                before = Some(tries);
            }
            if before.is_some_and(|b| tries - b >= min_after) {
                break;
            }
            let r = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(3));
            tries += 1;
            ok += usize::from(r.is_ok());
        }
        (tries, ok, before.unwrap_or(0))
    })
    .unwrap()
}

/// Sets the flag when dropped: a prober thread stops also when the test panics.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn denied_packets(lab: &TestLab, node: &str) -> u64 {
    let v = podnet_api::Client::new(format!("/run/podnet/lab/{}/{node}/podnetd.sock", lab.name))
        .policy_stats()
        .unwrap();
    v.denied.iter().map(|d| d.packets).sum::<u64>() + v.closed_packets
}

const DENY_DEFAULT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\n  namespace: sec\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";

/// A pod on node1 asking for `ip` (the annotation's value: an IPv4 address, and on a
/// dual-stack lab an IPv6 one after a comma).
fn victim(ip: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: victim\n  namespace: sec\n  annotations:\n    podnet.dev/ip: {ip}\nspec:\n  nodeName: node1\n  containers:\n  - ports:\n    - containerPort: 80\n")
}

#[test]
fn no_leak_window_for_a_new_pod_even_across_an_agent_kill_nftables() {
    leak_window("nftables", false);
}

#[test]
fn no_leak_window_for_a_new_pod_even_across_an_agent_kill_ebpf() {
    leak_window("ebpf", false);
}

/// The same over IPv6 on a dual-stack lab: the pod's IPv6 address, probed from before
/// it exists, is closed like its IPv4 one until its policy is programmed.
#[test]
fn no_leak_window_over_ipv6_for_a_new_pod_even_across_an_agent_kill_nftables() {
    leak_window("nftables", true);
}

#[test]
fn no_leak_window_over_ipv6_for_a_new_pod_even_across_an_agent_kill_ebpf() {
    leak_window("ebpf", true);
}

/// `ipv6`: on a dual-stack lab, probe the victims' IPv6 addresses (the fast path for
/// eBPF, the bridge for nftables).
fn leak_window(datapath: &str, ipv6: bool) {
    require_root();
    let mut args = vec![
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--policy-datapath",
        datapath,
    ];
    if ipv6 {
        args.extend(["--ip-family", "dual"]);
    }
    let lab = TestLab::up(&args);
    lab.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: sec\n---\n{DENY_DEFAULT}"
    ));
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Fixed addresses in node1's pod CIDR (which CIDR node1 leased depends on which
    // agent registered first), asked for with the podnet.dev/ip annotation.
    let node: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/podnet/lab/{}/node1/node.json", lab.name)).unwrap(),
    )
    .unwrap();
    let net: std::net::Ipv4Addr = node["podCIDR"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let addr = |host: u8| {
        let o = net.octets();
        std::net::Ipv4Addr::new(o[0], o[1], o[2], host)
    };
    // On a dual-stack lab the same host number in node1's IPv6 range too.
    let net6: Option<std::net::Ipv6Addr> = node["podCIDRs"].as_array().and_then(|c| {
        c.iter()
            .filter_map(|c| c.as_str()?.split('/').next()?.parse().ok())
            .next()
    });
    assert_eq!(net6.is_some(), ipv6, "node1's pod CIDRs: {node}");
    let addr6 = |host: u8| {
        net6.map(|n| {
            let mut o = n.octets();
            o[15] = host;
            std::net::Ipv6Addr::from(o)
        })
    };
    // The annotation asking for both, and the address probed.
    let asked = |host: u8| match addr6(host) {
        Some(a6) => format!("{},{a6}", addr(host)),
        None => addr(host).to_string(),
    };
    let probed = |host: u8| -> std::net::SocketAddr {
        match addr6(host) {
            Some(a6) => (a6, 80).into(),
            None => (addr(host), 80).into(),
        }
    };
    // The prober, on node2: whichever pod the lab put there.
    let prober = format!("{}-p2a", lab.name);

    // 1. The agent is up: probe a fixed address from before the pod exists until 1000
    //    tries after `lab apply` (which returns once the pod is made and programmed).
    let target = probed(77);
    let before = denied_packets(&lab, "node1");
    let (tries, ok, early) = std::thread::scope(|s| {
        let h = s.spawn(|| hammer(&prober, target, &stop, 1000));
        // The prober stops even if `apply` fails (and the test with it).
        let _done = SetOnDrop(&stop);
        lab.apply(&victim(&asked(77)));
        drop(_done);
        h.join().unwrap()
    });
    assert!(tries >= 1000, "{tries}");
    // The pod has the address probed (else the zero below would prove nothing).
    if let Some(a6) = addr6(77) {
        let st = lab.json(&["status", "--output", "json"]);
        assert_eq!(crate::common::lab_ip6(&st, "sec.victim"), a6);
    }
    assert_eq!(
        ok, 0,
        "{ok} of {tries} connections reached a pod under default deny"
    );
    // The probes were dropped by the datapath (not refused by a missing server): the
    // node counted drops. nftables counts every try, at the node's forward hook. eBPF
    // counts at the pod's veth, which a try reaches only once the pod exists and the
    // node has resolved its address again (an address that failed resolution while
    // the pod did not exist stays failed for up to a second): at least half of the
    // 1000 tries made after `apply` returned.
    let dropped = denied_packets(&lab, "node1") - before;
    let floor = if datapath == "nftables" {
        tries
    } else {
        (tries - early) / 2
    };
    assert!(
        dropped >= floor as u64,
        "{dropped} drops counted for {tries} tries"
    );

    // 2. The agent is killed with -9; a pod is made while it is dead, then the agent
    //    is restarted (`lab up`), all while probing. Nothing may get through.
    let pid: i32 = std::fs::read_to_string(format!("/run/podnet/lab/{}/pids/node1.pid", lab.name))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: killing the lab's own agent.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let gone = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "agent {pid} did not die"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = probed(78);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (tries, ok, old_tries, old_ok) = std::thread::scope(|s| {
        let h = s.spawn(|| hammer(&prober, second, &stop, 1000));
        // The first victim, programmed before the kill, stays closed too.
        let h2 = s.spawn(|| hammer(&prober, target, &stop, 300));
        let _done = SetOnDrop(&stop);
        let yaml = victim(&asked(78)).replace("name: victim", "name: victim2");
        let o = lab.pipe("apply", &yaml, &["--no-wait"]);
        assert!(
            o.status.success(),
            "apply with the agent dead: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = lab.run(&[&["up"], &args[..]].concat());
        assert!(
            o.status.success(),
            "lab up (restarting the agent): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        drop(_done);
        let (a, b, _) = h.join().unwrap();
        let (c, d, _) = h2.join().unwrap();
        (a, b, c, d)
    });
    assert!(tries >= 1000 && old_tries >= 300);
    if let Some(a6) = addr6(78) {
        let st = lab.json(&["status", "--output", "json"]);
        assert_eq!(crate::common::lab_ip6(&st, "sec.victim2"), a6);
    }
    assert_eq!(
        ok, 0,
        "{ok} of {tries} reached a pod made while its agent was dead"
    );
    assert_eq!(
        old_ok, 0,
        "{old_ok} of {old_tries} reached an isolated pod across the agent's restart"
    );

    // Positive control: the same probe connects once a policy admits it, so the zeros
    // above were the policy's doing.
    lab.apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: open\n  namespace: sec\nspec:\n  podSelector: {}\n  ingress:\n  - {}\n");
    let family: &[&str] = if ipv6 { &["--ipv6"] } else { &[] };
    let o = lab.run(
        &[
            &["probe", "default/p2a", "sec/victim2", "--port", "80"],
            family,
        ]
        .concat(),
    );
    assert!(
        o.status.success(),
        "victim2 not reachable once allowed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = lab.run(
        &[
            &["probe", "default/p2a", "sec/victim", "--port", "80"],
            family,
        ]
        .concat(),
    );
    assert!(o.status.success(), "victim not reachable once allowed");
}

#[test]
fn manifests_are_checked_whole_and_pods_update_in_place() {
    require_root();
    let lab = TestLab::up(&["--nodes", "1", "--pods-per-node", "0"]);
    // One bad object: nothing from the file is applied, and the field is named.
    let bad = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: good\n---\n{}",
        np(
            "bad",
            "good",
            "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 90\n      endPort: 80\n"
        )
    );
    let o = lab.pipe("apply", &bad, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("spec.ingress[0].ports[0].endPort"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    let unknown = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containerz: []\n";
    let o = lab.pipe("apply", unknown, &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field `containerz`"));
    let o = lab.pipe(
        "apply",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n",
        &[],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown kind \"Service\""));
    assert!(
        lab.cluster().namespaces.is_empty(),
        "nothing may have been applied"
    );

    // A requested address is given; a taken one, or one outside the node's CIDR, is a
    // clear CNI error.
    let pod = |name: &str, ip: &str, labels: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n{labels}  annotations:\n    podnet.dev/ip: {ip}\nspec:\n  containers:\n  - ports:\n    - containerPort: 80\n")
    };
    lab.apply(&pod("web", "10.244.0.50", "    app: web\n"));
    let st = lab.json(&["status", "--output", "json"]);
    let web = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web["ip"], "10.244.0.50");
    let o = lab.pipe("apply", &pod("web2", "10.244.0.50", "    app: web\n"), &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("10.244.0.50 cannot be given: it is taken by container web"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = lab.pipe("apply", &pod("web3", "10.9.0.5", "    app: web\n"), &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("outside this node's pod CIDR"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !std::path::Path::new(&format!("/run/netns/{}-web3", lab.name)).exists(),
        "a failed pod leaves no namespace"
    );

    // Relabelling a live pod: same namespace, same address, same server process.
    let netns_inode = std::fs::metadata(format!("/run/netns/{}-web", lab.name))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let server =
        std::fs::read_to_string(format!("/run/podnet/lab/{}/pids/echo-web.pid", lab.name)).unwrap();
    let o = lab.pipe(
        "apply",
        &pod("web", "10.244.0.50", "    app: web\n    tier: front\n"),
        &[],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Pod default/web configured"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        std::fs::metadata(format!("/run/netns/{}-web", lab.name))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        netns_inode
    );
    assert_eq!(
        std::fs::read_to_string(format!("/run/podnet/lab/{}/pids/echo-web.pid", lab.name)).unwrap(),
        server
    );
    let c = lab.cluster();
    assert_eq!(
        c.pod("default", "web")
            .unwrap()
            .labels
            .get("tier")
            .map(String::as_str),
        Some("front")
    );
    let v: Value = lab.json(&["status", "--output", "json"]);
    assert_eq!(v["pods"].as_array().unwrap().len(), 1);
}

#[test]
fn trace_names_the_policy_hop_and_stats_count_the_drops() {
    require_root();
    // On a real etcd: the agents read the policy objects from it.
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "0",
        "--datastore",
        "etcd",
    ]);
    lab.apply(&model_yaml());
    lab.apply(&format!(
        "{}---\n{}",
        np("deny-in", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - port: 80\n"),
        np("deny-out", "z", "  podSelector:\n    matchLabels:\n      pod: c\n  policyTypes: [Egress]\n")
    ));
    let trace = |from: &str, to: &str| {
        let o = podnet()
            .args([
                "trace", "--lab", &lab.name, from, to, "--port", "80", "--output", "json",
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "trace {from} {to}: {e}: {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.success(), v)
    };
    // Ingress denied: the destination's policy hop, with the policy named.
    let (ok, v) = trace("z/a", "x/a");
    assert!(!ok);
    let hop = &v["broken_hop"];
    assert_eq!(
        (hop["where"].as_str(), hop["what"].as_str()),
        (Some("dst-pod"), Some("policy")),
        "{v:#}"
    );
    assert!(
        hop["detail"].as_str().unwrap().contains("x/deny-in"),
        "{hop}"
    );
    // Egress denied: the source's policy hop.
    let (ok, v) = trace("z/c", "y/b");
    assert!(!ok);
    let hop = &v["broken_hop"];
    assert_eq!(
        (hop["where"].as_str(), hop["what"].as_str()),
        (Some("src-pod"), Some("policy")),
        "{v:#}"
    );
    assert!(
        hop["detail"].as_str().unwrap().contains("z/deny-out"),
        "{hop}"
    );
    // Admitted: reachable, and the hop quotes the entry that admits it.
    let (ok, v) = trace("y/b", "x/a");
    assert!(ok, "{v:#}");
    let hop = v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h["what"] == "policy")
        .unwrap()
        .clone();
    assert!(
        hop["detail"].as_str().unwrap().contains("admitted"),
        "{hop}"
    );
    // `lab check` holds every pair against the policy: the denied ones count as
    // denied, not as broken, and nothing does what the policy does not say.
    let c = lab.json(&["check", "--output", "json"]);
    assert_eq!(c["unexpected"], 0, "{c}");
    assert!(c["denied_by_policy"].as_u64().unwrap() > 0, "{c}");
    // The datapath agrees with the trace, and counts the refused packets per pod.
    assert!(!lab
        .run(&["probe", "z/a", "x/a", "--port", "80"])
        .status
        .success());
    assert!(lab
        .run(&["probe", "y/b", "x/a", "--port", "80"])
        .status
        .success());
    let stats: Value = serde_json::from_slice(
        &podnet()
            .args(["policy", "stats", "--lab", &lab.name, "--output", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let xa = stats
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["denied"].as_array().cloned().unwrap_or_default())
        .find(|d| d["pod"] == "x/a" && d["direction"] == "ingress")
        .expect("x/a ingress counted");
    assert!(xa["packets"].as_u64().unwrap() >= 1, "{xa}");
    // doctor reports each node's policy datapath, and what it refused.
    let d: Value = serde_json::from_slice(
        &podnet()
            .args(["doctor", "--lab", &lab.name, "--output", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let policy: Vec<&Value> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "policy")
        .collect();
    assert_eq!(policy.len(), 2, "{d}");
    assert!(policy.iter().all(|f| f["status"] == "ok"), "{d}");
    assert!(
        policy
            .iter()
            .any(|f| f["detail"].as_str().unwrap().contains("packets refused")),
        "{d}"
    );
    assert_eq!(xa["policies"], serde_json::json!(["x/deny-in"]));
}
