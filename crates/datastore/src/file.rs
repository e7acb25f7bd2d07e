//! The file backend: one directory, shared by every node that can see it (all nodes
//! of a lab on one machine). `nodes/<name>.json` holds each node's record, replaced
//! by rename; `lock` serializes registrations so two nodes never lease one CIDR.
//! Policy objects live in `objects/<Kind>_<namespace>_<name>.json` (no part holds
//! '_'), also replaced by rename, and `objects/.revision` counts the writes: a writer
//! bumps it after its objects are in place, a reader reads it before listing.
//! Changes are noticed through inotify on `nodes/` and `objects/`.

use crate::{
    check_key, choose_cidr, now, Datastore, Error, NodeRecord, ObjectKey, Registration, Result,
    StoredObject,
};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub struct FileStore {
    dir: PathBuf,
    watch: Mutex<Option<OwnedFd>>,
    /// Objects already read, by file name, with the modification time and size they
    /// were read at: a snapshot re-reads only the files that changed.
    cache: Mutex<std::collections::HashMap<String, (std::time::SystemTime, u64, StoredObject)>>,
    /// Node records left out of the last `nodes()` because they cannot be read.
    damaged: Mutex<Vec<String>>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { op, path, source }
}

impl FileStore {
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        for sub in ["nodes", "objects"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io("create", &d))?;
        }
        Ok(FileStore {
            dir,
            watch: Mutex::new(None),
            cache: Mutex::new(Default::default()),
            damaged: Mutex::new(Vec::new()),
        })
    }

    fn node_path(&self, name: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{name}.json"))
    }

    fn lock(&self) -> Result<fs::File> {
        let p = self.dir.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io("open", &p))?;
        // SAFETY: flock on an fd we own; released when the file is dropped.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io("lock", &p)(std::io::Error::last_os_error()));
        }
        Ok(f)
    }

    /// Every record, live or not.
    fn all(&self) -> Result<Vec<NodeRecord>> {
        let mut out = Vec::new();
        for (_, rec) in read_json_dir::<NodeRecord>(&self.dir.join("nodes"))? {
            out.push(rec?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn object_path(&self, (kind, ns, name): &ObjectKey) -> PathBuf {
        self.dir
            .join("objects")
            .join(format!("{kind}_{ns}_{name}.json"))
    }

    fn revision(&self) -> Result<u64> {
        let p = self.dir.join("objects").join(".revision");
        match fs::read_to_string(&p) {
            Ok(s) => s.trim().parse().map_err(|_| Error::Corrupt {
                path: p.display().to_string(),
                why: format!("{s:?} is not a number"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io("read", &p)(e)),
        }
    }

    /// Bumps the revision (the caller holds the lock).
    fn bump(&self) -> Result<u64> {
        let r = self.revision()? + 1;
        let d = self.dir.join("objects");
        let tmp = d.join(".revision.tmp");
        fs::write(&tmp, r.to_string()).map_err(io("write", &tmp))?;
        let p = d.join(".revision");
        fs::rename(&tmp, &p).map_err(io("replace", &p))?;
        Ok(r)
    }

    fn write(&self, rec: &NodeRecord) -> Result<()> {
        let p = self.node_path(&rec.name);
        let tmp = self.dir.join("nodes").join(format!(".{}.tmp", rec.name));
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(rec).expect("record serializes"),
        )
        .map_err(io("write", &tmp))?;
        fs::rename(&tmp, &p).map_err(io("replace", &p))
    }
}

/// Every `*.json` file of `dir` (not the hidden ones), read: `(file name, record or
/// why it could not be read)`. A file that vanished meanwhile is left out.
fn read_json_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<(String, Result<T>)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let p = e.path();
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read", &p)(e)),
        };
        let rec = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: p.display().to_string(),
            why: e.to_string(),
        });
        out.push((name, rec));
    }
    Ok(out)
}

impl Datastore for FileStore {
    fn register(&self, r: &Registration) -> Result<NodeRecord> {
        if r.name.is_empty() || r.name.contains('/') || r.name.starts_with('.') {
            return Err(Error::Invalid {
                node: r.name.clone(),
                why: "a node name is non-empty, without '/', not starting with '.'".into(),
            });
        }
        let _lock = self.lock()?;
        let t = now();
        let all = self.all()?;
        let previous = all.iter().find(|n| n.name == r.name).map(|n| n.pod_cidr);
        let taken: Vec<_> = all
            .iter()
            .filter(|n| n.name != r.name && n.is_live(t))
            .map(|n| n.pod_cidr)
            .collect();
        let cidr = choose_cidr(r, previous, &taken)?;
        let rec = r.record(cidr, r.cidr6_for(cidr)?, t);
        self.write(&rec)?;
        Ok(rec)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        // A damaged record is left out (and reported by `problems`): it must not stop
        // the other peers from being programmed.
        let t = now();
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for (_, rec) in read_json_dir::<NodeRecord>(&self.dir.join("nodes"))? {
            match rec {
                Ok(r) if r.is_live(t) => out.push(r),
                Ok(_) => {}
                Err(e) => damaged.push(e.to_string()),
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
        let _lock = self.lock()?;
        let p = self.node_path(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &p)(e)),
        }
    }

    fn put_objects(&self, objs: &[StoredObject]) -> Result<u64> {
        for o in objs {
            check_key(&o.key())?;
        }
        let _lock = self.lock()?;
        for o in objs {
            let p = self.object_path(&o.key());
            let tmp = self
                .dir
                .join("objects")
                .join(format!(".{}.tmp", p.file_name().unwrap().to_string_lossy()));
            fs::write(&tmp, serde_json::to_vec(o).expect("object serializes"))
                .map_err(io("write", &tmp))?;
            fs::rename(&tmp, &p).map_err(io("replace", &p))?;
        }
        self.bump()
    }

    fn delete_objects(&self, keys: &[ObjectKey]) -> Result<u64> {
        for k in keys {
            check_key(k)?;
        }
        let _lock = self.lock()?;
        for k in keys {
            let p = self.object_path(k);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &p)(e)),
            }
        }
        self.bump()
    }

    fn objects(&self) -> Result<(u64, Vec<StoredObject>)> {
        let rev = self.revision()?;
        let d = self.dir.join("objects");
        let mut cache = self.cache.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(io("list", &d))?.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') || !file.ends_with(".json") {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
            seen.insert(file.clone());
            if let Some((t, n, o)) = cache.get(&file) {
                if (*t, *n) == stamp {
                    out.push(o.clone());
                    continue;
                }
            }
            let p = e.path();
            let bytes = match fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &p)(e)),
            };
            let o = serde_json::from_slice::<StoredObject>(&bytes).unwrap_or_else(|_| {
                // A damaged record is handed on without its object, so the reader can
                // name and skip it while the others still count.
                let stem = file.trim_end_matches(".json");
                let mut parts = stem.splitn(3, '_');
                StoredObject {
                    kind: parts.next().unwrap_or_default().into(),
                    namespace: parts.next().unwrap_or_default().into(),
                    name: parts.next().unwrap_or_default().into(),
                    value: Default::default(),
                    version: None,
                }
            });
            cache.insert(file, (stamp.0, stamp.1, o.clone()));
            out.push(o);
        }
        cache.retain(|f, _| seen.contains(f));
        out.sort_by_key(StoredObject::key);
        Ok((rev, out))
    }

    fn wait_change(&self, timeout: Duration) -> Result<()> {
        let mut guard = self.watch.lock().unwrap();
        if guard.is_none() {
            let d = self.dir.join("nodes");
            // SAFETY: inotify_init1 returns a new fd we own.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            if fd < 0 {
                return Err(io("watch", &d)(std::io::Error::last_os_error()));
            }
            // SAFETY: fd was just created.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mask = libc::IN_CREATE
                | libc::IN_DELETE
                | libc::IN_MODIFY
                | libc::IN_MOVED_TO
                | libc::IN_MOVED_FROM;
            for sub in ["nodes", "objects"] {
                let d = self.dir.join(sub);
                let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes())
                    .expect("no NUL in path");
                // SAFETY: adding a watch on a valid path.
                if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
                    return Err(io("watch", &d)(std::io::Error::last_os_error()));
                }
            }
            *guard = Some(fd);
        }
        let fd = guard.as_ref().unwrap().as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid fd.
        unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        let mut buf = [0u8; 4096];
        // SAFETY: draining pending events into a local buffer (non-blocking).
        while unsafe { libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len()) } > 0 {}
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn reg(name: &str, ip: u8, ttl: u64) -> Registration {
        Registration {
            name: name.into(),
            underlay_ip: Ipv4Addr::new(192, 168, 1, ip),
            underlay_ip6: None,
            underlay_family: Default::default(),
            vtep_mac: format!("0a:59:c0:a8:01:{ip:02x}"),
            backend: "vxlan".into(),
            wireguard: None,
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            node_prefix: 24,
            cluster_cidr6: None,
            ttl: Duration::from_secs(ttl),
        }
    }

    /// `wait_change` returns on the change `change` makes 50 ms later: not at once,
    /// and not much after it (nor does it hang without one).
    fn wakes_on(s: &FileStore, change: impl FnOnce() + Send) {
        s.wait_change(Duration::from_millis(10)).unwrap();
        let waited = std::thread::scope(|sc| {
            let t = std::time::Instant::now();
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                change();
            });
            s.wait_change(Duration::from_secs(5)).unwrap();
            t.elapsed()
        });
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
    }

    /// On a dual-stack cluster each record carries the IPv6 twin of its IPv4 lease,
    /// written and read back with it; IPv4-only records have none (and their file
    /// no such key, so older agents read them unchanged).
    #[test]
    fn dual_stack_leases_carry_their_ipv6_pod_cidr() {
        let d = std::env::temp_dir().join(format!("podnet-ds-dual-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let s = FileStore::open(&d).unwrap();
        let dual = |name: &str, ip: u8| {
            let mut r = reg(name, ip, 60);
            r.cluster_cidr6 = Some(("fd00:10:244::/56".parse().unwrap(), 64));
            r
        };
        let a = s.register(&dual("a", 10)).unwrap();
        let b = s.register(&dual("b", 11)).unwrap();
        let six = |r: &NodeRecord| r.pod_cidr6.map(|c| c.to_string());
        assert_eq!(
            (a.pod_cidr.to_string(), six(&a)),
            ("10.244.0.0/24".into(), Some("fd00:10:244::/64".into()))
        );
        assert_eq!(six(&b), Some("fd00:10:244:1::/64".into()));
        let listed = s.nodes().unwrap();
        assert!(listed.contains(&a) && listed.contains(&b), "{listed:?}");
        let c = s.register(&reg("c", 12, 60)).unwrap();
        assert_eq!(c.pod_cidr6, None);
        let text = |n: &str| fs::read_to_string(d.join("nodes").join(format!("{n}.json"))).unwrap();
        assert!(
            text("a").contains("\"pod_cidr6\": \"fd00:10:244::/64\""),
            "{}",
            text("a")
        );
        assert!(!text("c").contains("pod_cidr6"), "{}", text("c"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn leases_are_unique_stable_and_removable() {
        let d = std::env::temp_dir().join(format!("podnet-ds-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let s = FileStore::open(&d).unwrap();
        let a = s.register(&reg("a", 10, 60)).unwrap();
        let b = s.register(&reg("b", 11, 60)).unwrap();
        assert_ne!(a.pod_cidr, b.pod_cidr);
        assert_eq!(
            s.register(&reg("a", 10, 60)).unwrap().pod_cidr,
            a.pod_cidr,
            "same CIDR across restarts"
        );
        assert_eq!(s.nodes().unwrap().len(), 2);
        assert!(s.remove("b").unwrap());
        assert!(!s.remove("b").unwrap());
        assert_eq!(s.nodes().unwrap().len(), 1);
        wakes_on(&s, || {
            FileStore::open(&d)
                .unwrap()
                .register(&reg("c", 12, 60))
                .unwrap();
        });
        assert!(s.nodes().unwrap().iter().any(|n| n.name == "c"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn objects_round_trip_with_revisions_and_wake_watchers() {
        let d = std::env::temp_dir().join(format!("podnet-ds-obj-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let s = FileStore::open(&d).unwrap();
        assert_eq!(s.objects().unwrap(), (0, vec![]));
        let o = |kind: &str, ns: &str, name: &str, v: u32| StoredObject {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
            value: serde_json::json!({ "v": v }).into(),
            version: None,
        };
        let r1 = s
            .put_objects(&[o("Namespace", "", "x", 1), o("Pod", "x", "a.b", 1)])
            .unwrap();
        let r2 = s.put_objects(&[o("Pod", "x", "a.b", 2)]).unwrap();
        assert!(r2 > r1);
        let (rev, objs) = s.objects().unwrap();
        assert_eq!(rev, r2);
        assert_eq!(
            objs,
            vec![o("Namespace", "", "x", 1), o("Pod", "x", "a.b", 2)]
        );
        // A bad key is refused before anything is written.
        assert!(s
            .put_objects(&[o("Pod", "x", "c", 1), o("Pod", "x_y", "c", 1)])
            .is_err());
        assert_eq!(s.objects().unwrap().1.len(), 2);
        wakes_on(&s, || {
            FileStore::open(&d)
                .unwrap()
                .delete_objects(&[("Pod".into(), "x".into(), "a.b".into())])
                .unwrap();
        });
        let (rev, objs) = s.objects().unwrap();
        assert!(rev > r2);
        assert_eq!(objs, vec![o("Namespace", "", "x", 1)]);
        // A damaged record comes back without its object; the others still do.
        fs::write(d.join("objects").join("Pod_x_broken.json"), "{not json").unwrap();
        let (_, objs) = s.objects().unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].key(), ("Pod".into(), "x".into(), "broken".into()));
        assert!(objs[1].value.is_null());
        fs::remove_dir_all(&d).unwrap();
    }
}
