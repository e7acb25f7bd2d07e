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

use crate::exec::{self, Call};
use crate::probe;
use anyhow::{bail, Context, Result};
use podnet_netlink::link::{self, LinkChange, Target};
use podnet_netlink::{addr, netns, Netns, Socket};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where labs keep their state.
pub const LAB_ROOT: &str = "/run/podnet/lab";
/// Where `--datastore etcd` runs etcd: on the fabric bridge.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// The port every pod's echo server listens on.
pub const ECHO_PORT: u16 = 7777;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// `vxlan` or `host-gw`; `None`: what the lab was built with, else `vxlan`.
    pub backend: Option<String>,
    /// A datastore URL or `etcd` (an etcd inside the lab); `None`: what the lab was
    /// built with, else the lab's own file datastore.
    pub datastore: Option<String>,
    /// `None`: what the lab was built with, else on.
    pub repair: Option<bool>,
    /// `nftables` or `none`; `None`: what the lab was built with, else `nftables`.
    pub policy_datapath: Option<String>,
    /// Run a Kubernetes control plane in the lab and the agents on its API
    /// ([`crate::lab_k8s`]); `None`: what the lab was built with, else off.
    #[serde(default)]
    pub kubernetes: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub backend: String,
    pub datastore: String,
    pub repair: bool,
    #[serde(default = "default_policy_datapath")]
    pub policy_datapath: String,
    /// The lab runs kube-apiserver and the agents use it ([`crate::lab_k8s`]).
    #[serde(default)]
    pub kubernetes: bool,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
}

fn default_policy_datapath() -> String {
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
        self.node_dir(node).join("podnetd.sock")
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

    fn pid_file(&self, what: &str) -> PathBuf {
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
    // SAFETY: setns and setsid are async-signal-safe; they run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            // Daemons get the default signal dispositions, whatever the caller ignores.
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))?;
    Ok(child.id())
}

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    podnet_agent::rfc3339(podnet_datastore::now())
}

fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 9 + i as u8)
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

impl Lab {
    /// Brings the lab to `opts`, creating what is missing and restarting what died;
    /// nothing that exists is duplicated.
    pub fn up(&self, opts: &Options, bins: &Binaries, say: &mut dyn FnMut(&str)) -> Result<State> {
        let t0 = Instant::now();
        let mut st = self.load()?.unwrap_or_default();
        let etcd_url = format!("etcd://{ETCD_ADDR}:2379");
        let datastore = opts.datastore.as_deref().map(|d| match d {
            "etcd" => etcd_url.clone(),
            url => url.to_string(),
        });
        if st.nodes.is_empty() {
            st.backend = opts.backend.clone().unwrap_or_else(|| "vxlan".into());
            st.repair = opts.repair.unwrap_or(true);
            st.policy_datapath = opts
                .policy_datapath
                .clone()
                .unwrap_or_else(default_policy_datapath);
            st.kubernetes = opts.kubernetes.unwrap_or(false);
            st.datastore = if st.kubernetes {
                if datastore.is_some() {
                    bail!("--kubernetes brings its own datastore (the API server): leave --datastore out");
                }
                format!("kubernetes:{}", self.agent_kubeconfig().display())
            } else {
                datastore
                    .unwrap_or_else(|| format!("file:{}", self.dir.join("datastore").display()))
            };
        } else {
            // Agents that still run keep what they were started with: a second `up`
            // that restarted only the dead ones with other settings would split the lab.
            let mut differs = Vec::new();
            if let Some(b) = opts.backend.as_ref().filter(|b| **b != st.backend) {
                differs.push(format!("backend {} (asked: {b})", st.backend));
            }
            if let Some(d) = datastore.as_ref().filter(|d| **d != st.datastore) {
                differs.push(format!("datastore {} (asked: {d})", st.datastore));
            }
            if let Some(p) = opts
                .policy_datapath
                .as_ref()
                .filter(|p| **p != st.policy_datapath)
            {
                differs.push(format!(
                    "policy datapath {} (asked: {p})",
                    st.policy_datapath
                ));
            }
            if opts.kubernetes.is_some_and(|k| k != st.kubernetes) {
                differs.push(format!(
                    "Kubernetes {}",
                    if st.kubernetes { "on" } else { "off" }
                ));
            }
            if opts.repair.is_some_and(|r| r != st.repair) {
                differs.push(format!(
                    "repair {} (asked: {})",
                    if st.repair { "on" } else { "off" },
                    if st.repair {
                        "--no-repair"
                    } else {
                        "repair on"
                    }
                ));
            }
            if !differs.is_empty() {
                bail!(
                    "lab {} was built with {}; `up` does not change a built lab: leave those flags out, or `podnet lab down --name {}` and build it again",
                    self.name,
                    differs.join(", "),
                    self.name
                );
            }
        }
        st.name = self.name.clone();

        let down = format!(
            "`podnet lab down --name {}` removes what was made so far",
            self.name
        );
        let (fabric, mut fs, made) = (|| -> Result<_> {
            let (fabric, made) = open_or_create_ns(&self.fabric_ns())?;
            let mut fs = fabric.run(Socket::route)??;
            if link::get_by_name(&mut fs, "fabric0")?.is_none() {
                // A fixed MAC (that of ETCD_ADDR in the nodes' 02:00:<IP> scheme): a
                // bridge left to choose takes its lowest port's, and changes it when
                // that node is deleted — while the other nodes still hold the old one
                // in their neighbour tables for the lab's etcd or API server.
                let o = ETCD_ADDR.octets();
                link::create_bridge(
                    &mut fs,
                    "fabric0",
                    Some([0x02, 0x00, o[0], o[1], o[2], o[3]]),
                    Some(1500),
                )?;
            }
            link::change(
                &mut fs,
                Target::Name("fabric0"),
                &LinkChange {
                    up: Some(true),
                    ..Default::default()
                },
            )?;
            Ok((fabric, fs, made))
        })()
        .with_context(|| {
            format!(
                "setting up the fabric (namespace {}, bridge fabric0); {down}",
                self.fabric_ns()
            )
        })?;
        if made {
            say(&format!("fabric {} (bridge fabric0)", self.fabric_ns()));
        }
        if st.datastore == etcd_url {
            self.ensure_etcd(&fabric, &mut fs, say)
                .with_context(|| format!("starting etcd in {}; {down}", self.fabric_ns()))?;
        }
        if st.kubernetes {
            self.fabric_address(&mut fs)?;
            self.save(&st)?;
            self.ensure_control_plane(&fabric, say).with_context(|| {
                format!(
                    "starting the Kubernetes control plane in {}; {down}",
                    self.fabric_ns()
                )
            })?;
        }

        if st.policy_datapath == "ebpf" {
            self.ensure_bpffs()
                .with_context(|| format!("preparing the eBPF policy datapath; {down}"))?;
        }
        for i in 1..=opts.nodes {
            let node = format!("node{i}");
            let made = self.ensure_node(&mut st, &node, i, &fabric, &mut fs, bins, say);
            // Recorded at once, so `lab down` finds it even if a later step fails.
            self.save(&st)?;
            made.with_context(|| {
                format!(
                    "setting up node {node} (namespace {}); {down}",
                    self.node_ns(&node)
                )
            })?;
        }
        if st.kubernetes {
            self.ensure_kubelet(&fabric, bins)?;
            let mut pods = Vec::new();
            for i in 1..=opts.nodes {
                let node = format!("node{i}");
                self.wait_agent(&node)
                    .with_context(|| format!("waiting for podnetd on {node}; {down}"))?;
                for j in 0..opts.pods_per_node {
                    pods.push((pod_name(i, j), node.clone()));
                }
            }
            // The lab's kubelet makes them; `podnet lab up` waits for that once it
            // has let go of the lab's lock (crate::lab_k8s::wait_pods).
            self.create_pods(&pods)?;
            self.save(&st)?;
            self.wait_converged(&st)?;
            say(&format!(
                "lab {} control plane and {} nodes up in {:.1} s; {} pods asked of the kubelet",
                self.name,
                st.nodes.len(),
                t0.elapsed().as_secs_f64(),
                pods.len()
            ));
            return Ok(st);
        }
        for i in 1..=opts.nodes {
            let node = format!("node{i}");
            self.wait_agent(&node)
                .with_context(|| format!("waiting for podnetd on {node}; {down}"))?;
            for j in 0..opts.pods_per_node {
                let pod = pod_name(i, j);
                let made = self.ensure_pod(&mut st, &pod, &node, bins, say);
                self.save(&st)?;
                made.with_context(|| format!("creating pod {pod} on {node}; {down}"))?;
            }
        }
        self.save(&st)?;
        self.wait_converged(&st)?;
        self.wait_policy(&st, None)?;
        say(&format!(
            "lab {} is up: {} nodes, {} pods, in {:.1} s",
            self.name,
            st.nodes.len(),
            st.pods.len(),
            t0.elapsed().as_secs_f64()
        ));
        Ok(st)
    }

    #[allow(clippy::too_many_arguments)]
    fn ensure_node(
        &self,
        st: &mut State,
        node: &str,
        i: usize,
        fabric: &Netns,
        fs: &mut Socket,
        bins: &Binaries,
        say: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let ns_name = self.node_ns(node);
        let (ns, made) = open_or_create_ns(&ns_name)?;
        let ip = underlay_ip(i);
        let mut s = ns.run(Socket::route)??;
        if link::get_by_name(&mut s, "eth0")?.is_none() {
            // A stale fabric end from a node that was deleted would block the name.
            link::delete_by_name(fs, node)?;
            link::create_veth(
                &mut s,
                &link::VethSpec {
                    name: "eth0",
                    mac: Some([0x02, 0x00, 192, 168, 1, 9 + i as u8]),
                    mtu: 1500,
                    peer_name: node,
                    peer_mac: None,
                    peer_netns_fd: Some(fabric.fd()),
                    master: None,
                    up: true,
                },
            )?;
            let fab_end = link::get_by_name(fs, node)?.context("fabric end of the node's cable")?;
            let br = link::get_by_name(fs, "fabric0")?.context("fabric bridge")?;
            link::change(
                fs,
                Target::Index(fab_end.index),
                &LinkChange {
                    up: Some(true),
                    master: Some(br.index),
                    ..Default::default()
                },
            )?;
            let eth0 = link::get_by_name(&mut s, "eth0")?.context("eth0")?;
            for r in s.ack_all(vec![addr::add_request(eth0.index, ip, 24)]) {
                if let Err(e) = r {
                    if !e.is_exists() {
                        return Err(e.into());
                    }
                }
            }
        }
        if made {
            say(&format!(
                "node {node}: namespace {ns_name}, eth0 {ip}/24 on the fabric"
            ));
        }
        if !st.nodes.iter().any(|n| n.name == node) {
            st.nodes.push(NodeState {
                name: node.into(),
                netns: ns_name.clone(),
                underlay_ip: ip,
            });
        }
        if st.kubernetes {
            self.register_node(node, ip)?;
        }
        if self.live_pid(node, "podnetd").is_none() {
            let dir = self.node_dir(node);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let mut cmd = Command::new(&bins.podnetd);
            cmd.arg("--node")
                .arg(node)
                .arg("--datastore")
                .arg(&st.datastore)
                .arg("--underlay-dev")
                .arg("eth0")
                .arg("--backend")
                .arg(&st.backend)
                .arg("--node-file")
                .arg(dir.join("node.json"))
                .arg("--api-socket")
                .arg(self.api_socket(node))
                .arg("--policy-datapath")
                .arg(&st.policy_datapath)
                .arg("--bpf-dir")
                .arg(self.bpf_dir().join(node));
            if !st.repair {
                cmd.arg("--no-repair");
            }
            let pid = spawn_in(&ns, cmd, Some(&dir.join("podnetd.log")))?;
            self.record_pid(node, pid)?;
            say(&format!(
                "node {node}: podnetd started (pid {pid}, log {})",
                dir.join("podnetd.log").display()
            ));
        }
        Ok(())
    }

    /// Gives the fabric bridge ETCD_ADDR (= the API server's address), where every
    /// node's eth0 reaches the lab's etcd or kube-apiserver.
    fn fabric_address(&self, fs: &mut Socket) -> Result<()> {
        let br = link::get_by_name(fs, "fabric0")?.context("fabric bridge")?;
        for r in fs.ack_all(vec![addr::add_request(br.index, ETCD_ADDR, 24)]) {
            if let Err(e) = r {
                if !e.is_exists() {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Runs etcd inside the fabric namespace at ETCD_ADDR:2379 (on the fabric bridge,
    /// where every node's eth0 reaches it), its data in the lab's directory.
    fn ensure_etcd(
        &self,
        fabric: &Netns,
        fs: &mut Socket,
        say: &mut dyn FnMut(&str),
    ) -> Result<()> {
        self.fabric_address(fs)?;
        if self.live_pid("etcd", "etcd").is_some() {
            return Ok(());
        }
        let data = self.dir.join("etcd");
        std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
        let client = format!("http://{ETCD_ADDR}:2379");
        let peer = format!("http://{ETCD_ADDR}:2380");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("lab")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("lab={peer}"));
        let pid = spawn_in(fabric, cmd, Some(&self.dir.join("etcd.log")))
            .context("start etcd (apt-get install etcd-server)")?;
        self.record_pid("etcd", pid)?;
        let t = Instant::now();
        let ready = fabric.run(|| loop {
            if std::net::TcpStream::connect_timeout(
                &SocketAddrV4::new(ETCD_ADDR, 2379).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return true;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        })?;
        if !ready {
            bail!(
                "etcd did not start within 10 s; see {}",
                self.dir.join("etcd.log").display()
            );
        }
        say(&format!(
            "etcd {client} in {} (pid {pid})",
            self.fabric_ns()
        ));
        Ok(())
    }

    /// Waits until every agent knows every other node (its routes are then in place).
    fn wait_converged(&self, st: &State) -> Result<()> {
        let want = st.nodes.len().saturating_sub(1);
        let t = Instant::now();
        loop {
            let lagging: Vec<&str> = st
                .nodes
                .iter()
                .filter(|n| {
                    ask(self, &n.name).and_then(|a| a["peers"].as_array().map(|p| p.len()))
                        != Some(want)
                })
                .map(|n| n.name.as_str())
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(15) {
                bail!(
                    "agents on {} do not see all {want} peers after 15 s; see their logs in {}",
                    lagging.join(", "),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the node's agent has published its pod CIDR.
    fn wait_agent(&self, node: &str) -> Result<()> {
        let file = self.node_dir(node).join("node.json");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(b) = std::fs::read(&file) {
                if serde_json::from_slice::<serde_json::Value>(&b)
                    .is_ok_and(|v| v["podCIDR"].is_string())
                {
                    return Ok(());
                }
            }
            if self.live_pid(node, "podnetd").is_none() {
                bail!(
                    "podnetd on {node} exited; see {}",
                    self.node_dir(node).join("podnetd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "podnetd on {node} did not publish its pod CIDR within 10 s; see {}",
            self.node_dir(node).join("podnetd.log").display()
        )
    }

    /// The network configuration a runtime would pass; `ip` is asked for through the
    /// `ips` capability, as a runtime does with `runtimeConfig`.
    fn cni_config(&self, node: &str, ip: Option<&str>) -> Vec<u8> {
        let dir = self.node_dir(node);
        let mut c = serde_json::json!({
            "cniVersion": "1.1.0", "name": "podnet", "type": "podnet-cni",
            "nodeFile": dir.join("node.json"), "dataDir": dir.join("ipam"),
        });
        if let Some(ip) = ip {
            c["runtimeConfig"] = serde_json::json!({ "ips": [ip] });
        }
        serde_json::to_vec(&c).expect("config serializes")
    }

    /// Makes sure pod `pod` exists on `node` with its echo server.
    ///
    /// Pod names are lowercase letters, digits and '-', at most 15 characters, and
    /// never a node's or the fabric's name (they share one namespace naming).
    pub fn ensure_pod(
        &self,
        st: &mut State,
        pod: &str,
        node: &str,
        bins: &Binaries,
        say: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let reserved = pod == "fabric"
            || pod
                .strip_prefix("node")
                .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()));
        if pod.is_empty()
            || pod.len() > 15
            || reserved
            || !pod
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("invalid pod name {pod:?}: use up to 15 lowercase letters, digits and '-', not \"fabric\" or \"nodeN\"");
        }
        let object = st
            .pods
            .iter()
            .find(|p| p.name == pod)
            .and_then(|p| p.object.clone())
            .unwrap_or_else(|| minimal_pod(pod));
        self.make_pod(st, pod, node, object, bins, say)
    }

    /// Makes sure the pod the lab calls `id` exists on `node`, as `object` describes it
    /// (namespace, labels, ports, a requested address): made through podnet-cni, its
    /// servers running, its Pod object (with node and address) in the datastore.
    pub fn make_pod(
        &self,
        st: &mut State,
        id: &str,
        node: &str,
        object: podnet_policy::objects::Pod,
        bins: &Binaries,
        say: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let pod = id;
        let node_ns = Netns::open(netns::named_path(&self.node_ns(node)))
            .with_context(|| format!("node {node} does not exist in lab {}", self.name))?;
        if let Some(p) = st.pods.iter().find(|p| p.name == pod && p.node != node) {
            bail!(
                "pod {} already exists on {} in lab {}; pick another name, or delete it first",
                p.key(),
                p.node,
                self.name,
            );
        }
        let ns_name = self.pod_ns(pod);
        let (ns, made) = open_or_create_ns(&ns_name)?;
        let requested = object
            .metadata
            .annotations
            .get(podnet_policy::objects::IP_ANNOTATION)
            .cloned();
        let attach = || -> Result<Option<exec::Attached>> {
            let mut ps = ns.run(Socket::route)??;
            if link::get_by_name(&mut ps, "eth0")?.is_some()
                && st.pods.iter().any(|p| p.name == pod)
            {
                return Ok(None);
            }
            let path = netns::named_path(&ns_name).display().to_string();
            let o = exec::run(
                &Call {
                    plugin: &bins.cni,
                    command: "ADD",
                    container_id: pod,
                    netns: &path,
                    ifname: "eth0",
                    cni_path: None,
                    config: &self.cni_config(node, requested.as_deref()),
                },
                Some(&node_ns),
            )?;
            if !o.ok() {
                bail!(
                    "podnet-cni ADD of pod {pod} on {node} failed: {}{}",
                    o.stdout.trim(),
                    o.stderr.trim()
                );
            }
            Ok(Some(exec::Attached::from_result(&o.json())?))
        };
        let attached = match attach() {
            Ok(a) => a,
            Err(e) => {
                // Not recorded in lab.json, so `lab down` would not find it: remove it
                // now (podnet-cni left nothing of its own behind on failure).
                if made {
                    let _ = netns::delete_named(&ns_name);
                }
                return Err(e);
            }
        };
        let namespace = object.metadata.ns().to_string();
        if let Some(a) = attached {
            let ip = a.ip;
            st.pods.retain(|p| p.name != pod);
            st.pods.push(PodState {
                name: pod.into(),
                node: node.into(),
                netns: ns_name.clone(),
                ip,
                mac: a.mac,
                host_veth: a.host_veth,
                namespace: namespace.clone(),
                object: Some(object),
                uid: None,
            });
            say(&format!(
                "pod {namespace}/{} on {node}: {ip} (namespace {ns_name})",
                st.pods
                    .last()
                    .map(|p| p.pod_name().to_string())
                    .unwrap_or_default()
            ));
        } else if let Some(p) = st.pods.iter_mut().find(|p| p.name == pod) {
            p.object = Some(object);
        }
        let p = st
            .pods
            .iter()
            .find(|p| p.name == pod)
            .cloned()
            .context("pod state")?;
        // The agents learn the pod (and open it) from its object, as from the API.
        let obj = podnet_policy::Object::Pod(p.stored_object());
        self.put_objects(st, &[obj])?;
        self.ensure_server(&p, &ns, bins)?;
        Ok(())
    }

    /// Starts the pod's server unless it runs: the echo port, and every declared port.
    pub fn ensure_server(&self, p: &PodState, ns: &Netns, bins: &Binaries) -> Result<()> {
        let echo = format!("echo-{}", p.name);
        if self.live_pid(&echo, "podnet").is_some() {
            return Ok(());
        }
        let (tcp, udp, sctp) = p.served_ports();
        let list = |v: &[u16]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = Command::new(&bins.podnet);
        cmd.args([
            "lab",
            "serve-echo",
            "--ip",
            &p.ip.to_string(),
            "--port",
            &ECHO_PORT.to_string(),
            "--tcp",
            &list(&tcp),
            "--udp",
            &list(&udp),
            "--sctp",
            &list(&sctp),
        ]);
        let pid = spawn_in(ns, cmd, None)?;
        self.record_pid(&echo, pid)?;
        Ok(())
    }

    /// Restarts the pod's server (its declared ports changed).
    pub fn restart_server(&self, p: &PodState, bins: &Binaries) -> Result<()> {
        self.stop(&format!("echo-{}", p.name), "podnet");
        let ns = Netns::open(netns::named_path(&p.netns))?;
        self.ensure_server(p, &ns, bins)
    }

    /// Deletes pod `pod` through podnet-cni DEL, then its namespace.
    pub fn del_pod(&self, st: &mut State, pod: &str, bins: &Binaries) -> Result<()> {
        let p = st
            .pods
            .iter()
            .find(|p| p.name == pod)
            .cloned()
            .with_context(|| format!("no pod {pod} in lab {}", self.name))?;
        // Its object goes first: the agent closes its address before it is freed.
        self.delete_objects(
            st,
            &[(
                "Pod".to_string(),
                p.namespace.clone(),
                p.pod_name().to_string(),
            )],
        )?;
        self.stop(&format!("echo-{pod}"), "podnet");
        if let Ok(node_ns) = Netns::open(netns::named_path(&self.node_ns(&p.node))) {
            let path = netns::named_path(&p.netns).display().to_string();
            let o = exec::run(
                &Call {
                    plugin: &bins.cni,
                    command: "DEL",
                    container_id: pod,
                    netns: &path,
                    ifname: "eth0",
                    cni_path: None,
                    config: &self.cni_config(&p.node, None),
                },
                Some(&node_ns),
            )?;
            if !o.ok() {
                bail!("podnet-cni DEL of pod {pod} failed: {}", o.stdout.trim());
            }
        }
        netns::delete_named(&p.netns)?;
        st.pods.retain(|q| q.name != pod);
        Ok(())
    }

    /// Removes node `node` from the cluster: from the datastore (its peers drop their
    /// routes to it), its agent, its pods and its namespace.
    pub fn del_node(&self, st: &mut State, node: &str) -> Result<()> {
        if !st.nodes.iter().any(|n| n.name == node) {
            bail!("no node {node} in lab {}", self.name);
        }
        self.stop(node, "podnetd");
        // Talk to the datastore from inside the fabric, where the lab's etcd lives: the
        // machine's own namespace never sends anything to lab addresses.
        let fabric = Netns::open(netns::named_path(&self.fabric_ns()))?;
        let url = st.datastore.clone();
        if st.kubernetes {
            self.kubectl(&["delete", "node", node, "--ignore-not-found"], None)?;
        } else {
            fabric.run(|| -> Result<()> {
                podnet_datastore::open(&url)?.remove(node)?;
                Ok(())
            })??;
        }
        let gone: Vec<PodState> = st.pods.iter().filter(|p| p.node == node).cloned().collect();
        let keys: Vec<_> = gone
            .iter()
            .map(|p| {
                (
                    "Pod".to_string(),
                    p.namespace.clone(),
                    p.pod_name().to_string(),
                )
            })
            .collect();
        if !st.kubernetes {
            let _ =
                fabric.run(|| podnet_datastore::open(&url).and_then(|d| d.delete_objects(&keys)));
        }
        for p in gone {
            self.stop(&format!("echo-{}", p.name), "podnet");
            netns::delete_named(&p.netns)?;
            st.pods.retain(|q| q.name != p.name);
        }
        netns::delete_named(&self.node_ns(node))?;
        let _ = std::fs::remove_dir_all(self.node_dir(node));
        st.nodes.retain(|n| n.name != node);
        Ok(())
    }

    /// Removes everything the lab made.
    pub fn down(&self) -> Result<usize> {
        let st = self.load().ok().flatten().unwrap_or_default();
        let mut removed = 0;
        // Every process the lab started has a pid file, recorded or not in lab.json.
        let pids: Vec<String> = std::fs::read_dir(self.dir.join("pids"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".pid")
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for what in pids {
            let comm = if let Some(c) = crate::lab_k8s::comm_of(&what) {
                c
            } else if what == "etcd" {
                "etcd"
            } else if what.starts_with("echo-") {
                "podnet"
            } else {
                "podnetd"
            };
            self.stop(&what, comm);
        }
        // Every namespace of this lab: the recorded ones, and the fabric and nodes by
        // their fixed names (a crashed run may not have recorded them). Never a
        // prefix match: lab "a" must not take lab "a-2"'s namespaces.
        let prefix = format!("{}-node", self.name);
        let is_node = |n: &str| {
            n.strip_prefix(&prefix)
                .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
        };
        let known: Vec<String> = st
            .pods
            .iter()
            .map(|p| p.netns.clone())
            .chain(st.nodes.iter().map(|n| n.netns.clone()))
            .chain([self.fabric_ns()])
            .collect();
        let on_disk: Vec<String> = std::fs::read_dir(netns::NETNS_RUN_DIR)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for name in on_disk.iter().filter(|n| known.contains(n) || is_node(n)) {
            if netns::delete_named(name)? {
                removed += 1;
            }
        }
        // The lab's bpffs, if it has one: its pinned maps and programs go with it.
        let bpf = std::ffi::CString::new(self.bpf_dir().as_os_str().as_encoded_bytes())?;
        // SAFETY: unmounting the lab's own mount point (EINVAL when nothing is mounted).
        unsafe { libc::umount2(bpf.as_ptr(), libc::MNT_DETACH) };
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("remove {}", self.dir.display()))?;
        let _ = std::fs::remove_file(Path::new(LAB_ROOT).join(format!(".{}.lock", self.name)));
        Ok(removed)
    }
}

/// The lab's status as data (`lab status --output json`).
#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub fabric: FabricStatus,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodState>,
}

#[derive(Debug, Serialize)]
pub struct FabricStatus {
    pub netns: String,
    pub bridge: String,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Option<String>,
    pub bridge: Option<String>,
    pub vxlan_dev: Option<String>,
    pub vtep_mac: Option<String>,
    pub agent_pid: Option<u32>,
    pub peers: usize,
}

impl Lab {
    pub fn status(&self) -> Result<Status> {
        let st = self.load()?.with_context(|| {
            format!(
                "no lab {} on this machine; start one with `podnet lab up --name {}`",
                self.name, self.name
            )
        })?;
        let nodes = st
            .nodes
            .iter()
            .map(|n| {
                let agent = crate::lab::ask(self, &n.name);
                let s = |k: &str| {
                    agent
                        .as_ref()
                        .and_then(|a| a[k].as_str().filter(|v| !v.is_empty()).map(String::from))
                };
                NodeStatus {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    underlay_ip: n.underlay_ip,
                    pod_cidr: s("pod_cidr"),
                    bridge: s("bridge"),
                    vxlan_dev: s("vxlan_dev"),
                    vtep_mac: s("vtep_mac"),
                    agent_pid: self.live_pid(&n.name, "podnetd"),
                    peers: agent
                        .as_ref()
                        .and_then(|a| a["peers"].as_array().map(|p| p.len()))
                        .unwrap_or(0),
                }
            })
            .collect();
        Ok(Status {
            name: st.name.clone(),
            fabric: FabricStatus {
                netns: self.fabric_ns(),
                bridge: "fabric0".into(),
            },
            nodes,
            pods: st.pods,
        })
    }
}

/// The agent's `status`, if it answers.
pub fn ask(lab: &Lab, node: &str) -> Option<serde_json::Value> {
    podnet_agent::api::ask(&lab.api_socket(node), "status").ok()
}

/// One cell of the connectivity matrix.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub src: String,
    pub dst: String,
    pub ok: bool,
    /// The source address the destination's echo server saw.
    pub seen_source: Option<String>,
    /// True when the destination saw the source pod's own IP.
    pub no_nat: bool,
    pub error: Option<String>,
    /// What NetworkPolicy says of this pair (TCP to the echo port): whether it must
    /// connect.
    pub allowed_by_policy: bool,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub pairs: Vec<Probe>,
    pub reachable: usize,
    pub total: usize,
    pub nat_free: bool,
    /// Pairs that policy denies, and that were indeed not reached.
    pub denied_by_policy: usize,
    /// Pairs whose outcome is not what policy says (unreachable although allowed, or
    /// reached although denied).
    pub unexpected: usize,
}

impl Lab {
    /// Every pod to every other pod, TCP to its echo server, all at once, each outcome
    /// held against what NetworkPolicy says of that pair.
    pub fn check(&self) -> Result<Check> {
        let st = self
            .load()?
            .with_context(|| format!("no lab {}", self.name))?;
        let cluster = if st.policy_datapath == "none" {
            None
        } else {
            Some(podnet_policy::Cluster::from_objects(&self.objects(&st)?))
        };
        let allowed = |src: &PodState, dst: &PodState| {
            let Some(c) = &cluster else { return true };
            let end = |p: &PodState| podnet_policy::End {
                ip: p.ip,
                pod: c.pod(&p.namespace, p.pod_name()),
            };
            podnet_policy::evaluate(
                c,
                &end(src),
                &end(dst),
                podnet_policy::Proto::Tcp,
                ECHO_PORT,
            )
            .allowed()
        };
        let mut jobs = Vec::new();
        {
            for src in &st.pods {
                for dst in st.pods.iter().filter(|d| d.name != src.name) {
                    let must = allowed(src, dst);
                    jobs.push(move || -> Result<Probe> {
                        let ns = Netns::open(netns::named_path(&src.netns))?;
                        let r = probe::tcp_request(
                            &ns,
                            SocketAddrV4::new(dst.ip, ECHO_PORT),
                            "check",
                            Duration::from_secs(2),
                        );
                        let (ok, seen, error) = match r {
                            Ok(line) => {
                                let seen = line
                                    .strip_prefix("from=")
                                    .and_then(|l| l.split(' ').next())
                                    .map(String::from);
                                (true, seen, None)
                            }
                            Err(e) => (false, None, Some(format!("{e:#}"))),
                        };
                        let no_nat = seen.as_deref() == Some(&src.ip.to_string());
                        Ok(Probe {
                            src: src.name.clone(),
                            dst: dst.name.clone(),
                            ok,
                            seen_source: seen,
                            no_nat,
                            error,
                            allowed_by_policy: must,
                        })
                    });
                }
            }
        }
        let pairs = crate::reach::all_at_once(jobs)?;
        let reachable = pairs.iter().filter(|p| p.ok).count();
        let nat_free = pairs.iter().filter(|p| p.ok).all(|p| p.no_nat);
        Ok(Check {
            total: pairs.len(),
            reachable,
            nat_free,
            denied_by_policy: pairs
                .iter()
                .filter(|p| !p.ok && !p.allowed_by_policy)
                .count(),
            unexpected: pairs.iter().filter(|p| p.ok != p.allowed_by_policy).count(),
            pairs,
        })
    }
}

/// The matrix for people: ✓ reachable with the source address preserved, N reachable
/// but NATed, P not reached and denied by policy (as it should be), ✗ unreachable
/// although allowed, ! reached although policy denies it.
pub fn render_check(c: &Check, pods: &[PodState]) -> String {
    let w = pods.iter().map(|p| p.name.len()).max().unwrap_or(0).max(5) + 1;
    let mut s = format!("{:<w$}", "from\\to");
    for d in pods {
        s.push_str(&format!("{:>w$}", d.name));
    }
    s.push('\n');
    for src in pods {
        s.push_str(&format!("{:<w$}", src.name));
        for dst in pods {
            let cell = if src.name == dst.name {
                "·"
            } else {
                match c
                    .pairs
                    .iter()
                    .find(|p| p.src == src.name && p.dst == dst.name)
                {
                    Some(p) if p.ok && !p.allowed_by_policy => "!",
                    Some(p) if p.ok && p.no_nat => "✓",
                    Some(p) if p.ok => "N",
                    Some(p) if !p.allowed_by_policy => "P",
                    _ => "✗",
                }
            };
            s.push_str(&format!("{cell:>w$}"));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "{}/{} pairs reachable, {} denied by NetworkPolicy as it should be; {}\n",
        c.reachable,
        c.total,
        c.denied_by_policy,
        if c.nat_free {
            "every destination saw the sender's own pod IP (no NAT)"
        } else {
            "SOME DESTINATIONS SAW A REWRITTEN SOURCE (NAT)"
        }
    ));
    for p in c.pairs.iter().filter(|p| p.ok != p.allowed_by_policy) {
        if p.ok {
            s.push_str(&format!(
                "  ! {} → {}: reached although NetworkPolicy denies it on port {ECHO_PORT}: see `podnet policy explain` and `podnet trace --port {ECHO_PORT}`\n",
                p.src, p.dst
            ));
        } else {
            s.push_str(&format!(
                "  ✗ {} → {}: {}\n",
                p.src,
                p.dst,
                p.error.as_deref().unwrap_or("")
            ));
        }
    }
    s
}

/// `podnet lab exec POD -- CMD…`: runs CMD inside the pod's namespace.
pub fn exec_in(lab: &Lab, pod: &str, argv: &[String]) -> Result<i32> {
    let st = lab
        .load()?
        .with_context(|| format!("no lab {}", lab.name))?;
    let p = st.pods.iter().find(|p| p.name == pod).with_context(|| {
        format!(
            "no pod {pod} in lab {}; pods: {}",
            lab.name,
            st.pods
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let ns = Netns::open(netns::named_path(&p.netns))?;
    let (prog, args) = argv.split_first().context("give a command after --")?;
    let fd = ns.fd();
    let mut cmd = Command::new(prog);
    cmd.args(args);
    // SAFETY: setns between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().with_context(|| format!("run {prog}"))?;
    Ok(status.code().unwrap_or(1))
}

/// An underlay address no lab node has (nodes count up from 192.168.1.10; etcd is .2).
const MISROUTE_VIA: &str = "192.168.1.250";

/// Faults `podnet lab fault inject` can make, for learning and for tests.
pub const FAULTS: &[(&str, &str)] = &[
    (
        "vxlan-port-blocked",
        "the physical network drops UDP 8472 (an nftables rule on the fabric switch)",
    ),
    (
        "underlay-mtu",
        "the physical network's MTU drops to 1400 (the fabric switch ports)",
    ),
    (
        "missing-route",
        "a node loses its routes to its peers' pod CIDRs (--node)",
    ),
    (
        "misrouted",
        "a node's routes to its peers' pod CIDRs point at an address nobody has (--node)",
    ),
    ("missing-fdb", "a node loses its VXLAN FDB entries (--node)"),
    (
        "missing-neigh",
        "a node loses its neighbour entries for peer VTEPs (--node)",
    ),
    ("veth-down", "a pod's host-side veth goes down (--pod)"),
    (
        "pod-no-default-route",
        "a pod loses its default route (--pod)",
    ),
    ("forwarding-off", "a node stops forwarding IPv4 (--node)"),
    ("vxlan-down", "a node's VXLAN device goes down (--node)"),
];

fn run_cmd(argv: &[String], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().with_context(|| format!("run {}", argv[0]))?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        i.write_all(text.as_bytes())?;
    }
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// podnet's routes on a node (protocol 0x50), each as the words of `ip route show`.
fn podnet_routes(nns: &str) -> Result<Vec<Vec<String>>> {
    let out = run_cmd(
        &argv(&["ip", "-n", nns, "route", "show", "proto", "80"]),
        None,
    )?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect())
}

/// The command that puts a route from [`podnet_routes`] back, protocol included
/// (`show proto 80` leaves it out of each line).
fn route_back(nns: &str, r: &[String]) -> Vec<String> {
    let mut add = argv(&["ip", "-n", nns, "route", "replace"]);
    add.extend(r.iter().cloned());
    add.extend(argv(&["proto", "80"]));
    add
}

/// The permanent neighbour entries on a node's VXLAN device: `(ip, mac)`.
fn vtep_neighs(nns: &str) -> Result<Vec<(String, String)>> {
    let out = run_cmd(
        &argv(&[
            "ip",
            "-n",
            nns,
            "neigh",
            "show",
            "dev",
            "podnet.vxlan",
            "nud",
            "permanent",
        ]),
        None,
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "lladdr")?;
            Some((w.first()?.to_string(), w.get(i + 1)?.to_string()))
        })
        .collect())
}

fn neigh_back(nns: &str, ip: &str, mac: &str) -> Vec<String> {
    argv(&[
        "ip",
        "-n",
        nns,
        "neigh",
        "replace",
        ip,
        "lladdr",
        mac,
        "dev",
        "podnet.vxlan",
        "nud",
        "permanent",
    ])
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

impl Lab {
    fn faults_file(&self) -> PathBuf {
        self.dir.join("faults.json")
    }

    /// Breaks the lab in one of the [`FAULTS`] ways; remembers how to undo it.
    pub fn inject(
        &self,
        st: &State,
        kind: &str,
        node: Option<&str>,
        pod: Option<&str>,
    ) -> Result<String> {
        let node = node.unwrap_or("node1");
        let nns = self.node_ns(node);
        if !FAULTS.iter().any(|(k, _)| *k == kind) {
            bail!(
                "unknown fault {kind:?}; known: {}",
                FAULTS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !st.nodes.iter().any(|n| n.name == node) {
            bail!("no node {node} in lab {}", self.name);
        }
        let pod = match pod {
            Some(p) => st
                .pods
                .iter()
                .find(|q| q.name == p)
                .with_context(|| format!("no pod {p} in lab {}", self.name))?
                .clone(),
            None => st
                .pods
                .iter()
                .find(|q| q.node == node)
                .or(st.pods.first())
                .cloned()
                .context("the lab has no pods")?,
        };
        let fab = self.fabric_ns();
        let mut undo: Vec<Vec<String>> = Vec::new();
        // The steps run in a closure so that, if one fails half-way, the undo
        // steps of what did change are still recorded for `fault clear`.
        let result = (|| -> Result<String> {
            Ok(match kind {
                "vxlan-port-blocked" => {
                    let rules = "table bridge podnet_fault {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  udp dport 8472 drop\n }\n}\n";
                    run_cmd(
                        &argv(&["ip", "netns", "exec", &fab, "nft", "-f", "-"]),
                        Some(rules),
                    )?;
                    undo.push(argv(&[
                        "ip",
                        "netns",
                        "exec",
                        &fab,
                        "nft",
                        "delete",
                        "table",
                        "bridge",
                        "podnet_fault",
                    ]));
                    format!("fabric {fab} drops UDP 8472")
                }
                "underlay-mtu" => {
                    for n in &st.nodes {
                        run_cmd(
                            &argv(&["ip", "-n", &fab, "link", "set", &n.name, "mtu", "1400"]),
                            None,
                        )?;
                        undo.push(argv(&[
                            "ip", "-n", &fab, "link", "set", &n.name, "mtu", "1500",
                        ]));
                    }
                    "fabric ports now carry at most 1400 bytes".into()
                }
                "missing-route" => {
                    for r in podnet_routes(&nns)? {
                        let mut del = argv(&["ip", "-n", &nns, "route", "del"]);
                        del.extend(r.iter().cloned());
                        run_cmd(&del, None)?;
                        undo.push(route_back(&nns, &r));
                    }
                    format!("{node} lost its podnet routes")
                }
                "misrouted" => {
                    // Same prefixes, still podnet's protocol, but the wrong next hop: a
                    // route that exists is not enough, trace must check where it points.
                    for r in podnet_routes(&nns)? {
                        let mut bad = argv(&["ip", "-n", &nns, "route", "replace"]);
                        bad.extend(r.first().cloned());
                        bad.extend(argv(&["via", MISROUTE_VIA, "dev", "eth0", "proto", "80"]));
                        run_cmd(&bad, None)?;
                        undo.push(route_back(&nns, &r));
                    }
                    format!("{node}'s podnet routes now point at {MISROUTE_VIA}, which no node has")
                }
                "missing-fdb" => {
                    let fdb = run_cmd(
                        &argv(&["bridge", "-n", &nns, "fdb", "show", "dev", "podnet.vxlan"]),
                        None,
                    )?;
                    for l in fdb.lines() {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        let dst = w
                            .iter()
                            .position(|x| *x == "dst")
                            .and_then(|i| w.get(i + 1));
                        if let (Some(mac), Some(&dst)) = (w.first(), dst) {
                            run_cmd(
                                &argv(&[
                                    "bridge",
                                    "-n",
                                    &nns,
                                    "fdb",
                                    "del",
                                    mac,
                                    "dev",
                                    "podnet.vxlan",
                                    "dst",
                                    dst,
                                    "self",
                                ]),
                                None,
                            )?;
                            undo.push(argv(&[
                                "bridge",
                                "-n",
                                &nns,
                                "fdb",
                                "append",
                                mac,
                                "dev",
                                "podnet.vxlan",
                                "dst",
                                dst,
                                "self",
                                "permanent",
                            ]));
                        }
                    }
                    format!("{node} lost its VXLAN FDB entries")
                }
                "missing-neigh" => {
                    for (ip, mac) in vtep_neighs(&nns)? {
                        run_cmd(
                            &argv(&["ip", "-n", &nns, "neigh", "del", &ip, "dev", "podnet.vxlan"]),
                            None,
                        )?;
                        undo.push(neigh_back(&nns, &ip, &mac));
                    }
                    format!("{node} lost its neighbour entries for peer VTEPs")
                }
                "veth-down" => {
                    let pns = self.node_ns(&pod.node);
                    run_cmd(
                        &argv(&["ip", "-n", &pns, "link", "set", &pod.host_veth, "down"]),
                        None,
                    )?;
                    undo.push(argv(&[
                        "ip",
                        "-n",
                        &pns,
                        "link",
                        "set",
                        &pod.host_veth,
                        "up",
                    ]));
                    format!("host veth {} of pod {} is down", pod.host_veth, pod.name)
                }
                "pod-no-default-route" => {
                    let r = run_cmd(
                        &argv(&["ip", "-n", &pod.netns, "route", "show", "default"]),
                        None,
                    )?;
                    run_cmd(
                        &argv(&["ip", "-n", &pod.netns, "route", "del", "default"]),
                        None,
                    )?;
                    if let Some(l) = r.lines().next() {
                        let mut add = argv(&["ip", "-n", &pod.netns, "route", "add"]);
                        add.extend(l.split_whitespace().map(String::from));
                        undo.push(add);
                    }
                    format!("pod {} has no default route", pod.name)
                }
                "forwarding-off" => {
                    run_cmd(
                        &argv(&[
                            "ip",
                            "netns",
                            "exec",
                            &nns,
                            "sysctl",
                            "-qw",
                            "net.ipv4.ip_forward=0",
                        ]),
                        None,
                    )?;
                    undo.push(argv(&[
                        "ip",
                        "netns",
                        "exec",
                        &nns,
                        "sysctl",
                        "-qw",
                        "net.ipv4.ip_forward=1",
                    ]));
                    format!("{node} no longer forwards IPv4")
                }
                "vxlan-down" => {
                    // Down flushes the device's routes and neighbours: keep them to put back.
                    let (routes, neighs) = (podnet_routes(&nns)?, vtep_neighs(&nns)?);
                    run_cmd(
                        &argv(&["ip", "-n", &nns, "link", "set", "podnet.vxlan", "down"]),
                        None,
                    )?;
                    // Undone newest first: these run after the link is up again.
                    undo.extend(neighs.iter().map(|(ip, mac)| neigh_back(&nns, ip, mac)));
                    undo.extend(routes.iter().map(|r| route_back(&nns, r)));
                    undo.push(argv(&[
                        "ip",
                        "-n",
                        &nns,
                        "link",
                        "set",
                        "podnet.vxlan",
                        "up",
                    ]));
                    format!("{node}'s VXLAN device is down")
                }
                _ => unreachable!("checked above"),
            })
        })();
        if !undo.is_empty() {
            let mut all = self.read_faults()?;
            all.extend(undo);
            let path = self.faults_file();
            std::fs::write(&path, serde_json::to_vec_pretty(&all)?).with_context(|| {
                format!(
                    "could not record how to undo fault {kind} in {}; `podnet lab down --name {}` removes the whole lab",
                    path.display(),
                    self.name
                )
            })?;
        }
        result.with_context(|| {
            format!(
                "injecting fault {kind} on {node} failed; whatever it changed is undone by `podnet lab fault clear --name {}`",
                self.name
            )
        })
    }

    fn read_faults(&self) -> Result<Vec<Vec<String>>> {
        let path = self.faults_file();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is not a list of undo steps; remove it, or `podnet lab down --name {}`",
                    path.display(),
                    self.name
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Undoes every injected fault, newest first; returns how many steps ran.
    pub fn clear_faults(&self) -> Result<usize> {
        let all = self.read_faults()?;
        let mut failed = Vec::new();
        for cmd in all.iter().rev() {
            if let Err(e) = run_cmd(cmd, None) {
                failed.push(e.to_string());
            }
        }
        // A step that failed is not kept for another try: it fails again the same
        // way (most often the agent already repaired that object).
        let _ = std::fs::remove_file(self.faults_file());
        if !failed.is_empty() {
            bail!(
                "{} of {} undo steps failed (an agent may have repaired them already): {}; \
                 `podnet lab check --name {}` shows what is still broken, `podnet lab down --name {}` removes the lab",
                failed.len(),
                all.len(),
                failed.join("; "),
                self.name,
                self.name
            );
        }
        Ok(all.len())
    }
}
