//! NetworkPolicy in the agent: where the objects come from ([`PolicySource`]), which
//! of them concern this node (its own pods, by `spec.nodeName` and address), and the
//! datapath that enforces the compiled tables ([`datapath`]: nftables, eBPF or none,
//! chosen per node, each behind one trait), the eBPF fast path ([`fastpath`]), the
//! pod veths' filters ([`filters`]) and what the API reads ([`status`]).
//!
//! Each round: read a snapshot of Namespaces, Pods and NetworkPolicies; if its
//! revision moved, compile the tables of the local pods (`podnet_policy::compile`)
//! and program only the difference. Invalid objects are logged once and left out;
//! they never stop the others. A failed transaction changes nothing (nftables applies
//! all or nothing); the next round rewrites the whole table.

pub mod datapath;
pub mod fastpath;
pub mod filters;
pub mod services;
pub mod source;
pub mod status;

pub use datapath::ebpf::on_bpffs;
pub use datapath::{Enforcer, Setup};
pub use fastpath::FastPath;
pub use podnet_api::{
    Denied, DirStatus, FastPathStatus, PodPolicyStatus, PodVerdict, PolicyStatus, RefusedPod,
};
pub use podnet_conventions::PolicyDatapath;
pub use services::Services;
pub use source::{DatastoreSource, PolicySource, Snapshot};
pub use status::{denied, enforcement_problems, verdict, MAX_POD_ENTRIES};

use crate::Failure;
use filters::Filters;
use podnet_cni_spec::Ipv4Net;
use podnet_policy::compile::{PodTables, Table};
use podnet_policy::{compile, Cluster, Object};
use source::{policies_changed, ObjKey};
use status::{dir_status, over_bound};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The policy's state as the agent's threads share it: the status the API reports,
/// and what the agent answers from but never sends (the compiled tables, for
/// `verdict`; each object's version, for `policy-versions`). Shared, so that reading it
/// copies nothing large. Serializes as the status alone.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PolicyState {
    #[serde(flatten)]
    pub status: PolicyStatus,
    #[serde(skip)]
    pub tables: Arc<BTreeMap<String, PodTables>>,
    #[serde(skip)]
    pub versions: Arc<BTreeMap<String, String>>,
}

impl std::ops::Deref for PolicyState {
    type Target = PolicyStatus;
    fn deref(&self) -> &PolicyStatus {
        &self.status
    }
}

impl std::ops::DerefMut for PolicyState {
    fn deref_mut(&mut self) -> &mut PolicyStatus {
        &mut self.status
    }
}

/// What the agent does with each repair (counts it in the metrics).
pub type OnRepair = Box<dyn Fn(&str) + Send>;

/// Logs a repair of `object` and counts it.
fn repaired(on_repair: &Option<OnRepair>, log: &dyn Fn(&str), object: &str, what: &str) {
    log(&format!("repairing drift: {what}"));
    if let Some(f) = on_repair {
        f(object);
    }
}

pub struct Policy {
    source: Box<dyn PolicySource>,
    node: String,
    cidr: Ipv4Net,
    /// The node's IPv6 pod CIDR (dual-stack): a local pod's IPv6 address is
    /// programmed only inside it.
    cidr6: Option<podnet_conventions::Ipv6Net>,
    /// The datapath that enforces the tables ([`datapath`]).
    dp: Box<dyn Enforcer>,
    tables: Arc<BTreeMap<String, PodTables>>,
    revision: Option<u64>,
    rejected: BTreeSet<String>,
    pub status: Arc<Mutex<PolicyState>>,
    /// The eBPF fast path (`--datapath ebpf`), when on.
    fast: Option<FastPath>,
    /// Host veth index → the pod's address and MAC, as its anti-spoofing entry holds
    /// them, and whether its receiving is limited (none changes for a veth: read once).
    fast_seen: BTreeMap<u32, fastpath::Seen>,
    /// The fast path was switched off in the kernel (nothing to do until it is on).
    fast_cleared: bool,
    /// Where Service traffic leaves the node ([`services`]); whether podnet's filters
    /// were looked for and removed (not on the eBPF datapath).
    services: Option<Services>,
    services_cleared: bool,
    /// The objects `tables` were compiled from (shared with the source's snapshot).
    compiled_from: BTreeMap<ObjKey, Arc<Object>>,
    /// Host veth index → the filters it was last seen with (see [`Filters`]).
    seen_filters: BTreeMap<u32, Filters>,
    /// Called with the object's name for every drift repaired (the metrics' repairs).
    pub on_repair: Option<OnRepair>,
    /// Every pod address of the cluster and whose it is, as last read: an address
    /// whose pod went (or changed) has its connections forgotten on this node.
    pod_ips: Option<BTreeMap<std::net::IpAddr, (String, String)>>,
    /// Local pods whose tables exceed [`MAX_POD_ENTRIES`], with why: left closed.
    refused: BTreeMap<String, RefusedPod>,
}

/// One round's compiled tables, and what the round learnt reading them.
struct Compiled {
    tables: BTreeMap<String, PodTables>,
    objs: BTreeMap<ObjKey, Arc<Object>>,
    snap: Snapshot,
    read_ms: f64,
    compile_ms: f64,
}

impl Policy {
    pub fn new(source: Box<dyn PolicySource>, node: &str, setup: Setup) -> Policy {
        let kind = setup.kind;
        Policy {
            source,
            node: node.into(),
            cidr: setup.cidr,
            cidr6: setup.cidr6,
            tables: Arc::new(BTreeMap::new()),
            revision: None,
            rejected: BTreeSet::new(),
            status: Arc::new(Mutex::new(PolicyState {
                status: PolicyStatus {
                    datapath: kind,
                    pod_cidr6: setup.cidr6,
                    ..Default::default()
                },
                ..Default::default()
            })),
            dp: datapath::open(setup),
            fast: None,
            fast_seen: BTreeMap::new(),
            fast_cleared: false,
            services: None,
            services_cleared: false,
            seen_filters: BTreeMap::new(),
            on_repair: None,
            pod_ips: None,
            refused: BTreeMap::new(),
            compiled_from: BTreeMap::new(),
        }
    }

    /// Turns the fast path on (the eBPF datapath only: the caller checks).
    pub fn set_fast(&mut self, fast: FastPath) {
        self.fast = Some(fast);
    }

    pub fn set_services(&mut self, s: Services) {
        self.services = Some(s);
    }

    /// Before any pod can be made: the datapath closes every pod address until its
    /// verdicts are programmed.
    pub fn prepare(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        if self.dp.ebpf().is_none() {
            // A node that ran the fast path before: its filter on the underlay device
            // (the node's own) would go on acting on the pinned maps of that run.
            let mut sock = podnet_netlink::Socket::route().map_err(Failure::from)?;
            fastpath::remove_underlay_filters(&mut sock, log)?;
        }
        self.dp.prepare(log)?;
        self.status.lock().unwrap().bpf_dir = self.dp.bpf_dir();
        Ok(())
    }

    /// What podnet-cni must know of the datapath (the node file's `policyPrograms`).
    pub fn node_file_extra(&self) -> Option<podnet_conventions::PolicyPrograms> {
        self.dp.pod_programs()
    }

    /// A pod gone from the cluster (or its address now another pod's) leaves tracked
    /// connections on every node it talked to: conntrack entries (nftables) and flow
    /// entries (eBPF) that would admit the next pod given its address as if it were
    /// the old one. podnet-cni forgets them on the pod's own node at DEL; this forgets
    /// them here, on every node. Connections that policy allows are judged anew and go
    /// on; only the stale allowances end.
    fn forget_gone_pods(&mut self, cluster: &Cluster, log: &dyn Fn(&str)) {
        // Every address of every pod: a dual-stack pod's IPv6 one too.
        let now: BTreeMap<std::net::IpAddr, (String, String)> = cluster
            .pods
            .iter()
            .flat_map(|p| {
                p.addrs()
                    .map(|a| (a, (p.namespace.clone(), p.name.clone())))
            })
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
                match self.dp.forget(*ip) {
                    Ok(n) => forgot += n,
                    Err(e) => errors.push(format!("flow table: {e}")),
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

    /// One round: reads the source and programs what changed. Returns the number of
    /// elements changed.
    pub fn sync(&mut self, log: &dyn Fn(&str)) -> Result<usize, Failure> {
        // Every round, like routes: what keeps pods protected and isolated is still in
        // the kernel, or is put back now.
        if let Err(e) = self.verify_filters(log) {
            log(&format!("policy: cannot verify the pods' filters: {e}"));
        }
        if let Err(e) = self.refresh_services(log) {
            log(&format!("policy: Service traffic: {e}"));
        }
        if !self.dp.enforces() {
            return Ok(0);
        }
        let (on_repair, tables) = (&self.on_repair, &self.tables);
        let rep = |object: &str, what: &str| repaired(on_repair, log, object, what);
        self.dp.verify(tables, &rep, log);
        // Every round: pods appear on the node independently of their objects.
        if let Err(e) = self.refresh_fast(log) {
            log(&format!("fast path: {e}"));
        }
        let t0 = Instant::now();
        let Some(c) = self.compile(t0, log)? else {
            return Ok(0);
        };
        let changed = match self.dp.program(&self.tables, &c.tables) {
            Ok(n) => n,
            Err(e) => {
                self.status.lock().unwrap().error = Some(e.to_string());
                return Err(e);
            }
        };
        // Only when the node's pods change, not on every policy change: addresses come
        // and go (the VXLAN device's, the bridge's), and pods made before this
        // datapath lack its programs. (New pods get them from podnet-cni.)
        if !c.tables.keys().eq(self.tables.keys()) {
            if let Err(e) = self.dp.pods_changed(log) {
                log(&format!("policy: {e}"));
            }
        }
        self.log_changes(&c.tables, log);
        self.tables = Arc::new(c.tables);
        self.compiled_from = c.objs;
        self.revision = Some(c.snap.revision);
        self.publish(c.snap, t0, c.read_ms, c.compile_ms, changed);
        Ok(changed)
    }

    /// Reads the source and compiles the local pods' tables; `None` when nothing
    /// changed since the last round (and the datapath holds it).
    fn compile(&mut self, t0: Instant, log: &dyn Fn(&str)) -> Result<Option<Compiled>, Failure> {
        let snap = match self.source.snapshot() {
            Ok(s) => s,
            Err(e) => {
                // The datapath keeps what it has: nothing opens while the source is away.
                self.status.lock().unwrap().error =
                    Some(format!("cannot read policy objects: {e}"));
                return Err(format!(
                    "cannot read policy objects (the datapath keeps its verdicts): {e}"
                )
                .into());
            }
        };
        if self.dp.in_sync() && self.revision == Some(snap.revision) {
            // Nothing changed; an error left by a failed read is over.
            self.status.lock().unwrap().error = None;
            return Ok(None);
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
        // A pod's IPv6 address outside this node's IPv6 range (or on a node without
        // one) is no address of this node's: it is not programmed (and stays closed).
        let cidr6 = self.cidr6;
        for t in tables.values_mut() {
            if !t.ip6.is_some_and(|a| cidr6.is_some_and(|n| n.contains(a))) {
                t.ip6 = None;
            }
        }
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
        Ok(Some(Compiled {
            tables,
            objs,
            snap,
            read_ms,
            compile_ms,
        }))
    }

    /// Logs each pod whose tables changed, and each pod gone.
    fn log_changes(&self, tables: &BTreeMap<String, PodTables>, log: &dyn Fn(&str)) {
        for (k, t) in tables {
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
    }

    /// The status after a round that programmed `changed` elements.
    fn publish(&self, snap: Snapshot, t0: Instant, read_ms: f64, compile_ms: f64, changed: usize) {
        let mut st = self.status.lock().unwrap();
        let status = PolicyStatus {
            datapath: self.dp.kind(),
            revision: snap.revision,
            pods: self
                .tables
                .iter()
                .map(|(k, t)| PodPolicyStatus {
                    pod: k.clone(),
                    ip: t.ip.to_string(),
                    ip6: t.ip6.map(|a| a.to_string()),
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
            bpf_dir: self.dp.bpf_dir(),
            pod_cidr6: self.cidr6,
        };
        *st = PolicyState {
            status,
            tables: self.tables.clone(),
            versions: Arc::new(snap.versions),
        };
    }
}
