//! The file backend: one directory, shared by every node that can see it (all nodes
//! of a lab on one machine). `nodes/<name>.json` holds each node's record, replaced
//! by rename; `lock` serializes registrations so two nodes never lease one CIDR.
//! Changes are noticed through inotify on `nodes/`.

use crate::{choose_cidr, now, Datastore, Error, NodeRecord, Registration, Result};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub struct FileStore {
    dir: PathBuf,
    watch: Mutex<Option<OwnedFd>>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { op, path, source }
}

impl FileStore {
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        let nodes = dir.join("nodes");
        fs::create_dir_all(&nodes).map_err(io("create", &nodes))?;
        Ok(FileStore {
            dir,
            watch: Mutex::new(None),
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
        let d = self.dir.join("nodes");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(io("list", &d))?.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let bytes = match fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &p)(e)),
            };
            let rec: NodeRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: p.display().to_string(),
                why: e.to_string(),
            })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
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
        let rec = r.record(cidr, t);
        self.write(&rec)?;
        Ok(rec)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let t = now();
        Ok(self.all()?.into_iter().filter(|n| n.is_live(t)).collect())
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
            let c =
                std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).expect("no NUL in path");
            let mask = libc::IN_CREATE
                | libc::IN_DELETE
                | libc::IN_MODIFY
                | libc::IN_MOVED_TO
                | libc::IN_MOVED_FROM;
            // SAFETY: adding a watch on a valid path.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
                return Err(io("watch", &d)(std::io::Error::last_os_error()));
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
            vtep_mac: format!("0a:59:c0:a8:01:{ip:02x}"),
            backend: "vxlan".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            node_prefix: 24,
            ttl: Duration::from_secs(ttl),
        }
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
        // wait_change returns on a change (and does not hang without one).
        s.wait_change(Duration::from_millis(10)).unwrap();
        let waited = std::thread::scope(|sc| {
            let t = std::time::Instant::now();
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                FileStore::open(&d)
                    .unwrap()
                    .register(&reg("c", 12, 60))
                    .unwrap();
            });
            s.wait_change(Duration::from_secs(5)).unwrap();
            t.elapsed()
        });
        // It waited for the change (not returning at once), and no longer than that.
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        assert!(s.nodes().unwrap().iter().any(|n| n.name == "c"));
        fs::remove_dir_all(&d).unwrap();
    }
}
