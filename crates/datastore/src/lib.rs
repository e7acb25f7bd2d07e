//! The datastore: where each node leases its pod CIDR and publishes how to reach it
//! (underlay IP, VTEP MAC), and where every node finds its peers.
//!
//! One trait, [`Datastore`], in the terms of the domain — register a node, renew its
//! lease, list live nodes, remove a node, wait for a change — rather than of a
//! key-value store, so that a Kubernetes backend (pod CIDR from `node.spec.podCIDR`,
//! the rest in node annotations, changes by watch) fits behind it without changing
//! callers. Backends: [`file`] (a directory; the lab and single-host use) and [`etcd`]
//! (etcd v3 over its gRPC client, for clusters without Kubernetes).
//!
//! Leases expire: a node that stops renewing for its TTL disappears from
//! [`Datastore::nodes`], so its peers remove their routes to it. Stopping an agent
//! does not remove its node; only [`Datastore::remove`] (or expiry) does.

pub mod etcd;
pub mod file;

use podnet_cni_spec::net::{Ipv4Net, Ipv6Net};
use podnet_conventions::UnderlayFamily;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "datastore URL {0:?} is not understood: use file:/path/to/dir, etcd://[user:password@]ip:port[,ip:port], or etcds://…?ca=FILE[&cert=FILE&key=FILE] for TLS"
    )]
    Url(String),
    #[error("datastore {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("datastore record {path} is damaged ({why}); delete it, its node registers again")]
    Corrupt { path: String, why: String },
    #[error("no free /{prefix} left in cluster CIDR {cluster} for node {node}: {used} nodes hold one; remove departed nodes or use a larger cluster CIDR")]
    Exhausted {
        cluster: Ipv4Net,
        prefix: u8,
        node: String,
        used: usize,
    },
    #[error("invalid registration of node {node}: {why}")]
    Invalid { node: String, why: String },
    /// The datastore answered, but cannot serve this yet (a Node without its pod
    /// CIDR): worth retrying.
    #[error("{0}")]
    NotReady(String),
    /// The datastore could not be reached or refused the call.
    #[error("{op}: {why}")]
    Unavailable { op: String, why: String },
    /// The backend does not do this (objects come from elsewhere).
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// True for errors that a later retry may not meet (the API server down, a Node
    /// not allocated its pod CIDR yet).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::NotReady(_) | Error::Unavailable { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn is_ipv4_underlay(f: &UnderlayFamily) -> bool {
    !f.is_ipv6()
}

/// What a node publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    /// A dual-stack cluster's second pod CIDR for the node. The file and etcd
    /// datastores derive it from the IPv4 lease ([`Registration::cidr6_for`]: the same
    /// index in the cluster's IPv6 range), so one lease holds both; on Kubernetes it
    /// is the IPv6 entry of the Node's `spec.podCIDRs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    pub underlay_ip: Ipv4Addr,
    /// A dual-stack node's global IPv6 address on its underlay link, if it has one:
    /// where host-gw peers route its IPv6 pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ip6: Option<Ipv6Addr>,
    /// Which of its underlay addresses the node's overlay tunnel (VXLAN, WireGuard)
    /// ends at: `ipv6` names [`NodeRecord::underlay_ip6`]. Every node of a cluster
    /// runs the same (a VXLAN device speaks one family); absent: IPv4.
    #[serde(default, skip_serializing_if = "is_ipv4_underlay")]
    pub underlay_family: UnderlayFamily,
    /// MAC of the node's VXLAN device, `aa:bb:…`.
    pub vtep_mac: String,
    /// `vxlan`, `host-gw` or `wireguard`.
    pub backend: String,
    /// With the WireGuard backend: the node's public key and port (its private key
    /// never leaves the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardPeer>,
    /// Seconds since the Unix epoch of the last renewal.
    pub renewed: u64,
    pub ttl_secs: u64,
}

/// What peers need to reach a node through WireGuard, besides its underlay address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardPeer {
    /// The node's Curve25519 public key, base64 as `wg pubkey` writes it. Checked by
    /// the reader: a record is data, not a promise.
    pub public_key: String,
    /// The UDP port the node's WireGuard device listens on.
    pub port: u16,
}

impl NodeRecord {
    pub fn expires(&self) -> u64 {
        self.renewed + self.ttl_secs
    }

    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires()
    }
}

/// A node asking for (or keeping) its lease.
#[derive(Clone, Debug)]
pub struct Registration {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// A dual-stack node's global IPv6 address on its underlay link.
    pub underlay_ip6: Option<Ipv6Addr>,
    /// The family its overlay tunnel ends at.
    pub underlay_family: UnderlayFamily,
    pub vtep_mac: String,
    pub backend: String,
    pub wireguard: Option<WireGuardPeer>,
    /// The range pod CIDRs are cut from, and the size of each.
    pub cluster_cidr: Ipv4Net,
    pub node_prefix: u8,
    /// A dual-stack cluster's IPv6 range and the prefix length of each node's share
    /// of it; `None`: IPv4 only.
    pub cluster_cidr6: Option<(Ipv6Net, u8)>,
    pub ttl: Duration,
}

impl Registration {
    /// The record this registration publishes once it holds `pod_cidr` (and, on a
    /// dual-stack cluster, `pod_cidr6`).
    pub fn record(
        &self,
        pod_cidr: Ipv4Net,
        pod_cidr6: Option<Ipv6Net>,
        renewed: u64,
    ) -> NodeRecord {
        NodeRecord {
            name: self.name.clone(),
            pod_cidr,
            pod_cidr6,
            underlay_ip: self.underlay_ip,
            underlay_ip6: self.underlay_ip6,
            underlay_family: self.underlay_family,
            vtep_mac: self.vtep_mac.clone(),
            backend: self.backend.clone(),
            wireguard: self.wireguard.clone(),
            renewed,
            ttl_secs: self.ttl.as_secs().max(1),
        }
    }
}

/// A policy object (Namespace, Pod, NetworkPolicy) as the datastore keeps it: its
/// key and its JSON. The datastore does not read the JSON; `podnet-policy` does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    pub kind: String,
    /// Empty for cluster-wide kinds (Namespace).
    pub namespace: String,
    pub name: String,
    /// Shared: listing the objects again (every change, on every node) copies none of
    /// them, and an unchanged object is the same allocation as before.
    pub value: std::sync::Arc<serde_json::Value>,
    /// The object's version where the backend has one (Kubernetes `resourceVersion`):
    /// lets a writer check that a reader has seen its write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `(kind, namespace, name)`
pub type ObjectKey = (String, String, String);

impl StoredObject {
    pub fn key(&self) -> ObjectKey {
        (self.kind.clone(), self.namespace.clone(), self.name.clone())
    }
}

/// Checks the parts of an object key: kinds are letters, namespaces and names
/// lowercase letters, digits, '-' and '.' (namespaces without '.'), so that every key
/// is one file name and one etcd key.
pub fn check_key((kind, ns, name): &ObjectKey) -> Result<()> {
    let part = |s: &str, dots: bool| {
        !s.is_empty()
            && s.len() <= 253
            && !s.starts_with('.')
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
    };
    let ok = !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_alphabetic())
        && (ns.is_empty() || part(ns, false))
        && part(name, true);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            node: format!("{kind} {ns}/{name}"),
            why: "an object key is a kind (letters), a namespace (lowercase letters, digits, '-') and a name (lowercase letters, digits, '-', '.')".into(),
        })
    }
}

pub trait Datastore: Send + Sync {
    /// Leases a pod CIDR to the node — the same one as before if it had one that no
    /// live node took since — publishes its record and renews its lease.
    fn register(&self, r: &Registration) -> Result<NodeRecord>;
    /// Every node whose lease is live.
    fn nodes(&self) -> Result<Vec<NodeRecord>>;
    /// Removes a node; returns false if there was none.
    fn remove(&self, name: &str) -> Result<bool>;
    /// Writes policy objects (replacing those with the same key); returns the
    /// revision at which all of them are visible.
    fn put_objects(&self, objs: &[StoredObject]) -> Result<u64>;
    /// Removes policy objects (absent ones are no error); returns the revision after.
    fn delete_objects(&self, keys: &[ObjectKey]) -> Result<u64>;
    /// Every policy object, with a revision: a reader that got revision R sees every
    /// write whose returned revision is at most R.
    fn objects(&self) -> Result<(u64, Vec<StoredObject>)>;
    /// Blocks until the nodes or the policy objects may have changed, or `timeout`
    /// passes.
    fn wait_change(&self, timeout: Duration) -> Result<()>;
    /// A URL-like description for logs (`file:/path`).
    fn describe(&self) -> String;
    /// What is wrong right now (a watch refused, the server unreachable), one line
    /// each; empty when healthy. Backends that fail call by call report nothing here.
    fn problems(&self) -> Vec<String> {
        vec![]
    }
}

/// Opens a datastore from its URL: `file:/path/to/dir`, `etcd://ip:port[,ip:port]`, or
/// `etcds://ip:port?ca=FILE[&cert=FILE&key=FILE]` (TLS, with a client certificate if
/// given); etcd URLs may carry `user:password@` before the hosts.
pub fn open(url: &str) -> Result<Box<dyn Datastore>> {
    if let Some(path) = url.strip_prefix("file:") {
        if path.is_empty() {
            return Err(Error::Url(url.into()));
        }
        return Ok(Box::new(file::FileStore::open(path)?));
    }
    if let Some(hosts) = url.strip_prefix("etcd://") {
        return Ok(Box::new(etcd::EtcdStore::open(hosts)?));
    }
    if let Some(hosts) = url.strip_prefix("etcds://") {
        return Ok(Box::new(etcd::EtcdStore::open_tls(hosts)?));
    }
    Err(Error::Url(url.into()))
}

/// Seconds since the Unix epoch.
pub use podnet_conventions::now;

impl Registration {
    /// The IPv6 pod CIDR that goes with the IPv4 lease `pod_cidr` on a dual-stack
    /// cluster: the network at the same index in the IPv6 range (the n-th /24 of
    /// 10.244.0.0/16 gets the n-th /64 of fd00:10:244::/56). Deriving it keeps one lease
    /// per node in the datastore, taken and freed with the IPv4 one, so the two
    /// families can never be held by different nodes. `None` on an IPv4 cluster.
    pub fn cidr6_for(&self, pod_cidr: Ipv4Net) -> Result<Option<Ipv6Net>> {
        let Some((range, prefix6)) = self.cluster_cidr6 else {
            return Ok(None);
        };
        check_ranges6(
            &self.name,
            self.cluster_cidr,
            self.node_prefix,
            range,
            prefix6,
        )?;
        let index = (pod_cidr.bits().wrapping_sub(self.cluster_cidr.bits()))
            >> (32 - u32::from(self.node_prefix));
        let step = 128 - u32::from(prefix6);
        let net = u128::from(range.network()) + (u128::from(index) << step);
        Ok(Ipv6Net::new(std::net::Ipv6Addr::from(net), prefix6))
    }
}

/// Whether every IPv4 node range of `cluster`/`prefix` has its IPv6 twin in
/// `range`/`prefix6`, each one a usable pod CIDR.
pub fn check_ranges6(
    node: &str,
    cluster: Ipv4Net,
    prefix: u8,
    range: Ipv6Net,
    prefix6: u8,
) -> Result<()> {
    let invalid = |why: String| {
        Err(Error::Invalid {
            node: node.into(),
            why,
        })
    };
    if prefix6 < range.prefix() || prefix6 > podnet_cni_spec::net::MAX_POD_CIDR6_PREFIX {
        return invalid(format!(
            "IPv6 node prefix /{prefix6} does not fit in cluster CIDR {range} (/{} to /{})",
            range.prefix(),
            podnet_cni_spec::net::MAX_POD_CIDR6_PREFIX
        ));
    }
    let twin = Ipv6Net::truncating(range.network(), prefix6);
    if let Some(why) = twin.pod_cidr_problem() {
        return invalid(format!("IPv6 cluster CIDR {range}: {why}"));
    }
    if u32::from(prefix6 - range.prefix()) < u32::from(prefix.saturating_sub(cluster.prefix())) {
        return invalid(format!(
            "IPv6 cluster CIDR {range} holds 2^{} node ranges of /{prefix6}, fewer than the 2^{} /{prefix} of {cluster}: use a wider IPv6 range or a longer IPv6 node prefix",
            prefix6 - range.prefix(),
            prefix.saturating_sub(cluster.prefix())
        ));
    }
    Ok(())
}

/// Picks the CIDR for `r`: its previous one if still free, else the first free one.
pub fn choose_cidr(
    r: &Registration,
    previous: Option<Ipv4Net>,
    taken: &[Ipv4Net],
) -> Result<Ipv4Net> {
    if r.node_prefix < r.cluster_cidr.prefix() || r.node_prefix > 30 {
        return Err(Error::Invalid {
            node: r.name.clone(),
            why: format!(
                "node prefix /{} does not fit in cluster CIDR {}",
                r.node_prefix, r.cluster_cidr
            ),
        });
    }
    let overlaps = |a: Ipv4Net, b: &Ipv4Net| a.contains(b.network()) || b.contains(a.network());
    if let Some(p) = previous {
        if r.cluster_cidr.contains(p.network())
            && p.prefix() == r.node_prefix
            && !taken.iter().any(|t| overlaps(p, t))
        {
            return Ok(p);
        }
    }
    let count = 1u64 << (r.node_prefix - r.cluster_cidr.prefix());
    let step = 1u64 << (32 - r.node_prefix);
    (0..count)
        .filter_map(|i| {
            r.cluster_cidr
                .nth(i * step)
                .and_then(|a| Ipv4Net::new(a, r.node_prefix))
        })
        .find(|c| !taken.iter().any(|t| overlaps(*c, t)))
        .ok_or_else(|| Error::Exhausted {
            cluster: r.cluster_cidr,
            prefix: r.node_prefix,
            node: r.name.clone(),
            used: taken.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str) -> Registration {
        Registration {
            name: name.into(),
            underlay_ip: Ipv4Addr::new(192, 168, 1, 10),
            underlay_ip6: None,
            underlay_family: Default::default(),
            vtep_mac: "0a:59:c0:a8:01:0a".into(),
            backend: "vxlan".into(),
            wireguard: None,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            node_prefix: 24,
            cluster_cidr6: None,
            ttl: Duration::from_secs(60),
        }
    }

    /// A record names its underlay family only when it is IPv6, so records of nodes
    /// before IPv6 underlays (and of IPv4 ones) read and write as before.
    #[test]
    fn the_underlay_family_is_written_only_when_ipv6() {
        let mut r = reg("a");
        let rec = r.record("10.244.0.0/24".parse().unwrap(), None, 1);
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("underlay_family"), "{text}");
        assert_eq!(serde_json::from_str::<NodeRecord>(&text).unwrap(), rec);
        r.underlay_family = UnderlayFamily::Ipv6;
        let rec = r.record("10.244.0.0/24".parse().unwrap(), None, 1);
        let text = serde_json::to_string(&rec).unwrap();
        assert!(text.contains(r#""underlay_family":"ipv6""#), "{text}");
        assert_eq!(serde_json::from_str::<NodeRecord>(&text).unwrap(), rec);
    }

    /// The n-th IPv4 node range gets the n-th IPv6 one; ranges that cannot pair up
    /// are refused, naming the fix.
    #[test]
    fn the_ipv6_range_pairs_with_the_ipv4_lease() {
        let mut r = reg("a");
        assert_eq!(r.cidr6_for("10.244.7.0/24".parse().unwrap()).unwrap(), None);
        r.cluster_cidr6 = Some(("fd00:10:244::/56".parse().unwrap(), 64));
        for (v4, v6) in [
            ("10.244.0.0/24", "fd00:10:244::/64"),
            ("10.244.7.0/24", "fd00:10:244:7::/64"),
            ("10.244.255.0/24", "fd00:10:244:ff::/64"),
        ] {
            assert_eq!(
                r.cidr6_for(v4.parse().unwrap()).unwrap(),
                Some(v6.parse().unwrap()),
                "{v4}"
            );
        }
        for (range, p6, why) in [
            ("fd00:10:244::/60", 64, "fewer than the 2^8"),
            ("fd00:10:244::/56", 48, "does not fit"),
            ("fd00:10:244::/56", 127, "does not fit"),
            ("fe80::/56", 64, "link-local"),
        ] {
            r.cluster_cidr6 = Some((range.parse().unwrap(), p6));
            let e = r.cidr6_for("10.244.1.0/24".parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains(why), "{range} /{p6}: {e}");
        }
    }

    #[test]
    fn chooses_first_free_and_keeps_previous() {
        let r = reg("a");
        let t: Vec<Ipv4Net> = vec![
            "10.244.0.0/24".parse().unwrap(),
            "10.244.2.0/24".parse().unwrap(),
        ];
        assert_eq!(
            choose_cidr(&r, None, &t).unwrap().to_string(),
            "10.244.1.0/24"
        );
        let prev: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        assert_eq!(choose_cidr(&r, Some(prev), &t).unwrap(), prev);
        assert_eq!(
            choose_cidr(&r, Some(t[0]), &t).unwrap().to_string(),
            "10.244.1.0/24"
        );
    }

    #[test]
    fn exhaustion_and_bad_prefix() {
        let mut r = reg("a");
        r.cluster_cidr = "10.9.0.0/23".parse().unwrap();
        let t: Vec<Ipv4Net> = vec![
            "10.9.0.0/24".parse().unwrap(),
            "10.9.1.0/24".parse().unwrap(),
        ];
        assert!(matches!(
            choose_cidr(&r, None, &t),
            Err(Error::Exhausted { .. })
        ));
        r.node_prefix = 20;
        assert!(matches!(
            choose_cidr(&r, None, &[]),
            Err(Error::Invalid { .. })
        ));
    }
}
