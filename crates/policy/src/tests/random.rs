//! Property tests on random clusters: the compiler's tables never overlap, agree with
//! the simple evaluator, and recompiling only what changed equals a full compile.

use super::*;

/// A small deterministic generator (xorshift64*), so a failing case reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALS: [&str; 3] = ["a", "b", "c"];
const NSS: [&str; 3] = ["x", "y", "z"];
const PORTS: [u16; 4] = [80, 81, 443, 8080];
const NAMES: [&str; 2] = ["http", "metrics"];

fn labels(r: &mut Rng) -> Value {
    let mut m = serde_json::Map::new();
    for k in KEYS {
        if r.chance(60) {
            m.insert(k.into(), json!(r.pick(&VALS)));
        }
    }
    Value::Object(m)
}

fn selector(r: &mut Rng) -> Value {
    let mut s = serde_json::Map::new();
    if r.chance(50) {
        s.insert(
            "matchLabels".into(),
            json!({ r.pick(&KEYS): r.pick(&VALS) }),
        );
    }
    if r.chance(40) {
        let op = r.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
        let values: Vec<&str> = if op == "In" || op == "NotIn" {
            vec![r.pick(&VALS), r.pick(&VALS)]
        } else {
            vec![]
        };
        s.insert(
            "matchExpressions".into(),
            json!([{"key": r.pick(&KEYS), "operator": op, "values": values}]),
        );
    }
    Value::Object(s)
}

fn peer(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!({"podSelector": selector(r)}),
        1 => json!({"namespaceSelector": selector(r)}),
        2 => json!({"podSelector": selector(r), "namespaceSelector": selector(r)}),
        _ if r.chance(40) => {
            // IPv6 blocks around the pods' fd00:A:B::n addresses.
            let (a, b, x) = (r.below(2), r.below(3), r.below(12));
            let base = match r.below(5) {
                0 => format!("fd00:{a}::/32"),
                1 => format!("fd00:{a}:{b}::/48"),
                2 => format!("fd00:{a}:{b}::/64"),
                3 => format!("fd00:{a}:{b}::{x}/126"),
                _ => format!("fd00:{a}:{b}::{x}/128"),
            };
            if r.chance(50) {
                let ex = format!("fd00:{a}:{}::{}/126", r.below(3), r.below(12) & !3);
                let o = json!({"ipBlock":{"cidr": base, "except":[ex]}});
                let v = Object::from_json(json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"t"},"spec":{"ingress":[{"from":[o.clone()]}]}})).unwrap();
                if validate(&v).is_ok() {
                    return o;
                }
            }
            json!({"ipBlock":{"cidr": base}})
        }
        _ => {
            let len = [8u8, 16, 24, 28, 32][r.below(5)];
            let base = format!("10.{}.{}.{}/{len}", r.below(2), r.below(3), r.below(16));
            if len <= 24 && r.chance(50) {
                let ex = format!("10.{}.{}.{}/30", r.below(2), r.below(3), r.below(16) & !3);
                // Only valid excepts (strictly inside) are kept.
                let o = json!({"ipBlock":{"cidr": base, "except":[ex]}});
                let v = Object::from_json(json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"t"},"spec":{"ingress":[{"from":[o.clone()]}]}})).unwrap();
                if validate(&v).is_ok() {
                    return o;
                }
            }
            json!({"ipBlock":{"cidr": base}})
        }
    }
}

fn ports(r: &mut Rng) -> Option<Value> {
    if r.chance(30) {
        return None;
    }
    let mut out = vec![];
    for _ in 0..1 + r.below(2) {
        let proto = r.pick(&["TCP", "UDP", "SCTP"]);
        let mut p = serde_json::Map::new();
        if r.chance(70) {
            p.insert("protocol".into(), json!(proto));
        }
        match r.below(4) {
            0 => {}
            1 => {
                p.insert("port".into(), json!(r.pick(&NAMES)));
            }
            2 => {
                let a = PORTS[r.below(4)];
                p.insert("port".into(), json!(a));
                p.insert("endPort".into(), json!(a + r.below(3) as u16));
            }
            _ => {
                p.insert("port".into(), json!(PORTS[r.below(4)]));
            }
        }
        out.push(Value::Object(p));
    }
    Some(json!(out))
}

fn rules(r: &mut Rng, key: &str) -> Value {
    let mut out = vec![];
    for _ in 0..r.below(3) {
        let mut rule = serde_json::Map::new();
        if r.chance(80) {
            let peers: Vec<Value> = (0..1 + r.below(2)).map(|_| peer(r)).collect();
            rule.insert(key.into(), json!(peers));
        }
        if let Some(p) = ports(r) {
            rule.insert("ports".into(), p);
        }
        out.push(Value::Object(rule));
    }
    json!(out)
}

fn random_cluster(r: &mut Rng) -> Cluster {
    let mut objs = vec![];
    for n in NSS {
        if r.chance(80) {
            objs.push(ns(n, labels(r)));
        }
    }
    let mut ip = 0u32;
    for n in NSS {
        for p in ["a", "b", "c"] {
            ip += 1;
            let addr = format!("10.{}.{}.{}", r.below(2), r.below(3), ip);
            // Most pods are dual-stack; some are IPv4 only.
            let addr6 = format!("fd00:{}:{}::{ip:x}", r.below(2), r.below(3));
            let dual = r.chance(70);
            let mut ports = vec![];
            for name in NAMES {
                if r.chance(60) {
                    ports.push(json!({"name": name, "containerPort": PORTS[r.below(4)], "protocol": r.pick(&["TCP","UDP","SCTP"])}));
                }
            }
            objs.push(if dual {
                pod_dual(n, p, labels(r), &addr, &addr6, json!(ports))
            } else {
                pod(n, p, labels(r), &addr, json!(ports))
            });
        }
    }
    for i in 0..r.below(5) {
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), selector(r));
        if r.chance(70) {
            spec.insert("ingress".into(), rules(r, "from"));
        }
        if r.chance(50) {
            spec.insert("egress".into(), rules(r, "to"));
        }
        if r.chance(40) {
            let t = match r.below(3) {
                0 => json!(["Ingress"]),
                1 => json!(["Egress"]),
                _ => json!(["Ingress", "Egress"]),
            };
            spec.insert("policyTypes".into(), t);
        }
        objs.push(np(r.pick(&NSS), &format!("p{i}"), Value::Object(spec)));
    }
    Cluster::from_objects(&objs)
}

/// No two entries of a table may overlap (nftables refuses them).
fn assert_disjoint(allow: &std::collections::BTreeSet<crate::Allow>) {
    let v: Vec<_> = allow.iter().collect();
    for (i, a) in v.iter().enumerate() {
        for b in &v[i + 1..] {
            let overlap = a.net.overlaps(&b.net)
                && match (a.ports, b.ports) {
                    (None, None) => true,
                    (Some(p), Some(q)) => {
                        p.proto == q.proto && p.first <= q.last && q.first <= p.last
                    }
                    _ => false,
                };
            assert!(!overlap, "{a:?} overlaps {b:?}");
        }
    }
}

#[test]
fn normalized_tables_never_overlap() {
    use crate::compile::normalize;
    use crate::net::parse_cidr;
    let net = |s: &str| parse_cidr(s).unwrap();
    let port = |s: &str, a: u16, b: u16| crate::Allow {
        net: net(s),
        ports: Some(crate::Ports {
            proto: Proto::Tcp,
            first: a,
            last: b,
        }),
    };
    let any = |s: &str| crate::Allow {
        net: net(s),
        ports: None,
    };
    let input: std::collections::BTreeSet<_> = [
        port("10.0.0.0/8", 80, 90),
        port("10.1.0.0/16", 85, 100),
        port("10.1.2.3/32", 200, 200),
        any("10.9.0.0/16"),
        any("10.9.1.0/24"),
        port("10.9.3.0/24", 1, 2),
    ]
    .into();
    let out = normalize(&input);
    assert_disjoint(&out);
    let t = Table::Isolated {
        policies: vec![],
        allow: out.clone(),
    };
    let u = Table::Isolated {
        policies: vec![],
        allow: input,
    };
    for ip in [
        "10.0.0.1", "10.1.0.1", "10.1.2.3", "10.9.1.1", "10.9.3.3", "11.0.0.1",
    ] {
        for p in [1u16, 2, 80, 85, 90, 91, 100, 101, 200, 201] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(
                t.allows(ip, Proto::Tcp, p),
                u.allows(ip, Proto::Tcp, p),
                "{ip} {p}"
            );
        }
    }
    assert!(!out.contains(&any("10.9.1.0/24")), "covered by 10.9.0.0/16");
}

#[test]
fn compiler_agrees_with_the_simple_evaluator_on_random_clusters() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut isolated = 0;
    let mut denied = 0;
    let mut flows = 0;
    let mut flows6 = 0;
    for case in 0..300 {
        let c = random_cluster(&mut r);
        let tables = compile(&c, |_| true);
        for t in tables.values() {
            for dir in [Direction::Ingress, Direction::Egress] {
                if let Table::Isolated { allow, .. } = t.table(dir) {
                    assert_disjoint(allow);
                }
            }
        }
        let outside = ["10.1.2.200", "192.0.2.1", "fd00:1:2::c8", "2001:db8::1"];
        for local in &c.pods {
            let t = &tables[&local.key()];
            assert_eq!(t.ip6, local.ip6);
            let others: Vec<End> = c
                .pods
                .iter()
                .flat_map(|p| [End::of_pod(p), End::of_pod6(p)])
                .flatten()
                .chain(outside.iter().map(|s| End {
                    ip: s.parse().unwrap(),
                    pod: None,
                }))
                .collect();
            for other in &others {
                // A flow is of one family: the local pod's address of that family.
                let me = if other.ip.is_ipv6() {
                    End::of_pod6(local)
                } else {
                    End::of_pod(local)
                };
                let Some(me) = me else { continue };
                for proto in [Proto::Tcp, Proto::Udp, Proto::Sctp, Proto::Other(1)] {
                    for port in [0u16, 80, 81, 82, 443, 444, 8080] {
                        for dir in [Direction::Ingress, Direction::Egress] {
                            let want = crate::eval::side(&c, dir, &me, other, proto, port);
                            let got = t.table(dir).allows(other.ip, proto, port);
                            assert_eq!(
                                want.allowed, got,
                                "case {case}: {} {:?} {} {proto:?}/{port}: evaluator says {}, tables say {got}\npolicies: {:#?}",
                                local.key(), dir, other.describe(), want.reason, c.policies
                            );
                            assert_eq!(want.policies.is_empty(), !t.table(dir).is_isolated());
                            flows += 1;
                            flows6 += usize::from(other.ip.is_ipv6());
                            isolated += usize::from(!want.policies.is_empty());
                            denied += usize::from(!got);
                        }
                    }
                }
            }
        }
    }
    // The generator must exercise both outcomes, or the comparison proves nothing.
    assert!(flows > 100_000, "{flows}");
    assert!(flows6 > flows / 5, "IPv6 flows: {flows6} of {flows}");
    assert!(
        isolated > flows / 10 && denied > flows / 20,
        "isolated {isolated}, denied {denied} of {flows}"
    );
}

/// Recompiling only the pods a changed policy selects gives exactly the tables a full
/// compile gives, whatever the change: a policy added, removed, or given another
/// selector or other rules.
#[test]
fn recompiling_the_pods_of_changed_policies_equals_a_full_compile() {
    use crate::compile::recompile;
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let mut partial = 0;
    for case in 0..300 {
        let before = random_cluster(&mut r);
        // The same pods and namespaces; the policies from another random cluster
        // with a share of the old ones kept as they were.
        let other = random_cluster(&mut r);
        let mut after = before.clone();
        after.policies = other.policies.clone();
        for p in &before.policies {
            if r.chance(50)
                && !after
                    .policies
                    .iter()
                    .any(|q| policy_name(q) == policy_name(p))
            {
                after.policies.push(p.clone());
            }
        }
        after.policies.sort_by_key(policy_name);
        let changed: Vec<&crate::objects::NetworkPolicy> = before
            .policies
            .iter()
            .chain(&after.policies)
            .filter(|p| {
                let same = |list: &[crate::objects::NetworkPolicy]| list.iter().any(|q| q == *p);
                !(same(&before.policies) && same(&after.policies))
            })
            .collect();
        let local = |p: &crate::PodInfo| p.namespace != "z";
        let prev = compile(&before, local);
        let want = compile(&after, local);
        let got = recompile(&after, &prev, &changed, local);
        assert_eq!(got, want, "case {case}: changed {:#?}", changed);
        partial += usize::from(got.len() > changed.len());
    }
    assert!(partial > 100, "{partial}");
}
