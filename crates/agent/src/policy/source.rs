//! Where Namespaces, Pods and NetworkPolicies come from ([`PolicySource`]), read as
//! one snapshot per round; which of them changed since the last compile.

use crate::Failure;
use podnet_datastore::Datastore;
use podnet_policy::Object;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
    fn snapshot(&self) -> Result<Snapshot, Failure>;
}

/// Policy objects kept in the node datastore (`podnet lab apply` writes them there).
pub struct DatastoreSource {
    ds: Arc<dyn Datastore>,
    /// Objects already read and checked, by their stored form: only what changed is
    /// parsed and validated again.
    seen: Mutex<BTreeMap<podnet_datastore::ObjectKey, Checked>>,
}

/// A stored object's JSON and what reading it gave.
type Checked = (Arc<serde_json::Value>, Result<Arc<Object>, Invalid>);

impl DatastoreSource {
    pub fn new(ds: Arc<dyn Datastore>) -> DatastoreSource {
        DatastoreSource {
            ds,
            seen: Mutex::new(BTreeMap::new()),
        }
    }
}

impl PolicySource for DatastoreSource {
    fn snapshot(&self) -> Result<Snapshot, Failure> {
        let (revision, stored) = self.ds.objects().map_err(Failure::from)?;
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
                Err(e) => rejected.push(e.to_string()),
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

/// Why a stored object was left out: it names the object and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(why: String) -> Invalid {
        Invalid(why)
    }
}

/// Reads and validates one stored object; the error names it.
fn check(s: &podnet_datastore::StoredObject) -> Result<Object, Invalid> {
    let what = format!("{} {}/{}", s.kind, s.namespace, s.name);
    match Object::from_json((*s.value).clone()) {
        Ok(o) => match podnet_policy::validate::validate(&o) {
            Ok(()) if o.key() == s.key() => Ok(o),
            Ok(()) => Err(format!(
                "{what}: its key does not match the object it holds ({})",
                o.describe()
            )
            .into()),
            Err(errs) => Err(format!(
                "{what}: {}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
            .into()),
        },
        Err(e) => Err(format!("{what}: {e}").into()),
    }
}

/// `(kind, namespace, name)` of a policy object.
pub type ObjKey = (String, String, String);

/// The NetworkPolicies that differ between two sets of objects — each as it was and
/// as it is — or `None` when anything else (a pod, a namespace) differs too.
pub(super) fn policies_changed<'a>(
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
