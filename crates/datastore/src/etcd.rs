//! The etcd v3 backend, through the `etcd-client` crate (gRPC): leases kept alive,
//! changes by watch, authentication with `etcd://user:password@host:port`, TLS with
//! `etcds://host:port?ca=FILE[&cert=FILE&key=FILE]` (a client certificate if given).
//!
//! Keys (under `/podnet/`):
//! - `nodes/<name>`: the node's record (JSON), attached to the node's lease;
//! - `subnets/<cidr>`: the node holding that CIDR, attached to the same lease — taken in
//!   a transaction that succeeds only if the key is absent or already the node's, so
//!   two nodes never hold one CIDR;
//! - `reservations/<name>`: the node's last CIDR, without a lease, so a node that comes
//!   back after its lease expired gets the same CIDR if nobody took it meanwhile;
//! - `objects/<Kind>/<namespace>/<name>`: policy objects, without a lease; their
//!   revision is etcd's own store revision.
//!
//! The first registration grants a lease of the node's TTL and claims the keys on it;
//! later ones keep that lease alive (one keep-alive round trip) as long as it lives and
//! the registration is unchanged, else claim again on a fresh lease. A watch on
//! `/podnet/` wakes [`Datastore::wait_change`]; it is re-established after errors.
//!
//! tokio runs here, on a runtime of one worker the store owns; callers stay
//! synchronous.

use crate::{
    check_key, choose_cidr, now, Datastore, Error, NodeRecord, ObjectKey, Registration, Result,
    StoredObject,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "/podnet/";

type KeyValues = Vec<(String, Vec<u8>)>;

/// Changes seen by the store's watch.
#[derive(Default)]
struct Changes {
    generation: u64,
}

pub struct EtcdStore {
    endpoints: Vec<String>,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Node records left out of the last `nodes()` because they cannot be read.
    damaged: Mutex<Vec<String>>,
    changes: Arc<(Mutex<Changes>, Condvar)>,
    /// The generation this handle last read at (`None`: never read).
    seen: Mutex<Option<u64>>,
    /// The lease of the last registration, with what it registered.
    lease: Mutex<Option<(i64, Registration, NodeRecord)>>,
    tls: bool,
}

fn unavailable(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        op: format!("etcd: {op}"),
        why: e.to_string(),
    }
}

impl EtcdStore {
    /// `hosts` is `[user:password@]host:port[,host:port…]`. Connects lazily: an etcd
    /// that is down makes calls fail (and retry), not the opening.
    pub fn open(hosts: &str) -> Result<EtcdStore> {
        EtcdStore::connect(hosts, None)
    }

    /// `hosts` as for [`EtcdStore::open`], then `?ca=FILE[&cert=FILE&key=FILE]`: TLS,
    /// the server checked against the CA, a client certificate if given.
    pub fn open_tls(hosts: &str) -> Result<EtcdStore> {
        let (hosts, query) = hosts.split_once('?').ok_or_else(|| {
            Error::Url(format!(
                "etcds://{hosts}: give the CA that signed etcd's certificate: etcds://host:port?ca=/path/ca.crt"
            ))
        })?;
        let mut files = std::collections::BTreeMap::new();
        for kv in query.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if !matches!(k, "ca" | "cert" | "key") || v.is_empty() {
                return Err(Error::Url(format!(
                    "etcds://…?{query}: {kv:?} is not understood: use ca=FILE, cert=FILE, key=FILE"
                )));
            }
            let pem = std::fs::read(v).map_err(|source| Error::Io {
                op: "read the TLS file",
                path: v.to_string(),
                source,
            })?;
            files.insert(k, pem);
        }
        let ca = files
            .remove("ca")
            .ok_or_else(|| Error::Url(format!("etcds://{hosts}?{query}: ca=FILE is required")))?;
        let mut tls =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
        match (files.remove("cert"), files.remove("key")) {
            (Some(c), Some(k)) => tls = tls.identity(etcd_client::Identity::from_pem(c, k)),
            (None, None) => {}
            _ => {
                return Err(Error::Url(format!(
                    "etcds://{hosts}?{query}: give cert=FILE and key=FILE together"
                )))
            }
        }
        EtcdStore::connect(hosts, Some(tls))
    }

    fn connect(hosts: &str, tls: Option<etcd_client::TlsOptions>) -> Result<EtcdStore> {
        let (auth, hosts) = match hosts.rsplit_once('@') {
            Some((a, h)) => (
                Some(a.split_once(':').ok_or_else(|| {
                    Error::Url(format!("etcd://{a}@…: give user:password before the @"))
                })?),
                h,
            ),
            None => (None, hosts),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty() {
            return Err(Error::Url(format!("etcd://{hosts}")));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable("start the client's runtime", e))?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some((user, password)) = auth {
            opts = opts.with_user(user, password);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let Some(t) = tls {
            opts = opts.with_tls(t);
        }
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        let client = rt
            .block_on(Client::connect(&urls, Some(opts)))
            .map_err(|e| unavailable(&format!("connect to {}", endpoints.join(",")), e))?;
        let changes: Arc<(Mutex<Changes>, Condvar)> = Arc::default();
        rt.spawn(watch(client.clone(), Arc::downgrade(&changes)));
        Ok(EtcdStore {
            endpoints,
            rt,
            client,
            damaged: Mutex::default(),
            changes,
            seen: Mutex::new(None),
            lease: Mutex::new(None),
            tls: scheme == "https",
        })
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// Notes the current generation before a read: a change after it wakes
    /// `wait_change`.
    fn mark_read(&self) {
        *self.seen.lock().unwrap() = Some(self.changes.0.lock().unwrap().generation);
    }

    /// The store revision, and every `(key, value)` under `prefix`.
    fn get_prefix(&self, prefix: &str) -> Result<(u64, KeyValues)> {
        let mut c = self.client();
        let r = self
            .rt
            .block_on(c.get(prefix, Some(GetOptions::new().with_prefix())))
            .map_err(|e| unavailable(&format!("read {prefix}"), e))?;
        let rev = r.header().map_or(0, |h| h.revision() as u64);
        Ok((
            rev,
            r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect(),
        ))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut c = self.client();
        let r = self
            .rt
            .block_on(c.get(key, None))
            .map_err(|e| unavailable(&format!("read {key}"), e))?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn object_key((kind, ns, name): &ObjectKey) -> String {
        format!("{PREFIX}objects/{kind}/{ns}/{name}")
    }

    /// Runs `ops` as transactions of at most 100 operations (etcd's default limit is
    /// 128); returns the store revision after the last.
    fn txns(&self, what: &str, ops: Vec<TxnOp>) -> Result<u64> {
        let mut rev = 0;
        let mut c = self.client();
        for chunk in ops.chunks(100) {
            let r = self
                .rt
                .block_on(c.txn(Txn::new().and_then(chunk.to_vec())))
                .map_err(|e| unavailable(what, e))?;
            rev = r.header().map_or(0, |h| h.revision() as u64);
        }
        if ops.is_empty() {
            rev = self.get_prefix(&format!("{PREFIX}objects/"))?.0;
        }
        Ok(rev)
    }

    /// One keep-alive round trip for `id`: true if the lease still lives.
    fn keep_alive(&self, id: i64) -> Result<bool> {
        let mut c = self.client();
        self.rt.block_on(async {
            let (mut keeper, mut stream) = c
                .lease_keep_alive(id)
                .await
                .map_err(|e| unavailable("keep the lease alive", e))?;
            keeper
                .keep_alive()
                .await
                .map_err(|e| unavailable("keep the lease alive", e))?;
            let r = stream
                .message()
                .await
                .map_err(|e| unavailable("keep the lease alive", e))?;
            Ok(r.is_some_and(|r| r.ttl() > 0))
        })
    }

    /// Claims a CIDR and publishes the record on a fresh lease.
    fn claim(&self, r: &Registration) -> Result<(i64, NodeRecord)> {
        let previous = self
            .get(&format!("{PREFIX}reservations/{}", r.name))?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok());
        let mut c = self.client();
        for _ in 0..8 {
            let taken: Vec<_> = self
                .get_prefix(&format!("{PREFIX}subnets/"))?
                .1
                .into_iter()
                .filter(|(_, holder)| holder.as_slice() != r.name.as_bytes())
                .filter_map(|(k, _)| {
                    k.strip_prefix(&format!("{PREFIX}subnets/"))?
                        .replace('_', "/")
                        .parse()
                        .ok()
                })
                .collect();
            let cidr = choose_cidr(r, previous, &taken)?;
            let id = self
                .rt
                .block_on(c.lease_grant(r.ttl.as_secs().max(1) as i64, None))
                .map_err(|e| unavailable("grant a lease", e))?
                .id();
            let rec = r.record(cidr, r.cidr6_for(cidr)?, now());
            let subnet_key = format!("{PREFIX}subnets/{}", cidr.to_string().replace('/', "_"));
            let on_lease = || Some(PutOptions::new().with_lease(id));
            let ops = vec![
                TxnOp::put(subnet_key.clone(), r.name.clone(), on_lease()),
                TxnOp::put(
                    format!("{PREFIX}nodes/{}", r.name),
                    serde_json::to_vec(&rec).expect("serializes"),
                    on_lease(),
                ),
                TxnOp::put(
                    format!("{PREFIX}reservations/{}", r.name),
                    cidr.to_string(),
                    None,
                ),
            ];
            // The CIDR is ours if its key already holds our name, or is absent.
            for cmp in [
                Compare::value(subnet_key.clone(), CompareOp::Equal, r.name.clone()),
                Compare::create_revision(subnet_key.clone(), CompareOp::Equal, 0),
            ] {
                let t = Txn::new().when([cmp]).and_then(ops.clone());
                let done = self
                    .rt
                    .block_on(c.txn(t))
                    .map_err(|e| unavailable(&format!("claim {cidr}"), e))?;
                if done.succeeded() {
                    return Ok((id, rec));
                }
            }
            // Another node took that CIDR between our read and our write: choose again,
            // on a fresh lease (this one holds nothing; give it back now).
            let _ = self.rt.block_on(c.lease_revoke(id));
        }
        Err(Error::Invalid {
            node: r.name.clone(),
            why: "could not claim a CIDR after 8 tries; too many nodes registering at once".into(),
        })
    }
}

/// Follows every change under `/podnet/`, re-watching after errors; each change (and
/// each reconnection, which may have missed some) bumps the generation.
async fn watch(mut client: Client, changes: std::sync::Weak<(Mutex<Changes>, Condvar)>) {
    let mut backoff =
        podnet_conventions::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let bump = || {
            let Some(ch) = changes.upgrade() else {
                return false;
            };
            ch.0.lock().unwrap().generation += 1;
            ch.1.notify_all();
            true
        };
        if let Ok(mut stream) = client
            .watch(PREFIX, Some(WatchOptions::new().with_prefix()))
            .await
        {
            if !bump() {
                return;
            }
            backoff.reset();
            while let Ok(Some(_)) = stream.message().await {
                if !bump() {
                    return;
                }
            }
        }
        if changes.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

impl Datastore for EtcdStore {
    fn register(&self, r: &Registration) -> Result<NodeRecord> {
        let held = self.lease.lock().unwrap().clone();
        if let Some((id, prev, rec)) = held {
            let same = prev.name == r.name
                && prev.underlay_ip == r.underlay_ip
                && prev.underlay_ip6 == r.underlay_ip6
                && prev.underlay_family == r.underlay_family
                && prev.vtep_mac == r.vtep_mac
                && prev.backend == r.backend
                && prev.wireguard == r.wireguard
                && prev.ttl == r.ttl;
            // Alive and still holding our keys (nobody removed the node meanwhile). A
            // lease etcd no longer knows fails the keep-alive: claim again.
            if same
                && matches!(self.keep_alive(id), Ok(true))
                && self.get(&format!("{PREFIX}nodes/{}", r.name))?.is_some()
            {
                return Ok(rec);
            }
        }
        let (id, rec) = self.claim(r)?;
        let old = self
            .lease
            .lock()
            .unwrap()
            .replace((id, r.clone(), rec.clone()));
        // The keys moved to the new lease; the old one holds nothing we still want.
        if let Some((old_id, _, _)) = old.filter(|(o, _, _)| *o != id) {
            let mut c = self.client();
            let _ = self.rt.block_on(c.lease_revoke(old_id));
        }
        Ok(rec)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.mark_read();
        // A damaged record is left out (and reported by `problems`): it must not stop
        // the other peers from being programmed.
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for (k, v) in self.get_prefix(&format!("{PREFIX}nodes/"))?.1 {
            match serde_json::from_slice::<NodeRecord>(&v) {
                Ok(rec) => out.push(rec),
                Err(e) => damaged.push(
                    Error::Corrupt {
                        path: format!("etcd key {k}"),
                        why: e.to_string(),
                    }
                    .to_string(),
                ),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        *self.damaged.lock().unwrap() = damaged;
        Ok(out)
    }

    fn problems(&self) -> Vec<String> {
        self.damaged.lock().unwrap().clone()
    }

    fn remove(&self, name: &str) -> Result<bool> {
        let node_key = format!("{PREFIX}nodes/{name}");
        let reservation = format!("{PREFIX}reservations/{name}");
        let Some(raw) = self.get(&node_key)? else {
            return Ok(false);
        };
        let t = match serde_json::from_slice::<NodeRecord>(&raw) {
            // A damaged record goes too (its CIDR claim, if any, expires with its lease).
            Err(_) => Txn::new().and_then([
                TxnOp::delete(node_key, None),
                TxnOp::delete(reservation, None),
            ]),
            Ok(rec) => {
                let subnet_key = format!(
                    "{PREFIX}subnets/{}",
                    rec.pod_cidr.to_string().replace('/', "_")
                );
                // The CIDR is freed only if it is still this node's: after an expiry
                // another node may have claimed it, and its claim must stand.
                Txn::new()
                    .when([Compare::value(subnet_key.clone(), CompareOp::Equal, name)])
                    .and_then([
                        TxnOp::delete(node_key.clone(), None),
                        TxnOp::delete(subnet_key, None),
                        TxnOp::delete(reservation.clone(), None),
                    ])
                    .or_else([
                        TxnOp::delete(node_key, None),
                        TxnOp::delete(reservation, None),
                    ])
            }
        };
        let mut c = self.client();
        self.rt
            .block_on(c.txn(t))
            .map_err(|e| unavailable(&format!("remove node {name}"), e))?;
        Ok(true)
    }

    fn put_objects(&self, objs: &[StoredObject]) -> Result<u64> {
        for o in objs {
            check_key(&o.key())?;
        }
        self.txns(
            "write policy objects",
            objs.iter()
                .map(|o| {
                    TxnOp::put(
                        EtcdStore::object_key(&o.key()),
                        serde_json::to_vec(o).expect("object serializes"),
                        None,
                    )
                })
                .collect(),
        )
    }

    fn delete_objects(&self, keys: &[ObjectKey]) -> Result<u64> {
        for k in keys {
            check_key(k)?;
        }
        self.txns(
            "delete policy objects",
            keys.iter()
                .map(|k| TxnOp::delete(EtcdStore::object_key(k), None))
                .collect(),
        )
    }

    fn objects(&self) -> Result<(u64, Vec<StoredObject>)> {
        self.mark_read();
        let prefix = format!("{PREFIX}objects/");
        let (rev, kvs) = self.get_prefix(&prefix)?;
        let mut out = Vec::new();
        for (key, value) in kvs {
            match serde_json::from_slice::<StoredObject>(&value) {
                Ok(o) => out.push(o),
                // A damaged record is handed on without its object, so the reader can
                // name and skip it while the others still count.
                Err(_) => {
                    let rest = key.strip_prefix(&prefix).unwrap_or(&key);
                    let mut parts = rest.splitn(3, '/');
                    out.push(StoredObject {
                        kind: parts.next().unwrap_or_default().into(),
                        namespace: parts.next().unwrap_or_default().into(),
                        name: parts.next().unwrap_or_default().into(),
                        value: Default::default(),
                        version: None,
                    });
                }
            }
        }
        out.sort_by_key(StoredObject::key);
        Ok((rev, out))
    }

    fn wait_change(&self, timeout: Duration) -> Result<()> {
        let t = Instant::now();
        let seen = *self.seen.lock().unwrap();
        let (lock, cv) = &*self.changes;
        let mut ch = lock.lock().unwrap();
        loop {
            let left = timeout.saturating_sub(t.elapsed());
            if seen.is_none_or(|g| g != ch.generation) || left.is_zero() {
                return Ok(());
            }
            ch = cv.wait_timeout(ch, left).unwrap().0;
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "etcds" } else { "etcd" },
            self.endpoints.join(",")
        )
    }
}
