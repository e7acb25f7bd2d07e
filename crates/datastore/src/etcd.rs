//! The etcd v3 backend, spoken through etcd's JSON gateway (`/v3/kv/*`,
//! `/v3/lease/*`) over plain HTTP/1.1, so it needs neither gRPC nor TLS libraries.
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
//! Every registration grants a fresh lease of the node's TTL and moves the keys onto
//! it; the previous lease simply expires. Changes are noticed by polling the
//! revisions of the node and object keys five times a second.

use crate::{
    check_key, choose_cidr, now, Datastore, Error, NodeRecord, ObjectKey, Registration, Result,
    StoredObject,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const PREFIX: &str = "/podnet/";

pub struct EtcdStore {
    endpoints: Vec<String>,
    /// Node records left out of the last `nodes()` because they cannot be read.
    damaged: std::sync::Mutex<Vec<String>>,
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|&b| b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for c in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &b) in c.iter().enumerate() {
            n |= val(b)? << (18 - 6 * i);
        }
        for i in 0..c.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// The key range end that covers every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut e = prefix.as_bytes().to_vec();
    *e.last_mut().expect("non-empty prefix") += 1;
    e
}

impl EtcdStore {
    /// `hosts` is `host:port[,host:port…]`.
    pub fn open(hosts: &str) -> Result<EtcdStore> {
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty() {
            return Err(Error::Url(format!("etcd://{hosts}")));
        }
        Ok(EtcdStore {
            endpoints,
            damaged: Default::default(),
        })
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: format!("etcd://{}", self.endpoints.join(",")),
            source,
        }
    }

    /// One JSON call to the gateway, trying each endpoint in turn.
    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let payload = body.to_string();
        let mut last = None;
        for ep in &self.endpoints {
            match post(ep, path, &payload) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(self.io(
            "call",
            last.unwrap_or_else(|| std::io::Error::other("no endpoint")),
        ))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self.call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))?;
        Ok(r["kvs"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|kv| unb64(kv["value"].as_str().unwrap_or(""))))
    }

    /// `(key, value, mod_revision)` of every key under `prefix`.
    /// `(key, value, mod_revision)` under `prefix`; `keys_only` leaves values empty
    /// (what change polling needs, without downloading every record).
    fn list(&self, prefix: &str, keys_only: bool) -> Result<Vec<(String, Vec<u8>, String)>> {
        let r = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)), "keys_only": keys_only}),
        )?;
        Ok(r["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|kv| {
                        let k = String::from_utf8(unb64(kv["key"].as_str()?)?).ok()?;
                        let v = unb64(kv["value"].as_str().unwrap_or("")).unwrap_or_default();
                        Some((k, v, kv["mod_revision"].as_str().unwrap_or("").to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn object_key((kind, ns, name): &ObjectKey) -> String {
        format!("{PREFIX}objects/{kind}/{ns}/{name}")
    }

    /// Runs `ops` as transactions of at most 100 operations (etcd's default limit is
    /// 128); returns the store revision after the last.
    fn txns(&self, ops: Vec<Value>) -> Result<u64> {
        let mut rev = 0;
        for chunk in ops.chunks(100) {
            let r = self.call("/v3/kv/txn", &json!({ "success": chunk }))?;
            rev = revision(&r);
        }
        if ops.is_empty() {
            rev = revision(&self.call("/v3/kv/range", &json!({"key": b64(PREFIX.as_bytes())}))?);
        }
        Ok(rev)
    }

    fn put_op(key: &str, value: &[u8], lease: Option<&str>) -> Value {
        let mut p = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(l) = lease {
            p["lease"] = json!(l);
        }
        json!({"request_put": p})
    }
}

/// The store revision an answer was given at.
fn revision(answer: &Value) -> u64 {
    answer["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn post(endpoint: &str, path: &str, body: &str) -> std::io::Result<Value> {
    let addr = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let sock = addr.parse::<std::net::SocketAddr>().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr}: {e} (give etcd endpoints as ip:port)"),
        )
    })?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP response from etcd"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    if status != "200" {
        return Err(std::io::Error::other(format!(
            "etcd answered {status} on {path}: {}",
            body.trim()
        )));
    }
    serde_json::from_str(&body)
        .map_err(|e| std::io::Error::other(format!("etcd answer on {path} is not JSON: {e}")))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl Datastore for EtcdStore {
    fn register(&self, r: &Registration) -> Result<NodeRecord> {
        let previous = self
            .get(&format!("{PREFIX}reservations/{}", r.name))?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok());
        for _ in 0..8 {
            let taken: Vec<_> = self
                .list(&format!("{PREFIX}subnets/"), false)?
                .into_iter()
                .filter(|(_, holder, _)| holder.as_slice() != r.name.as_bytes())
                .filter_map(|(k, _, _)| {
                    k.strip_prefix(&format!("{PREFIX}subnets/"))?
                        .replace('_', "/")
                        .parse()
                        .ok()
                })
                .collect();
            let cidr = choose_cidr(r, previous, &taken)?;
            let lease = self.call("/v3/lease/grant", &json!({"TTL": r.ttl.as_secs().max(1)}))?;
            let id = lease["ID"].as_str().map(String::from).ok_or_else(|| {
                self.io(
                    "grant lease",
                    std::io::Error::other(format!("unexpected answer {lease}")),
                )
            })?;
            let rec = r.record(cidr, now());
            let subnet_key = format!("{PREFIX}subnets/{}", cidr.to_string().replace('/', "_"));
            let k = b64(subnet_key.as_bytes());
            // The CIDR is ours if its key is absent or already holds our name.
            let txn = json!({
                "compare": [{"key": k, "result": "EQUAL", "target": "VALUE", "value": b64(r.name.as_bytes())}],
                "success": [
                    EtcdStore::put_op(&subnet_key, r.name.as_bytes(), Some(&id)),
                    EtcdStore::put_op(&format!("{PREFIX}nodes/{}", r.name), &serde_json::to_vec(&rec).expect("serializes"), Some(&id)),
                    EtcdStore::put_op(&format!("{PREFIX}reservations/{}", r.name), cidr.to_string().as_bytes(), None),
                ],
            });
            if self.call("/v3/kv/txn", &txn)?["succeeded"].as_bool() == Some(true) {
                return Ok(rec);
            }
            let fresh = json!({
                "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": txn["success"].clone(),
            });
            if self.call("/v3/kv/txn", &fresh)?["succeeded"].as_bool() == Some(true) {
                return Ok(rec);
            }
            // Another node took that CIDR between our read and our write: choose again.
        }
        Err(Error::Invalid {
            node: r.name.clone(),
            why: "could not claim a CIDR after 8 tries; too many nodes registering at once".into(),
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        // A damaged record is left out (and reported by `problems`): it must not stop
        // the other peers from being programmed.
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for (k, v, _) in self.list(&format!("{PREFIX}nodes/"), false)? {
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
        let rec = self.get(&format!("{PREFIX}nodes/{name}"))?;
        let Some(rec) = rec.and_then(|v| serde_json::from_slice::<NodeRecord>(&v).ok()) else {
            return Ok(false);
        };
        let del = |key: String| json!({"request_delete_range": {"key": b64(key.as_bytes())}});
        let subnet_key = format!(
            "{PREFIX}subnets/{}",
            rec.pod_cidr.to_string().replace('/', "_")
        );
        // The CIDR is freed only if it is still this node's: after an expiry another
        // node may have claimed it, and its claim must stand.
        let txn = json!({
            "compare": [{"key": b64(subnet_key.as_bytes()), "result": "EQUAL", "target": "VALUE", "value": b64(name.as_bytes())}],
            "success": [del(format!("{PREFIX}nodes/{name}")), del(subnet_key), del(format!("{PREFIX}reservations/{name}"))],
            "failure": [del(format!("{PREFIX}nodes/{name}")), del(format!("{PREFIX}reservations/{name}"))],
        });
        self.call("/v3/kv/txn", &txn)?;
        Ok(true)
    }

    fn put_objects(&self, objs: &[StoredObject]) -> Result<u64> {
        for o in objs {
            check_key(&o.key())?;
        }
        self.txns(
            objs.iter()
                .map(|o| {
                    EtcdStore::put_op(
                        &EtcdStore::object_key(&o.key()),
                        &serde_json::to_vec(o).expect("object serializes"),
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
            keys.iter()
                .map(|k| json!({"request_delete_range": {"key": b64(EtcdStore::object_key(k).as_bytes())}}))
                .collect(),
        )
    }

    fn objects(&self) -> Result<(u64, Vec<StoredObject>)> {
        let prefix = format!("{PREFIX}objects/");
        let r = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(&prefix))}),
        )?;
        let mut out = Vec::new();
        for kv in r["kvs"].as_array().into_iter().flatten() {
            let key = kv["key"].as_str().and_then(unb64).unwrap_or_default();
            let value = kv["value"].as_str().and_then(unb64).unwrap_or_default();
            let key = String::from_utf8_lossy(&key).into_owned();
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
                        value: Value::Null,
                        version: None,
                    });
                }
            }
        }
        out.sort_by_key(StoredObject::key);
        Ok((revision(&r), out))
    }

    fn wait_change(&self, timeout: Duration) -> Result<()> {
        let fingerprint = || -> Result<Vec<(String, String)>> {
            let mut keys = self.list(&format!("{PREFIX}nodes/"), true)?;
            keys.extend(self.list(&format!("{PREFIX}objects/"), true)?);
            Ok(keys.into_iter().map(|(k, _, rev)| (k, rev)).collect())
        };
        let start = fingerprint()?;
        let t = Instant::now();
        while t.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(200).min(timeout));
            if fingerprint()? != start {
                return Ok(());
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "/podnet/nodes/node1",
        ] {
            assert_eq!(unb64(&b64(s.as_bytes())).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }
}
