//! NetworkPolicy in the lab, against hand-written expectations and against the model.
//!
//! The conformance suite follows the Kubernetes e2e NetworkPolicy model: namespaces x,
//! y, z (label `ns: <name>`), pods a, b, c in each (label `pod: <name>`), every pod
//! serving ports 80 and 81 on TCP, UDP and SCTP (named `serve-<port>-<proto>`). Each
//! case applies its policies, probes the full 9×9 matrix with real packets, and
//! checks every cell twice: against the expectation written here by hand, and
//! against `podnet_policy`'s evaluator (what `podnet policy explain` says). The cases
//! are our own transcription of the e2e suite's scenarios.
//!
//! Then the leak window: a pod made under a default-deny policy is probed from before
//! it exists, 1000 times, and never reached — also while its node's agent is killed
//! and restarted.

use crate::common::{podnet, TestLab};
use podnet_policy::eval::{evaluate, End};
use podnet_policy::{Cluster, Proto};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

pub(crate) fn model_yaml() -> String {
    let mut docs = Vec::new();
    for ns in NSS {
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n"
        ));
        for (i, p) in PODS.iter().enumerate() {
            let mut ports = String::new();
            for port in [80, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    ports += &format!(
                        "    - name: serve-{port}-{}\n      containerPort: {port}\n      protocol: {proto}\n",
                        proto.to_lowercase()
                    );
                }
            }
            // Spread over both nodes: same-node and cross-node paths in every case.
            let node = 1 + (i + NSS.iter().position(|n| *n == ns).unwrap()) % 2;
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {p}\n  namespace: {ns}\n  labels:\n    pod: {p}\nspec:\n  nodeName: node{node}\n  containers:\n  - name: c\n    ports:\n{ports}"
            ));
        }
    }
    docs.join("---\n")
}

impl TestLab {
    /// `lab apply` (or `delete`) of YAML given on stdin; panics with the output if it
    /// fails.
    pub(crate) fn pipe(&self, verb: &str, yaml: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["lab", "--name", &self.name, verb, "-f", "-"];
        args.extend_from_slice(extra);
        let mut c = podnet()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run podnet");
        c.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    }

    pub(crate) fn apply(&self, yaml: &str) {
        let o = self.pipe("apply", yaml, &[]);
        assert!(
            o.status.success(),
            "lab apply failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub(crate) fn delete(&self, yaml: &str) {
        let o = self.pipe("delete", yaml, &[]);
        assert!(
            o.status.success(),
            "lab delete failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The probe matrix, to the pods' IPv6 addresses with `ipv6`.
    pub(crate) fn matrix(
        &self,
        port: u16,
        proto: &str,
        ipv6: bool,
    ) -> (Vec<String>, Vec<Vec<bool>>) {
        let port = port.to_string();
        let mut args = vec![
            "probe",
            "--matrix",
            "--port",
            &port,
            "--protocol",
            proto,
            "--output",
            "json",
        ];
        if ipv6 {
            args.push("--ipv6");
        }
        let m = self.json(&args);
        assert_eq!(m["family"], if ipv6 { "ipv6" } else { "ipv4" }, "{m}");
        let pods: Vec<String> = serde_json::from_value(m["pods"].clone()).unwrap();
        let cells: Vec<Vec<bool>> = serde_json::from_value(m["connected"].clone()).unwrap();
        (pods, cells)
    }

    /// The objects the agents read, as the model sees them.
    pub(crate) fn cluster(&self) -> Cluster {
        let lab = podnet_lab::Lab::open(&self.name).unwrap();
        let objs = podnet_lab::agents::lab_objects(&lab).unwrap();
        Cluster::from_objects(&objs)
    }
}

/// Who may reach whom, written by hand: all allowed, then exceptions.
#[derive(Clone)]
struct Expect(BTreeMap<(String, String), bool>);

fn pods() -> Vec<String> {
    NSS.iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
        .collect()
}

/// `x/*` → every pod of x; `*` → every pod; else one pod.
fn sel(s: &str) -> Vec<String> {
    pods()
        .into_iter()
        .filter(|p| {
            s == "*"
                || p == s
                || s.strip_suffix("/*")
                    .is_some_and(|n| p.starts_with(&format!("{n}/")))
        })
        .collect()
}

impl Expect {
    fn all(v: bool) -> Expect {
        let mut m = BTreeMap::new();
        for a in pods() {
            for b in pods() {
                m.insert((a.clone(), b.clone()), v || a == b);
            }
        }
        Expect(m)
    }

    /// Sets every `from` → `to` pair (a pod always reaches itself).
    fn set(mut self, from: &str, to: &str, v: bool) -> Expect {
        for a in sel(from) {
            for b in sel(to) {
                if a != b {
                    self.0.insert((a.clone(), b), v);
                }
            }
        }
        self
    }
}

/// Probes the matrix and checks it against `want` and against the model: over IPv4,
/// and on a dual-stack lab over IPv6 too (TCP and UDP: SCTP probes are raw IPv4
/// packets).
fn check(lab: &TestLab, case: &str, port: u16, proto: &str, want: &Expect) {
    check_family(lab, case, port, proto, want, false);
    if lab.dual() && proto != "SCTP" {
        check_family(lab, case, port, proto, want, true);
    }
}

fn check_family(lab: &TestLab, case: &str, port: u16, proto: &str, want: &Expect, ipv6: bool) {
    let (names, cells) = lab.matrix(port, proto, ipv6);
    let c = lab.cluster();
    let p = Proto::parse(proto).unwrap();
    let mut wrong = Vec::new();
    for (i, from) in names.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            let Some(&expected) = want.0.get(&(from.clone(), to.clone())) else {
                continue;
            };
            let got = cells[i][j];
            let (fns, fname) = from.split_once('/').unwrap();
            let (tns, tname) = to.split_once('/').unwrap();
            let end = if ipv6 { End::of_pod6 } else { End::of_pod };
            let s = end(c.pod(fns, fname).unwrap()).unwrap();
            let d = end(c.pod(tns, tname).unwrap()).unwrap();
            let model = from == to || evaluate(&c, &s, &d, p, port).allowed();
            if got != expected || model != expected {
                wrong.push(format!(
                    "{from} -> {to}: expected {expected}, probe {got}, model {model}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "case {case:?}, {proto} port {port} over {}: {} cells wrong:\n  {}",
        if ipv6 { "IPv6" } else { "IPv4" },
        wrong.len(),
        wrong.join("\n  ")
    );
}

pub(crate) fn np(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

fn ns_doc(ns: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n{labels}")
}

fn pod_doc(ns: &str, p: &str, labels: &str) -> String {
    // The pod as the model declares it, with extra labels (ports unchanged).
    let full = model_yaml();
    let doc = full
        .split("---\n")
        .find(|d| d.contains(&format!("  name: {p}\n  namespace: {ns}\n")))
        .unwrap()
        .to_string();
    doc.replace(
        &format!("    pod: {p}\n"),
        &format!("    pod: {p}\n{labels}"),
    )
}

/// A probe matrix to take and what it must show.
type Check = (u16, &'static str, Expect);

struct Case {
    name: &'static str,
    /// Policies (and relabelled objects) applied, in steps; each step's checks run
    /// after it.
    steps: Vec<(String, Vec<Check>)>,
    /// Applied after the case to restore the model (besides deleting its policies).
    restore: Option<String>,
}

fn cases() -> Vec<Case> {
    let deny_x = np(
        "deny-ingress",
        "x",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    );
    vec![
        Case {
            name: "default-deny-ingress",
            steps: vec![(deny_x.clone(), vec![(80, "TCP", Expect::all(true).set("*", "x/*", false))])],
            restore: None,
        },
        Case {
            name: "default-deny-all (ingress and egress)",
            steps: vec![(
                np("deny-all", "x", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
                vec![(81, "TCP", Expect::all(true).set("*", "x/*", false).set("x/*", "*", false))],
            )],
            restore: None,
        },
        Case {
            name: "allow from pods in the server's namespace by podSelector",
            steps: vec![(
                np("allow-b", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          pod: b\n"),
                vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("x/b", "x/a", true))],
            )],
            restore: None,
        },
        Case {
            name: "an allow-all ingress rule beside default deny",
            steps: vec![(
                format!("{deny_x}---\n{}", np("allow-all-a", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - {}\n")),
                vec![(80, "TCP", Expect::all(true).set("*", "x/*", false).set("*", "x/a", true))],
            )],
            restore: None,
        },
        Case {
            name: "namespaceSelector with matchExpressions",
            steps: vec![(
                np("ns-expr", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - key: ns\n          operator: In\n          values: [y]\n"),
                vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("y/*", "x/a", true))],
            )],
            restore: None,
        },
        Case {
            name: "podSelector OR namespaceSelector (two peers)",
            steps: vec![(
                np("or", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          pod: b\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n"),
                vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("y/*", "x/a", true).set("x/b", "x/a", true))],
            )],
            restore: None,
        },
        Case {
            name: "podSelector AND namespaceSelector (one peer)",
            steps: vec![(
                np("and", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - key: ns\n          operator: NotIn\n          values: [x]\n      podSelector:\n        matchLabels:\n          pod: b\n"),
                vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("y/b", "x/a", true).set("z/b", "x/a", true))],
            )],
            restore: None,
        },
        Case {
            name: "ports: only 81",
            steps: vec![(
                np("only-81", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - ports:\n    - port: 81\n"),
                vec![
                    (80, "TCP", Expect::all(true).set("*", "x/a", false)),
                    (81, "TCP", Expect::all(true)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "stacked policies on one pod add up",
            steps: vec![(
                format!(
                    "{}---\n{}",
                    np("allow-80-from-y", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - port: 80\n"),
                    np("allow-81-from-z", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: z\n    ports:\n    - port: 81\n")
                ),
                vec![
                    (80, "TCP", Expect::all(true).set("*", "x/a", false).set("y/*", "x/a", true)),
                    (81, "TCP", Expect::all(true).set("*", "x/a", false).set("z/*", "x/a", true)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "ingress on a named port",
            steps: vec![(
                np("named-in", "x", "  podSelector: {}\n  ingress:\n  - ports:\n    - port: serve-81-tcp\n"),
                vec![
                    (80, "TCP", Expect::all(true).set("*", "x/*", false)),
                    (81, "TCP", Expect::all(true)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "egress on a named port (resolved on each destination)",
            steps: vec![(
                np("named-out", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - ports:\n    - port: serve-80-udp\n      protocol: UDP\n"),
                vec![
                    (80, "UDP", Expect::all(true)),
                    (81, "UDP", Expect::all(true).set("x/a", "*", false)),
                    (80, "TCP", Expect::all(true).set("x/a", "*", false)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "an updated policy replaces the old one",
            steps: vec![
                (
                    np("upd", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          pod: b\n"),
                    vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("x/b", "x/a", true))],
                ),
                (
                    np("upd", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          pod: c\n"),
                    vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("x/c", "x/a", true))],
                ),
            ],
            restore: None,
        },
        Case {
            name: "a namespace label change takes effect",
            steps: vec![
                (
                    np("team", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: blue\n"),
                    vec![(80, "TCP", Expect::all(true).set("*", "x/a", false))],
                ),
                (
                    ns_doc("y", "    team: blue\n"),
                    vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("y/*", "x/a", true))],
                ),
            ],
            restore: Some(ns_doc("y", "")),
        },
        Case {
            name: "a pod label change on a live pod takes effect",
            steps: vec![
                (
                    np("role", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector:\n        matchLabels:\n          role: client\n"),
                    vec![(80, "TCP", Expect::all(true).set("*", "x/a", false))],
                ),
                (
                    pod_doc("z", "b", "    role: client\n"),
                    vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("z/b", "x/a", true))],
                ),
            ],
            restore: Some(pod_doc("z", "b", "")),
        },
        Case {
            name: "a target pod relabelled into a policy is isolated",
            steps: vec![
                (
                    np("isolate", "x", "  podSelector:\n    matchLabels:\n      target: isolated\n  policyTypes: [Ingress]\n"),
                    vec![(80, "TCP", Expect::all(true))],
                ),
                (
                    pod_doc("x", "b", "    target: isolated\n"),
                    vec![(80, "TCP", Expect::all(true).set("*", "x/b", false))],
                ),
            ],
            restore: Some(pod_doc("x", "b", "")),
        },
        Case {
            name: "ingress and egress together; egress to a namespace on one port",
            steps: vec![(
                np("both", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - {}\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - port: 80\n"),
                vec![
                    (80, "TCP", Expect::all(true).set("x/a", "*", false).set("x/a", "y/*", true)),
                    (81, "TCP", Expect::all(true).set("x/a", "*", false)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "any port on one protocol",
            steps: vec![(
                np("udp-any", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - ports:\n    - protocol: UDP\n"),
                vec![
                    (81, "UDP", Expect::all(true)),
                    (81, "TCP", Expect::all(true).set("*", "x/a", false)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "egress allow-all beside a narrower egress policy",
            steps: vec![(
                format!(
                    "{}---\n{}",
                    np("out-80", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - ports:\n    - port: 80\n"),
                    np("out-all", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - {}\n")
                ),
                vec![(81, "TCP", Expect::all(true))],
            )],
            restore: None,
        },
        Case {
            name: "SCTP is not TCP",
            steps: vec![(
                np("sctp-only", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - ports:\n    - port: 80\n      protocol: SCTP\n"),
                vec![
                    (80, "SCTP", Expect::all(true)),
                    (80, "TCP", Expect::all(true).set("*", "x/a", false)),
                    (81, "SCTP", Expect::all(true).set("*", "x/a", false)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "UDP only is not TCP",
            steps: vec![(
                np("udp-only", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - ports:\n    - port: 81\n      protocol: UDP\n"),
                vec![
                    (81, "UDP", Expect::all(true)),
                    (81, "TCP", Expect::all(true).set("*", "x/a", false)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "endPort ranges",
            steps: vec![(
                np("range", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          ns: y\n    ports:\n    - port: 81\n      endPort: 90\n"),
                vec![
                    (80, "TCP", Expect::all(true).set("*", "x/a", false)),
                    (81, "TCP", Expect::all(true).set("*", "x/a", false).set("y/*", "x/a", true)),
                ],
            )],
            restore: None,
        },
        Case {
            name: "the namespace name label",
            steps: vec![(
                np("by-name", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: z\n"),
                vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("z/*", "x/a", true))],
            )],
            restore: None,
        },
        Case {
            name: "ingress and egress isolation are independent",
            steps: vec![(
                format!(
                    "{}---\n{}",
                    np("in-a", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Ingress]\n"),
                    np("out-b", "x", "  podSelector:\n    matchLabels:\n      pod: b\n  policyTypes: [Egress]\n")
                ),
                vec![(80, "TCP", Expect::all(true).set("*", "x/a", false).set("x/b", "*", false))],
            )],
            restore: None,
        },
    ]
}

/// Cases that need pod addresses: egress to ipBlocks with and without `except`.
fn cidr_cases(yb: &str) -> Vec<Case> {
    vec![
        Case {
            name: "egress to a CIDR block",
            steps: vec![(
                np("cidr", "x", &format!("  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: {yb}/32\n")),
                vec![(80, "TCP", Expect::all(true).set("x/a", "*", false).set("x/a", "y/b", true))],
            )],
            restore: None,
        },
        Case {
            name: "except inside a CIDR block, then removed",
            steps: vec![
                (
                    np("except", "x", &format!("  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.244.7.7/16\n        except:\n        - {yb}/32\n")),
                    vec![(80, "TCP", Expect::all(true).set("x/a", "y/b", false))],
                ),
                (
                    np("except", "x", "  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.244.0.0/16\n"),
                    vec![(80, "TCP", Expect::all(true))],
                ),
            ],
            restore: None,
        },
    ]
}

fn run_case(lab: &TestLab, c: &Case) {
    run_case_family(lab, c, None);
}

/// Runs a case; its checks over one family only with `Some(ipv6)` (the cases that
/// name addresses of that family), else as [`check`] does.
fn run_case_family(lab: &TestLab, c: &Case, only: Option<bool>) {
    let mut applied = Vec::new();
    for (yaml, checks) in &c.steps {
        lab.apply(yaml);
        applied.push(yaml.clone());
        for (port, proto, want) in checks {
            if let Some(ipv6) = only {
                check_family(lab, c.name, *port, proto, want, ipv6);
            } else {
                check(lab, c.name, *port, proto, want);
            }
        }
    }
    // Remove the case's policies; put relabelled objects back.
    let mut policies: Vec<&str> = Vec::new();
    for d in applied.iter().flat_map(|y| y.split("---\n")) {
        // The same policy may have been applied twice (updated): delete it once.
        let meta = |d: &str| d.split("spec:").next().unwrap_or("").to_string();
        if d.contains("kind: NetworkPolicy") && !policies.iter().any(|p| meta(p) == meta(d)) {
            policies.push(d);
        }
    }
    if !policies.is_empty() {
        lab.delete(&policies.join("---\n"));
    }
    if let Some(r) = &c.restore {
        lab.apply(r);
    }
}

/// IPv6 versions of [`cidr_cases`]: egress to a pod's IPv6 address as an ipBlock,
/// and an IPv6 block (host bits set) with that address excepted.
fn cidr_cases6(yb6: &str) -> Vec<Case> {
    vec![
        Case {
            name: "egress to an IPv6 CIDR block",
            steps: vec![(
                np("cidr6", "x", &format!("  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: {yb6}/128\n")),
                // x/a reaches y/b over IPv6 only: its IPv4 probes are all refused.
                vec![(80, "TCP", Expect::all(true).set("x/a", "*", false).set("x/a", "y/b", true))],
            )],
            restore: None,
        },
        Case {
            name: "except inside an IPv6 CIDR block",
            steps: vec![(
                np("except6", "x", &format!("  podSelector:\n    matchLabels:\n      pod: a\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: fd00:10:244::77/48\n        except:\n        - {yb6}/128\n    - ipBlock:\n        cidr: 10.244.0.0/16\n")),
                vec![(80, "TCP", Expect::all(true).set("x/a", "y/b", false))],
            )],
            restore: None,
        },
    ]
}

fn conformance(datapath: &str) {
    conformance_on(datapath, "bridge", false);
}

/// The conformance suite with `datapath` enforcing policy and pod packets crossing
/// nodes through `fast` (`bridge`, or `ebpf`: the fast path, which judges the
/// destination's ingress itself since its redirect skips the bridge); on a
/// dual-stack lab with `dual`, every matrix probed over both families.
fn conformance_on(datapath: &str, fast: &str, dual: bool) {
    let mut args = vec![
        "--nodes",
        "2",
        "--pods-per-node",
        "0",
        "--policy-datapath",
        datapath,
        "--datapath",
        fast,
    ];
    if dual {
        args.extend(["--ip-family", "dual"]);
    }
    let lab = TestLab::up(&args);
    assert_eq!(lab.dual(), dual);
    lab.apply(&model_yaml());
    if !dual {
        // IPv6 probes on an IPv4 lab are refused, saying why.
        let o = lab.run(&["probe", "--matrix", "--port", "80", "--ipv6"]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not dual-stack"), "{err}");
    }
    // With no policy, everything reaches everything on every protocol.
    for proto in ["TCP", "UDP", "SCTP"] {
        check(&lab, "no policy", 80, proto, &Expect::all(true));
    }
    for c in cases() {
        run_case(&lab, &c);
    }
    let yb = lab.cluster().pod("y", "b").unwrap().ip.unwrap().to_string();
    for c in cidr_cases(&yb) {
        run_case_family(&lab, &c, Some(false));
    }
    if dual {
        // The IPv6 blocks, judged on the IPv6 matrix.
        let yb6 = lab
            .cluster()
            .pod("y", "b")
            .unwrap()
            .ip6
            .unwrap()
            .to_string();
        for c in cidr_cases6(&yb6) {
            run_case_family(&lab, &c, Some(true));
        }
    }
    // Every case cleaned up after itself: back to all-allowed.
    check(&lab, "after all cases", 81, "TCP", &Expect::all(true));
    // trace reads each datapath's own kernel state for its policy hops: a denied flow
    // is named at the destination's policy hop, an admitted one passes it.
    lab.apply(&np(
        "trace-deny",
        "x",
        "  podSelector:\n    matchLabels:\n      pod: a\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          pod: b\n",
    ));
    let trace = |from: &str, to: &str| -> Value {
        let o = podnet()
            .args([
                "trace", "--lab", &lab.name, from, to, "--port", "80", "--output", "json",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("trace: {e}: {}", String::from_utf8_lossy(&o.stderr)))
    };
    let v = trace("y/a", "x/a");
    assert_eq!(v["broken_hop"]["where"], "dst-pod", "{datapath}: {v:#}");
    assert_eq!(v["broken_hop"]["what"], "policy", "{datapath}: {v:#}");
    let v = trace("x/b", "x/a");
    assert_eq!(v["verdict"], "reachable", "{datapath}: {v:#}");
}

#[test]
fn conformance_nftables() {
    conformance("nftables");
}

#[test]
fn conformance_ebpf() {
    conformance("ebpf");
}

#[test]
fn conformance_ebpf_fast_path() {
    conformance_on("ebpf", "ebpf", false);
}

/// The whole suite on a dual-stack lab: every case's matrix probed over IPv4 and over
/// IPv6 (pods' IPv6 addresses, same-node and across nodes) with the same expectations,
/// plus IPv6 ipBlocks with and without `except`.
#[test]
fn conformance_nftables_dual_stack() {
    conformance_on("nftables", "bridge", true);
}

/// The same on the eBPF policy datapath: pods' IPv6 addresses judged by its IPv6 maps.
#[test]
fn conformance_ebpf_dual_stack() {
    conformance_on("ebpf", "bridge", true);
}

/// And on the fast path, which judges IPv6 and carries it past the bridge and the
/// VXLAN device itself.
#[test]
fn conformance_ebpf_fast_path_dual_stack() {
    conformance_on("ebpf", "ebpf", true);
}
