//! `podnet lab`: a real multi-node cluster built from network namespaces on one
//! machine, with the real agent and the real CNI plugin.
//!
//! # What a lab named L is made of
//! - `L-fabric`: the "physical network", a namespace holding the bridge `fabric0` (the
//!   data-centre switch). It has no address; nothing routes through it.
//! - `L-nodeN`: one namespace per node, with `eth0` (a veth whose other end, `nodeN`,
//!   sits on `fabric0`) at 192.168.1.(9+N)/24, and its own `podnetd` running inside
//!   it (log: `<state>/nodeN/podnetd.log`).
//! - `L-<pod>`: one namespace per pod, created through `podnet-cni` exactly as a runtime
//!   would (CNI environment, configuration on stdin), with a small TCP echo server
//!   (`podnet lab serve-echo`) answering `from=<source address it saw> <line>`.
//! - `/run/podnet/lab/L/`: the lab's state (`lab.json`), the file datastore, and per
//!   node the agent's node file, API socket, log and the IPAM state.
//!
//! Nothing is made in the machine's own namespace. `lab down` removes every
//! namespace, process and file above. Commands on one lab take its lock, so two runs
//! never interleave.

pub mod agents;
pub mod app;
pub mod apply;
pub mod bench;
pub mod demo;
pub mod exec;
pub mod kubernetes;
pub mod scratch;
pub mod traffic;

use crate::exec::Call;
use crate::traffic::probe;
use anyhow::{bail, Context, Result};
use podnet_conventions::{Backend, Datapath, PolicyDatapath};
use podnet_netlink::link::{self, LinkChange, Target};
use podnet_netlink::{addr, netns, Netns, Socket};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where labs keep their state.
pub const LAB_ROOT: &str = "/run/podnet/lab";
/// Where `--datastore etcd` runs etcd: on the fabric bridge.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// The lab's host outside the cluster: an address of the fabric namespace, on
/// `fabric0`, with no route to any pod CIDR (only masqueraded pod traffic gets an
/// answer), and an echo server on [`ECHO_PORT`] there (`podnet lab serve-echo`).
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 254);
/// The outside host's IPv6 address in a dual-stack lab, on the fabric's IPv6 range
/// [`FABRIC6`] (each node's eth0 has one there too, [`underlay_ip6`]); no route to
/// any IPv6 pod range either.
pub const OUTSIDE_ADDR6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x192, 0x168, 0x1, 0, 0, 0, 0xfe);
/// A dual-stack lab's fabric also carries IPv6 (/64): what pods' IPv6 leaving the
/// cluster crosses. The nodes still talk to each other (VXLAN, the datastore) over
/// IPv4.
pub const FABRIC6: &str = "fd00:192:168:1::/64";
/// The port every pod's echo server listens on.
pub const ECHO_PORT: u16 = 7777;

/// A dual-stack lab's IPv6 cluster range (podnetd's `--cluster-cidr`, after IPv4's
/// 10.244.0.0/16): node n's pods get the n-th /64 of it.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// `vxlan`, `host-gw` or `wireguard`; `None`: what the lab was built with, else
    /// `vxlan`.
    pub backend: Option<Backend>,
    /// A datastore URL or `etcd` (an etcd inside the lab); `None`: what the lab was
    /// built with, else the lab's own file datastore.
    pub datastore: Option<String>,
    /// `None`: what the lab was built with, else on.
    pub repair: Option<bool>,
    /// `nftables` or `none`; `None`: what the lab was built with, else `nftables`.
    pub policy_datapath: Option<PolicyDatapath>,
    /// Run a Kubernetes control plane in the lab and the agents on its API
    /// ([`crate::kubernetes`]); `None`: what the lab was built with, else off.
    #[serde(default)]
    pub kubernetes: Option<bool>,
    /// `bridge` or `ebpf` (the fast path); `None`: what the lab was built with, else
    /// `bridge`.
    #[serde(default)]
    pub datapath: Option<Datapath>,
    /// With `kubernetes`: real nodes (containerd, kubelet, kube-proxy; podnet from
    /// `deploy/`, [`real`]); `None`: what the lab was built with, else off.
    #[serde(default)]
    pub real_nodes: Option<bool>,
    /// kube-proxy's mode on real nodes: `nftables` or `iptables`; `None`: what the
    /// lab was built with, else `nftables`.
    #[serde(default)]
    pub proxy_mode: Option<String>,
    /// Outbound masquerade on the agents (podnetd --masquerade); `None`: what the lab
    /// was built with, else on.
    #[serde(default)]
    pub masquerade: Option<bool>,
    /// `ipv4` or `dual`; `None`: what the lab was built with, else `ipv4`.
    #[serde(default)]
    pub ip_family: Option<podnet_conventions::IpFamily>,
    /// `ipv4` or `ipv6`: the family of the nodes' overlay tunnels; `None`: what the
    /// lab was built with, else `ipv4`.
    #[serde(default)]
    pub underlay_family: Option<podnet_conventions::UnderlayFamily>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub backend: Backend,
    pub datastore: String,
    pub repair: bool,
    #[serde(default)]
    pub policy_datapath: PolicyDatapath,
    /// The lab runs kube-apiserver and the agents use it ([`crate::kubernetes`]).
    #[serde(default)]
    pub kubernetes: bool,
    /// `bridge` or `ebpf` (the fast path).
    #[serde(default)]
    pub datapath: Datapath,
    /// Real nodes ([`real`]): containerd, kubelet and kube-proxy on every node, podnet
    /// from `deploy/`.
    #[serde(default)]
    pub real_nodes: bool,
    /// kube-proxy's mode on real nodes.
    #[serde(default = "default_proxy_mode")]
    pub proxy_mode: String,
    /// The agents masquerade pod traffic leaving the cluster (podnetd --masquerade).
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// `ipv4`, or `dual`: pods get an IPv6 address too ([`CLUSTER_CIDR6`]).
    #[serde(default)]
    pub ip_family: podnet_conventions::IpFamily,
    /// `ipv4`, or `ipv6`: the nodes' overlay tunnels run between their underlay IPv6
    /// addresses ([`underlay_ip6`]; podnetd --underlay-family ipv6).
    #[serde(default)]
    pub underlay_family: podnet_conventions::UnderlayFamily,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
}

fn yes() -> bool {
    true
}

fn default_proxy_mode() -> String {
    "nftables".into()
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    /// The lab's own name for the pod, unique across namespaces: the pod's name in
    /// namespace `default`, `<namespace>.<name>` in the others. Its namespace is
    /// `<lab>-<name>`, its CNI container ID the same.
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// A dual-stack pod's IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mac: String,
    pub host_veth: String,
    /// The Kubernetes namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The Pod object as applied (labels, annotations, ports), without status.
    #[serde(default)]
    pub object: Option<podnet_policy::objects::Pod>,
    /// On a Kubernetes lab: the uid of the API's Pod this pod was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl PodState {
    /// The pod's name in its namespace.
    pub fn pod_name(&self) -> &str {
        self.object
            .as_ref()
            .map(|o| o.metadata.name.as_str())
            .unwrap_or(&self.name)
    }

    /// `namespace/name`
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod_name())
    }

    /// Ports the pod serves besides the echo port: (TCP, UDP, SCTP).
    pub fn served_ports(&self) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
        let mut out = (vec![], vec![], vec![]);
        for cp in self
            .object
            .iter()
            .flat_map(|o| &o.spec.containers)
            .flat_map(|c| &c.ports)
        {
            let Ok(n) = u16::try_from(cp.container_port) else {
                continue;
            };
            let v = match cp.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => &mut out.1,
                "SCTP" => &mut out.2,
                _ => &mut out.0,
            };
            if !v.contains(&n) {
                v.push(n);
            }
        }
        out
    }

    /// The Pod object the agents read: as applied, with its node and address.
    pub fn stored_object(&self) -> podnet_policy::objects::Pod {
        let mut o = self
            .object
            .clone()
            .unwrap_or_else(|| minimal_pod(&self.name));
        o.metadata.namespace = Some(self.namespace.clone());
        o.spec.node_name = Some(self.node.clone());
        o.status = Some(podnet_policy::objects::PodStatus {
            pod_ip: Some(self.ip.to_string()),
            pod_ips: std::iter::once(self.ip.to_string())
                .chain(self.ip6.map(|a| a.to_string()))
                .map(|ip| podnet_policy::objects::PodIp { ip })
                .collect(),
        });
        o
    }
}

/// A Pod object for a pod made by `lab up` or `lab pod add`: namespace `default`, no
/// labels, no declared ports.
pub fn minimal_pod(name: &str) -> podnet_policy::objects::Pod {
    podnet_policy::objects::Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: podnet_policy::objects::ObjectMeta {
            name: name.into(),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Default::default(),
        status: None,
    }
}

impl State {
    /// A pod by `namespace/name`, or by the lab's own name.
    pub fn find_pod(&self, spec: &str) -> Option<&PodState> {
        match spec.split_once('/') {
            Some((ns, name)) => self
                .pods
                .iter()
                .find(|p| p.namespace == ns && p.pod_name() == name),
            None => self.pods.iter().find(|p| p.name == spec),
        }
    }
}

/// One lab: its name and where its state lives.
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    _lock: std::fs::File,
}

fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-');
    if !ok {
        bail!("invalid lab name {name:?}: use up to 24 letters, digits and '-', not starting with '-'");
    }
    Ok(())
}

impl Lab {
    /// Opens (and locks) lab `name`; its directory is created if missing.
    pub fn open(name: &str) -> Result<Lab> {
        valid_name(name)?;
        let dir = Path::new(LAB_ROOT).join(name);
        std::fs::create_dir_all(LAB_ROOT).with_context(|| format!("create {LAB_ROOT}"))?;
        // The lock lives beside the lab's directory; `down` removes both while it
        // holds the lock. A waiter that wakes on a removed lock file opens the new one.
        let lock_path = Path::new(LAB_ROOT).join(format!(".{name}.lock"));
        let lock = loop {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .with_context(|| format!("open {}", lock_path.display()))?;
            // SAFETY: flock on an fd we own; released when the lab is dropped.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!(
                    "cannot lock lab {name}: {}",
                    std::io::Error::last_os_error()
                );
            }
            use std::os::unix::fs::MetadataExt;
            let same = std::fs::metadata(&lock_path)
                .is_ok_and(|m| f.metadata().is_ok_and(|g| g.ino() == m.ino()));
            if same {
                break f;
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Lab {
            name: name.into(),
            dir,
            _lock: lock,
        })
    }

    /// True if a lab of that name has state on this machine.
    pub fn exists(name: &str) -> bool {
        Path::new(LAB_ROOT).join(name).is_dir()
    }

    pub fn load(&self) -> Result<Option<State>> {
        match std::fs::read(self.dir.join("lab.json")) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{}/lab.json is damaged; run `podnet lab down --name {}` and start again",
                    self.dir.display(),
                    self.name
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}/lab.json", self.dir.display())),
        }
    }

    pub fn save(&self, st: &State) -> Result<()> {
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("lab.json"))
            .with_context(|| format!("replace {}/lab.json", self.dir.display()))?;
        Ok(())
    }

    pub fn fabric_ns(&self) -> String {
        format!("{}-fabric", self.name)
    }

    pub fn node_ns(&self, node: &str) -> String {
        format!("{}-{node}", self.name)
    }

    pub fn pod_ns(&self, pod: &str) -> String {
        format!("{}-{pod}", self.name)
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }

    pub fn api_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node)
            .join(podnet_conventions::API_SOCKET_NAME)
    }

    /// The configuration socket of `node`'s WireGuard device (WireGuard backend).
    pub fn wireguard_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("wireguard.sock")
    }

    /// The API client of `node`'s agent.
    pub fn agent(&self, node: &str) -> podnet_api::Client {
        podnet_api::Client::new(self.api_socket(node))
    }

    /// The lab's own bpffs (mounted by `up` with the eBPF policy datapath, unmounted by
    /// `down`): each node pins its policy maps and programs in a directory of it.
    pub fn bpf_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    /// Mounts the lab's bpffs unless it is mounted.
    fn ensure_bpffs(&self) -> Result<()> {
        let d = self.bpf_dir();
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes())?;
        // SAFETY: statfs into a zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == 0xcafe_4a11 {
            return Ok(());
        }
        let fs = std::ffi::CString::new("bpf")?;
        // SAFETY: mounting a new bpffs instance on a directory the lab owns.
        if unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
            bail!(
                "cannot mount a bpffs on {} for the eBPF policy datapath: {}",
                d.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    pub(crate) fn pid_file(&self, what: &str) -> PathBuf {
        self.dir.join("pids").join(format!("{what}.pid"))
    }

    /// The pid recorded for `what`, if that process is still running `comm` (a zombie
    /// waiting to be reaped does not count).
    pub fn live_pid(&self, what: &str, comm: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(what))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state …": comm may hold spaces, the state follows the last ')'.
        let (name, rest) = stat
            .split_once(" (")
            .and_then(|(_, r)| r.rsplit_once(") "))?;
        let running = !matches!(rest.chars().next(), Some('Z') | Some('X'));
        (name == comm && running).then_some(pid)
    }

    pub(crate) fn record_pid(&self, what: &str, pid: u32) -> Result<()> {
        let path = self.pid_file(what);
        std::fs::create_dir_all(self.dir.join("pids"))
            .and_then(|_| std::fs::write(&path, pid.to_string()))
            .with_context(|| format!("record pid {pid} of {what} in {}", path.display()))?;
        Ok(())
    }

    /// Ends a recorded process (TERM, then KILL after a second).
    fn stop(&self, what: &str, comm: &str) {
        if let Some(pid) = self.live_pid(what, comm) {
            // SAFETY: signalling a process we started and identified by name.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let t = Instant::now();
            while self.live_pid(what, comm).is_some() && t.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.live_pid(what, comm).is_some() {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                // A process in a system call dies when it returns: wait for that, so
                // nothing it was doing (an agent re-registering) lands after we go on.
                let t = Instant::now();
                while self.live_pid(what, comm).is_some() && t.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_file(self.pid_file(what));
    }
}

fn open_or_create_ns(name: &str) -> Result<(Netns, bool)> {
    let path = netns::named_path(name);
    if path.exists() {
        if let Ok(ns) = Netns::open(&path) {
            return Ok((ns, false));
        }
        netns::delete_named(name)?;
    }
    let ns = netns::create_named(name).with_context(|| format!("create namespace {name}"))?;
    ns.run(|| -> podnet_netlink::Result<()> {
        let mut s = Socket::route()?;
        link::change(
            &mut s,
            Target::Name("lo"),
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
    })??;
    Ok((ns, true))
}

/// Starts `cmd` detached (own session, stdio to `log` or nowhere) inside `ns`.
pub(crate) fn spawn_in(ns: &Netns, mut cmd: Command, log: Option<&Path>) -> Result<u32> {
    let fd = ns.fd();
    let (out, err) = match log {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open log {}", p.display()))?;
            (Stdio::from(f.try_clone()?), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // A daemon: a session of its own, the default signal dispositions whatever the
    // caller ignores.
    netns::in_netns(&mut cmd, fd, None, true);
    let child = cmd
        .spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))?;
    Ok(child.id())
}

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    podnet_conventions::rfc3339(podnet_datastore::now())
}

fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 9 + i as u8)
}

/// Node `i`'s IPv6 address on a dual-stack lab's fabric ([`FABRIC6`]): the same host
/// number as its IPv4 one (`::a` for 192.168.1.10).
pub fn underlay_ip6(i: usize) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0x192, 0x168, 0x1, 0, 0, 0, 9 + i as u16)
}

/// Pod names: `p<node number><letter>`, e.g. `p1a`, `p2b`.
pub fn pod_name(node: usize, j: usize) -> String {
    format!("p{node}{}", (b'a' + (j % 26) as u8) as char)
}

/// Everything needed to run the lab's binaries.
pub struct Binaries {
    pub podnet: PathBuf,
    pub podnetd: PathBuf,
    pub cni: PathBuf,
}

impl Binaries {
    pub fn find() -> Result<Binaries> {
        let f = |n: &str| {
            crate::sibling_binary(n).with_context(|| format!("{n} not found next to the podnet executable; build the workspace (cargo build --release)"))
        };
        Ok(Binaries {
            podnet: std::env::current_exe()?,
            podnetd: f("podnetd")?,
            cni: f("podnet-cni")?,
        })
    }
}

mod check;
mod faults;
mod nodes;
mod pods;
pub mod real;
mod status;

pub use check::{render_check, Check, Probe};
pub use faults::FAULTS;
pub use pods::exec_in;
pub use status::{ask, FabricStatus, NodeStatus, Status};

/// Finds a sibling binary (`podnet-cni`, `podnetd`) next to the running executable;
/// test binaries live one directory deeper (`target/<profile>/deps`).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}
