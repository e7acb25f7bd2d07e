//! Real nodes: `podnet lab up --kubernetes --kubelet`. Every lab node runs
//! containerd, a real kubelet and kube-proxy; podnet is installed the way an operator
//! installs it (`kubectl apply` of `deploy/`, with an image built here), CoreDNS runs as
//! `kube-dns`. The lab plays no kubelet and starts no podnetd of its own.
//!
//! # What a real node is made of, and who owns it
//! - Its network namespace `<lab>-nodeN` (as every lab node), with a default route to
//!   the fabric bridge — a node has one; the fabric has no way out, so nothing leaves
//!   the lab. containerd, kubelet and kube-proxy run inside it (setns, not
//!   `ip netns exec`, whose private mount namespace would hide the kubelet's mounts
//!   from containerd).
//! - Its mount namespace, pinned at `<lab>/mnt/<node>` (a private bind mount of the
//!   lab's, so the pin does not propagate): a slave of the machine's, with the paths a
//!   node owns bound from `/var/lib/podnet-lab/<lab>/<node>/…` ([`NODE_PATHS`]: the
//!   DaemonSet's host paths `/etc/cni/net.d`, `/opt/cni/bin`, `/run/podnet`,
//!   `/var/lib/podnet`, `/run/netns`, `/run/wireguard`, and the kubelet's and
//!   containerd's state), and a bpffs of its own on `/sys/fs/bpf`. Each node's
//!   DaemonSet pod thus writes its own CNI configuration, node file and pinned maps.
//!   Mount points missing on the machine are made as empty directories and recorded;
//!   the last real-node lab to go removes them.
//! - Its cgroup root `/podnet-<lab>-<node>` in every cgroup v1 hierarchy (this machine
//!   has no v2): the kubelet's `cgroupRoot`, so each node's pods are its own.
//! - Its daemons' pid files `<node>.containerd`, `<node>.kubelet`, `<node>.kube-proxy`.
//!
//! `lab down` kills every process of a node (those in its cgroups, then those in its
//! mount namespace: containerd, shims, kubelet, kube-proxy), unpins the namespace (its
//! mounts go with it), removes the cgroups and the node's directory.
//!
//! # What this machine forces (and how)
//! - cgroup v1 only: the kubelet runs with `failCgroupV1: false`, cgroupfs driver.
//! - No `CAP_SYS_RESOURCE` for root here: no process may lower its `oom_score_adj`,
//!   which runc does for Guaranteed and node-critical pods (-997/-998) and fails. When
//!   the capability is missing the node's runc is a small wrapper that raises a
//!   negative `oomScoreAdj` to 0 in the bundle before running Debian's runc; every
//!   other field is the kubelet's.
//! - No registry: images are built by `scripts/real-nodes.sh` and imported into each
//!   node's containerd under the names the kubelet pulls (IfNotPresent).
//! - The kubelet sets `kernel.panic`, `kernel.panic_on_oops` and
//!   `vm.overcommit_memory` machine-wide, as on any node; the lab restores nothing it
//!   did not change.
//! - Pods reach the API server (kubernetes.default → the fabric) without outbound NAT
//!   (podnet has none yet): the fabric routes each Node's pod CIDR to the node, as a
//!   control-plane host on the pod network does.

use super::*;
use crate::kubernetes::{run_checked, API_ADDR, API_PORT, K8S_VERSION};
use serde_json::json;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

pub const CONTAINERD_VERSION: &str = "2.4.2";
pub const COREDNS_VERSION: &str = "1.14.7";
/// Where real nodes keep their state (disk: images and containers' layers).
pub const NODES_ROOT: &str = "/var/lib/podnet-lab";
/// The paths a node owns, bound in its mount namespace from its own directory.
pub const NODE_PATHS: &[&str] = &[
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/run/podnet",
    "/var/lib/podnet",
    "/var/lib/cni",
    "/run/netns",
    "/run/wireguard",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/run/containerd",
    "/etc/kubernetes",
];
/// The images every node holds (docker archives in `<bin_dir>/images/`), with the
/// names the kubelet and the e2e tests pull.
pub const IMAGES: &[(&str, &str)] = &[
    ("pause.tar", "registry.k8s.io/pause:3.10.2"),
    (
        "agnhost.tar",
        "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
    ),
    (
        "glibc-dns-testing.tar",
        "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1",
    ),
    (
        "busybox.tar",
        "registry.k8s.io/e2e-test-images/busybox:1.37.0-2",
    ),
    ("coredns.tar", "registry.k8s.io/coredns/coredns:v1.14.7"),
];
/// podnet's image as `deploy/daemonset.yaml` names it, built by the lab from its own
/// binaries on the base `scripts/real-nodes.sh` makes (Debian with `nft`, which the
/// nftables policy datapath runs).
pub const PODNET_IMAGE: &str = "localhost/podnet:0.1.0";
const BASE_IMAGE: &str = "localhost/podnet-lab-base:bookworm";
const COREDNS_YAML: &str = include_str!("coredns.yaml");
const CONTAINERFILE: &str = include_str!("../../../../deploy/Containerfile");
const CONFIGMAP_YAML: &str = include_str!("../../../../deploy/configmap.yaml");
const DAEMONSET_YAML: &str = include_str!("../../../../deploy/daemonset.yaml");
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The directory holding kubelet, kube-proxy, kube-scheduler, containerd (+ shim, ctr)
/// and the images: `$PODNET_NODES_BIN`, else where `scripts/real-nodes.sh` caches them.
pub fn bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("PODNET_NODES_BIN") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(format!(
            "/var/cache/podnet/nodes/v{K8S_VERSION}-containerd{CONTAINERD_VERSION}-coredns{COREDNS_VERSION}"
        )),
    };
    let need = [
        "kubelet",
        "kube-proxy",
        "kube-scheduler",
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "cni/portmap",
    ]
    .into_iter()
    .map(String::from)
    .chain(IMAGES.iter().map(|(f, _)| format!("images/{f}")))
    .chain(["images/podnet-lab-base.tar".to_string()]);
    for f in need {
        if !dir.join(&f).is_file() {
            bail!(
                "{} is missing: real nodes need kubelet, kube-proxy, kube-scheduler, containerd, the CNI plugin podnet's image carries and the node images built by scripts/real-nodes.sh (about 10 minutes the first time, cached after); run it, or point PODNET_NODES_BIN at its output",
                dir.join(f).display()
            );
        }
    }
    Ok(dir)
}

/// What real nodes need from this machine, each missing piece named with its fix:
/// the binaries and images, podman, runc, unshare, the control plane's binaries.
pub fn preflight() -> Result<()> {
    bin_dir()?;
    crate::kubernetes::bin_dir()?;
    for (tool, fix) in [
        ("podman", "apt-get install podman"),
        ("unshare", "apt-get install util-linux"),
        ("ip", "apt-get install iproute2"),
        ("nft", "apt-get install nftables"),
    ] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{tool} is missing: real nodes need it ({fix})");
        }
    }
    if !Path::new("/usr/sbin/runc").is_file() {
        bail!("/usr/sbin/runc is missing: real nodes run containers with Debian's runc (apt-get install runc)");
    }
    Ok(())
}

fn path_c(p: &Path) -> Result<std::ffi::CString> {
    Ok(std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?)
}

fn fs_magic(p: &Path) -> Option<i64> {
    let c = path_c(p).ok()?;
    // SAFETY: statfs into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::metadata(p), p.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|pm| pm.dev() != m.dev() || pm.ino() == m.ino())
        || std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|mi| {
            mi.lines()
                .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
        })
}

/// Whether this process may lower an `oom_score_adj` (CAP_SYS_RESOURCE, bit 24).
fn has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|c| c & (1 << 24) != 0)
}

/// The cgroup hierarchies of this machine (`/sys/fs/cgroup/<name>`): the v1 ones, and
/// the v2 one of a hybrid layout, where runc makes a node's cgroups too.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_dir() && matches!(fs_magic(p), Some(0x0027_e0eb) | Some(0x6367_7270)));
    out.sort();
    out
}

/// Every directory under `dir`, deepest first.
fn dirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(dirs_deepest_first(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// A held lock on what real-node labs share: the mount points they make on the
/// machine (`mounts`), podnet's image tag in podman's store (`image`).
fn shared_lock(what: &str) -> Result<File> {
    let p = Path::new(LAB_ROOT).join(format!(".real-nodes-{what}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("open {}", p.display()))?;
    // SAFETY: flock on an fd we own; released when the file is dropped.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "cannot lock {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

fn made_dirs_file() -> PathBuf {
    Path::new(LAB_ROOT).join(".real-nodes-mountpoints")
}

/// Runs `cmd` inside a node's mount and network namespaces (set between fork and exec).
fn enter(cmd: &mut Command, mnt: RawFd, net: RawFd, detach: bool) {
    podnet_netlink::netns::in_netns(cmd, net, Some(mnt), detach);
}

impl Lab {
    /// Node `node`'s own directory tree (the sources of its [`NODE_PATHS`]).
    pub fn real_root(&self, node: &str) -> PathBuf {
        Path::new(NODES_ROOT).join(&self.name).join(node)
    }

    fn mnt_dir(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// The pinned mount namespace of `node`.
    pub fn node_mnt(&self, node: &str) -> PathBuf {
        self.mnt_dir().join(node)
    }

    fn cgroup_root(&self, node: &str) -> String {
        format!("podnet-{}-{node}", self.name)
    }

    /// A command run in `node`'s namespaces (`detach`: in a session of its own, as a
    /// daemon); the descriptors it needs are returned and must live until it is
    /// spawned.
    fn node_command(
        &self,
        node: &str,
        program: &Path,
        detach: bool,
    ) -> Result<(Command, File, Netns)> {
        let mnt = File::open(self.node_mnt(node))
            .with_context(|| format!("open the mount namespace of {node}"))?;
        let net = Netns::open(netns::named_path(&self.node_ns(node)))
            .with_context(|| format!("open the network namespace of {node}"))?;
        let mut cmd = Command::new(program);
        let bin = bin_dir()?;
        cmd.env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                bin.display()
            ),
        );
        enter(&mut cmd, mnt.as_raw_fd(), net.fd(), detach);
        Ok((cmd, mnt, net))
    }

    /// Starts a node daemon `<node>.<what>` unless it runs; its log beside its state.
    fn spawn_node_daemon(
        &self,
        node: &str,
        what: &str,
        program: &Path,
        args: &[String],
    ) -> Result<()> {
        let key = format!("{node}.{what}");
        if self
            .live_pid(&key, crate::kubernetes::comm_of(&key).unwrap_or(what))
            .is_some()
        {
            return Ok(());
        }
        let log = self.node_dir(node).join(format!("{what}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open log {}", log.display()))?;
        let (mut cmd, _mnt, _net) = self.node_command(node, program, true)?;
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f));
        let child = cmd
            .spawn()
            .with_context(|| format!("start {what} on {node}"))?;
        self.record_pid(&key, child.id())
    }

    /// Makes and pins `node`'s mount namespace unless it is pinned.
    fn ensure_node_mounts(&self, node: &str) -> Result<()> {
        let pin = self.node_mnt(node);
        if fs_magic(&pin) == Some(NSFS_MAGIC) {
            return Ok(());
        }
        let root = self.real_root(node);
        let mnt = self.mnt_dir();
        std::fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
        if !is_mount_point(&mnt) {
            // A private mount: a namespace pinned on a shared one would propagate into
            // itself.
            run_checked(
                Command::new("mount").arg("--bind").arg(&mnt).arg(&mnt),
                &format!("mount --bind {}", mnt.display()),
            )?;
            run_checked(
                Command::new("mount").arg("--make-private").arg(&mnt),
                &format!("mount --make-private {}", mnt.display()),
            )?;
        }
        {
            let _l = shared_lock("mounts")?;
            let mut made: Vec<String> = std::fs::read_to_string(made_dirs_file())
                .map(|s| s.lines().map(String::from).collect())
                .unwrap_or_default();
            for p in NODE_PATHS {
                // Each missing component, outermost first, so `down` can remove them.
                let mut missing = Vec::new();
                let mut q = Path::new(p);
                while !q.exists() {
                    missing.push(q.to_path_buf());
                    match q.parent() {
                        Some(x) => q = x,
                        None => break,
                    }
                }
                for m in missing.iter().rev() {
                    std::fs::create_dir(m).with_context(|| {
                        format!("create mount point {} for the lab's nodes", m.display())
                    })?;
                    made.push(m.display().to_string());
                }
            }
            std::fs::write(made_dirs_file(), made.join("\n"))
                .with_context(|| format!("write {}", made_dirs_file().display()))?;
        }
        let mut script = String::from("set -e\n");
        for p in NODE_PATHS {
            let src = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(&src).with_context(|| format!("create {}", src.display()))?;
            script += &format!("mount --bind '{}' '{p}'\n", src.display());
        }
        // containerd mounts pod namespaces here; the DaemonSet's podnetd sees them
        // (HostToContainer) only from a shared mount.
        script += "mount --make-shared /run/netns\nmount -t bpf bpf /sys/fs/bpf\n";
        std::fs::write(&pin, "").with_context(|| format!("create {}", pin.display()))?;
        run_checked(
            Command::new("unshare")
                .arg(format!("--mount={}", pin.display()))
                .args(["--propagation", "slave", "--", "sh", "-c", &script]),
            &format!("unshare: make the mount namespace of {node}"),
        )?;
        Ok(())
    }

    /// Brings real node `node` (its network namespace made, eth0 at `ip`, and at `ip6`
    /// on a dual-stack lab) to running containerd, kubelet and kube-proxy.
    pub(crate) fn ensure_real_node(
        &self,
        st: &State,
        node: &str,
        (ip, ip6): (Ipv4Addr, Option<std::net::Ipv6Addr>),
        say: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let bin = bin_dir()?;
        let root = self.real_root(node);
        std::fs::create_dir_all(self.node_dir(node))?;
        // The node's default route through the fabric; a dual-stack node needs an IPv6
        // one too: the kernel routes a packet the node sends to an IPv6 ClusterIP
        // before kube-proxy translates it (the fabric is the lab's edge and routes
        // nothing further).
        let mut defaults = vec![("-4", API_ADDR.to_string())];
        if ip6.is_some() {
            defaults.push(("-6", crate::OUTSIDE_ADDR6.to_string()));
        }
        for (family, via) in defaults {
            run_checked(
                Command::new("ip").args([
                    family,
                    "-n",
                    &self.node_ns(node),
                    "route",
                    "replace",
                    "default",
                    "via",
                    &via,
                    "dev",
                    "eth0",
                ]),
                &format!("ip {family} route: the default route of {node}"),
            )?;
        }
        self.ensure_node_mounts(node)?;
        let cg = self.cgroup_root(node);
        for h in cgroup_hierarchies() {
            let d = h.join(&cg);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("create the node's cgroup {}", d.display()))?;
        }

        self.write_node_config(node)?;
        self.start_node_daemons(st, node, (ip, ip6), &bin)?;
        // The lab's tools find the agent where the DaemonSet's podnetd puts it.
        for (link, target) in [
            (
                podnet_conventions::API_SOCKET_NAME,
                podnet_conventions::DEFAULT_API_SOCKET,
            ),
            ("node.json", podnet_conventions::DEFAULT_NODE_FILE),
        ] {
            let l = self.node_dir(node).join(link);
            let _ = std::fs::remove_file(&l);
            // The node's root holds the DaemonSet's paths below it.
            let target = target.trim_start_matches('/');
            std::os::unix::fs::symlink(root.join(target), &l)
                .with_context(|| format!("link {}", l.display()))?;
        }
        say(&format!(
            "node {node}: containerd v{CONTAINERD_VERSION}, kubelet and kube-proxy ({}) running (logs in {})",
            st.proxy_mode,
            self.node_dir(node).display()
        ));
        Ok(())
    }

    /// Starts containerd (and waits for its socket), imports the images, starts the
    /// kubelet and kube-proxy; each unless it runs. A dual-stack node's kubelet reports
    /// both addresses (`--node-ip` IPv4,IPv6) and kube-proxy proxies both families.
    fn start_node_daemons(
        &self,
        st: &State,
        node: &str,
        (ip, ip6): (Ipv4Addr, Option<std::net::Ipv6Addr>),
        bin: &Path,
    ) -> Result<()> {
        let node_ip = match ip6 {
            Some(ip6) => format!("{ip},{ip6}"),
            None => ip.to_string(),
        };
        let cluster_cidr = crate::kubernetes::cluster_ranges(ip6.is_some());
        let root = self.real_root(node);
        // containerd, then the images, then the kubelet and kube-proxy.
        self.spawn_node_daemon(
            node,
            "containerd",
            &bin.join("containerd"),
            &["--config".into(), "/etc/kubernetes/containerd.toml".into()],
        )?;
        let sock = root.join("run/containerd/containerd.sock");
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if self
                .live_pid(&format!("{node}.containerd"), "containerd")
                .is_none()
            {
                bail!(
                    "containerd on {node} exited; see {}",
                    self.node_dir(node).join("containerd.log").display()
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd on {node} does not answer on {} after 30 s; see {}",
                    sock.display(),
                    self.node_dir(node).join("containerd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.import_images(node, bin)?;
        self.spawn_node_daemon(
            node,
            "kubelet",
            &bin.join("kubelet"),
            &[
                "--config=/etc/kubernetes/kubelet.yaml".into(),
                "--kubeconfig=/etc/kubernetes/kubelet.kubeconfig".into(),
                format!("--hostname-override={node}"),
                format!("--node-ip={node_ip}"),
                "--v=1".into(),
            ],
        )?;
        self.spawn_node_daemon(
            node,
            "kube-proxy",
            &bin.join("kube-proxy"),
            &[
                "--kubeconfig=/etc/kubernetes/kube-proxy.kubeconfig".into(),
                format!("--proxy-mode={}", st.proxy_mode),
                format!("--cluster-cidr={cluster_cidr}"),
                format!("--hostname-override={node}"),
                // Leave the machine-wide conntrack table size alone.
                "--conntrack-max-per-core=0".into(),
                "--metrics-bind-address=127.0.0.1:10249".into(),
            ],
        )?;
        Ok(())
    }
}

mod config;
mod down;
mod install;
