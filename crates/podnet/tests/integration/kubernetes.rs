//! podnet on a real Kubernetes control plane: etcd, kube-apiserver and
//! kube-controller-manager v1.37 built from their Go modules by
//! `scripts/kubernetes.sh` (the test command runs it first), in a lab's fabric. The
//! agents run with the ServiceAccount token `deploy/rbac.yaml` binds.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kubectl_in(lab: &TestLab, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = podnet();
    cmd.args(["lab", "--name", &lab.name, "kubectl", "--"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run podnet lab kubectl");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// kubectl, which must succeed; its output.
fn kubectl(lab: &TestLab, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = kubectl_in(lab, args, stdin);
    assert!(ok, "kubectl {args:?} failed: {err}");
    out
}

fn sock(lab: &TestLab, node: &str) -> PathBuf {
    PathBuf::from(format!("/run/podnet/lab/{}/{node}/podnetd.sock", lab.name))
}

fn status(lab: &TestLab, node: &str) -> podnet_agent::Status {
    podnet_agent::proto::Client::new(sock(lab, node))
        .status()
        .unwrap()
}

/// The version of object `key` node's agent has programmed (`None` if none, or the
/// agent does not answer).
fn version(lab: &TestLab, node: &str, key: &str) -> Option<u64> {
    podnet_agent::proto::Client::new(sock(lab, node))
        .policy_versions(vec![key.to_string()])
        .ok()?
        .versions
        .get(key)?
        .as_deref()?
        .parse()
        .ok()
}

fn connected(lab: &TestLab, from: &str, to: &str, port: u16) -> bool {
    let p = port.to_string();
    let o = lab.run(&["probe", from, to, "--port", &p, "--output", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("probe {from} {to}: {}", String::from_utf8_lossy(&o.stderr)));
    v["connected"].as_bool().unwrap()
}

/// Applies `yaml` with kubectl; waits until every agent's verdicts reflect the
/// object's resourceVersion and returns how long that took after kubectl returned.
fn apply_and_time(lab: &TestLab, nodes: &[&str], yaml: &str) -> Duration {
    let out = kubectl(lab, &["apply", "-f", "-", "-o", "json"], Some(yaml));
    let t = Instant::now();
    let v: Value = serde_json::from_str(&out).unwrap();
    let items = match v["kind"].as_str() {
        Some("List") => v["items"].as_array().unwrap().clone(),
        _ => vec![v],
    };
    let want: Vec<(String, u64)> = items
        .iter()
        .map(|o| {
            (
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap()
                ),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    wait_until(
        "every agent enforces the applied objects",
        Duration::from_secs(10),
        || {
            nodes.iter().all(|n| {
                want.iter()
                    .all(|(k, rv)| version(lab, n, k).is_some_and(|h| h >= *rv))
            })
        },
    );
    t.elapsed()
}

fn pid_of(lab: &TestLab, what: &str) -> i32 {
    std::fs::read_to_string(format!("/run/podnet/lab/{}/pids/{what}.pid", lab.name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn kubernetes_lab_pods_policy_outage_and_node_deletion() {
    let lab = TestLab::up(&["--kubernetes", "--nodes", "3", "--pods-per-node", "1"]);
    let nodes = ["node1", "node2", "node3"];

    // kube-controller-manager allocated every Node a distinct pod CIDR from the
    // cluster CIDR, and each agent serves the one its Node holds.
    let cidrs = kubectl(
        &lab,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR}{\"\\n\"}{end}",
        ],
        None,
    );
    let mut seen = BTreeSet::new();
    for line in cidrs.lines() {
        let (node, cidr) = line.split_once('=').unwrap();
        assert!(
            cidr.starts_with("10.244.") && cidr.ends_with("/24"),
            "{line}"
        );
        assert!(seen.insert(cidr.to_string()), "two nodes hold {cidr}");
        let st = status(&lab, node);
        assert_eq!(st.pod_cidr, cidr, "agent on {node}: {st:?}");
        // Every call the agent makes with deploy/'s RBAC succeeds.
        assert!(st.datastore_problems.is_empty(), "{node}: {st:?}");
    }
    assert_eq!(seen.len(), 3, "{cidrs}");
    // Each Node carries what its peers need.
    let ann = kubectl(
        &lab,
        &[
            "get",
            "node",
            "node2",
            "-o",
            "jsonpath={.metadata.annotations.podnet\\.dev/underlay-ip}",
        ],
        None,
    );
    assert_eq!(ann, "192.168.1.11");
    // The lab's kubelet wrote the pods' status.
    let ip = kubectl(
        &lab,
        &["get", "pod", "p2a", "-o", "jsonpath={.status.podIP}"],
        None,
    );
    assert!(ip.starts_with("10.244."), "{ip}");

    // Every pod reaches every other, without NAT.
    let m = lab.full_mesh();
    assert_eq!(m["reachable"], m["total"], "{m}");
    assert_eq!(m["nat_free"], true);

    // A NetworkPolicy applied with kubectl is enforced within 1 s.
    let deny = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2a-from-friends, namespace: default}
spec:
  podSelector: {matchLabels: {app: p2a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: friend}}
"#;
    kubectl(&lab, &["label", "pod", "p2a", "app=p2a"], None);
    let took = apply_and_time(&lab, &nodes, deny);
    assert!(
        took < Duration::from_secs(1),
        "policy enforced after {took:?}"
    );
    assert!(
        !connected(&lab, "p1a", "p2a", 7777),
        "the policy must refuse p1a"
    );
    assert!(connected(&lab, "p2a", "p1a", 7777), "p1a is not isolated");

    // A label changed with kubectl takes effect within 1 s.
    let out = kubectl(
        &lab,
        &["label", "pod", "p1a", "role=friend", "-o", "json"],
        None,
    );
    let t = Instant::now();
    let rv: u64 = serde_json::from_str::<Value>(&out).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_until(
        "every agent sees the new label",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| version(&lab, n, "Pod default/p1a").is_some_and(|h| h >= rv))
        },
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "label enforced after {took:?}"
    );
    assert!(connected(&lab, "p1a", "p2a", 7777), "p1a is a friend now");
    assert!(!connected(&lab, "p3a", "p2a", 7777), "p3a is not");

    // kube-apiserver killed: pod traffic goes on, verdicts stay.
    let api = pid_of(&lab, "kube-apiserver");
    // SAFETY: killing the lab's own API server process.
    assert_eq!(unsafe { libc::kill(api, libc::SIGKILL) }, 0);
    wait_until(
        "agents notice the API server is gone",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| !status(&lab, n).datastore_problems.is_empty())
        },
    );
    // doctor names the datastore as what is broken, on every node.
    let o = podnet()
        .args(["doctor", "--lab", &lab.name, "--output", "json"])
        .output()
        .unwrap();
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let broken: Vec<&Value> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "broken")
        .collect();
    assert_eq!(broken.len(), 3, "{d}");
    assert!(broken.iter().all(|f| f["check"] == "datastore"), "{d}");
    assert!(connected(&lab, "p1a", "p2a", 7777));
    assert!(
        connected(&lab, "p1a", "p3a", 7777),
        "cross-node routes stay"
    );
    assert!(!connected(&lab, "p3a", "p2a", 7777), "the policy stays");
    for n in nodes {
        assert_eq!(status(&lab, n).peers.len(), 2);
    }

    // Restarted: the agents resync (a policy change made now is enforced).
    let o = lab.run(&["up", "--nodes", "3", "--pods-per-node", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(pid_of(&lab, "kube-apiserver"), api);
    wait_until("agents' watches recover", Duration::from_secs(30), || {
        nodes
            .iter()
            .all(|n| status(&lab, n).datastore_problems.is_empty())
    });
    kubectl(&lab, &["delete", "networkpolicy", "p2a-from-friends"], None);
    wait_until(
        "the deleted policy is lifted",
        Duration::from_secs(10),
        || connected(&lab, "p3a", "p2a", 7777),
    );

    // A Node deleted with kubectl: its peers drop its routes.
    let node3_cidr = status(&lab, "node3").pod_cidr;
    assert!(lab.sh("node1", &["ip", "route"]).contains(&node3_cidr));
    kubectl(&lab, &["delete", "node", "node3"], None);
    wait_until(
        "node1 and node2 drop node3",
        Duration::from_secs(10),
        || {
            ["node1", "node2"]
                .iter()
                .all(|n| status(&lab, n).peers.len() == 1)
        },
    );
    assert!(
        !lab.sh("node1", &["ip", "route"]).contains(&node3_cidr),
        "node1 still routes {node3_cidr}"
    );
    assert!(
        connected(&lab, "p1a", "p2a", 7777),
        "the others stay connected"
    );
}

fn check_access(lab: &TestLab, kubeconfig: &str) -> (bool, String) {
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}-fabric", lab.name))
        .arg(env!("CARGO_BIN_EXE_podnetd"))
        .args([
            "--node",
            "node1",
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            kubeconfig,
            "--check-access",
        ])
        .output()
        .expect("run podnetd --check-access");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The ClusterRole's (group, resource, verb) triples.
fn role_calls(yaml: &str) -> BTreeSet<(String, String, String)> {
    use serde::Deserialize;
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" {
            continue;
        }
        for r in v["rules"].as_array().unwrap() {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for verb in r["verbs"].as_array().unwrap() {
                        out.insert((
                            g.as_str().unwrap().into(),
                            res.as_str().unwrap().into(),
                            verb.as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn deploy_manifests_are_accepted_and_the_role_is_minimal() {
    let lab = TestLab::up(&["--kubernetes", "--nodes", "1", "--pods-per-node", "0"]);
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    // The API server accepts every manifest (server-side validation, nothing stored).
    let out = kubectl(&lab, &["apply", "--dry-run=server", "-f", deploy], None);
    for kind in [
        "namespace/podnet",
        "serviceaccount/podnet",
        "clusterrole",
        "clusterrolebinding",
        "configmap/podnet",
        "daemonset.apps/podnet",
    ] {
        assert!(out.contains(kind), "{kind} missing from: {out}");
    }

    // The ClusterRole grants exactly the calls podnetd makes.
    let rbac = std::fs::read_to_string(format!("{deploy}/rbac.yaml")).unwrap();
    let granted = role_calls(&rbac);
    let made: BTreeSet<(String, String, String)> = podnet_kube::CALLS
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    assert_eq!(granted, made);

    // With deploy/'s role every call succeeds (the lab's agents run with it).
    let agent_kc = format!("/run/podnet/lab/{}/k8s/agent.kubeconfig", lab.name);
    let (ok, out) = check_access(&lab, &agent_kc);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        made.len(),
        "{out}"
    );

    // Without any one verb, exactly that call is refused.
    let kc: Value = serde_json::from_str(&std::fs::read_to_string(&agent_kc).unwrap()).unwrap();
    for (i, removed) in made.iter().enumerate() {
        let name = format!("podnet-minus-{i}");
        let rules: Vec<Value> = made
            .iter()
            .filter(|c| *c != removed)
            .map(|(g, r, v)| json!({"apiGroups": [g], "resources": [r], "verbs": [v]}))
            .collect();
        let objs = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "podnet"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "podnet"}]},
        ]});
        kubectl(&lab, &["apply", "-f", "-"], Some(&objs.to_string()));
        let token = kubectl(&lab, &["create", "token", &name, "-n", "podnet"], None);
        let mut k = kc.clone();
        k["users"][0]["user"] = json!({"token": token.trim()});
        let path = format!("/run/podnet/lab/{}/k8s/{name}.kubeconfig", lab.name);
        std::fs::write(&path, k.to_string()).unwrap();
        let verb = &removed.2;
        let resource = if removed.0.is_empty() {
            removed.1.clone()
        } else {
            format!("{}.{}", removed.1, removed.0)
        };
        let refused_line = format!("refused  {verb} {resource}:");
        // The new binding reaches the authorizer within moments: wait until every
        // other call passes, then exactly the removed one must be refused.
        let mut last = String::new();
        wait_until(
            &format!("the role without {verb} {resource} is in force"),
            Duration::from_secs(15),
            || {
                let (_, out) = check_access(&lab, &path);
                last = out;
                last.lines().filter(|l| l.starts_with("ok ")).count() == made.len() - 1
            },
        );
        assert!(
            last.contains(&refused_line),
            "without {verb} {resource}: {last}"
        );
        assert!(last.contains("forbidden"), "{last}");
    }
}

#[test]
fn the_plugin_carries_no_async_runtime() {
    // tokio and the Kubernetes client live in podnetd only: podnet-cni, started once
    // per pod event, stays synchronous and small. Its binary holds neither (their
    // panic locations would name their source files); podnetd's holds both.
    let has = |bin: &str, what: &str| {
        let b = std::fs::read(bin).unwrap();
        b.windows(what.len()).any(|w| w == what.as_bytes())
    };
    assert!(
        has(env!("CARGO_BIN_EXE_podnetd"), "tokio"),
        "the check itself must see tokio in podnetd"
    );
    assert!(has(env!("CARGO_BIN_EXE_podnetd"), "kube-client"));
    for what in ["tokio", "kube-client", "hyper"] {
        assert!(
            !has(&plugin().display().to_string(), what),
            "podnet-cni links {what}"
        );
    }
}

#[test]
fn wireguard_keys_travel_as_node_annotations() {
    let lab = TestLab::up(&[
        "--kubernetes",
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--backend",
        "wireguard",
    ]);
    lab.full_mesh();
    let annotation = |node: &str, key: &str| {
        kubectl(
            &lab,
            &[
                "get",
                "node",
                node,
                "-o",
                &format!("jsonpath={{.metadata.annotations.podnet\\.dev/{key}}}"),
            ],
            None,
        )
    };
    for node in ["node1", "node2"] {
        let st = status(&lab, node);
        let w = st.wireguard.expect("the wireguard backend");
        assert_eq!(annotation(node, "wireguard-public-key"), w.public_key);
        assert_eq!(annotation(node, "wireguard-port"), "51820");
        assert_eq!(annotation(node, "backend"), "wireguard");
        // The private key stays on the node.
        let private =
            std::fs::read_to_string(format!("/run/podnet/lab/{}/{node}/wireguard.key", lab.name))
                .unwrap();
        let obj = kubectl(&lab, &["get", "node", node, "-o", "json"], None);
        assert!(
            !obj.contains(private.trim()),
            "{node}'s private key in its Node"
        );
    }
    // A rotation republishes the annotation; the peer follows; the mesh holds.
    let o = podnet()
        .args([
            "wireguard",
            "rotate",
            "--lab",
            &lab.name,
            "--node",
            "node1",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        annotation("node1", "wireguard-public-key"),
        r["public_key"].as_str().unwrap()
    );
    lab.full_mesh();
}
