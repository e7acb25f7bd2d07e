//! NetworkPolicy in the agent: where the objects come from ([`PolicySource`]), which
//! of them concern this node (its own pods, by `spec.nodeName` and address), and the
//! datapath that enforces the compiled tables: nftables ([`crate::nft`]) or eBPF
//! ([`crate::ebpf`]), chosen per node. Both are given the same tables and pass the
//! same conformance suite.
//!
//! Each round: read a snapshot of Namespaces, Pods and NetworkPolicies; if its
//! revision moved, compile the tables of the local pods (`podnet_policy::compile`)
//! and program only the difference. Invalid objects are logged once and left out;
//! they never stop the others. A failed transaction changes nothing (nftables applies
//! all or nothing); the next round rewrites the whole table.

use crate::{ebpf, nft};
pub use podnet_api::{
    Denied, DirStatus, FastPathStatus, PodPolicyStatus, PodVerdict, PolicyStatus, RefusedPod,
};
use podnet_cni_spec::Ipv4Net;
pub use podnet_conventions::PolicyDatapath;
use podnet_datastore::Datastore;
use podnet_policy::compile::{PodTables, Table};
use podnet_policy::{compile, Cluster, Direction, Object};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// All policy objects at one revision.
pub struct Snapshot {
    pub revision: u64,
    /// Shared with the source: an object unchanged since the last snapshot is the same
    /// allocation (so a reader can tell what changed by pointer, and nothing is copied).
    pub objects: Vec<Arc<Object>>,
    /// Objects left out, with why (`Pod x/a: spec.containers[0]…`).
    pub rejected: Vec<String>,
    /// Each object's version where the source has one (`Pod ns/name` → Kubernetes
    /// `resourceVersion`).
    pub versions: BTreeMap<String, String>,
}

/// Where Namespaces, Pods and NetworkPolicies come from. The datastore (file, etcd)
/// today; the Kubernetes API behind the same trait.
pub trait PolicySource: Send + Sync {
    fn snapshot(&self) -> Result<Snapshot, String>;
}

/// Policy objects kept in the node datastore (`podnet lab apply` writes them there).
pub struct DatastoreSource {
    ds: Arc<dyn Datastore>,
    /// Objects already read and checked, by their stored form: only what changed is
    /// parsed and validated again.
    seen: Mutex<BTreeMap<podnet_datastore::ObjectKey, Checked>>,
}

/// A stored object's JSON and what reading it gave.
type Checked = (Arc<serde_json::Value>, Result<Arc<Object>, String>);

impl DatastoreSource {
    pub fn new(ds: Arc<dyn Datastore>) -> DatastoreSource {
        DatastoreSource {
            ds,
            seen: Mutex::new(BTreeMap::new()),
        }
    }
}

impl PolicySource for DatastoreSource {
    fn snapshot(&self) -> Result<Snapshot, String> {
        let (revision, stored) = self.ds.objects().map_err(|e| e.to_string())?;
        let mut objects = Vec::new();
        let mut rejected = Vec::new();
        let mut seen = self.seen.lock().unwrap();
        let mut next = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for s in stored {
            let key = s.key();
            if let Some(v) = &s.version {
                versions.insert(format!("{} {}/{}", s.kind, s.namespace, s.name), v.clone());
            }
            let checked = match seen.remove(&key) {
                Some((v, r)) if Arc::ptr_eq(&v, &s.value) || v == s.value => r,
                _ => check(&s).map(Arc::new),
            };
            match &checked {
                Ok(o) => objects.push(o.clone()),
                Err(e) => rejected.push(e.clone()),
            }
            next.insert(key, (s.value, checked));
        }
        *seen = next;
        Ok(Snapshot {
            revision,
            objects,
            rejected,
            versions,
        })
    }
}

/// Reads and validates one stored object; the error names it.
fn check(s: &podnet_datastore::StoredObject) -> Result<Object, String> {
    let what = format!("{} {}/{}", s.kind, s.namespace, s.name);
    match Object::from_json((*s.value).clone()) {
        Ok(o) => match podnet_policy::validate::validate(&o) {
            Ok(()) if o.key() == s.key() => Ok(o),
            Ok(()) => Err(format!(
                "{what}: its key does not match the object it holds ({})",
                o.describe()
            )),
            Err(errs) => Err(format!(
                "{what}: {}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        },
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The datapath in use, with what it needs between rounds.
enum Dp {
    /// Whether the table holds what `Policy::tables` says; if not, rewrite it whole.
    Nft(bool),
    Ebpf(Box<ebpf::EbpfDatapath>),
    None,
}

fn dir_status(t: &Table) -> DirStatus {
    match t {
        Table::Open => DirStatus {
            state: "open".into(),
            policies: vec![],
            entries: 0,
        },
        Table::Isolated { policies, allow } => DirStatus {
            state: "isolated".into(),
            policies: policies.clone(),
            entries: allow.len(),
        },
    }
}

pub struct Policy {
    kind: PolicyDatapath,
    source: Box<dyn PolicySource>,
    node: String,
    cidr: Ipv4Net,
    bridge: String,
    bpf_dir: PathBuf,
    dp: Dp,
    tables: Arc<BTreeMap<String, PodTables>>,
    revision: Option<u64>,
    rejected: BTreeSet<String>,
    pub status: Arc<Mutex<PolicyStatus>>,
    /// The eBPF fast path (`--datapath ebpf`), when on.
    fast: Option<FastPath>,
    /// Host veth index → the pod's address and MAC, as its anti-spoofing entry holds
    /// them (they never change for a veth: read once).
    fast_seen: BTreeMap<u32, (std::net::Ipv4Addr, [u8; 6])>,
    /// The fast path was switched off in the kernel (nothing to do until it is on).
    fast_cleared: bool,
    /// The objects `tables` were compiled from (shared with the source's snapshot).
    compiled_from: BTreeMap<ObjKey, Arc<Object>>,
    /// Host veth index → the filters it was last seen with (see [`Filters`]): a filter
    /// seen once and gone later is drift, put back; one never seen is podnet-cni's to
    /// attach (the pod is still being made).
    seen_filters: BTreeMap<u32, Filters>,
    /// Called with the object's name for every drift repaired (the metrics' repairs).
    pub on_repair: Option<OnRepair>,
    /// The nftables backstop program (loaded with the underlay guard), attached to every
    /// pod veth's egress on the nftables datapath.
    pub backstop: Option<std::os::fd::OwnedFd>,
    /// Every pod address of the cluster and whose it is, as last read: an address
    /// whose pod went (or changed) has its connections forgotten on this node.
    pod_ips: Option<BTreeMap<std::net::Ipv4Addr, (String, String)>>,
    /// Local pods whose tables exceed [`MAX_POD_ENTRIES`], with why: left closed.
    refused: BTreeMap<String, RefusedPod>,
}

/// The most table entries (allowed peer prefixes × port ranges, both directions) one
/// pod may have programmed. One pod's policies may select far more (an ipBlock with
/// thousands of excepts times hundreds of ports): programming them would fail the
/// node's whole round, and every other pod made meanwhile would stay closed. Such a
/// pod alone stays closed, said in its log, `policy stats` and `doctor`.
pub const MAX_POD_ENTRIES: usize = 100_000;

/// Splits off the pods whose tables are over [`MAX_POD_ENTRIES`].
fn over_bound(tables: &mut BTreeMap<String, PodTables>) -> BTreeMap<String, RefusedPod> {
    let size = |t: &Table| match t {
        Table::Open => 0,
        Table::Isolated { allow, .. } => allow.len(),
    };
    let over: Vec<(String, std::net::Ipv4Addr, usize, Vec<String>)> = tables
        .iter()
        .filter_map(|(k, t)| {
            let n = size(&t.ingress) + size(&t.egress);
            (n > MAX_POD_ENTRIES).then(|| {
                let mut pols: Vec<String> = [&t.ingress, &t.egress]
                    .iter()
                    .filter_map(|t| match t {
                        Table::Isolated { policies, .. } => Some(policies.clone()),
                        Table::Open => None,
                    })
                    .flatten()
                    .collect();
                pols.sort();
                pols.dedup();
                (k.clone(), t.ip, n, pols)
            })
        })
        .collect();
    over.into_iter()
        .map(|(k, ip, n, pols)| {
            tables.remove(&k);
            let why = format!(
                "its policies ({}) compile to {n} entries, over the {MAX_POD_ENTRIES} one pod may have: it stays closed; split or simplify them (fewer ipBlock excepts or ports)",
                pols.join(", ")
            );
            let r = RefusedPod {
                pod: k.clone(),
                ip: ip.to_string(),
                why,
            };
            (k, r)
        })
        .collect()
}

/// What the agent does with each repair (counts it in the metrics).
pub type OnRepair = Box<dyn Fn(&str) + Send>;

/// The tc filters podnet keeps on one pod's host veth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Filters {
    /// Anti-spoofing on ingress (`podnet_from_pod`), with its program id.
    antispoof: Option<u32>,
    /// The eBPF policy datapath's two filters.
    policy_out: bool,
    policy_in: bool,
    /// The nftables datapath's backstop on egress ([`crate::guard::BACKSTOP_FILTER`]).
    backstop: bool,
}

fn filters_of(sock: &mut podnet_netlink::Socket, index: u32) -> Result<Filters, String> {
    let ing = podnet_netlink::tc::list_ingress(sock, index).map_err(|e| e.to_string())?;
    let eg = podnet_netlink::tc::list_egress(sock, index).map_err(|e| e.to_string())?;
    Ok(Filters {
        antispoof: ing
            .iter()
            .find(|f| f.name.as_deref() == Some(podnet_netlink::antispoof::PROG_NAME))
            .and_then(|f| f.prog_id),
        policy_out: ing
            .iter()
            .any(|f| f.name.as_deref() == Some(ebpf::FILTER_OUT)),
        policy_in: eg
            .iter()
            .any(|f| f.name.as_deref() == Some(ebpf::FILTER_IN)),
        backstop: eg
            .iter()
            .any(|f| f.name.as_deref() == Some(crate::guard::BACKSTOP_FILTER)),
    })
}

/// What is missing from the filters of the pod behind host veth `index`, read from the
/// kernel: `(opens its policy, what)` — the eBPF datapath's policy filters open it, a
/// missing anti-spoofing filter lets it forge its source. Empty: all there.
pub fn pod_filter_problems(
    sock: &mut podnet_netlink::Socket,
    index: u32,
    name: &str,
    datapath: PolicyDatapath,
) -> Vec<(bool, String)> {
    let f = match filters_of(sock, index) {
        Ok(f) => f,
        Err(e) => return vec![(false, format!("cannot read the filters of {name}: {e}"))],
    };
    let mut v = vec![];
    if f.antispoof.is_none() {
        v.push((
            false,
            format!(
                "{name} has no anti-spoofing filter ({}): the pod can forge its source",
                podnet_netlink::antispoof::PROG_NAME
            ),
        ));
    }
    if datapath == PolicyDatapath::Nftables && !f.backstop {
        v.push((false, format!("{name} has no nftables backstop ({}): a flushed ruleset would open the pod until the agent puts it back", crate::guard::BACKSTOP_FILTER)));
    }
    if datapath == PolicyDatapath::Ebpf {
        if !f.policy_out {
            v.push((
                true,
                format!(
                    "{name} has no egress policy filter ({}): nothing judges what the pod sends",
                    ebpf::FILTER_OUT
                ),
            ));
        }
        if !f.policy_in {
            v.push((true, format!("{name} has no ingress policy filter ({}): nothing judges what the pod receives", ebpf::FILTER_IN)));
        }
    }
    v
}

/// What opens pods node-wide on the nftables datapath, read from the kernel: the table,
/// its chains and isolation sets (against the tables last programmed), and
/// `bridge-nf-call-iptables`. Empty: enforcement is in place.
pub fn nft_problems(tables: &BTreeMap<String, PodTables>) -> Vec<String> {
    let mut v = vec![];
    if let Err(e) = nft::check_intact(&nft::elements(tables)) {
        v.push(e);
    }
    if let Some(p) = bridge_nf_off() {
        v.push(format!(
            "{p} is 0: bridged (same-node) pod traffic skips nftables"
        ));
    }
    v
}

/// Everything missing from the kernel that keeps this node's pods isolated and
/// protected (the node-wide nftables objects, every pod veth's filters), read now.
pub fn enforcement_problems(st: &PolicyStatus) -> Vec<String> {
    let mut v = vec![];
    if st.datapath == PolicyDatapath::Nftables {
        v = nft_problems(&st.tables);
    }
    if let Ok(mut sock) = podnet_netlink::Socket::route() {
        match pod_veths(&mut sock) {
            Ok(veths) => {
                for l in veths {
                    v.extend(
                        pod_filter_problems(&mut sock, l.index, &l.name, st.datapath)
                            .into_iter()
                            .map(|(_, w)| w),
                    );
                }
            }
            Err(e) => v.push(format!("cannot list the pods' veths: {e}")),
        }
    }
    v
}

/// The `bridge-nf-call-*` switch that is off, if one is.
fn bridge_nf_off() -> Option<String> {
    ["iptables", "ip6tables"].into_iter().find_map(|fam| {
        let p = format!("/proc/sys/net/bridge/bridge-nf-call-{fam}");
        std::fs::read_to_string(&p)
            .is_ok_and(|v| v.trim() == "0")
            .then_some(p)
    })
}

/// The host veths of the node's pods (podnet-cni marks them with its owner alias).
fn pod_veths(
    sock: &mut podnet_netlink::Socket,
) -> Result<Vec<podnet_netlink::link::LinkInfo>, String> {
    Ok(podnet_netlink::link::list(sock)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .and_then(podnet_conventions::parse_owner_alias)
                .is_some()
        })
        .collect())
}

/// What the fast path needs besides the policy maps.
#[derive(Clone, Debug)]
pub struct FastPath {
    /// The VXLAN device, whose ingress gets `from_overlay` (none with host-gw).
    pub overlay_dev: Option<String>,
}

/// Removes the fast path's filter from every link that has it (the underlay devices
/// are the node's: only podnet's own filter, by priority and name, is touched).
fn remove_underlay_filters(
    sock: &mut podnet_netlink::Socket,
    log: &dyn Fn(&str),
) -> Result<(), String> {
    for l in podnet_netlink::link::list(sock).map_err(|e| e.to_string())? {
        let ours = podnet_netlink::tc::list_ingress(sock, l.index)
            .map_err(|e| e.to_string())?
            .iter()
            .any(|f| {
                f.prio == ebpf::FILTER_FAST_UNDERLAY_PRIO
                    && f.name.as_deref() == Some(ebpf::FILTER_FAST_UNDERLAY)
            });
        if ours {
            let del =
                podnet_netlink::tc::del_ingress_request(l.index, ebpf::FILTER_FAST_UNDERLAY_PRIO);
            for r in sock.ack_all(vec![del]) {
                r.map_err(|e| e.to_string())?;
            }
            log(&format!(
                "fast path off: removed {} from the ingress of {}",
                ebpf::FILTER_FAST_UNDERLAY,
                l.name
            ));
        }
    }
    Ok(())
}

/// `(kind, namespace, name)` of a policy object.
type ObjKey = (String, String, String);

/// The NetworkPolicies that differ between two sets of objects — each as it was and
/// as it is — or `None` when anything else (a pod, a namespace) differs too.
fn policies_changed<'a>(
    old: &'a BTreeMap<ObjKey, Arc<Object>>,
    new: &'a BTreeMap<ObjKey, Arc<Object>>,
) -> Option<Vec<&'a podnet_policy::objects::NetworkPolicy>> {
    let mut out = Vec::new();
    let mut differs = |o: &'a Object| match o {
        Object::NetworkPolicy(p) => {
            out.push(p);
            true
        }
        _ => false,
    };
    for (k, o) in old {
        match new.get(k) {
            Some(n) if Arc::ptr_eq(o, n) || o == n => {}
            Some(n) => {
                if !differs(o) || !differs(n) {
                    return None;
                }
            }
            None => {
                if !differs(o) {
                    return None;
                }
            }
        }
    }
    for (k, n) in new {
        if !old.contains_key(k) && !differs(n) {
            return None;
        }
    }
    Some(out)
}

/// Puts `prog` on the ingress of link `index` as tc filter `filter` (priority `prio`),
/// unless a filter of that name is there already.
#[allow(clippy::too_many_arguments)]
fn attach_ingress(
    sock: &mut podnet_netlink::Socket,
    e: &ebpf::EbpfDatapath,
    index: u32,
    dev: &str,
    prog: &str,
    filter: &str,
    prio: u16,
    log: &dyn Fn(&str),
    does: &str,
) -> Result<(), String> {
    let has = podnet_netlink::tc::list_ingress(sock, index)
        .map_err(|e| e.to_string())?
        .iter()
        .any(|f| f.name.as_deref() == Some(filter));
    if has {
        return Ok(());
    }
    let fd = e.program_fd(prog)?;
    for r in sock.ack_all(vec![
        podnet_netlink::tc::clsact_request(index),
        podnet_netlink::tc::bpf_ingress_request(index, prio, &fd, filter),
    ]) {
        if let Err(err) = r {
            if !err.is_exists() {
                return Err(format!("attach {prog} to {dev}: {err}"));
            }
        }
    }
    log(&format!("fast path: {prog} on the ingress of {dev} {does}"));
    Ok(())
}

impl Policy {
    pub fn new(
        kind: PolicyDatapath,
        source: Box<dyn PolicySource>,
        node: &str,
        cidr: Ipv4Net,
        bridge: &str,
        bpf_dir: PathBuf,
    ) -> Policy {
        Policy {
            kind,
            source,
            node: node.into(),
            cidr,
            bridge: bridge.into(),
            bpf_dir,
            dp: Dp::None,
            tables: Arc::new(BTreeMap::new()),
            revision: None,
            rejected: BTreeSet::new(),
            status: Arc::new(Mutex::new(PolicyStatus {
                datapath: kind,
                ..Default::default()
            })),
            fast: None,
            fast_seen: BTreeMap::new(),
            fast_cleared: false,
            seen_filters: BTreeMap::new(),
            on_repair: None,
            backstop: None,
            pod_ips: None,
            refused: BTreeMap::new(),
            compiled_from: BTreeMap::new(),
        }
    }

    /// Turns the fast path on (the eBPF datapath only: the caller checks).
    pub fn set_fast(&mut self, fast: FastPath) {
        self.fast = Some(fast);
    }

    /// The fast path's state in the kernel: on or off as configured, `local_pods`
    /// holding every pod of the node whose anti-spoofing entry names its MAC and
    /// address, and `from_overlay` on the overlay device. A pod not in `local_pods`
    /// yet (made within the last second) takes the bridge path meanwhile.
    fn refresh_fast(&mut self, log: &dyn Fn(&str)) -> Result<(), String> {
        let Dp::Ebpf(e) = &mut self.dp else {
            return Ok(());
        };
        if self.fast.is_none() && self.fast_cleared {
            return Ok(());
        }
        let mut sock = podnet_netlink::Socket::route().map_err(|e| e.to_string())?;
        let gw_mac = podnet_conventions::pod_mac(self.cidr.nth(1).ok_or("no gateway")?);
        let mut pods = BTreeMap::new();
        if self.fast.is_some() {
            let veths = pod_veths(&mut sock)?;
            self.fast_seen
                .retain(|i, _| veths.iter().any(|l| l.index == *i));
            for l in veths {
                if let std::collections::btree_map::Entry::Vacant(v) = self.fast_seen.entry(l.index)
                {
                    // Not there yet when podnet-cni is still making the pod: next round.
                    if let Ok(Some(st)) = podnet_netlink::antispoof::pod_state(&mut sock, l.index) {
                        v.insert((st.ip, st.mac));
                    }
                }
            }
            for (index, (ip, mac)) in &self.fast_seen {
                if self.cidr.contains(*ip) {
                    pods.insert(
                        *ip,
                        ebpf::LocalPod {
                            ifindex: *index,
                            mac: *mac,
                            gw_mac,
                        },
                    );
                }
            }
        }
        let mut changed = e.set_fast(self.fast.is_some(), &pods)?;
        if self.fast.is_none() {
            // Off (or never on): podnet's filter leaves the underlay devices, which are
            // the node's, not podnet's. (from_overlay stays on podnet's own VXLAN
            // device, inert while the switch is off.)
            remove_underlay_filters(&mut sock, log)?;
        }
        self.fast_cleared = self.fast.is_none();
        let mut overlay = String::new();
        let mut underlay = String::new();
        let mut me = ebpf::OverlaySelf::default();
        let mut peers = BTreeMap::new();
        if let Some(dev) = self.fast.as_ref().and_then(|f| f.overlay_dev.clone()) {
            if let Some(l) =
                podnet_netlink::link::get_by_name(&mut sock, &dev).map_err(|e| e.to_string())?
            {
                attach_ingress(
                    &mut sock,
                    e,
                    l.index,
                    &dev,
                    ebpf::FROM_OVERLAY,
                    ebpf::FILTER_FAST_IN,
                    1,
                    log,
                    "delivers other nodes' packets straight into pods",
                )?;
                overlay = dev.clone();
                // Across nodes: the encapsulation the device would write, written by
                // from_pod_policy, and the frames for local pods taken off the wire
                // on the underlay device. Needs the device's underlay link and address.
                if let Some((v, local, dev_index)) = l
                    .vxlan
                    .as_ref()
                    .filter(|v| v.vni != 0 && v.port != 0)
                    .and_then(|v| Some((v, v.local?, v.dev?)))
                {
                    if let Some(ul) = podnet_netlink::link::get_by_index(&mut sock, dev_index)
                        .map_err(|e| e.to_string())?
                    {
                        attach_ingress(
                            &mut sock,
                            e,
                            ul.index,
                            &ul.name,
                            ebpf::FROM_UNDERLAY,
                            ebpf::FILTER_FAST_UNDERLAY,
                            ebpf::FILTER_FAST_UNDERLAY_PRIO,
                            log,
                            "takes VXLAN frames for this node's pods off the wire",
                        )?;
                        me = ebpf::overlay_self(l.index, local, v.vni, v.port);
                        for f in
                            podnet_netlink::neigh::fdb_list(&mut sock).map_err(|e| e.to_string())?
                        {
                            if let (true, Some(dst)) = (f.index == l.index, f.dst) {
                                peers.insert(f.mac, dst);
                            }
                        }
                        underlay = ul.name;
                    }
                }
            }
        }
        changed += e.set_overlay(me, &peers)?;
        if changed > 0 && self.fast.is_some() {
            log(&format!(
                "fast path: {} pods served directly ({} entries changed)",
                pods.len(),
                changed
            ));
        }
        self.status.lock().unwrap().fast_path = self.fast.as_ref().map(|_| FastPathStatus {
            pods: pods.keys().map(|ip| ip.to_string()).collect(),
            overlay_dev: overlay,
            underlay_dev: underlay,
            overlay_peers: peers.len(),
        });
        Ok(())
    }

    /// Before any pod can be made: bridged traffic through netfilter, and the table
    /// in place — closed for every pod address — unless one survives from an earlier
    /// run (it stays as it is until the first round replaces it).
    pub fn prepare(&mut self, log: &dyn Fn(&str)) -> Result<(), String> {
        if !matches!(self.kind, PolicyDatapath::Ebpf) {
            // A node that ran the fast path before: its filter on the underlay device
            // (the node's own) would go on acting on the pinned maps of that run.
            let mut sock = podnet_netlink::Socket::route().map_err(|e| e.to_string())?;
            remove_underlay_filters(&mut sock, log)?;
        }
        match self.kind {
            PolicyDatapath::None => {
                if nft::exists() {
                    nft::delete()?;
                    log("policy datapath none: removed the nftables table inet podnet");
                }
                Ok(())
            }
            PolicyDatapath::Ebpf => {
                let dp = ebpf::EbpfDatapath::open(&self.bpf_dir)?;
                log(&format!("policy: eBPF map layout {}", dp.layout()));
                self.dp = Dp::Ebpf(Box::new(dp));
                self.refresh_node(log)?;
                if nft::exists() {
                    // Every pod carries the programs now: the table would only filter twice.
                    nft::delete()?;
                    log("policy datapath ebpf: removed the nftables table inet podnet");
                }
                self.status.lock().unwrap().bpf_dir = Some(self.bpf_dir.clone());
                log(&format!(
                    "policy: eBPF datapath loaded, maps pinned in {}; every pod is closed until its policy is programmed",
                    self.bpf_dir.display()
                ));
                Ok(())
            }
            PolicyDatapath::Nftables => {
                self.dp = Dp::Nft(false);
                for fam in ["iptables", "ip6tables"] {
                    let p = format!("/proc/sys/net/bridge/bridge-nf-call-{fam}");
                    let on = std::fs::read_to_string(&p).map(|v| v.trim() == "1");
                    match on {
                        Ok(true) => {}
                        Ok(false) => std::fs::write(&p, "1").map_err(|e| {
                            format!("cannot turn on {p} ({e}): same-node pod traffic would bypass policy")
                        })?,
                        Err(e) => {
                            return Err(format!(
                                "cannot read {p} ({e}): NetworkPolicy on bridged (same-node) traffic needs the br_netfilter module: run `modprobe br_netfilter` on the host, or start podnetd with --policy-datapath none"
                            ))
                        }
                    }
                }
                if !nft::exists() {
                    nft::run(&nft::render_full(self.cidr, &self.bridge, &BTreeSet::new()))?;
                    log("policy: created nftables table inet podnet; every pod is closed until its policy is programmed");
                }
                Ok(())
            }
        }
    }

    /// What podnet-cni must know of the datapath (the node file's `policyPrograms`).
    pub fn node_file_extra(&self) -> Option<podnet_conventions::PolicyPrograms> {
        match &self.dp {
            Dp::Ebpf(e) => Some(podnet_conventions::PolicyPrograms {
                from_pod: e.program_path(ebpf::FROM_POD),
                to_pod: e.program_path(ebpf::TO_POD),
            }),
            _ => None,
        }
    }

    /// eBPF: the node's own addresses into `node_addrs`, and the programs onto every
    /// pod's host veth that lacks them (pods made before this datapath was chosen).
    fn refresh_node(&mut self, log: &dyn Fn(&str)) -> Result<(), String> {
        let Dp::Ebpf(e) = &mut self.dp else {
            return Ok(());
        };
        let mut sock = podnet_netlink::Socket::route().map_err(|e| e.to_string())?;
        let addrs: Vec<std::net::Ipv4Addr> = podnet_netlink::addr::list(&mut sock, None)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|a| a.addr)
            .collect();
        e.set_node_addrs(&addrs)?;
        let (out_prog, in_prog) = (e.program_fd(ebpf::FROM_POD)?, e.program_fd(ebpf::TO_POD)?);
        for l in pod_veths(&mut sock)? {
            let has = podnet_netlink::tc::list_ingress(&mut sock, l.index)
                .map_err(|e| e.to_string())?
                .iter()
                .any(|f| f.name.as_deref() == Some(ebpf::FILTER_OUT));
            if has {
                continue;
            }
            let reqs = vec![
                podnet_netlink::tc::clsact_request(l.index),
                podnet_netlink::tc::bpf_ingress_request(l.index, 2, &out_prog, ebpf::FILTER_OUT),
                podnet_netlink::tc::bpf_egress_request(l.index, 1, &in_prog, ebpf::FILTER_IN),
            ];
            for r in sock.ack_all(reqs) {
                if let Err(e) = r {
                    if !e.is_exists() {
                        return Err(format!("attach the policy programs to {}: {e}", l.name));
                    }
                }
            }
            log(&format!(
                "policy: attached the eBPF policy programs to {}",
                l.name
            ));
        }
        Ok(())
    }

    /// A pod gone from the cluster (or its address now another pod's) leaves tracked
    /// connections on every node it talked to: conntrack entries (nftables) and flow
    /// entries (eBPF) that would admit the next pod given its address as if it were
    /// the old one. podnet-cni forgets them on the pod's own node at DEL; this forgets
    /// them here, on every node. Connections that policy allows are judged anew and go
    /// on; only the stale allowances end.
    fn forget_gone_pods(&mut self, cluster: &Cluster, log: &dyn Fn(&str)) {
        let now: BTreeMap<std::net::Ipv4Addr, (String, String)> = cluster
            .pods
            .iter()
            .filter_map(|p| Some((p.ip?, (p.namespace.clone(), p.name.clone()))))
            .collect();
        if let Some(before) = &self.pod_ips {
            for (ip, (ns, name)) in before {
                if now.get(ip) == Some(&(ns.clone(), name.clone())) {
                    continue;
                }
                let mut forgot = 0;
                let mut errors = vec![];
                match podnet_netlink::conntrack::flush_addr(*ip) {
                    Ok(n) => forgot += n,
                    Err(e) => errors.push(format!("conntrack: {e}")),
                }
                if matches!(self.dp, Dp::Ebpf(_)) {
                    let path = self.bpf_dir.join(podnet_netlink::flows::FLOWS_MAP);
                    match podnet_netlink::flows::forget(&path, *ip) {
                        Ok(n) => forgot += n,
                        Err(e) => errors.push(format!("flow table: {e}")),
                    }
                }
                if forgot > 0 {
                    log(&format!(
                        "policy: pod {ns}/{name} ({ip}) is gone: forgot {forgot} tracked connections of its address"
                    ));
                }
                if !errors.is_empty() {
                    log(&format!(
                        "policy: pod {ns}/{name} ({ip}) is gone but its tracked connections could not all be forgotten ({}): the next pod given {ip} may inherit them; `conntrack -D -s {ip}` and `-d {ip}` remove them by hand",
                        errors.join("; ")
                    ));
                }
            }
        }
        self.pod_ips = Some(now);
    }

    fn repaired(&self, object: &str, log: &dyn Fn(&str), what: &str) {
        log(&format!("repairing drift: {what}"));
        if let Some(f) = &self.on_repair {
            f(object);
        }
    }

    /// nftables: the table, its chains and isolation sets, and bridge-nf-call-iptables
    /// as last programmed; anything missing makes this round rewrite the whole table
    /// (one transaction) and turn the switch back on.
    fn verify_nft(&mut self, log: &dyn Fn(&str)) {
        if !matches!(self.dp, Dp::Nft(true)) {
            return;
        }
        if let Err(why) = nft::check_intact(&nft::elements(&self.tables)) {
            self.repaired(
                "nftables-table",
                log,
                &format!(
                    "{why}: every pod of this node was open; rewriting table inet {}",
                    nft::TABLE
                ),
            );
            self.dp = Dp::Nft(false);
        }
        if let Some(p) = bridge_nf_off() {
            match std::fs::write(&p, "1") {
                Ok(()) => self.repaired("bridge-nf-call", log, &format!("{p} was 0 (same-node pod traffic skipped nftables): set to 1")),
                Err(e) => log(&format!("policy: {p} is 0 and cannot be set ({e}): same-node pod traffic skips NetworkPolicy")),
            }
        }
    }

    /// Every pod veth's filters: anti-spoofing, and with the eBPF datapath the two
    /// policy filters. One seen before and gone now is attached again (the pod was
    /// open, or could forge its source, in between); the repair is logged and counted.
    fn verify_filters(&mut self, log: &dyn Fn(&str)) -> Result<(), String> {
        let mut sock = podnet_netlink::Socket::route().map_err(|e| e.to_string())?;
        let veths = pod_veths(&mut sock)?;
        self.seen_filters
            .retain(|i, _| veths.iter().any(|l| l.index == *i));
        for l in &veths {
            let now = filters_of(&mut sock, l.index)?;
            let before = self.seen_filters.get(&l.index).copied().unwrap_or_default();
            let mut have = now;
            if let (None, Some(prog)) = (now.antispoof, before.antispoof) {
                // The same program again: its map still holds the pod's entry.
                let fd = podnet_netlink::bpf::prog_by_id(prog).map_err(|e| e.to_string())?;
                let r = sock.ack_all(vec![
                    podnet_netlink::tc::clsact_request(l.index),
                    podnet_netlink::tc::bpf_ingress_request(
                        l.index,
                        1,
                        &fd,
                        podnet_netlink::antispoof::PROG_NAME,
                    ),
                ]);
                let failed: Vec<String> = r
                    .into_iter()
                    .filter_map(|r| r.err().filter(|e| !e.is_exists()))
                    .map(|e| e.to_string())
                    .collect();
                if failed.is_empty() {
                    have.antispoof = Some(prog);
                    self.repaired(
                        "antispoof-filter",
                        log,
                        &format!(
                            "{} had lost its anti-spoofing filter: attached it again",
                            l.name
                        ),
                    );
                } else {
                    log(&format!("policy: {} has lost its anti-spoofing filter and it could not be attached again: {}", l.name, failed.join("; ")));
                }
            }
            // The nftables datapath's backstop: on every pod (new ones too: podnet-cni
            // does not attach it), and off every pod on the other datapaths.
            match (&self.dp, &self.backstop) {
                (Dp::Nft(_), Some(fd)) if !now.backstop => {
                    let failed: Vec<String> = sock
                        .ack_all(vec![
                            podnet_netlink::tc::clsact_request(l.index),
                            podnet_netlink::tc::bpf_egress_request(
                                l.index,
                                crate::guard::BACKSTOP_PRIO,
                                fd,
                                crate::guard::BACKSTOP_FILTER,
                            ),
                        ])
                        .into_iter()
                        .filter_map(|r| r.err().filter(|e| !e.is_exists()))
                        .map(|e| e.to_string())
                        .collect();
                    if failed.is_empty() {
                        have.backstop = true;
                        if before.backstop {
                            self.repaired(
                                "nftables-backstop",
                                log,
                                &format!(
                                    "{} had lost its nftables backstop: attached it again",
                                    l.name
                                ),
                            );
                        }
                    } else {
                        log(&format!(
                            "policy: cannot attach the nftables backstop to {}: {}",
                            l.name,
                            failed.join("; ")
                        ));
                    }
                }
                (Dp::Nft(_), _) => {}
                (_, _) if now.backstop => {
                    for r in sock.ack_all(vec![podnet_netlink::tc::del_egress_request(
                        l.index,
                        crate::guard::BACKSTOP_PRIO,
                    )]) {
                        if let Err(e) = r {
                            log(&format!(
                                "policy: cannot remove the nftables backstop from {}: {e}",
                                l.name
                            ));
                        }
                    }
                    have.backstop = false;
                }
                _ => {}
            }
            if let Dp::Ebpf(e) = &self.dp {
                // The fds must stay open until the requests are sent.
                let (out_fd, in_fd) = (e.program_fd(ebpf::FROM_POD)?, e.program_fd(ebpf::TO_POD)?);
                let mut reqs = vec![podnet_netlink::tc::clsact_request(l.index)];
                if before.policy_out && !now.policy_out {
                    reqs.push(podnet_netlink::tc::bpf_ingress_request(
                        l.index,
                        2,
                        &out_fd,
                        ebpf::FILTER_OUT,
                    ));
                }
                if before.policy_in && !now.policy_in {
                    reqs.push(podnet_netlink::tc::bpf_egress_request(
                        l.index,
                        1,
                        &in_fd,
                        ebpf::FILTER_IN,
                    ));
                }
                if reqs.len() > 1 {
                    let failed: Vec<String> = sock
                        .ack_all(reqs)
                        .into_iter()
                        .filter_map(|r| r.err().filter(|e| !e.is_exists()))
                        .map(|e| e.to_string())
                        .collect();
                    if failed.is_empty() {
                        have.policy_out |= before.policy_out;
                        have.policy_in |= before.policy_in;
                        self.repaired(
                            "policy-filter",
                            log,
                            &format!(
                                "{} had lost an eBPF policy filter: attached it again",
                                l.name
                            ),
                        );
                    } else {
                        log(&format!("policy: {} has lost an eBPF policy filter and it could not be attached again: {}", l.name, failed.join("; ")));
                    }
                }
            }
            self.seen_filters.insert(l.index, have);
        }
        Ok(())
    }

    /// One round: reads the source and programs what changed. Returns the number of
    /// elements changed.
    pub fn sync(&mut self, log: &dyn Fn(&str)) -> Result<usize, String> {
        // Every round, like routes: what keeps pods protected and isolated is still in
        // the kernel, or is put back now.
        if let Err(e) = self.verify_filters(log) {
            log(&format!("policy: cannot verify the pods' filters: {e}"));
        }
        if matches!(self.dp, Dp::None) {
            return Ok(0);
        }
        self.verify_nft(log);
        // Every round: pods appear on the node independently of their objects.
        if let Err(e) = self.refresh_fast(log) {
            log(&format!("fast path: {e}"));
        }
        let t0 = Instant::now();
        let snap = match self.source.snapshot() {
            Ok(s) => s,
            Err(e) => {
                // The datapath keeps what it has: nothing opens while the source is away.
                self.status.lock().unwrap().error =
                    Some(format!("cannot read policy objects: {e}"));
                return Err(format!(
                    "cannot read policy objects (the datapath keeps its verdicts): {e}"
                ));
            }
        };
        let in_sync = !matches!(self.dp, Dp::Nft(false));
        if in_sync && self.revision == Some(snap.revision) {
            // Nothing changed; an error left by a failed read is over.
            self.status.lock().unwrap().error = None;
            return Ok(0);
        }
        let read_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let rejected: BTreeSet<String> = snap.rejected.iter().cloned().collect();
        for r in rejected.difference(&self.rejected) {
            log(&format!(
                "policy: ignoring invalid object {r}; fix it in the datastore"
            ));
        }
        self.rejected = rejected;
        let cluster = Cluster::from_objects(snap.objects.iter().map(|o| &**o));
        self.forget_gone_pods(&cluster, log);
        let (node, cidr) = (self.node.clone(), self.cidr);
        let local = |p: &podnet_policy::PodInfo| {
            p.node.as_deref() == Some(node.as_str()) && p.ip.is_some_and(|ip| cidr.contains(ip))
        };
        let objs: BTreeMap<ObjKey, Arc<Object>> =
            snap.objects.iter().map(|o| (o.key(), o.clone())).collect();
        // When only policies changed since the tables were made, only the pods those
        // policies select (before or after) get new tables.
        // (A pod refused last time is in no table: compile all again to judge it anew.)
        let mut tables = match policies_changed(&self.compiled_from, &objs) {
            Some(changed) if self.revision.is_some() && self.refused.is_empty() => {
                podnet_policy::compile::recompile(&cluster, &self.tables, &changed, local)
            }
            _ => compile(&cluster, local),
        };
        let refused = over_bound(&mut tables);
        for (k, r) in &refused {
            if self.refused.get(k) != Some(r) {
                log(&format!(
                    "policy: pod {k} ({}) left closed: {}",
                    r.ip, r.why
                ));
            }
        }
        self.refused = refused;
        let compile_ms = t0.elapsed().as_secs_f64() * 1000.0 - read_ms;
        let done = match &mut self.dp {
            Dp::Nft(synced) => {
                let (script, changed) = match synced {
                    false => {
                        let elems = nft::elements(&tables);
                        (
                            nft::render_full(self.cidr, &self.bridge, &elems),
                            elems.len(),
                        )
                    }
                    true => {
                        // Only the pods whose tables changed: their old and new elements.
                        let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
                        for (k, t) in tables
                            .iter()
                            .filter(|(k, t)| self.tables.get(*k) != Some(t))
                        {
                            new.insert(k.clone(), t.clone());
                            if let Some(o) = self.tables.get(k) {
                                old.insert(k.clone(), o.clone());
                            }
                        }
                        for (k, o) in self.tables.iter().filter(|(k, _)| !tables.contains_key(*k)) {
                            old.insert(k.clone(), o.clone());
                        }
                        let (old, new) = (nft::elements(&old), nft::elements(&new));
                        (
                            nft::render_update(&old, &new),
                            old.symmetric_difference(&new).count(),
                        )
                    }
                };
                if script.is_empty() {
                    Ok(changed)
                } else {
                    let r = nft::run(&script).map(|()| changed);
                    *synced = r.is_ok();
                    r
                }
            }
            Dp::Ebpf(e) => e.program(&ebpf::desired(&tables)),
            Dp::None => Ok(0),
        };
        let changed = match done {
            Ok(n) => n,
            Err(e) => {
                self.status.lock().unwrap().error = Some(e.clone());
                return Err(e);
            }
        };
        // Only when the node's pods change, not on every policy change: addresses come
        // and go (the VXLAN device's, the bridge's), and pods made before this
        // datapath lack its programs. (New pods get them from podnet-cni.)
        if matches!(self.dp, Dp::Ebpf(_)) && !tables.keys().eq(self.tables.keys()) {
            if let Err(e) = self.refresh_node(log) {
                log(&format!("policy: {e}"));
            }
        }
        for (k, t) in &tables {
            if self.tables.get(k) != Some(t) {
                let d = |t: &Table| match t {
                    Table::Open => "open".to_string(),
                    Table::Isolated { policies, allow } => format!(
                        "isolated by {} ({} entries)",
                        policies.join(", "),
                        allow.len()
                    ),
                };
                log(&format!(
                    "policy: pod {k} ({}): ingress {}, egress {}",
                    t.ip,
                    d(&t.ingress),
                    d(&t.egress)
                ));
            }
        }
        for k in self.tables.keys().filter(|k| !tables.contains_key(*k)) {
            log(&format!("policy: pod {k} is gone: its address is closed"));
        }
        self.tables = Arc::new(tables);
        self.compiled_from = objs;
        self.revision = Some(snap.revision);
        let mut st = self.status.lock().unwrap();
        *st = PolicyStatus {
            datapath: self.kind,
            revision: snap.revision,
            pods: self
                .tables
                .iter()
                .map(|(k, t)| PodPolicyStatus {
                    pod: k.clone(),
                    ip: t.ip.to_string(),
                    ingress: dir_status(&t.ingress),
                    egress: dir_status(&t.egress),
                })
                .collect(),
            rejected: self.rejected.iter().cloned().collect(),
            refused: self.refused.values().cloned().collect(),
            error: None,
            last_change_ms: t0.elapsed().as_secs_f64() * 1000.0,
            last_change_read_ms: read_ms,
            last_change_compile_ms: compile_ms,
            last_change_elements: changed,
            fast_path: st.fast_path.take(),
            tables: self.tables.clone(),
            bpf_dir: matches!(self.dp, Dp::Ebpf(_)).then(|| self.bpf_dir.clone()),
            versions: Arc::new(snap.versions),
        };
        Ok(changed)
    }
}

/// The host veth (index, name) of the local pod at `ip`, found by its anti-spoofing
/// entry.
fn veth_of(sock: &mut podnet_netlink::Socket, ip: std::net::Ipv4Addr) -> Option<(u32, String)> {
    pod_veths(sock).ok()?.into_iter().find_map(|l| {
        podnet_netlink::antispoof::pod_state(sock, l.index)
            .ok()
            .flatten()
            .filter(|st| st.ip == ip)
            .map(|_| (l.index, l.name.clone()))
    })
}

/// Judges a flow at local pod `ip` from the tables the datapath was given, and checks
/// that the kernel holds the pod as programmed.
pub fn verdict(
    st: &PolicyStatus,
    ip: std::net::Ipv4Addr,
    peer: std::net::Ipv4Addr,
    dir: Direction,
    proto: podnet_policy::Proto,
    port: u16,
) -> PodVerdict {
    let found = st.tables.iter().find(|(_, t)| t.ip == ip);
    let programmed = match (st.datapath.as_str(), &st.bpf_dir) {
        ("nftables", _) => nft::holds("programmed", &ip.to_string()),
        ("ebpf", Some(dir)) => ebpf::holds(dir, ip),
        _ => false,
    };
    let mut v = PodVerdict {
        pod: found.map(|(k, _)| k.clone()),
        direction: dir,
        isolated: false,
        policies: vec![],
        allowed: true,
        entry: None,
        programmed,
        datapath: st.datapath,
        enforcement: vec![],
        refused: None,
    };
    if st.datapath == PolicyDatapath::None {
        return v;
    }
    // The kernel's truth first: what is missing there opens the pod (except where the
    // nftables backstop on the pod's veth closes forwarded traffic to it meanwhile).
    if st.datapath == PolicyDatapath::Nftables {
        v.enforcement = nft_problems(&st.tables);
    }
    let mut open_now = !v.enforcement.is_empty();
    let mut closed_now = false;
    if let Ok(mut sock) = podnet_netlink::Socket::route() {
        if let Some((index, name)) = veth_of(&mut sock, ip) {
            if open_now
                && dir == Direction::Ingress
                && filters_of(&mut sock, index).is_ok_and(|f| f.backstop)
            {
                open_now = false;
                closed_now = true;
                v.enforcement.push(format!(
                    "the nftables backstop on {name} drops every forwarded packet to the pod until the agent puts the table back: closed meanwhile"
                ));
            }
            for (opens, what) in pod_filter_problems(&mut sock, index, &name, st.datapath) {
                open_now |= opens;
                v.enforcement.push(what);
            }
        }
    }
    let Some((_, t)) = found else {
        v.allowed = open_now && !closed_now;
        let ip_s = ip.to_string();
        v.refused = st
            .refused
            .iter()
            .find(|r| r.ip == ip_s)
            .map(|r| format!("{}: {}", r.pod, r.why));
        return v;
    };
    if let Table::Isolated { policies, allow } = t.table(dir) {
        v.isolated = true;
        v.policies = policies.clone();
        let hit = allow.iter().find(|a| {
            a.net.contains(peer)
                && a.ports
                    .is_none_or(|p| p.proto == proto && p.first <= port && port <= p.last)
        });
        v.allowed = hit.is_some();
        v.entry = hit.map(|a| match a.ports {
            None => format!("{} any protocol", a.net),
            Some(p) => format!("{} {} {}-{}", a.net, p.proto.name(), p.first, p.last),
        });
    }
    v.allowed &= programmed;
    if open_now {
        // Whatever the tables say: nothing in the kernel refuses the flow now.
        v.allowed = true;
        v.programmed = true;
    }
    if closed_now {
        v.allowed = false;
    }
    v
}

/// The datapath's drop counters, joined with the status (for the API).
pub fn denied(status: &PolicyStatus) -> Result<(Vec<Denied>, u64), String> {
    let (counts, closed) = match (status.datapath.as_str(), &status.bpf_dir) {
        ("nftables", _) => nft::counters()?,
        ("ebpf", Some(dir)) => ebpf::counters(dir)?,
        _ => return Ok((vec![], 0)),
    };
    let mut out = Vec::new();
    for p in &status.pods {
        for (dir, d) in [
            (Direction::Ingress, &p.ingress),
            (Direction::Egress, &p.egress),
        ] {
            if d.state != "isolated" {
                continue;
            }
            let ip = p.ip.parse().ok();
            let packets = ip
                .and_then(|ip| counts.get(&(ip, dir)).copied())
                .unwrap_or(0);
            out.push(Denied {
                pod: p.pod.clone(),
                ip: p.ip.clone(),
                direction: dir,
                policies: d.policies.clone(),
                packets,
            });
        }
    }
    Ok((out, closed))
}
