//! Real nodes (`podnet lab up --kubernetes --kubelet`): containerd, a real kubelet and
//! kube-proxy on every node, podnet installed from deploy/ as a DaemonSet, CoreDNS.
//! The smoke test CI runs; the upstream e2e suites run with scripts/e2e.sh.

use crate::common::*;
use podnet_lab::scratch::unique;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const NODES_ROOT: &str = "/var/lib/podnet-lab";

/// Runs a shell command in a pod with kubectl exec: success and stdout.
fn exec(lab: &TestLab, pod: &str, cmd: &str) -> (bool, String) {
    let (ok, out, _) = lab.kubectl_try(&["exec", pod, "--", "sh", "-c", cmd], None);
    (ok, out.trim().to_string())
}

fn pod_ip(lab: &TestLab, pod: &str) -> String {
    lab.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"], None)
}

#[test]
fn real_nodes_run_kubelet_pods_on_podnet_with_services_dns_and_policy() {
    let lab = TestLab::up(&[
        "--kubernetes",
        "--kubelet",
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
    ]);
    // Every node registered itself (the lab registers none) and runs podnet from the
    // DaemonSet, one pod per node, on the node's own address.
    let nodes: Value =
        serde_json::from_str(&lab.kubectl(&["get", "nodes", "-o", "json"], None)).unwrap();
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{nodes}");
    for n in items {
        let info = &n["status"]["nodeInfo"];
        assert!(
            info["containerRuntimeVersion"]
                .as_str()
                .unwrap()
                .starts_with("containerd://2."),
            "{info}"
        );
        assert_eq!(info["kubeletVersion"], "v1.37.2", "{info}");
    }
    let ds: Value = serde_json::from_str(&lab.kubectl(
        &["-n", "podnet", "get", "daemonset", "podnet", "-o", "json"],
        None,
    ))
    .unwrap();
    assert_eq!(ds["status"]["numberReady"], 2, "{}", ds["status"]);

    // A pod the kubelet started got its address from podnet-cni through containerd:
    // it is in the pod CIDR of its node and in that node's podnet IPAM state.
    for (pod, node) in [("p1a", "node1"), ("p2a", "node2")] {
        let ip = pod_ip(&lab, pod);
        let cidr = lab.kubectl(
            &["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"],
            None,
        );
        let prefix = cidr.rsplit_once(".0/24").map(|(p, _)| p).unwrap();
        assert!(
            ip.starts_with(&format!("{prefix}.")),
            "{pod} {ip} not in {cidr}"
        );
        let ipam = Path::new(NODES_ROOT)
            .join(&lab.name)
            .join(node)
            .join("var/lib/cni/podnet/podnet");
        let held = std::fs::read_dir(&ipam)
            .unwrap_or_else(|e| panic!("{}: {e}", ipam.display()))
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("state"))
            .any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains(&format!("\"{ip}\"")))
            });
        assert!(held, "{ip} of {pod} is not in podnet's IPAM on {node}");
    }

    // Across nodes, without NAT: p2a sees p1a's own address.
    let (p1, p2) = (pod_ip(&lab, "p1a"), pod_ip(&lab, "p2a"));
    let (ok, seen) = exec(
        &lab,
        "p1a",
        &format!("curl -s -m 5 http://{p2}:8080/clientip"),
    );
    assert!(ok, "p1a cannot reach p2a at {p2}:8080");
    assert_eq!(seen.rsplit_once(':').map(|(a, _)| a), Some(p1.as_str()));

    // A Service (kube-proxy, nftables mode) reaches it by name (CoreDNS), from the
    // other node and from the pod itself (hairpin).
    lab.kubectl(
        &[
            "expose",
            "pod",
            "p2a",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
        None,
    );
    let svc = "http://p2a.default.svc.cluster.local/hostname";
    wait_until(
        "p1a reaches Service p2a by name",
        Duration::from_secs(30),
        || exec(&lab, "p1a", &format!("curl -s -m 2 {svc}")) == (true, "p2a".into()),
    );
    wait_until(
        "p2a reaches itself through its Service",
        Duration::from_secs(15),
        || exec(&lab, "p2a", &format!("curl -s -m 2 {svc}")) == (true, "p2a".into()),
    );
    let (ok, dns) = exec(&lab, "p1a", "getent hosts kubernetes.default");
    assert!(ok && dns.starts_with("10.96.0.1 "), "{dns}");
    // logs and port-forward through the kubelet (and containerd's stream server).
    let logs = lab.kubectl(&["logs", "p2a"], None);
    assert!(logs.contains("Started HTTP server on port 8080"), "{logs}");
    let mut pf = podnet()
        .args(["lab", "--name", &lab.name, "kubectl", "--"])
        .args(["port-forward", "pod/p2a", "18080:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    // Kept open until kubectl is killed: it reports each connection on stdout, and
    // would die of a closed pipe in the middle of ours.
    let mut pf_out = BufReader::new(pf.stdout.take().unwrap());
    pf_out.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("Forwarding from 127.0.0.1:18080"),
        "{first}"
    );
    // kubectl listens in the fabric, where it runs.
    let got = lab
        .ns("fabric")
        .run(|| {
            let mut c = TcpStream::connect("127.0.0.1:18080")?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.write_all(b"GET /hostname HTTP/1.0\r\n\r\n")?;
            // kubectl may close with a reset once the pod's side has closed: what
            // arrived before counts.
            let mut body = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => body.extend_from_slice(&buf[..n]),
                    Err(e) if body.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            std::io::Result::Ok(String::from_utf8_lossy(&body).into_owned())
        })
        .unwrap();
    let _ = pf.kill();
    let _ = pf.wait();
    drop(pf_out);
    let got = got.unwrap_or_else(|e| panic!("port-forward to p2a: {e}"));
    assert!(got.ends_with("\r\n\r\np2a"), "port-forward answer: {got}");

    // A Deployment's replicas spread over both nodes, each with its own address.
    lab.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}\n      containers:\n      - {name: web, image: registry.k8s.io/e2e-test-images/agnhost:2.66.1, args: [netexec, --http-port=8080]}\n",
        ),
    );
    lab.kubectl(
        &["rollout", "status", "deployment/web", "--timeout=120s"],
        None,
    );
    let placed = lab.kubectl(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP}{\"\\n\"}{end}",
        ],
        None,
    );
    let rows: Vec<(&str, &str)> = placed.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(rows.len(), 4, "{placed}");
    for node in ["node1", "node2"] {
        assert_eq!(
            rows.iter().filter(|(n, _)| *n == node).count(),
            2,
            "{placed}"
        );
    }
    let ips: std::collections::BTreeSet<&str> = rows.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(ips.len(), 4, "{placed}");
    // A new pod is closed until its node's podnetd has programmed it, which follows
    // the kubelet's status write (the pod's address) through the API watch: Ready
    // may come first, so each replica gets until its verdicts are in.
    for ip in &ips {
        wait_until(
            &format!("p1a reaches replica {ip}"),
            Duration::from_secs(30),
            || {
                let (ok, name) = exec(
                    &lab,
                    "p1a",
                    &format!("curl -s -m 2 http://{ip}:8080/hostname"),
                );
                ok && name.starts_with("web-")
            },
        );
    }

    // NetworkPolicy, enforced by the DaemonSet's podnetd: p2a admits nobody.
    lab.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-p2a, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: p2a}}\n  policyTypes: [Ingress]\n",
        ),
    );
    wait_until("the policy closes p2a", Duration::from_secs(15), || {
        !exec(
            &lab,
            "p1a",
            &format!("curl -s -m 2 http://{p2}:8080/hostname"),
        )
        .0
    });
    // Still closed a moment later (not a lost packet): and p2a itself still answers
    // on its own loopback.
    assert!(
        !exec(
            &lab,
            "p1a",
            &format!("curl -s -m 2 http://{p2}:8080/hostname")
        )
        .0
    );
    assert_eq!(
        exec(&lab, "p2a", "curl -s -m 2 http://127.0.0.1:8080/hostname"),
        (true, "p2a".into())
    );

    // `lab down` leaves nothing of the nodes: no process in their cgroups, no pinned
    // mount namespace, no state directory.
    let name = lab.name.clone();
    let o = lab.run(&["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!Path::new(NODES_ROOT).join(&name).exists());
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for node in ["node1", "node2"] {
            let cg = h.path().join(format!("podnet-{name}-{node}"));
            assert!(!cg.exists(), "{} is left", cg.display());
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/run/podnet/lab/{name}/")),
        "a mount of lab {name} is left: {mounts}"
    );
}

#[test]
fn real_nodes_without_their_binaries_fail_before_making_anything() {
    require_root();
    let name = unique("t").replace('-', "x");
    let missing = std::env::temp_dir().join(format!("{name}-no-node-binaries"));
    let o = podnet()
        .args(["lab", "--name", &name, "up", "--kubernetes", "--kubelet"])
        .env("PODNET_NODES_BIN", &missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let _ = podnet().args(["lab", "--name", &name, "down"]).output();
    assert!(
        !o.status.success(),
        "lab up succeeded without node binaries"
    );
    assert!(
        err.contains("scripts/real-nodes.sh") && err.contains(&*missing.to_string_lossy()),
        "the error must name what is missing and the fix: {err}"
    );
    // Nothing was made: no fabric, no node namespace.
    assert!(
        !Path::new(&format!("/run/netns/{name}-fabric")).exists(),
        "the fabric was made before the check"
    );
    assert!(!Path::new(NODES_ROOT).join(&name).exists());
}
