//! `lab down` for real nodes: every process of a node (its cgroups' and its mount
//! namespace's) killed, the namespace unpinned, cgroups and state removed, and the
//! mount points the machine did not have removed by the last real-node lab.

use super::*;

impl Lab {
    /// Stops every process of every real node and removes what they were made of.
    pub(crate) fn real_down(&self) -> Result<()> {
        let base = Path::new(NODES_ROOT).join(&self.name);
        let nodes: Vec<String> = std::fs::read_dir(&base)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for node in &nodes {
            self.real_node_down(node)?;
        }
        // The pins' private mount.
        if let Ok(c) = path_c(&self.mnt_dir()) {
            // SAFETY: unmounting the lab's own mount point (EINVAL if none).
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        match std::fs::remove_dir_all(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!(
                "cannot remove {} ({e}): a mount or process of lab {} may be left; see `grep {} /proc/self/mountinfo`",
                base.display(),
                self.name,
                base.display()
            ),
        }
        let _l = shared_lock("mounts")?;
        let others = std::fs::read_dir(NODES_ROOT).is_ok_and(|mut d| d.next().is_some());
        if !others {
            let _ = std::fs::remove_dir(NODES_ROOT);
            if let Ok(s) = std::fs::read_to_string(made_dirs_file()) {
                // Innermost first; a directory someone filled since stays.
                for d in s.lines().rev() {
                    let _ = std::fs::remove_dir(d);
                }
            }
            let _ = std::fs::remove_file(made_dirs_file());
        }
        Ok(())
    }

    fn real_node_down(&self, node: &str) -> Result<()> {
        for what in ["kubelet", "kube-proxy"] {
            let key = format!("{node}.{what}");
            self.stop(&key, crate::kubernetes::comm_of(&key).unwrap_or(what));
        }
        let cg = self.cgroup_root(node);
        let pin = self.node_mnt(node);
        use std::os::unix::fs::MetadataExt;
        let mnt_ino = std::fs::metadata(&pin)
            .ok()
            .filter(|_| fs_magic(&pin) == Some(NSFS_MAGIC))
            .map(|m| m.ino());
        let t = Instant::now();
        loop {
            // Containers (in the node's cgroups), then the node's daemons and shims
            // (in its mount namespace).
            let mut pids: Vec<i32> = Vec::new();
            for h in cgroup_hierarchies() {
                for d in dirs_deepest_first(&h.join(&cg)) {
                    if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                        pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                    }
                }
            }
            if let Some(ino) = mnt_ino {
                if let Ok(rd) = std::fs::read_dir("/proc") {
                    for e in rd.flatten() {
                        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                        else {
                            continue;
                        };
                        if std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                            .is_ok_and(|m| m.ino() == ino)
                        {
                            pids.push(pid);
                        }
                    }
                }
            }
            pids.sort_unstable();
            pids.dedup();
            // Zombies (PID 1 here reaps nothing) are gone for our purpose.
            pids.retain(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, r)| !r.starts_with('Z') && !r.starts_with('X'))
                })
            });
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                // SAFETY: signalling processes of this lab's node (its cgroups or
                // its mount namespace, both made by the lab).
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!(
                    "processes {pids:?} of lab node {node} survive SIGKILL after 20 s; kill them and run `podnet lab down --name {}` again",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.pid_file(&format!("{node}.containerd")));
        if let Ok(c) = path_c(&pin) {
            // SAFETY: unpinning the lab's own namespace (EINVAL if not pinned).
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        // Deepest first; a cgroup that cannot go still holds a process: say which.
        for h in cgroup_hierarchies() {
            for d in dirs_deepest_first(&h.join(&cg)) {
                match std::fs::remove_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => bail!(
                        "cannot remove cgroup {} of lab node {node} ({e}): `cat {}/cgroup.procs` names what still runs there; kill it and run `podnet lab down --name {}` again",
                        d.display(),
                        d.display(),
                        self.name
                    ),
                }
            }
        }
        let root = self.real_root(node);
        std::fs::remove_dir_all(&root)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("remove {}", root.display()))?;
        Ok(())
    }
}
