//! podnet on a real Kubernetes control plane: etcd, kube-apiserver and
//! kube-controller-manager v1.37 built from their Go modules by
//! `scripts/kubernetes.sh` (the test command runs it first), in a lab's fabric. The
//! agents run with the ServiceAccount token `deploy/rbac.yaml` binds.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn kubectl_in(lab: &TestLab, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    lab.kubectl_try(args, stdin)
}

/// kubectl, which must succeed; its output.
fn kubectl(lab: &TestLab, args: &[&str], stdin: Option<&str>) -> String {
    lab.kubectl(args, stdin)
}

fn sock(lab: &TestLab, node: &str) -> PathBuf {
    PathBuf::from(format!("/run/podnet/lab/{}/{node}/podnetd.sock", lab.name))
}

fn status(lab: &TestLab, node: &str) -> podnet_api::Status {
    podnet_api::Client::new(sock(lab, node)).status().unwrap()
}

/// The version of object `key` node's agent has programmed (`None` if none, or the
/// agent does not answer).
fn version(lab: &TestLab, node: &str, key: &str) -> Option<u64> {
    podnet_api::Client::new(sock(lab, node))
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
    // The verdict is in the kernel once the versions match; a probe is one SYN with a
    // 1 s timeout, the same as TCP's first retransmission, so one lost SYN on a busy
    // machine would read as a refusal: a positive check gets a few tries.
    wait_until("p1a is a friend now", Duration::from_secs(5), || {
        connected(&lab, "p1a", "p2a", 7777)
    });
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
            "check-access",
            "--node",
            "node1",
            "--kubeconfig",
            kubeconfig,
        ])
        .output()
        .expect("run podnetd check-access");
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
        "validatingadmissionpolicy.admissionregistration.k8s.io/podnet-own-node",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/podnet-own-node",
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
    // (node1's node-bound token: deploy/admission.yaml, which the lab applies, refuses
    // Node changes from a podnet token bound to no node.)
    let agent_kc = format!("/run/podnet/lab/{}/k8s/agent-node1.kubeconfig", lab.name);
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

/// kubectl as the user of `kubeconfig`, in the lab's fabric (kubectl takes the last
/// `--kubeconfig`, so this one wins over the admin one `lab kubectl` gives).
fn kubectl_as(lab: &TestLab, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    kubectl_in(lab, &[&[kc.as_str()][..], args].concat(), None)
}

/// Node `node`'s annotation `podnet.dev/<key>`, as the admin reads it.
fn annotation(lab: &TestLab, node: &str, key: &str) -> String {
    kubectl(
        lab,
        &[
            "get",
            "node",
            node,
            "-o",
            &format!("jsonpath={{.metadata.annotations.podnet\\.dev/{key}}}"),
        ],
        None,
    )
}

#[test]
fn an_agent_may_change_only_its_own_node() {
    let lab = TestLab::up(&["--kubernetes", "--nodes", "2", "--pods-per-node", "0"]);
    let k8s = PathBuf::from(format!("/run/podnet/lab/{}/k8s", lab.name));
    let node1 = k8s.join("agent-node1.kubeconfig");
    // The lab gives node1 a token of podnet's ServiceAccount bound to its Node: the
    // API server sees the node's name in it, as in a DaemonSet pod's token.
    let (ok, out, err) = kubectl_as(&lab, &node1, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{err}");
    let who: Value = serde_json::from_str(&out).unwrap();
    let user = &who["status"]["userInfo"];
    assert_eq!(
        user["username"], "system:serviceaccount:podnet:podnet",
        "{who}"
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/node-name"],
        json!(["node1"]),
        "{who}"
    );

    // The lab applies deploy/admission.yaml. Without it (its binding deleted here),
    // RBAC lets node1's agent rewrite node2's record (the hole the policy closes);
    // put back at once.
    kubectl(
        &lab,
        &[
            "delete",
            "validatingadmissionpolicybinding",
            "podnet-own-node",
        ],
        None,
    );
    assert_eq!(annotation(&lab, "node2", "underlay-ip"), "192.168.1.11");
    let mac2 = annotation(&lab, "node2", "vtep-mac");
    let forge = [
        "annotate",
        "node",
        "node2",
        "--overwrite",
        "podnet.dev/underlay-ip=192.168.1.10",
    ];
    let mut err = String::new();
    wait_until("the binding is gone", Duration::from_secs(15), || {
        let r = kubectl_as(&lab, &node1, &forge);
        err = r.2;
        r.0
    });
    assert!(err.is_empty() || !err.contains("podnet-own-node"), "{err}");
    kubectl(
        &lab,
        &[
            "annotate",
            "node",
            "node2",
            "--overwrite",
            "podnet.dev/underlay-ip=192.168.1.11",
        ],
        None,
    );

    // With deploy/'s policy: refused, and the API server names the policy.
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/admission.yaml");
    kubectl(&lab, &["apply", "-f", deploy], None);
    // (Waited for with a harmless annotation, taken away again by the admin.)
    let probe = [
        "annotate",
        "node",
        "node2",
        "--overwrite",
        "podnet.dev/policy-probe=1",
    ];
    wait_until("the policy is in force", Duration::from_secs(15), || {
        !kubectl_as(&lab, &node1, &probe).0
    });
    kubectl(
        &lab,
        &["annotate", "node", "node2", "podnet.dev/policy-probe-"],
        None,
    );
    let (ok, _, err) = kubectl_as(&lab, &node1, &forge);
    assert!(!ok, "node1 rewrote node2's underlay address");
    let named = "ValidatingAdmissionPolicy 'podnet-own-node'";
    assert!(err.contains(named), "{err}");
    assert!(
        err.contains("the podnet agent of node node1 may change only its own Node, not node2"),
        "{err}"
    );
    // Removing node2's annotations, or adding one, is refused the same way.
    for args in [
        &["annotate", "node", "node2", "podnet.dev/underlay-ip-"][..],
        &["annotate", "node", "node2", "podnet.dev/vtep-mac-"][..],
        &["annotate", "node", "node2", "podnet.dev/other=1"][..],
        &["patch", "node", "node2", "--type=merge", "-p", "{}"][..],
    ] {
        let (ok, _, err) = kubectl_as(&lab, &node1, args);
        assert!(!ok, "{args:?} was allowed");
        assert!(
            err.contains(named) && err.contains("not node2"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(annotation(&lab, "node2", "underlay-ip"), "192.168.1.11");
    assert_eq!(annotation(&lab, "node2", "vtep-mac"), mac2);
    assert_eq!(annotation(&lab, "node2", "other"), "");

    // Its own Node's podnet.dev/ annotations it may change, and every call the agent
    // makes passes; the rest of its Node it may not change.
    let (ok, _, err) = kubectl_as(
        &lab,
        &node1,
        &[
            "annotate",
            "node",
            "node1",
            "--overwrite",
            "podnet.dev/underlay-ip=192.168.1.10",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out) = check_access(&lab, &node1.display().to_string());
    assert!(ok, "{out}");
    for args in [
        &["label", "node", "node1", "podnet-test=1"][..],
        &["annotate", "node", "node1", "other=1"][..],
        &[
            "patch",
            "node",
            "node1",
            "--type=merge",
            "-p",
            r#"{"spec":{"unschedulable":true}}"#,
        ][..],
    ] {
        let (ok, _, err) = kubectl_as(&lab, &node1, args);
        assert!(!ok, "{args:?} was allowed");
        assert!(
            err.contains(named) && err.contains("only the podnet.dev/ annotations"),
            "{args:?}: {err}"
        );
    }
    // A podnet token bound to no node could be anyone's: refused even on node1.
    let (ok, _, err) = kubectl_as(
        &lab,
        &k8s.join("agent.kubeconfig"),
        &[
            "annotate",
            "node",
            "node1",
            "--overwrite",
            "podnet.dev/backend=vxlan",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains(named) && err.contains("bound to no node"),
        "{err}"
    );
    // The admin is not the policy's concern.
    kubectl(
        &lab,
        &["annotate", "node", "node2", "podnet.dev/other=1"],
        None,
    );
    // Every expression type-checks against the Node schema.
    let st = kubectl(
        &lab,
        &[
            "get",
            "validatingadmissionpolicy",
            "podnet-own-node",
            "-o",
            "jsonpath={.status.typeChecking}",
        ],
        None,
    );
    assert!(!st.contains("warning"), "{st}");
}

#[test]
fn a_forged_peer_record_is_left_out() {
    let lab = TestLab::up(&["--kubernetes", "--nodes", "2", "--pods-per-node", "1"]);
    lab.full_mesh();
    let cidr2 = status(&lab, "node2").pod_cidr;
    let routed = || lab.sh("node1", &["ip", "route"]).contains(&cidr2);
    assert!(routed());
    let log = PathBuf::from(format!("/run/podnet/lab/{}/node1/podnetd.log", lab.name));
    let annotate = |kv: &[&str]| {
        let args = [&["annotate", "node", "node2", "--overwrite"][..], kv].concat();
        kubectl(&lab, &args, None);
    };
    // Left out, its routes removed, the log saying why.
    let left_out = |what: &str, why: &str| {
        wait_until(what, Duration::from_secs(10), || {
            status(&lab, "node1").peers.is_empty() && !routed()
        });
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(why), "{what}: no {why:?} in node1's log");
    };
    let back = |what: &str| {
        wait_until(what, Duration::from_secs(10), || {
            status(&lab, "node1").peers.len() == 1 && routed()
        });
        assert!(connected(&lab, "p1a", "p2a", 7777), "{what}");
    };

    // An underlay address that is none of the Node's addresses (another host's).
    annotate(&["podnet.dev/underlay-ip=192.168.1.99"]);
    left_out(
        "a record naming an address the Node does not have",
        "Node node2 is left out of the peers: its annotation podnet.dev/underlay-ip (192.168.1.99) is none of its status.addresses (InternalIP, ExternalIP: 192.168.1.11)",
    );
    annotate(&["podnet.dev/underlay-ip=192.168.1.11"]);
    back("the true record is taken again");

    // Even listed among the Node's addresses, a pod address is no underlay address.
    let status_patch = json!({"status": {"addresses": [
        {"type": "InternalIP", "address": "192.168.1.11"},
        {"type": "ExternalIP", "address": "10.244.5.5"},
        {"type": "Hostname", "address": "node2"}]}});
    kubectl(
        &lab,
        &[
            "patch",
            "node",
            "node2",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status_patch.to_string(),
        ],
        None,
    );
    annotate(&[
        "podnet.dev/underlay-ip=10.244.5.5",
        "podnet.dev/vtep-mac=0a:59:0a:f4:05:05",
    ]);
    left_out(
        "a record naming a pod address",
        "ignoring peer node2: its underlay address 10.244.5.5 is inside the cluster CIDR 10.244.0.0/16",
    );

    // The true address with another node's VTEP MAC (node1's own).
    annotate(&[
        "podnet.dev/underlay-ip=192.168.1.11",
        "podnet.dev/vtep-mac=0a:59:c0:a8:01:0a",
    ]);
    left_out(
        "a record with a VTEP MAC its address does not give",
        "ignoring peer node2: its VTEP MAC 0a:59:c0:a8:01:0a is not 0a:59:c0:a8:01:0b",
    );
    annotate(&["podnet.dev/vtep-mac=0a:59:c0:a8:01:0b"]);
    back("the true record is taken again");
    lab.full_mesh();
}
