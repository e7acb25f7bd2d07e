//! `podnet lab apply` and `podnet lab delete`: Kubernetes manifests (Namespace, Pod,
//! NetworkPolicy) into a lab. The objects go to the lab's datastore, where every
//! node's agent reads them (as it would read them from the API server); pods are also
//! made on their node through podnet-cni, with a server on every declared port.
//!
//! A file is checked whole before anything is applied: one invalid object and
//! nothing from that file changes. Applying an object that exists updates it in place
//! — a live pod keeps its namespace, address and connections and only its labels,
//! annotations or ports change. Every command returns once every agent enforces the
//! result (its datapath reflects the datastore revision the command wrote).

use crate::{minimal_pod, Binaries, Lab, PodState, State};
use anyhow::{bail, Context, Result};
use podnet_conventions::PolicyDatapath;
use podnet_datastore::{ObjectKey, StoredObject};
use podnet_netlink::{netns, Netns};
use podnet_policy::objects::Pod;
use podnet_policy::validate::validate;
use podnet_policy::Object;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Reads a multi-document YAML stream into objects; every problem, with the document
/// it is in, or the objects.
pub fn parse_manifests(text: &str) -> Result<Vec<Object>> {
    use serde::Deserialize;
    let mut objs = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let v = match serde_json::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("document {n}: not valid YAML: {e}"));
                continue;
            }
        };
        if v.is_null() {
            continue;
        }
        let what = format!(
            "document {n} ({} {})",
            v.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
            v.pointer("/metadata/name")
                .and_then(|k| k.as_str())
                .unwrap_or("?")
        );
        match Object::from_json(v) {
            Ok(o) => match validate(&o) {
                Ok(()) => objs.push(o),
                Err(errs) => {
                    for e in errs {
                        errors.push(format!("{what}: {e}"));
                    }
                }
            },
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for o in &objs {
        if !seen.insert(o.key()) {
            errors.push(format!("{} appears twice", o.describe()));
        }
    }
    if !errors.is_empty() {
        bail!(
            "nothing was applied; fix these and try again:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(objs)
}

/// Reads FILE, or standard input for `-`.
pub fn read_source(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("read manifests from standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read manifests from {file}"))
    }
}

fn stored(o: &Object) -> StoredObject {
    let (kind, namespace, name) = o.key();
    StoredObject {
        kind,
        namespace,
        name,
        value: o.to_json().into(),
        version: None,
    }
}

/// What one command did to one object.
#[derive(Debug, Serialize)]
pub struct Change {
    pub object: String,
    /// `created`, `configured`, `unchanged`, `deleted`, `not found`.
    pub action: String,
    pub detail: Option<String>,
}

impl Lab {
    /// Runs `f` against the lab's datastore from inside the fabric, where the lab's
    /// etcd lives: the machine's own namespace never talks to lab addresses.
    fn with_datastore<T: Send>(
        &self,
        st: &State,
        f: impl FnOnce(&dyn podnet_datastore::Datastore) -> Result<T> + Send,
    ) -> Result<T> {
        let url = st.datastore.clone();
        let fabric = Netns::open(netns::named_path(&self.fabric_ns()))
            .with_context(|| format!("lab {} has no fabric; run `podnet lab up`", self.name))?;
        fabric.run(|| -> Result<T> {
            let ds = podnet_datastore::open(&url)?;
            f(ds.as_ref())
        })?
    }

    /// Writes objects to the lab's datastore; returns the revision.
    pub fn put_objects(&self, st: &State, objs: &[Object]) -> Result<u64> {
        if st.kubernetes {
            // The API server holds the objects; the lab's kubelet writes pod status.
            return Ok(0);
        }
        let stored: Vec<StoredObject> = objs.iter().map(stored).collect();
        self.with_datastore(st, |ds| Ok(ds.put_objects(&stored)?))
            .with_context(|| format!("write objects to the datastore {}", st.datastore))
    }

    /// Removes objects from the lab's datastore; returns the revision.
    pub fn delete_objects(&self, st: &State, keys: &[ObjectKey]) -> Result<u64> {
        if st.kubernetes {
            return Ok(0);
        }
        let keys = keys.to_vec();
        self.with_datastore(st, move |ds| Ok(ds.delete_objects(&keys)?))
            .with_context(|| format!("remove objects from the datastore {}", st.datastore))
    }

    /// The objects in the lab's datastore.
    pub fn objects(&self, st: &State) -> Result<Vec<Object>> {
        if st.kubernetes {
            let v: serde_json::Value = serde_json::from_str(&self.kubectl(
                &[
                    "get",
                    "namespaces,pods,networkpolicies",
                    "--all-namespaces",
                    "-o",
                    "json",
                ],
                None,
            )?)?;
            return Ok(v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| {
                    let t = podnet_policy::objects::from_api(o["kind"].as_str()?, o)?;
                    Object::from_json(t).ok()
                })
                .collect());
        }
        let (_, stored) = self.with_datastore(st, |ds| Ok(ds.objects()?))?;
        stored
            .into_iter()
            .map(|s| {
                let what = format!("{} {}/{}", s.kind, s.namespace, s.name);
                Object::from_json(std::sync::Arc::unwrap_or_clone(s.value))
                    .map_err(|e| anyhow::anyhow!("datastore object {what}: {e}"))
            })
            .collect()
    }

    /// Waits until every node's policy datapath reflects `revision` (default: the
    /// datastore's current one). Agents without a policy datapath are not waited for.
    pub fn wait_policy(&self, st: &State, revision: Option<u64>) -> Result<()> {
        if st.policy_datapath == PolicyDatapath::None || st.nodes.is_empty() || st.kubernetes {
            return Ok(());
        }
        let want = match revision {
            Some(r) => r,
            None => self.with_datastore(st, |ds| Ok(ds.objects()?.0))?,
        };
        let t = Instant::now();
        loop {
            let mut lagging = Vec::new();
            for n in &st.nodes {
                let v = self.agent(&n.name).policy_revision().ok();
                let rev = v.as_ref().map_or(0, |v| v.revision);
                let none = v
                    .as_ref()
                    .is_some_and(|v| v.datapath == podnet_conventions::PolicyDatapath::None);
                if !none && rev < want {
                    let err = v
                        .as_ref()
                        .and_then(|v| v.error.as_deref())
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default();
                    lagging.push(format!("{}{err}", n.name));
                }
            }
            if lagging.is_empty() {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the policy datapath on {} does not reflect datastore revision {want} after 10 s; see the agents' logs in {}",
                    lagging.join(", "),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `podnet lab apply`: namespaces, then policies, then pods.
    pub fn apply(
        &self,
        objs: &[Object],
        wait: bool,
        bins: &Binaries,
        say: &mut dyn FnMut(&str),
    ) -> Result<Vec<Change>> {
        let mut st = self.load()?.with_context(|| {
            format!(
                "no lab {}; run `podnet lab up --name {}`",
                self.name, self.name
            )
        })?;
        let existing = self.objects(&st)?;
        let mut changes = Vec::new();
        let mut plain: Vec<Object> = Vec::new();
        let mut pods: Vec<Pod> = Vec::new();
        // Pods are checked before anything is written: a pod cannot move.
        self.check_pods(&st, objs)?;
        for kind in ["Namespace", "NetworkPolicy"] {
            for o in objs.iter().filter(|o| o.kind() == kind) {
                let action = match existing.iter().find(|e| e.key() == o.key()) {
                    None => "created",
                    Some(e) if e == o => "unchanged",
                    Some(_) => "configured",
                };
                changes.push(Change {
                    object: o.describe(),
                    action: action.into(),
                    detail: None,
                });
                plain.push(o.clone());
            }
        }
        if !plain.is_empty() {
            self.put_objects(&st, &plain)?;
        }
        for o in objs {
            if let Object::Pod(p) = o {
                pods.push(p.clone());
            }
        }
        for p in pods {
            let change = self.apply_pod(&mut st, p, bins, say)?;
            changes.push(change);
        }
        self.save(&st)?;
        if wait {
            self.wait_policy(&st, None)?;
        }
        Ok(changes)
    }

    /// Fails, before anything is written, if a pod in `objs` would move to another
    /// node or asks for a node the lab does not have.
    fn check_pods(&self, st: &State, objs: &[Object]) -> Result<()> {
        for o in objs {
            if let Object::Pod(p) = o {
                let id = pod_id(p);
                if let (Some(cur), Some(want)) = (
                    st.pods.iter().find(|q| q.name == id),
                    p.spec.node_name.as_deref(),
                ) {
                    if cur.node != want {
                        bail!(
                            "nothing was applied: pod {} runs on {}; a pod cannot move to {want}: delete it first",
                            cur.key(),
                            cur.node
                        );
                    }
                }
                if let Some(n) = p.spec.node_name.as_deref() {
                    if !st.nodes.iter().any(|x| x.name == n) {
                        bail!(
                            "nothing was applied: pod {}/{} asks for node {n}, which lab {} does not have (nodes: {})",
                            p.metadata.ns(),
                            p.metadata.name,
                            self.name,
                            st.nodes.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies one pod: leaves it, changes it in place, or makes it on the node it
    /// asks for (else the least busy one).
    fn apply_pod(
        &self,
        st: &mut State,
        p: Pod,
        bins: &Binaries,
        say: &mut dyn FnMut(&str),
    ) -> Result<Change> {
        let id = pod_id(&p);
        let mut want = p.clone();
        want.status = None;
        let change = match st.pods.iter().find(|q| q.name == id).cloned() {
            Some(cur) => {
                let old = cur.object.clone().unwrap_or_else(|| minimal_pod(&id));
                let mut want_cmp = want.clone();
                want_cmp.spec.node_name = old.spec.node_name.clone();
                if want_cmp == old {
                    Change {
                        object: o_describe(&p),
                        action: "unchanged".into(),
                        detail: None,
                    }
                } else {
                    self.reconfigure_pod(st, &cur, &old, &p, want, bins)?
                }
            }
            None => {
                let node = match p.spec.node_name.clone() {
                    Some(n) => n,
                    None => least_busy(st).context("the lab has no nodes")?,
                };
                let made = self.make_pod(st, &id, &node, want, bins, say);
                self.save(st)?;
                made.with_context(|| format!("creating pod {}", o_describe(&p)))?;
                let q = st.pods.iter().find(|q| q.name == id).expect("just made");
                Change {
                    object: o_describe(&p),
                    action: "created".into(),
                    detail: Some(format!("on {} at {}", q.node, q.ip)),
                }
            }
        };
        Ok(change)
    }

    /// Changes an existing pod `cur` (stored as `old`) to `want` in place: its address
    /// cannot change; its server restarts if its ports did.
    fn reconfigure_pod(
        &self,
        st: &mut State,
        cur: &PodState,
        old: &Pod,
        p: &Pod,
        want: Pod,
        bins: &Binaries,
    ) -> Result<Change> {
        let id = pod_id(p);
        let asked = want
            .metadata
            .annotations
            .get(podnet_policy::objects::IP_ANNOTATION);
        if let Some(a) = asked {
            let same = podnet_policy::objects::requested_ips(a)
                .is_ok_and(|(v4, v6)| v4 == cur.ip && v6.is_none_or(|v6| Some(v6) == cur.ip6));
            if !same {
                bail!(
                    "pod {} has address {}{}; it cannot change to {a}: delete the pod first",
                    cur.key(),
                    cur.ip,
                    cur.ip6.map(|a| format!(",{a}")).unwrap_or_default(),
                );
            }
        }
        let ports_changed = old.spec.containers != want.spec.containers;
        let q = st
            .pods
            .iter_mut()
            .find(|q| q.name == id)
            .expect("found above");
        q.object = Some(want.clone());
        let q = q.clone();
        self.save(st)?;
        self.put_objects(st, &[Object::Pod(q.stored_object())])?;
        if ports_changed {
            self.restart_server(&q, bins)?;
        }
        Ok(Change {
            object: o_describe(p),
            action: "configured".into(),
            detail: Some(format!("on {} at {}", q.node, q.ip)),
        })
    }

    /// `podnet lab delete`: removes the objects; a pod is deleted through podnet-cni, a
    /// namespace takes its pods and policies with it.
    pub fn delete(&self, objs: &[Object], bins: &Binaries) -> Result<Vec<Change>> {
        let mut st = self
            .load()?
            .with_context(|| format!("no lab {}", self.name))?;
        let existing = self.objects(&st)?;
        let mut changes = Vec::new();
        let mut keys: Vec<ObjectKey> = Vec::new();
        let mut pods: Vec<String> = Vec::new();
        for o in objs {
            let found = existing.iter().any(|e| e.key() == o.key());
            match o {
                Object::Pod(p) => {
                    let id = pod_id(p);
                    if st.pods.iter().any(|q| q.name == id) {
                        pods.push(id);
                    }
                }
                Object::Namespace(n) => {
                    // Its pods and policies go with it, as in Kubernetes.
                    let ns = &n.metadata.name;
                    pods.extend(
                        st.pods
                            .iter()
                            .filter(|q| &q.namespace == ns)
                            .map(|q| q.name.clone()),
                    );
                    keys.extend(
                        existing
                            .iter()
                            .filter(|e| matches!(e, Object::NetworkPolicy(_)) && e.key().1 == *ns)
                            .map(|e| e.key()),
                    );
                }
                Object::NetworkPolicy(_) => {}
            }
            keys.push(o.key());
            changes.push(Change {
                object: o.describe(),
                action: if found { "deleted" } else { "not found" }.into(),
                detail: None,
            });
        }
        // Policies first, then pods (closed as their objects go), then namespaces.
        keys.sort_by_key(|k| match k.0.as_str() {
            "NetworkPolicy" => 0,
            "Pod" => 1,
            _ => 2,
        });
        pods.sort();
        pods.dedup();
        for id in pods {
            let r = self.del_pod(&mut st, &id, bins);
            self.save(&st)?;
            r?;
        }
        self.delete_objects(&st, &keys)?;
        self.wait_policy(&st, None)?;
        Ok(changes)
    }
}

/// The lab's own name for a pod: its name in `default`, `<ns>.<name>` elsewhere.
pub fn pod_id(p: &Pod) -> String {
    match p.metadata.ns() {
        "default" => p.metadata.name.clone(),
        ns => format!("{ns}.{}", p.metadata.name),
    }
}

fn o_describe(p: &Pod) -> String {
    format!("Pod {}/{}", p.metadata.ns(), p.metadata.name)
}

/// The node with the fewest pods (the first on a tie).
fn least_busy(st: &State) -> Option<String> {
    st.nodes
        .iter()
        .min_by_key(|n| st.pods.iter().filter(|p| p.node == n.name).count())
        .map(|n| n.name.clone())
}
