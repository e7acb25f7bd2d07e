//! Validation as the Kubernetes API server does it, for the fields podnet reads:
//! every error names the field by its path (`spec.ingress[0].ports[1].endPort`), so a
//! manifest is fixed in one go.

use crate::net::parse_cidr;
use crate::objects::*;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.ingress[0].from[1].ipBlock.cidr`
    pub field: String,
    pub why: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

struct V {
    errs: Vec<FieldError>,
}

impl V {
    fn err(&mut self, field: impl Into<String>, why: impl Into<String>) {
        self.errs.push(FieldError {
            field: field.into(),
            why: why.into(),
        });
    }
}

/// Checks one object; all its errors at once.
pub fn validate(o: &Object) -> Result<(), Vec<FieldError>> {
    let mut v = V { errs: vec![] };
    let m = o.meta();
    let name_ok = match o {
        // Namespaces are DNS labels; pods and policies DNS subdomains.
        Object::Namespace(_) => is_dns_label(&m.name),
        _ => is_dns_subdomain(&m.name),
    };
    if !name_ok {
        v.err(
            "metadata.name",
            format!("{:?} is not a valid name: use lowercase letters, digits and '-' (and '.' outside namespaces), starting and ending with a letter or digit", m.name),
        );
    }
    if let Some(ns) = &m.namespace {
        if matches!(o, Object::Namespace(_)) {
            v.err("metadata.namespace", "a Namespace has no namespace");
        } else if !is_dns_label(ns) {
            v.err(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace name"),
            );
        }
    }
    for (k, val) in &m.labels {
        if !is_label_key(k) {
            v.err(
                format!("metadata.labels[{k:?}]"),
                "not a valid label key: [prefix/]name, name up to 63 letters, digits, '-', '_', '.'",
            );
        }
        if !is_label_value(val) {
            v.err(
                format!("metadata.labels[{k:?}]"),
                format!("{val:?} is not a valid label value: up to 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit"),
            );
        }
    }
    match o {
        Object::Namespace(_) => {}
        Object::Pod(p) => pod(&mut v, p),
        Object::NetworkPolicy(np) => policy(&mut v, np),
    }
    if v.errs.is_empty() {
        Ok(())
    } else {
        Err(v.errs)
    }
}

fn pod(v: &mut V, p: &Pod) {
    if let Some(ip) = p.metadata.annotations.get(IP_ANNOTATION) {
        if let Err(why) = crate::objects::requested_ips(ip) {
            v.err(format!("metadata.annotations[{IP_ANNOTATION:?}]"), why);
        }
    }
    for (i, c) in p.spec.containers.iter().enumerate() {
        for (j, port) in c.ports.iter().enumerate() {
            let at = format!("spec.containers[{i}].ports[{j}]");
            if !(1..=65535).contains(&port.container_port) {
                v.err(
                    format!("{at}.containerPort"),
                    format!("{} is not a port number (1-65535)", port.container_port),
                );
            }
            if let Some(pr) = &port.protocol {
                protocol(v, &format!("{at}.protocol"), pr);
            }
            if let Some(n) = &port.name {
                if !is_port_name(n) {
                    v.err(format!("{at}.name"), format!("{n:?} is not a valid port name: up to 15 lowercase letters, digits and '-', with at least one letter"));
                }
            }
        }
    }
}

fn protocol(v: &mut V, at: &str, p: &str) {
    if !matches!(p, "TCP" | "UDP" | "SCTP") {
        v.err(
            at,
            format!("unsupported protocol {p:?}: use \"TCP\", \"UDP\" or \"SCTP\""),
        );
    }
}

fn policy(v: &mut V, np: &NetworkPolicy) {
    let s = &np.spec;
    selector(v, "spec.podSelector", &s.pod_selector);
    if let Some(types) = &s.policy_types {
        for (i, t) in types.iter().enumerate() {
            if t != "Ingress" && t != "Egress" {
                v.err(
                    format!("spec.policyTypes[{i}]"),
                    format!("{t:?} is not a policy type: use \"Ingress\" or \"Egress\""),
                );
            }
        }
    }
    for (i, r) in s.ingress.iter().flatten().enumerate() {
        for (j, p) in r.from.iter().flatten().enumerate() {
            peer(v, &format!("spec.ingress[{i}].from[{j}]"), p);
        }
        for (j, p) in r.ports.iter().flatten().enumerate() {
            port(v, &format!("spec.ingress[{i}].ports[{j}]"), p);
        }
    }
    for (i, r) in s.egress.iter().flatten().enumerate() {
        for (j, p) in r.to.iter().flatten().enumerate() {
            peer(v, &format!("spec.egress[{i}].to[{j}]"), p);
        }
        for (j, p) in r.ports.iter().flatten().enumerate() {
            port(v, &format!("spec.egress[{i}].ports[{j}]"), p);
        }
    }
}

fn peer(v: &mut V, at: &str, p: &Peer) {
    if let Some(s) = &p.pod_selector {
        selector(v, &format!("{at}.podSelector"), s);
    }
    if let Some(s) = &p.namespace_selector {
        selector(v, &format!("{at}.namespaceSelector"), s);
    }
    match &p.ip_block {
        Some(b) => {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                v.err(
                    format!("{at}.ipBlock"),
                    "ipBlock cannot be combined with podSelector or namespaceSelector in one peer: make them two peers",
                );
            }
            let base = match parse_cidr(&b.cidr) {
                Ok(c) => Some(c),
                Err(e) => {
                    v.err(format!("{at}.ipBlock.cidr"), e);
                    None
                }
            };
            for (k, e) in b.except.iter().enumerate() {
                match (parse_cidr(e), base) {
                    (Err(why), _) => v.err(format!("{at}.ipBlock.except[{k}]"), why),
                    (Ok(x), Some(c)) if x.is_v6() != c.is_v6() => v.err(
                        format!("{at}.ipBlock.except[{k}]"),
                        format!("{e} is not of the same IP family as the cidr {}", b.cidr),
                    ),
                    (Ok(x), Some(c)) if !(c.covers(&x) && x != c) => v.err(
                        format!("{at}.ipBlock.except[{k}]"),
                        format!("{e} must be strictly inside the cidr {}", b.cidr),
                    ),
                    _ => {}
                }
            }
        }
        None => {
            if p.pod_selector.is_none() && p.namespace_selector.is_none() {
                v.err(
                    at,
                    "a peer needs podSelector, namespaceSelector or ipBlock (to match everything, leave out from/to)",
                );
            }
        }
    }
}

fn port(v: &mut V, at: &str, p: &PolicyPort) {
    if let Some(pr) = &p.protocol {
        protocol(v, &format!("{at}.protocol"), pr);
    }
    match (&p.port, p.end_port) {
        (Some(IntOrString::Int(n)), end) => {
            if !(1..=65535).contains(n) {
                v.err(
                    format!("{at}.port"),
                    format!("{n} is not a port number (1-65535)"),
                );
            }
            if let Some(e) = end {
                if e < *n {
                    v.err(
                        format!("{at}.endPort"),
                        format!("endPort {e} is below port {n}: it must be at least port"),
                    );
                } else if e > 65535 {
                    v.err(
                        format!("{at}.endPort"),
                        format!("{e} is not a port number (1-65535)"),
                    );
                }
            }
        }
        (Some(IntOrString::Str(name)), end) => {
            if !is_port_name(name) {
                v.err(format!("{at}.port"), format!("{name:?} is not a port number or a valid port name (up to 15 lowercase letters, digits and '-', with at least one letter)"));
            }
            if end.is_some() {
                v.err(
                    format!("{at}.endPort"),
                    format!("endPort cannot be used with the named port {name:?}: give port as a number"),
                );
            }
        }
        (None, Some(_)) => v.err(
            format!("{at}.endPort"),
            "endPort needs port: give the first port of the range",
        ),
        (None, None) => {}
    }
}

fn selector(v: &mut V, at: &str, s: &LabelSelector) {
    for (i, r) in s.match_expressions.iter().enumerate() {
        let here = format!("{at}.matchExpressions[{i}]");
        match r.operator.as_str() {
            "In" | "NotIn" => {
                if r.values.is_empty() {
                    v.err(
                        format!("{here}.values"),
                        format!("operator {} needs at least one value", r.operator),
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !r.values.is_empty() {
                    v.err(
                        format!("{here}.values"),
                        format!("operator {} takes no values", r.operator),
                    );
                }
            }
            other => v.err(
                format!("{here}.operator"),
                format!(
                    "{other:?} is not a selector operator: use In, NotIn, Exists or DoesNotExist"
                ),
            ),
        }
        if !is_label_key(&r.key) {
            v.err(
                format!("{here}.key"),
                format!("{:?} is not a valid label key", r.key),
            );
        }
    }
    for k in s.match_labels.keys() {
        if !is_label_key(k) {
            v.err(format!("{at}.matchLabels[{k:?}]"), "not a valid label key");
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// IANA service name: up to 15 characters, lowercase letters, digits and '-', at
/// least one letter, no leading, trailing or double '-'.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}
