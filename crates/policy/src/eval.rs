//! The flow evaluator: one flow (source, destination, protocol, port) judged straight
//! from the definitions in [`crate::model`], with the reasons. It is deliberately
//! simple — no tables, no indexes — so that it can stand as the reference the
//! compiler is tested against, and it is what `podnet policy explain` prints.
//!
//! A flow is allowed when the source's egress admits it and the destination's
//! ingress admits it. A side that is not a pod (an address outside the cluster's
//! pods) has no policy of its own.

use crate::model::*;
use crate::objects::NetworkPolicy;
use serde::Serialize;
use std::net::IpAddr;

/// One end of a flow.
#[derive(Clone, Debug)]
pub struct End<'a> {
    pub ip: IpAddr,
    /// The pod with that address, if any.
    pub pod: Option<&'a PodInfo>,
}

impl<'a> End<'a> {
    /// The pod by its IPv4 address.
    pub fn of_pod(p: &'a PodInfo) -> Option<End<'a>> {
        Some(End {
            ip: p.ip?.into(),
            pod: Some(p),
        })
    }

    /// The pod by its IPv6 address (dual-stack).
    pub fn of_pod6(p: &'a PodInfo) -> Option<End<'a>> {
        Some(End {
            ip: p.ip.and(p.ip6)?.into(),
            pod: Some(p),
        })
    }

    pub fn describe(&self) -> String {
        match self.pod {
            Some(p) => format!("{} ({})", p.key(), self.ip),
            None => self.ip.to_string(),
        }
    }
}

/// A rule that admitted a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub policy: String,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
}

/// One direction's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Side {
    pub direction: Direction,
    /// The pod whose policy this is (`ns/name`), or `None` when that end is no pod.
    pub pod: Option<String>,
    /// Policies selecting the pod for this direction; empty: not isolated.
    pub policies: Vec<String>,
    pub allowed: bool,
    /// The first rule that admits the flow, if the pod is isolated and one does.
    pub allowed_by: Option<RuleRef>,
    pub reason: String,
}

/// The verdict on a flow, with both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    pub from: String,
    pub to: String,
    pub protocol: Proto,
    pub port: u16,
    pub egress: Side,
    pub ingress: Side,
    pub reason: String,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.verdict == "allowed"
    }
}

/// Judges one direction: `local` is the pod whose policy applies, `remote` the other
/// end; named ports resolve on the destination.
pub fn side(
    c: &Cluster,
    dir: Direction,
    local: &End,
    remote: &End,
    proto: Proto,
    port: u16,
) -> Side {
    let Some(pod) = local.pod else {
        return Side {
            direction: dir,
            pod: None,
            policies: vec![],
            allowed: true,
            allowed_by: None,
            reason: format!("{} is not a pod: no {} policy", local.ip, dir.as_str()),
        };
    };
    let flow = Flow {
        remote,
        dst: match dir {
            Direction::Ingress => Some(pod),
            Direction::Egress => remote.pod,
        },
        proto,
        port,
    };
    let mut policies = vec![];
    let mut allowed_by = None;
    for p in c
        .policies
        .iter()
        .filter(|p| selects(p, pod) && governs(p, dir))
    {
        policies.push(policy_name(p));
        if allowed_by.is_some() {
            continue;
        }
        allowed_by = admitting_rule(c, p, dir, &flow);
    }
    let who = pod.key();
    let (allowed, reason) = judgement(&who, dir, &policies, allowed_by.as_ref(), &flow);
    Side {
        direction: dir,
        pod: Some(who),
        policies,
        allowed,
        allowed_by,
        reason,
    }
}

/// The flow one direction judges, as its rules see it: the other end, the pod whose
/// named ports resolve (the destination), the protocol and the port.
struct Flow<'a> {
    remote: &'a End<'a>,
    dst: Option<&'a PodInfo>,
    proto: Proto,
    port: u16,
}

/// The first rule of policy `p` for `dir` that admits the flow, if any.
fn admitting_rule(c: &Cluster, p: &NetworkPolicy, dir: Direction, f: &Flow) -> Option<RuleRef> {
    let (remote, dst, proto, port) = (f.remote, f.dst, f.proto, f.port);
    let ns = p.metadata.ns();
    for (i, r) in rules(p, dir).iter().enumerate() {
        let peer_ok = match r.peers {
            None | Some([]) => true,
            Some(peers) => peers.iter().any(|peer| match (remote.pod, &peer.ip_block) {
                (_, Some(b)) => peer_admits_ip(b, remote.ip),
                (Some(rp), None) => peer_admits_pod(c, ns, peer, rp),
                (None, None) => false,
            }),
        };
        let port_ok = match r.ports {
            None | Some([]) => true,
            Some(ports) => {
                proto.has_ports()
                    && ports.iter().any(|pp| {
                        port_range(pp, dst)
                            .is_some_and(|(pr, a, b)| pr == proto && a <= port && port <= b)
                    })
            }
        };
        if peer_ok && port_ok {
            return Some(RuleRef {
                policy: policy_name(p),
                rule: i,
            });
        }
    }
    None
}

/// Whether pod `who`, selected for `dir` by `policies`, admits the flow, and why.
fn judgement(
    who: &str,
    dir: Direction,
    policies: &[String],
    allowed_by: Option<&RuleRef>,
    f: &Flow,
) -> (bool, String) {
    let (remote, proto, port) = (f.remote, f.proto, f.port);
    match (allowed_by, policies.is_empty()) {
        (_, true) => (
            true,
            format!(
                "{who} is not isolated for {}: no policy selects it",
                dir.as_str()
            ),
        ),
        (Some(r), false) => (
            true,
            format!(
                "{who} is isolated for {} by {}; {} rule {} admits {}",
                dir.as_str(),
                policies.join(", "),
                r.policy,
                r.rule,
                remote.describe()
            ),
        ),
        (None, false) => (
            false,
            format!(
                "{who} is isolated for {} by {}, and no rule admits {} on {} port {port}",
                dir.as_str(),
                policies.join(", "),
                remote.describe(),
                proto.name()
            ),
        ),
    }
}

/// Judges a flow from `src` to `dst`.
pub fn evaluate(c: &Cluster, src: &End, dst: &End, proto: Proto, port: u16) -> Verdict {
    let egress = side(c, Direction::Egress, src, dst, proto, port);
    let ingress = side(c, Direction::Ingress, dst, src, proto, port);
    let allowed = egress.allowed && ingress.allowed;
    let reason = match (egress.allowed, ingress.allowed) {
        (true, true) => "both the source's egress and the destination's ingress admit it".into(),
        (false, _) => format!("denied on egress: {}", egress.reason),
        (true, false) => format!("denied on ingress: {}", ingress.reason),
    };
    Verdict {
        verdict: if allowed { "allowed" } else { "denied" },
        from: src.describe(),
        to: dst.describe(),
        protocol: proto,
        port,
        egress,
        ingress,
        reason,
    }
}
