//! The Kubernetes API as podnetd's datastore (`--datastore kubernetes`).
//!
//! What maps where, as Flannel does it:
//! - A node's pod CIDR is its Node's `spec.podCIDRs` (IPv4 entry) / `spec.podCIDR`,
//!   allocated by kube-controller-manager's node IPAM controller
//!   (`--allocate-node-cidrs --cluster-cidr …`). podnetd never allocates on Kubernetes.
//! - What peers need to reach the node is published as annotations on its Node:
//!   [`ANN_UNDERLAY_IP`], [`ANN_VTEP_MAC`], [`ANN_BACKEND`] (and, on a dual-stack
//!   node, [`ANN_UNDERLAY_IP6`]). A Node without them (its
//!   agent has not started) or with unreadable ones is left out and named once in the
//!   log; it never stops the other peers from being programmed. So is a Node whose
//!   published underlay address is none of its `status.addresses` (InternalIP or
//!   ExternalIP, written by its kubelet; the same for its IPv6 one): an annotation alone cannot send another
//!   node's pod traffic elsewhere. `deploy/admission.yaml` lets each agent change
//!   only its own Node.
//! - Peers come from a watch on Nodes: a Node deleted with kubectl disappears from
//!   [`KubeStore::nodes`] and every peer removes its routes to it. There are no leases:
//!   the Node object is the node's presence.
//! - Pods, Namespaces and NetworkPolicies come from watches too, reduced to the fields
//!   NetworkPolicy reads ([`podnet_policy::objects::from_api`]); the agent's policy
//!   source reads them through [`podnet_datastore::Datastore::objects`].
//!
//! Each watch resumes after errors: it lists again after a backoff (250 ms doubling
//! to 5 s). While the API server
//! is unreachable the last state is kept, so the agent changes nothing in the kernel;
//! when it returns, the watches list again and the agent converges.
//!
//! tokio runs here, on a runtime of one worker thread the store owns; the agent's
//! loops stay synchronous and block on it. Every handle opened for the same URL in one
//! process shares one client and one set of watches.
//!
//! The API calls the agent makes are exactly [`CALLS`]; `deploy/rbac.yaml` grants
//! those and nothing else, and `podnetd check-access` makes each one once.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchParams};
use kube::runtime::watcher::{self, Event};
use podnet_cni_spec::Ipv4Net;
use podnet_datastore::{
    Datastore, Error, NodeRecord, ObjectKey, Registration, Result, StoredObject,
};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The node's underlay address, where peers send its pods' traffic.
pub const ANN_UNDERLAY_IP: &str = "podnet.dev/underlay-ip";
/// A dual-stack node's global IPv6 address on its underlay (host-gw routes its IPv6
/// pods there).
pub const ANN_UNDERLAY_IP6: &str = "podnet.dev/underlay-ip6";
/// `ipv6` when the node's overlay tunnel ends at its underlay IPv6 address (podnetd
/// `--underlay-family ipv6`); absent: IPv4.
pub const ANN_UNDERLAY_FAMILY: &str = "podnet.dev/underlay-family";
/// The MAC of the node's VXLAN device.
pub const ANN_VTEP_MAC: &str = "podnet.dev/vtep-mac";
/// `vxlan`, `host-gw` or `wireguard`.
pub const ANN_BACKEND: &str = "podnet.dev/backend";
/// With the WireGuard backend: the node's public key (base64) and UDP port. The
/// private key stays on the node.
pub const ANN_WG_PUBLIC_KEY: &str = "podnet.dev/wireguard-public-key";
pub const ANN_WG_PORT: &str = "podnet.dev/wireguard-port";

/// Every API call podnetd makes: (API group, resource, verb). `deploy/rbac.yaml`'s
/// ClusterRole grants exactly these.
pub const CALLS: [(&str, &str, &str); 10] = [
    ("", "nodes", "get"),
    ("", "nodes", "patch"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("networking.k8s.io", "networkpolicies", "list"),
    ("networking.k8s.io", "networkpolicies", "watch"),
];

/// A URL naming the Kubernetes datastore: `kubernetes` (in-cluster service account,
/// else `$KUBECONFIG` / `~/.kube/config`) or `kubernetes:/path/to/kubeconfig`.
pub fn is_kubernetes_url(url: &str) -> bool {
    url == "kubernetes" || url.starts_with("kubernetes:")
}

pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// The one datastore factory: `file:…`, `etcd://…` and `etcds://…`
/// ([`podnet_datastore::open`]), and `kubernetes[:kubeconfig]`, the API server
/// ([`KubeStore`], whose watches' problems go to `log`).
pub fn open_datastore(url: &str, log: Log) -> Result<Arc<dyn podnet_datastore::Datastore>> {
    if is_kubernetes_url(url) {
        return Ok(Arc::new(KubeStore::open(url, log)?));
    }
    Ok(podnet_datastore::open(url)?.into())
}

/// What the watches hold.
#[derive(Default)]
struct State {
    /// Bumped on every change to `nodes` / to `objects`.
    node_gen: u64,
    obj_gen: u64,
    nodes: BTreeMap<String, Node>,
    /// Reduced objects with their resourceVersion.
    objects: BTreeMap<ObjectKey, (std::sync::Arc<serde_json::Value>, String)>,
    /// Resources whose initial list has completed at least once.
    synced: BTreeMap<&'static str, bool>,
    /// The last error of each watch, cleared by its next success.
    errors: BTreeMap<&'static str, String>,
    /// Nodes left out of `nodes()`, with why (logged when it changes).
    skipped: BTreeMap<String, String>,
}

/// What the watch tasks share with the handles: the state and how to wake readers.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    log: Log,
}

/// The runtime and the client, owned by handles only: the tasks never hold the
/// runtime, so it is never dropped on one of its own threads.
struct Conn {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    shared: Arc<Shared>,
    describe: String,
}

/// One handle on the shared watches; remembers which parts its caller reads, so that
/// [`Datastore::wait_change`] wakes it only for those.
pub struct KubeStore {
    conn: Arc<Conn>,
    /// Generations last returned to this handle: (nodes, objects); `None` if never read.
    seen: Mutex<(Option<u64>, Option<u64>)>,
}

fn unavailable(op: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        op: op.into(),
        why: e.to_string(),
    }
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Conn>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Conn>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

async fn client_for(url: &str) -> Result<(kube::Client, String)> {
    let path = url.strip_prefix("kubernetes:").filter(|p| !p.is_empty());
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| unavailable(format!("read kubeconfig {p}"), e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| unavailable(format!("use kubeconfig {p}"), e))?
        }
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => kube::Config::infer().await.map_err(|e| {
                unavailable(
                    "find the Kubernetes API (not in a pod: no service account; no kubeconfig)",
                    format!("{e}; run podnetd in the DaemonSet of deploy/, or give --kubeconfig"),
                )
            })?,
        },
    };
    let describe = format!(
        "kubernetes {}{}",
        config.cluster_url,
        path.map(|p| format!(" (kubeconfig {p})"))
            .unwrap_or_default()
    );
    let client = kube::Client::try_from(config)
        .map_err(|e| unavailable("build the Kubernetes client", e))?;
    Ok((client, describe))
}

impl KubeStore {
    /// Connects (lazily: nothing is sent yet) and starts the watches, or joins those
    /// this process already runs for `url`.
    pub fn open(url: &str, log: Log) -> Result<KubeStore> {
        let mut reg = registry().lock().unwrap();
        if let Some(conn) = reg.get(url).and_then(Weak::upgrade) {
            return Ok(KubeStore::with(conn));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube")
            .enable_all()
            .build()
            .map_err(|e| unavailable("start the Kubernetes client's runtime", e))?;
        let (client, describe) = rt.block_on(client_for(url))?;
        let conn = Arc::new(Conn {
            rt,
            client,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                log,
            }),
            describe,
        });
        let c = conn.client.clone();
        watch(&conn, "nodes", Api::<Node>::all(c.clone()), |n: &Node| {
            NodeOrObject::Node(Box::new(n.clone()))
        });
        watch(&conn, "pods", Api::<Pod>::all(c.clone()), |p: &Pod| {
            reduce("Pod", p)
        });
        watch(&conn, "namespaces", Api::<Namespace>::all(c.clone()), |n| {
            reduce("Namespace", n)
        });
        watch(
            &conn,
            "networkpolicies",
            Api::<NetworkPolicy>::all(c),
            |n| reduce("NetworkPolicy", n),
        );
        reg.insert(url.to_string(), Arc::downgrade(&conn));
        Ok(KubeStore::with(conn))
    }

    fn with(conn: Arc<Conn>) -> KubeStore {
        KubeStore {
            conn,
            seen: Mutex::new((None, None)),
        }
    }

    fn shared(&self) -> &Shared {
        &self.conn.shared
    }

    fn node_api(&self) -> Api<Node> {
        Api::all(self.conn.client.clone())
    }
}

enum NodeOrObject {
    Node(Box<Node>),
    Object(Option<(ObjectKey, serde_json::Value, String)>),
}

fn reduce<K: serde::Serialize + kube::Resource>(kind: &str, o: &K) -> NodeOrObject {
    let meta = o.meta();
    let key = (
        kind.to_string(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    let rv = meta.resource_version.clone().unwrap_or_default();
    let v = serde_json::to_value(o).unwrap_or_default();
    NodeOrObject::Object(podnet_policy::objects::from_api(kind, &v).map(|t| (key, t, rv)))
}

fn key_of<K: kube::Resource>(kind: &str, o: &K) -> ObjectKey {
    let m = o.meta();
    (
        kind.to_string(),
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Runs one watch for as long as the store lives, keeping `State` current.
fn watch<K>(
    conn: &Conn,
    what: &'static str,
    api: Api<K>,
    conv: impl Fn(&K) -> NodeOrObject + Send + 'static,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let weak = Arc::downgrade(&conn.shared);
    let kind = match what {
        "nodes" => "Node",
        "pods" => "Pod",
        "namespaces" => "Namespace",
        _ => "NetworkPolicy",
    };
    conn.rt.spawn(async move {
        // After an error the stream is dropped and a new one lists afresh once the
        // backoff has passed: the listing both resynchronises the state and proves the
        // watch healthy again (a resumed watch says nothing until an object changes).
        let mut w = WatchTask {
            what,
            kind,
            conv,
            listing: Vec::new(),
            backoff: podnet_conventions::Backoff::new(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX),
        };
        loop {
            let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
            w.listing.clear();
            while let Some(ev) = stream.next().await {
                let Some(sh) = weak.upgrade() else { return };
                let failed = ev.is_err();
                let mut st = sh.state.lock().unwrap();
                let changed = w.apply(&sh, &mut st, ev);
                if changed {
                    if kind == "Node" {
                        st.node_gen += 1;
                    } else {
                        st.obj_gen += 1;
                    }
                }
                drop(st);
                sh.changed.notify_all();
                if failed {
                    break;
                }
            }
            tokio::time::sleep(w.backoff.next_wait()).await;
        }
    });
}

/// One watch's task: what it watches, how it reduces objects, the listing it is
/// gathering and how long it waits after a failure.
struct WatchTask<F> {
    what: &'static str,
    /// The kind of the watched objects (`Node`, `Pod`, …).
    kind: &'static str,
    conv: F,
    /// The objects of the listing in progress, applied to the state once it completes.
    listing: Vec<NodeOrObject>,
    backoff: podnet_conventions::Backoff,
}

impl<F> WatchTask<F> {
    /// Applies one event of the watch to the state (locked as `st`); returns whether
    /// the watched objects changed.
    fn apply<K>(
        &mut self,
        sh: &Shared,
        st: &mut State,
        ev: Result<Event<K>, watcher::Error>,
    ) -> bool
    where
        K: kube::Resource<DynamicType = ()>,
        F: Fn(&K) -> NodeOrObject,
    {
        let (what, kind) = (self.what, self.kind);
        match ev {
            Ok(Event::Init) => {
                self.listing.clear();
                false
            }
            Ok(Event::InitApply(o)) => {
                self.listing.push((self.conv)(&o));
                false
            }
            Ok(Event::InitDone) => {
                self.backoff.reset();
                if kind == "Node" {
                    st.nodes.clear();
                } else {
                    st.objects.retain(|k, _| k.0 != kind);
                }
                for x in self.listing.drain(..) {
                    insert(st, x);
                }
                st.synced.insert(what, true);
                if st.errors.remove(what).is_some() {
                    (sh.log)(&format!("watch of {what} works again"));
                }
                true
            }
            Ok(Event::Apply(o)) => {
                if kind != "Node" {
                    // A pod that finished or moved to the host network leaves.
                    st.objects.remove(&key_of(kind, &o));
                }
                insert(st, (self.conv)(&o));
                st.errors.remove(what);
                true
            }
            Ok(Event::Delete(o)) => {
                if kind == "Node" {
                    st.nodes.remove(&o.meta().name.clone().unwrap_or_default());
                } else {
                    st.objects.remove(&key_of(kind, &o));
                }
                true
            }
            Err(e) => {
                let msg = e.to_string();
                if st.errors.get(what) != Some(&msg) {
                    (sh.log)(&format!(
                        "watch of {what} failed: {msg}; keeping the last state and retrying"
                    ));
                }
                st.errors.insert(what, msg);
                false
            }
        }
    }
}

/// How long a failed watch waits before listing again: doubling from the first to
/// the second, back to the first once a listing succeeds.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

fn insert(st: &mut State, x: NodeOrObject) {
    match x {
        NodeOrObject::Node(n) => {
            st.nodes
                .insert(n.metadata.name.clone().unwrap_or_default(), *n);
        }
        NodeOrObject::Object(Some((k, v, rv))) => {
            st.objects.insert(k, (v.into(), rv));
        }
        NodeOrObject::Object(None) => {}
    }
}

/// The Node's IPv4 pod CIDR.
pub fn node_pod_cidr(n: &Node) -> Option<Ipv4Net> {
    let spec = n.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse().ok())
}

/// The Node's IPv6 pod CIDR: the IPv6 entry of `spec.podCIDRs` (a dual-stack cluster).
pub fn node_pod_cidr6(n: &Node) -> Option<podnet_cni_spec::net::Ipv6Net> {
    n.spec
        .as_ref()?
        .pod_cidrs
        .iter()
        .flatten()
        .find_map(|c| c.parse().ok())
}

/// The Node's IPv4 `status.addresses` of type InternalIP or ExternalIP: where its
/// kubelet says the node is reached, and so where its underlay address must be.
pub fn node_addresses(n: &Node) -> Vec<Ipv4Addr> {
    node_addresses_of(n)
}

/// The Node's InternalIP and ExternalIP `status.addresses` of one family (`A`).
fn node_addresses_of<A: std::str::FromStr>(n: &Node) -> Vec<A> {
    n.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The Node's published IPv6 underlay address ([`ANN_UNDERLAY_IP6`]), checked as the
/// IPv4 one is: a global unicast address that is one of the Node's IPv6
/// `status.addresses`. `None` when it publishes none.
fn node_underlay6(
    n: &Node,
    ann: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<Option<std::net::Ipv6Addr>, String> {
    let Some(v) = ann.get(ANN_UNDERLAY_IP6) else {
        return Ok(None);
    };
    let ip: std::net::Ipv6Addr = v
        .parse()
        .map_err(|_| format!("its annotation {ANN_UNDERLAY_IP6} ({v:?}) is not an IPv6 address"))?;
    if !podnet_conventions::net::is_global_unicast6(ip) {
        return Err(format!(
            "its annotation {ANN_UNDERLAY_IP6} ({ip}) is not a global unicast IPv6 address"
        ));
    }
    let addresses: Vec<std::net::Ipv6Addr> = node_addresses_of(n);
    if !addresses.contains(&ip) {
        let have = addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "its annotation {ANN_UNDERLAY_IP6} ({ip}) is none of its IPv6 status.addresses (InternalIP, ExternalIP: {}); the kubelet reports the node's addresses (give it --node-ip with both families) and podnetd publishes one of them, or the annotation was forged",
            if have.is_empty() { "none" } else { &have }
        ));
    }
    Ok(Some(ip))
}

/// The record peers use, from a Node and its annotations; `Err` says what is missing
/// or wrong.
pub fn node_record(n: &Node) -> std::result::Result<NodeRecord, String> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let pod_cidr = node_pod_cidr(n).ok_or("it has no IPv4 spec.podCIDR yet")?;
    let ann = n.metadata.annotations.clone().unwrap_or_default();
    let get = |k: &str| {
        ann.get(k).cloned().ok_or(format!(
            "it has no annotation {k} (its podnetd has not started)"
        ))
    };
    let underlay_ip: Ipv4Addr = get(ANN_UNDERLAY_IP)?
        .parse()
        .map_err(|_| format!("its annotation {ANN_UNDERLAY_IP} is not an IPv4 address"))?;
    if underlay_ip.is_unspecified() || underlay_ip.is_multicast() || underlay_ip.is_broadcast() {
        return Err(format!(
            "its annotation {ANN_UNDERLAY_IP} ({underlay_ip}) is not a unicast address"
        ));
    }
    let addresses = node_addresses(n);
    if !addresses.contains(&underlay_ip) {
        let have = if addresses.is_empty() {
            "it has none yet".to_string()
        } else {
            addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "its annotation {ANN_UNDERLAY_IP} ({underlay_ip}) is none of its status.addresses (InternalIP, ExternalIP: {have}); the kubelet reports the node's addresses and podnetd publishes one of them: give that node's podnetd --underlay-dev the interface of its InternalIP, or the annotation was forged"
        ));
    }
    Ok(NodeRecord {
        name,
        pod_cidr,
        pod_cidr6: node_pod_cidr6(n),
        underlay_ip,
        underlay_ip6: node_underlay6(n, &ann)?,
        underlay_family: match ann.get(ANN_UNDERLAY_FAMILY) {
            None => Default::default(),
            Some(f) => f
                .parse()
                .map_err(|e| format!("its annotation {ANN_UNDERLAY_FAMILY}: {e}"))?,
        },
        vtep_mac: get(ANN_VTEP_MAC)?,
        backend: get(ANN_BACKEND)?,
        // Read as written; the agent checks the key before using it.
        wireguard: match (ann.get(ANN_WG_PUBLIC_KEY), ann.get(ANN_WG_PORT)) {
            (Some(k), Some(p)) => Some(podnet_datastore::WireGuardPeer {
                public_key: k.clone(),
                port: p
                    .parse()
                    .map_err(|_| format!("its annotation {ANN_WG_PORT} ({p:?}) is not a port"))?,
            }),
            _ => None,
        },
        renewed: podnet_datastore::now(),
        // No leases on Kubernetes: a Node is present until it is deleted.
        ttl_secs: 100 * 365 * 86_400,
    })
}

impl Datastore for KubeStore {
    fn register(&self, r: &Registration) -> Result<NodeRecord> {
        let api = self.node_api();
        let sh = &self.conn;
        let node = sh
            .rt
            .block_on(api.get_opt(&r.name))
            .map_err(|e| unavailable(format!("get Node {}", r.name), e))?
            .ok_or_else(|| {
                Error::NotReady(format!(
                    "Node {} does not exist in the Kubernetes API: the kubelet registers it; check that podnetd's --node is the Node's name",
                    r.name
                ))
            })?;
        let cidr = node_pod_cidr(&node).ok_or_else(|| {
            Error::NotReady(format!(
                "Node {} has no spec.podCIDR yet: kube-controller-manager allocates one when it runs with --allocate-node-cidrs=true and --cluster-cidr",
                r.name
            ))
        })?;
        if !r.cluster_cidr.contains(cidr.network()) || cidr.prefix() < r.cluster_cidr.prefix() {
            return Err(Error::Invalid {
                node: r.name.clone(),
                why: format!(
                    "its spec.podCIDR {cidr} is outside the cluster CIDR {}: give podnetd --cluster-cidr the value of kube-controller-manager's --cluster-cidr",
                    r.cluster_cidr
                ),
            });
        }
        // `None`: the annotation must be absent (a merge patch's null removes it).
        let wg = r.wireguard.as_ref();
        let want = [
            (ANN_UNDERLAY_IP, Some(r.underlay_ip.to_string())),
            (ANN_UNDERLAY_IP6, r.underlay_ip6.map(|a| a.to_string())),
            (
                ANN_UNDERLAY_FAMILY,
                r.underlay_family
                    .is_ipv6()
                    .then(|| r.underlay_family.to_string()),
            ),
            (ANN_VTEP_MAC, Some(r.vtep_mac.clone())),
            (ANN_BACKEND, Some(r.backend.clone())),
            (ANN_WG_PUBLIC_KEY, wg.map(|w| w.public_key.clone())),
            (ANN_WG_PORT, wg.map(|w| w.port.to_string())),
        ];
        let have = node.metadata.annotations.clone().unwrap_or_default();
        if want.iter().any(|(k, v)| have.get(*k) != v.as_ref()) {
            let ann: serde_json::Map<String, serde_json::Value> = want
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            let patch = json!({ "metadata": { "annotations": ann } });
            sh.rt
                .block_on(api.patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch)))
                .map_err(|e| unavailable(format!("annotate Node {}", r.name), e))?;
        }
        let cidr6 = match r.cluster_cidr6 {
            None => None,
            Some((range, _)) => {
                let c6 = node_pod_cidr6(&node).ok_or_else(|| {
                    Error::NotReady(format!(
                        "Node {} has no IPv6 entry in spec.podCIDRs yet: kube-controller-manager allocates one when its --cluster-cidr lists an IPv6 range too",
                        r.name
                    ))
                })?;
                if !range.contains(c6.network()) || c6.prefix() < range.prefix() {
                    return Err(Error::Invalid {
                        node: r.name.clone(),
                        why: format!(
                            "its IPv6 pod CIDR {c6} is outside the IPv6 cluster CIDR {range}: give podnetd the IPv6 range of kube-controller-manager's --cluster-cidr"
                        ),
                    });
                }
                Some(c6)
            }
        };
        Ok(r.record(cidr, cidr6, podnet_datastore::now()))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut st = self.shared().state.lock().unwrap();
        // Noted before any early return: wait_change then waits for the listing
        // instead of returning at once (a loop around a failing read would spin).
        self.seen.lock().unwrap().0 = Some(st.node_gen);
        if !st.synced.contains_key("nodes") {
            let why = st
                .errors
                .get("nodes")
                .cloned()
                .unwrap_or_else(|| "not listed yet".into());
            return Err(unavailable("list Nodes", why));
        }
        let mut out = Vec::new();
        let mut skipped = BTreeMap::new();
        for (name, n) in &st.nodes {
            match node_record(n) {
                Ok(r) => out.push(r),
                Err(why) => {
                    skipped.insert(name.clone(), why);
                }
            }
        }
        for (name, why) in &skipped {
            if st.skipped.get(name) != Some(why) {
                (self.shared().log)(&format!("Node {name} is left out of the peers: {why}"));
            }
        }
        st.skipped = skipped;
        Ok(out)
    }

    fn remove(&self, name: &str) -> Result<bool> {
        let api = self.node_api();
        match self.conn.rt.block_on(api.delete(name, &Default::default())) {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(unavailable(format!("delete Node {name}"), e)),
        }
    }

    fn put_objects(&self, _: &[StoredObject]) -> Result<u64> {
        Err(Error::Unsupported(
            "on Kubernetes, Namespaces, Pods and NetworkPolicies are written to the API server: use kubectl apply".into(),
        ))
    }

    fn delete_objects(&self, _: &[ObjectKey]) -> Result<u64> {
        Err(Error::Unsupported(
            "on Kubernetes, objects are deleted through the API server: use kubectl delete".into(),
        ))
    }

    fn objects(&self) -> Result<(u64, Vec<StoredObject>)> {
        let st = self.shared().state.lock().unwrap();
        self.seen.lock().unwrap().1 = Some(st.obj_gen);
        let missing: Vec<&str> = ["pods", "namespaces", "networkpolicies"]
            .into_iter()
            .filter(|r| !st.synced.contains_key(r))
            .collect();
        if !missing.is_empty() {
            let why = missing
                .iter()
                .map(|r| match st.errors.get(r) {
                    Some(e) => format!("{r}: {e}"),
                    None => format!("{r}: not listed yet"),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(unavailable("list the policy objects", why));
        }
        let objs = st
            .objects
            .iter()
            .map(|((kind, ns, name), (v, rv))| StoredObject {
                kind: kind.clone(),
                namespace: ns.clone(),
                name: name.clone(),
                value: v.clone(),
                version: Some(rv.clone()),
            })
            .collect();
        // obj_gen starts at 0 and the first listing makes it at least 1.
        Ok((st.obj_gen, objs))
    }

    fn wait_change(&self, timeout: Duration) -> Result<()> {
        let t = Instant::now();
        let (sn, so) = *self.seen.lock().unwrap();
        let mut st = self.shared().state.lock().unwrap();
        loop {
            let moved = match (sn, so) {
                (None, None) => true,
                _ => sn.is_some_and(|g| g != st.node_gen) || so.is_some_and(|g| g != st.obj_gen),
            };
            let left = timeout.saturating_sub(t.elapsed());
            if moved || left.is_zero() {
                return Ok(());
            }
            st = self.shared().changed.wait_timeout(st, left).unwrap().0;
        }
    }

    fn describe(&self) -> String {
        self.conn.describe.clone()
    }

    fn problems(&self) -> Vec<String> {
        let st = self.shared().state.lock().unwrap();
        st.errors
            .iter()
            .map(|(w, e)| format!("watch of {w}: {e}"))
            .collect()
    }
}

/// Makes each of [`CALLS`] once, as `node` (`nodes get/patch` on its own Node; the
/// patch changes nothing), and returns each call with its outcome. What podnetd
/// `podnetd check-access` prints, and how a test shows that the ClusterRole is minimal.
pub fn check_access(
    url: &str,
    node: &str,
) -> Result<Vec<(String, std::result::Result<(), String>)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unavailable("start a runtime", e))?;
    rt.block_on(async {
        let (c, _) = client_for(url).await?;
        let mut out = Vec::new();
        for (group, resource, verb) in CALLS {
            let r = call(&c, resource, verb, node).await;
            let name = if group.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}.{group}")
            };
            out.push((name, r.map_err(|e| e.to_string())));
        }
        Ok(out)
    })
}

async fn call(c: &kube::Client, resource: &str, verb: &str, node: &str) -> kube::Result<()> {
    async fn lw<K>(api: Api<K>, verb: &str) -> kube::Result<()>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        if verb == "list" {
            api.list(&ListParams::default().limit(1)).await.map(|_| ())
        } else {
            // The response head is enough: a refused watch fails here.
            api.watch(&WatchParams::default().timeout(1), "0")
                .await
                .map(|_| ())
        }
    }
    match (resource, verb) {
        ("nodes", "get") => Api::<Node>::all(c.clone()).get(node).await.map(|_| ()),
        ("nodes", "patch") => Api::<Node>::all(c.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .map(|_| ()),
        ("nodes", v) => lw(Api::<Node>::all(c.clone()), v).await,
        ("pods", v) => lw(Api::<Pod>::all(c.clone()), v).await,
        ("namespaces", v) => lw(Api::<Namespace>::all(c.clone()), v).await,
        (_, v) => lw(Api::<NetworkPolicy>::all(c.clone()), v).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(underlay: &str, addresses: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "node2", "annotations": {
                ANN_UNDERLAY_IP: underlay,
                ANN_VTEP_MAC: "0a:59:c0:a8:01:0b",
                ANN_BACKEND: "vxlan",
            }},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": addresses},
        }))
        .unwrap()
    }

    /// A dual-stack Node's record carries the IPv6 entry of `spec.podCIDRs`, in
    /// whichever order the two are listed; an IPv4-only Node's none.
    #[test]
    fn a_dual_stack_nodes_record_carries_its_ipv6_pod_cidr() {
        let addrs = json!([{"type": "InternalIP", "address": "192.168.1.11"}]);
        let mut n = node("192.168.1.11", addrs);
        assert_eq!(node_record(&n).unwrap().pod_cidr6, None);
        for cidrs in [
            ["10.244.1.0/24", "fd00:10:244:1::/64"],
            ["fd00:10:244:1::/64", "10.244.1.0/24"],
        ] {
            n.spec.as_mut().unwrap().pod_cidrs = Some(cidrs.map(String::from).to_vec());
            let r = node_record(&n).unwrap();
            assert_eq!(r.pod_cidr.to_string(), "10.244.1.0/24");
            assert_eq!(r.pod_cidr6.unwrap().to_string(), "fd00:10:244:1::/64");
        }
    }

    /// The underlay family annotation: absent is IPv4, `ipv6` is read, anything else
    /// refuses the record.
    #[test]
    fn the_underlay_family_is_read_from_its_annotation() {
        use podnet_conventions::UnderlayFamily;
        let addrs = json!([{"type": "InternalIP", "address": "192.168.1.11"}]);
        let mut n = node("192.168.1.11", addrs);
        assert_eq!(
            node_record(&n).unwrap().underlay_family,
            UnderlayFamily::Ipv4
        );
        let mut set = |v: &str| {
            n.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(ANN_UNDERLAY_FAMILY.into(), v.into());
            node_record(&n)
        };
        assert_eq!(set("ipv6").unwrap().underlay_family, UnderlayFamily::Ipv6);
        let e = set("ipx").unwrap_err();
        assert!(
            e.contains(ANN_UNDERLAY_FAMILY) && e.contains("ipv4, ipv6"),
            "{e}"
        );
    }

    /// A dual-stack Node's underlay IPv6 address is taken only when it is one of the
    /// Node's IPv6 status.addresses and a global unicast address; absent, none.
    #[test]
    fn the_underlay_ipv6_address_must_be_one_of_the_nodes_addresses_too() {
        let addrs = json!([{"type": "InternalIP", "address": "192.168.1.11"},
                           {"type": "InternalIP", "address": "fd00:192:168:1::b"},
                           {"type": "ExternalIP", "address": "fe80::1"}]);
        let mut n = node("192.168.1.11", addrs);
        assert_eq!(node_record(&n).unwrap().underlay_ip6, None);
        let ann = |n: &mut Node, v: &str| {
            n.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(ANN_UNDERLAY_IP6.into(), v.into());
        };
        ann(&mut n, "fd00:192:168:1::b");
        assert_eq!(
            node_record(&n).unwrap().underlay_ip6,
            Some("fd00:192:168:1::b".parse().unwrap())
        );
        for (v, why) in [
            ("fd00:192:168:1::c", "none of its IPv6 status.addresses"),
            ("fe80::1", "not a global unicast"),
            ("192.168.1.11", "not an IPv6 address"),
        ] {
            ann(&mut n, v);
            let e = node_record(&n).unwrap_err();
            assert!(e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn the_underlay_address_must_be_one_of_the_nodes_addresses() {
        let internal = json!([{"type": "InternalIP", "address": "192.168.1.11"},
                              {"type": "Hostname", "address": "node2"}]);
        let r = node_record(&node("192.168.1.11", internal.clone())).unwrap();
        assert_eq!(r.underlay_ip, Ipv4Addr::new(192, 168, 1, 11));
        // An ExternalIP counts as well.
        let external = json!([{"type": "InternalIP", "address": "10.0.0.5"},
                              {"type": "ExternalIP", "address": "203.0.113.7"}]);
        assert!(node_record(&node("203.0.113.7", external)).is_ok());
        // Another node's address, a pod address, a hostname's: left out, saying why.
        for (underlay, addrs, want) in [
            (
                "192.168.1.10",
                internal.clone(),
                "(InternalIP, ExternalIP: 192.168.1.11)",
            ),
            (
                "10.244.5.5",
                internal.clone(),
                "is none of its status.addresses",
            ),
            (
                "192.168.1.11",
                json!([{"type": "Hostname", "address": "192.168.1.11"}]),
                "it has none yet",
            ),
            ("192.168.1.11", json!([]), "it has none yet"),
        ] {
            let e = node_record(&node(underlay, addrs)).unwrap_err();
            assert!(e.contains(want), "{e} (want {want})");
            assert!(e.contains("--underlay-dev"), "{e}");
        }
    }
}
