//! Every semantic point of NetworkPolicy, each checked twice: by the flow evaluator
//! and by the compiled tables (`allowed` asserts they agree); then a property test
//! that compares the two on random clusters.

use crate::eval::{evaluate, End};
use crate::model::*;
use crate::objects::Object;
use crate::validate::validate;
use crate::{compile, Table};
use serde_json::{json, Value};

fn obj(v: Value) -> Object {
    let o = Object::from_json(v).expect("test object parses");
    validate(&o).unwrap_or_else(|e| panic!("test object invalid: {e:?}"));
    o
}

fn ns(name: &str, labels: Value) -> Object {
    obj(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":name,"labels":labels}}))
}

fn pod(ns: &str, name: &str, labels: Value, ip: &str, ports: Value) -> Object {
    obj(json!({"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":name,"namespace":ns,"labels":labels},
        "spec":{"nodeName":"node1","containers":[{"name":"c","ports":ports}]},
        "status":{"podIP":ip}}))
}

fn pod_dual(ns: &str, name: &str, labels: Value, ip: &str, ip6: &str, ports: Value) -> Object {
    obj(json!({"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":name,"namespace":ns,"labels":labels},
        "spec":{"nodeName":"node1","containers":[{"name":"c","ports":ports}]},
        "status":{"podIP":ip,"podIPs":[{"ip":ip},{"ip":ip6}]}}))
}

fn np(ns: &str, name: &str, spec: Value) -> Object {
    obj(
        json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
        "metadata":{"name":name,"namespace":ns},"spec":spec}),
    )
}

/// The standard world: namespaces x (team=a), y (team=b); pods x/a, x/b, y/a, y/b.
fn world(extra: Vec<Object>) -> Cluster {
    let mut o = vec![
        ns("x", json!({"team":"a"})),
        ns("y", json!({"team":"b"})),
        pod(
            "x",
            "a",
            json!({"app":"a"}),
            "10.244.0.10",
            json!([{"name":"http","containerPort":80}]),
        ),
        pod(
            "x",
            "b",
            json!({"app":"b","tier":"db"}),
            "10.244.0.11",
            json!([{"name":"http","containerPort":8080}]),
        ),
        pod(
            "y",
            "a",
            json!({"app":"a"}),
            "10.244.1.10",
            json!([{"name":"http","containerPort":81,"protocol":"TCP"},{"name":"dns","containerPort":53,"protocol":"UDP"}]),
        ),
        pod("y", "b", json!({"app":"b"}), "10.244.1.11", json!([])),
    ];
    o.extend(extra);
    Cluster::from_objects(&o)
}

/// `ns/name` (the pod by its IPv4 address), `ns/name@6` (by its IPv6 one), or an
/// address.
fn end<'a>(c: &'a Cluster, s: &str) -> End<'a> {
    if let Some((n, p)) = s.strip_suffix("@6").and_then(|s| s.split_once('/')) {
        return End::of_pod6(c.pod(n, p).expect("pod exists")).expect("pod has IPv6");
    }
    match s.split_once('/') {
        Some((n, p)) => End::of_pod(c.pod(n, p).expect("pod exists")).unwrap(),
        None => {
            let ip: std::net::IpAddr = s.parse().unwrap();
            End {
                ip,
                pod: c.pod_by_ip(ip),
            }
        }
    }
}

/// The evaluator's verdict, after checking that the compiled tables agree.
fn allowed(c: &Cluster, from: &str, to: &str, proto: Proto, port: u16) -> bool {
    let (s, d) = (end(c, from), end(c, to));
    let v = evaluate(c, &s, &d, proto, port);
    let tables = compile(c, |_| true);
    let by_table = s
        .pod
        .map(|p| tables[&p.key()].egress.allows(d.ip, proto, port))
        .unwrap_or(true)
        && d.pod
            .map(|p| tables[&p.key()].ingress.allows(s.ip, proto, port))
            .unwrap_or(true);
    assert_eq!(
        v.allowed(),
        by_table,
        "evaluator and tables disagree on {from} -> {to} {proto:?}/{port}: {v:#?}"
    );
    v.allowed()
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;
const SCTP: Proto = Proto::Sctp;
const ICMP: Proto = Proto::Other(1);

#[test]
fn a_pod_no_policy_selects_is_not_isolated() {
    let c = world(vec![np(
        "x",
        "only-b",
        json!({"podSelector":{"matchLabels":{"app":"b"}},"ingress":[]}),
    )]);
    assert!(allowed(&c, "y/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/b", "x/b", TCP, 80));
    let v = evaluate(&c, &end(&c, "y/b"), &end(&c, "x/a"), TCP, 80);
    assert!(
        v.ingress.reason.contains("not isolated"),
        "{}",
        v.ingress.reason
    );
}

#[test]
fn empty_ingress_denies_everything_and_egress_stays_open() {
    let c = world(vec![np(
        "x",
        "deny",
        json!({"podSelector":{},"ingress":[]}),
    )]);
    for from in ["x/b", "y/a", "y/b", "192.0.2.1"] {
        assert!(!allowed(&c, from, "x/a", TCP, 80), "{from}");
        assert!(!allowed(&c, from, "x/a", ICMP, 0), "{from}");
    }
    // policyTypes defaulted to [Ingress]: x/a may still send.
    assert!(allowed(&c, "x/a", "y/a", TCP, 81));
    let v = evaluate(&c, &end(&c, "y/a"), &end(&c, "x/a"), TCP, 80);
    assert_eq!(v.ingress.policies, vec!["x/deny"]);
    assert!(v.ingress.reason.contains("no rule admits"));
}

#[test]
fn policy_types_default_to_egress_only_with_egress_rules() {
    // Egress rules present, no policyTypes: both directions are governed.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}},
        "egress":[{"to":[{"podSelector":{"matchLabels":{"app":"b"}}}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "x/b", TCP, 8080));
    assert!(!allowed(&c, "x/a", "y/a", TCP, 81));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80), "ingress isolated too");
    // policyTypes [Egress] alone: ingress stays open.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}},
        "policyTypes":["Egress"], "egress":[]}),
    )]);
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "x/a", "x/b", TCP, 8080));
    // `egress: []` without policyTypes does not govern egress.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}}, "egress":[]}),
    )]);
    assert!(allowed(&c, "x/a", "x/b", TCP, 8080));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
}

#[test]
fn pod_selector_match_labels_and_expressions() {
    let rule = |sel: Value| {
        world(vec![np(
            "x",
            "p",
            json!({"podSelector":{"matchLabels":{"app":"a"}},
            "ingress":[{"from":[{"podSelector":sel}]}]}),
        )])
    };
    let c = rule(json!({"matchLabels":{"app":"b"}}));
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(
        !allowed(&c, "y/b", "x/a", TCP, 80),
        "podSelector alone: own namespace only"
    );
    let c = rule(json!({"matchExpressions":[{"key":"app","operator":"In","values":["b","c"]}]}));
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    let c = rule(json!({"matchExpressions":[{"key":"app","operator":"NotIn","values":["b"]}]}));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(allowed(&c, "x/a", "x/a", TCP, 80));
    let c = rule(json!({"matchExpressions":[{"key":"tier","operator":"Exists"}]}));
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "x/a", "x/a", TCP, 80));
    let c = rule(json!({"matchExpressions":[{"key":"tier","operator":"DoesNotExist"}]}));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(allowed(&c, "x/a", "x/a", TCP, 80));
    // NotIn matches pods without the key.
    let c = rule(json!({"matchExpressions":[{"key":"tier","operator":"NotIn","values":["db"]}]}));
    assert!(allowed(&c, "x/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
}

#[test]
fn namespace_selector_and_the_and_or_of_peers() {
    // namespaceSelector alone: every pod of matching namespaces.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{},
        "ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"b"}}}]}]}),
    )]);
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(allowed(&c, "y/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
    // Both in one peer: AND.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{},
        "ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"b"}},"podSelector":{"matchLabels":{"app":"a"}}}]}]}),
    )]);
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "x/a", "x/b", TCP, 8080));
    // Two peers: OR.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{},
        "ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"b"}}},{"podSelector":{"matchLabels":{"app":"a"}}}]}]}),
    )]);
    assert!(allowed(&c, "y/b", "x/a", TCP, 80));
    assert!(allowed(&c, "x/a", "x/b", TCP, 8080));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
    // Every namespace carries its name as a label.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{},
        "ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"y"}}}]}]}),
    )]);
    assert!(allowed(&c, "y/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
}

#[test]
fn ip_blocks_with_except_host_bits_and_pod_addresses() {
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}},
        "ingress":[{"from":[{"ipBlock":{"cidr":"10.244.1.77/24","except":["10.244.1.11/32"]}}]}]}),
    )]);
    // Host bits set: read as 10.244.1.0/24, which covers y's pods.
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/b", "x/a", TCP, 80), "excepted");
    assert!(
        allowed(&c, "10.244.1.200", "x/a", TCP, 80),
        "not a pod, inside"
    );
    assert!(!allowed(&c, "10.244.2.1", "x/a", TCP, 80));
    // Egress to an ipBlock that covers pods.
    let c = world(vec![np(
        "x",
        "e",
        json!({"podSelector":{"matchLabels":{"app":"a"}},"policyTypes":["Egress"],
        "egress":[{"to":[{"ipBlock":{"cidr":"10.244.0.0/16","except":["10.244.0.0/24"]}}],"ports":[{"port":81}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/a", TCP, 81));
    assert!(!allowed(&c, "x/a", "x/b", TCP, 81));
    assert!(!allowed(&c, "x/a", "y/a", TCP, 80));
    assert!(allowed(&c, "x/a", "10.244.9.9", TCP, 81));
    // An IPv6 block is valid and admits no IPv4 peer.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"fd00::/8"}}]}]}),
    )]);
    assert!(!allowed(&c, "y/a", "x/a", TCP, 80));
}

/// A dual-stack world: every pod of [`world`] with an IPv6 address too.
fn world6(extra: Vec<Object>) -> Cluster {
    let mut c = world(extra);
    for (i, p) in c.pods.iter_mut().enumerate() {
        p.ip6 = Some(
            format!("fd00:10:244:{}::{:x}", i / 2, 10 + i)
                .parse()
                .unwrap(),
        );
    }
    c
}

#[test]
fn dual_stack_pods_are_judged_by_each_address() {
    // Pod selectors admit a pod by both its addresses.
    let c = world6(vec![np(
        "x",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}},
        "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}]}]}),
    )]);
    assert!(allowed(&c, "x/b@6", "x/a@6", TCP, 80));
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/b@6", "x/a@6", TCP, 80), "other namespace");
    assert!(
        !allowed(&c, "fd00:10:244:9::1", "x/a@6", TCP, 80),
        "not a pod"
    );
    let tables = compile(&c, |_| true);
    assert_eq!(tables["x/a"].ip6, c.pod("x", "a").unwrap().ip6);
    // An IPv6 ipBlock with an except; an IPv4 block admits no IPv6 address.
    let y_b6 = c.pod("y", "b").unwrap().ip6.unwrap().to_string();
    let c = world6(vec![np(
        "x",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}},
        "ingress":[{"from":[
            {"ipBlock":{"cidr":"fd00:10:244::/48","except":[format!("{y_b6}/128")]}},
            {"ipBlock":{"cidr":"10.0.0.0/8"}}]}]}),
    )]);
    assert!(allowed(&c, "y/a@6", "x/a@6", TCP, 80));
    assert!(!allowed(&c, "y/b@6", "x/a@6", TCP, 80), "excepted");
    assert!(allowed(&c, "y/b", "x/a", TCP, 80), "by its IPv4 address");
    assert!(allowed(&c, "fd00:10:244:ff::1", "x/a@6", TCP, 80));
    assert!(!allowed(&c, "fd00:10:245::1", "x/a@6", TCP, 80));
    // Egress to a named port resolves on each destination address of the block only.
    let c = world6(vec![np(
        "x",
        "e",
        json!({"podSelector":{"matchLabels":{"app":"a"}},"policyTypes":["Egress"],
        "egress":[{"to":[{"ipBlock":{"cidr":"fd00:10:244::/48"}}],"ports":[{"port":"http"}]}]}),
    )]);
    assert!(allowed(&c, "x/a@6", "y/a@6", TCP, 81));
    assert!(
        !allowed(&c, "x/a", "y/a", TCP, 81),
        "IPv4 is not in the block"
    );
    let Table::Isolated { allow, .. } = &compile(&c, |_| true)["x/a"].egress else {
        panic!("isolated")
    };
    assert!(allow.iter().all(|a| a.net.is_v6()), "{allow:?}");
    // A rule with no peers admits every address of both families.
    let c = world6(vec![np(
        "x",
        "all",
        json!({"podSelector":{},"ingress":[{"ports":[{"port":80}]}]}),
    )]);
    assert!(allowed(&c, "2001:db8::1", "x/a@6", TCP, 80));
    assert!(!allowed(&c, "2001:db8::1", "x/a@6", TCP, 81));
}

#[test]
fn ports_protocols_and_ranges() {
    let c = world(vec![np(
        "y",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}},
        "ingress":[{"ports":[{"port":81},{"protocol":"UDP","port":53},{"protocol":"SCTP","port":100,"endPort":110},{"protocol":"UDP"}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/a", TCP, 81), "no protocol means TCP");
    assert!(!allowed(&c, "x/a", "y/a", TCP, 53));
    assert!(allowed(&c, "x/a", "y/a", UDP, 53));
    assert!(
        allowed(&c, "x/a", "y/a", UDP, 9999),
        "UDP without port: all UDP ports"
    );
    assert!(!allowed(&c, "x/a", "y/a", SCTP, 81));
    assert!(allowed(&c, "x/a", "y/a", SCTP, 100));
    assert!(allowed(&c, "x/a", "y/a", SCTP, 110));
    assert!(!allowed(&c, "x/a", "y/a", SCTP, 111));
    assert!(
        !allowed(&c, "x/a", "y/a", ICMP, 0),
        "a rule with ports never admits ICMP"
    );
    let c = world(vec![np(
        "y",
        "p",
        json!({"podSelector":{},"ingress":[{"from":[{"namespaceSelector":{}}]}]}),
    )]);
    assert!(
        allowed(&c, "x/a", "y/a", ICMP, 0),
        "a rule without ports admits every protocol"
    );
    assert!(allowed(&c, "x/a", "y/a", SCTP, 7));
}

#[test]
fn named_ports_resolve_per_destination_pod() {
    // Ingress: "http" is 80 on x/a and 8080 on x/b.
    let c = world(vec![np(
        "x",
        "p",
        json!({"podSelector":{},
        "ingress":[{"ports":[{"port":"http"}]}]}),
    )]);
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/a", "x/a", TCP, 8080));
    assert!(allowed(&c, "y/a", "x/b", TCP, 8080));
    assert!(!allowed(&c, "y/a", "x/b", TCP, 80));
    // Egress: resolved on each destination; a destination without the name, or not a
    // pod at all, never matches; the protocol must match the declared one.
    let c = world(vec![np(
        "x",
        "e",
        json!({"podSelector":{"matchLabels":{"app":"a"}},"policyTypes":["Egress"],
        "egress":[{"ports":[{"port":"http"},{"port":"dns","protocol":"UDP"}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "x/b", TCP, 8080));
    assert!(allowed(&c, "x/a", "y/a", TCP, 81));
    assert!(!allowed(&c, "x/a", "y/a", TCP, 8080));
    assert!(allowed(&c, "x/a", "y/a", UDP, 53));
    assert!(!allowed(&c, "x/a", "y/a", TCP, 53));
    assert!(!allowed(&c, "x/a", "y/b", TCP, 80));
    assert!(!allowed(&c, "x/a", "192.0.2.7", TCP, 80));
}

#[test]
fn several_policies_add_up_and_name_the_rule() {
    let c = world(vec![
        np(
            "x",
            "web",
            json!({"podSelector":{"matchLabels":{"app":"a"}},"ingress":[{"ports":[{"port":80}]}]}),
        ),
        np(
            "x",
            "admin",
            json!({"podSelector":{"matchLabels":{"app":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}]}]}),
        ),
    ]);
    assert!(allowed(&c, "y/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/b", "x/a", TCP, 22));
    assert!(allowed(&c, "x/b", "x/a", TCP, 22));
    let v = evaluate(&c, &end(&c, "x/b"), &end(&c, "x/a"), TCP, 22);
    assert_eq!(v.ingress.policies, vec!["x/admin", "x/web"]);
    assert_eq!(v.ingress.allowed_by.as_ref().unwrap().policy, "x/admin");
    let tables = compile(&c, |_| true);
    let Table::Isolated { policies, .. } = &tables["x/a"].ingress else {
        panic!("x/a is isolated")
    };
    assert_eq!(policies, &vec!["x/admin".to_string(), "x/web".to_string()]);
}

#[test]
fn label_changes_change_verdicts() {
    let policy = np(
        "x",
        "p",
        json!({"podSelector":{"matchLabels":{"app":"a"}},
        "ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"b"}}}]}]}),
    );
    let c = world(vec![policy.clone()]);
    assert!(allowed(&c, "y/b", "x/a", TCP, 80));
    // Relabel namespace y: its pods lose access.
    let mut c2 = world(vec![policy.clone()]);
    c2.namespaces
        .get_mut("y")
        .unwrap()
        .insert("team".into(), "c".into());
    assert!(!allowed(&c2, "y/b", "x/a", TCP, 80));
    // Relabel pod x/a: no longer selected, so no longer isolated.
    let mut c3 = world(vec![policy]);
    c3.pods
        .iter_mut()
        .find(|p| p.key() == "x/a")
        .unwrap()
        .labels
        .insert("app".into(), "z".into());
    assert!(allowed(&c3, "x/b", "x/a", TCP, 80));
}

#[test]
fn only_local_pods_are_compiled() {
    let c = world(vec![]);
    let t = compile(&c, |p| p.namespace == "x");
    assert_eq!(t.keys().collect::<Vec<_>>(), vec!["x/a", "x/b"]);
}

fn invalid(v: Value) -> Vec<String> {
    match Object::from_json(v) {
        Err(e) => vec![e],
        Ok(o) => validate(&o)
            .expect_err("object must be refused")
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

#[test]
fn invalid_objects_are_refused_with_the_field_named() {
    let spec = |s: Value| json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p"},"spec":s});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"s"}}),
            "unknown kind \"Service\"",
        ),
        (
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"s"},"spek":{}}),
            "unknown field `spek`",
        ),
        (
            spec(json!({"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/33"}}]}]})),
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            spec(
                json!({"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["11.0.0.0/16"]}}]}]}),
            ),
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            spec(json!({"egress":[{"ports":[{"port":90,"endPort":80}]}]})),
            "spec.egress[0].ports[0].endPort: endPort 80 is below port 90",
        ),
        (
            spec(json!({"egress":[{"ports":[{"port":"http","endPort":80}]}]})),
            "spec.egress[0].ports[0].endPort: endPort cannot be used with the named port",
        ),
        (
            spec(
                json!({"podSelector":{"matchExpressions":[{"key":"a","operator":"Equals","values":["b"]}]}}),
            ),
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            spec(json!({"podSelector":{"matchExpressions":[{"key":"a","operator":"In"}]}})),
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            spec(json!({"ingress":[{"ports":[{"protocol":"ICMP","port":1}]}]})),
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            spec(json!({"policyTypes":["ingress"]})),
            "spec.policyTypes[0]",
        ),
        (
            spec(json!({"ingress":[{"from":[{}]}]})),
            "spec.ingress[0].from[0]: a peer needs",
        ),
        (
            spec(
                json!({"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8"},"podSelector":{}}]}]}),
            ),
            "spec.ingress[0].from[0].ipBlock: ipBlock cannot be combined",
        ),
        (
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"s","annotations":{"podnet.dev/ip":"10.0.0"}}}),
            "metadata.annotations[\"podnet.dev/ip\"]",
        ),
        (
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"s","annotations":{"podnet.dev/ip":"fd00::9"}}}),
            "has no IPv4 address (IPv6-only pods are not supported yet)",
        ),
        (
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"s","annotations":{"podnet.dev/ip":"10.0.0.9, 10.0.0.8"}}}),
            "names two addresses of one family",
        ),
        (
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"s"},"spec":{"containers":[{"ports":[{"containerPort":70000}]}]}}),
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"Bad_Name"}}),
            "metadata.name",
        ),
    ];
    for (v, want) in cases {
        let errs = invalid(v.clone());
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{v}: want {want:?}, got {errs:?}"
        );
    }
}

mod random;
