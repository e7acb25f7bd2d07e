//! `podnet lab up --kubernetes`: the lab on a real Kubernetes control plane.
//!
//! # What runs, and where
//! Inside the lab's fabric namespace, on the fabric bridge's address
//! [`API_ADDR`] (where every node's eth0 reaches it):
//! - etcd (built from its Go module by `scripts/kubernetes.sh`), on the fabric's
//!   loopback, data in `<lab>/k8s/etcd`;
//! - kube-apiserver on `https://API_ADDR:6443`, TLS with certificates the lab makes
//!   (`<lab>/k8s/pki`, with `openssl`), RBAC on;
//! - kube-controller-manager with the node IPAM controller (allocates each Node's
//!   `spec.podCIDR` from [`CLUSTER_CIDR`]), the namespace controller (deleting a
//!   namespace deletes its pods) and the service-account controller (every namespace
//!   gets its `default` ServiceAccount, which Pods need);
//! - the lab's kubelet (`podnet lab kubelet`, log `<lab>/k8s/kubelet.log`): for every
//!   Pod bound to a lab node (`spec.nodeName`; the lab runs no scheduler) it makes the
//!   pod's namespace through podnet-cni as a runtime does, starts its servers, and
//!   writes the pod's status (podIP, podIPs, phase Running); a deleted Pod is torn
//!   down through podnet-cni DEL and then removed from the API, as a kubelet does.
//!
//! The lab registers one Node per lab node (InternalIP = its underlay address, Ready).
//! Each node's agent runs with `--datastore kubernetes:<lab>/k8s/agent-<node>.kubeconfig`:
//! a token of the ServiceAccount that `deploy/rbac.yaml` binds, bound to its Node (so it
//! carries the node's name, as a DaemonSet pod's token does), with
//! `deploy/admission.yaml` applied: each agent has exactly the rights a real rollout
//! gives it, and may change its own Node only. (`<lab>/k8s/agent.kubeconfig`, a token
//! bound to no node, is kept for the access checks that need no Node change.)
//! `podnet lab kubeconfig` prints the admin
//! kubeconfig's path; `podnet lab kubectl -- …` runs kubectl with it, in the fabric.

mod control_plane;
pub(crate) use control_plane::{cluster_ranges, service_ranges};
mod kubelet;

use control_plane::*;
pub use kubelet::run_kubelet;

use crate::apply::{parse_manifests, pod_id, Change};
use crate::{Binaries, Lab, State, ETCD_ADDR};
use anyhow::{bail, Context, Result};
use podnet_conventions::PolicyDatapath;
use podnet_netlink::{netns, Netns};
use podnet_policy::Object;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes release `scripts/kubernetes.sh` builds.
pub const K8S_VERSION: &str = "1.37.2";
pub const ETCD_VERSION: &str = "3.7.0";
/// The API server's address: the fabric bridge's (the same one a `--datastore etcd`
/// lab's etcd uses; a lab has one or the other).
pub const API_ADDR: Ipv4Addr = ETCD_ADDR;
pub const API_PORT: u16 = 6443;
/// Where kube-controller-manager cuts Node pod CIDRs from (`/24` each): podnetd's
/// default `--cluster-cidr`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// A dual-stack lab's IPv6 Service range.
const SERVICE_CIDR6: &str = "fd00:10:96::/112";
/// The agent's RBAC as shipped: the lab's agents run with exactly these rights.
pub const RBAC_YAML: &str = include_str!("../../../../deploy/rbac.yaml");
pub const NAMESPACE_YAML: &str = include_str!("../../../../deploy/namespace.yaml");
pub const ADMISSION_YAML: &str = include_str!("../../../../deploy/admission.yaml");

/// The directory holding etcd, kube-apiserver, kube-controller-manager and kubectl:
/// `$PODNET_KUBERNETES_BIN`, else where `scripts/kubernetes.sh` caches them.
pub fn bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("PODNET_KUBERNETES_BIN") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(format!(
            "/var/cache/podnet/kubernetes/v{K8S_VERSION}-etcd{ETCD_VERSION}"
        )),
    };
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        if !dir.join(b).is_file() {
            bail!(
                "{} is missing: the lab's Kubernetes binaries are built from Go modules by scripts/kubernetes.sh (15-25 minutes the first time, cached after); run it, or point PODNET_KUBERNETES_BIN at a directory holding etcd, kube-apiserver, kube-controller-manager and kubectl v{K8S_VERSION}",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

/// The name under /proc/PID/stat of each control-plane process (15 characters).
pub fn comm_of(what: &str) -> Option<&'static str> {
    Some(match what {
        "k8s-etcd" => "etcd",
        "kube-apiserver" => "kube-apiserver",
        "kube-controller-manager" => "kube-controller",
        "kubelet" => "podnet",
        "kube-scheduler" => "kube-scheduler",
        // A real node's daemons (crate::real): `<node>.<daemon>`.
        w => match w.split_once('.')?.1 {
            "kubelet" => "kubelet",
            "containerd" => "containerd",
            "kube-proxy" => "kube-proxy",
            _ => return None,
        },
    })
}

/// Runs `cmd` (no input), which must succeed: its standard output, or an error with
/// what it said.
pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Lab {
    pub fn k8s_dir(&self) -> PathBuf {
        self.dir.join("k8s")
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.k8s_dir().join("admin.kubeconfig")
    }

    /// The agents' kubeconfig: the `podnet/podnet` ServiceAccount's token.
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.k8s_dir().join("agent.kubeconfig")
    }

    /// Node `node`'s agent kubeconfig: a token of the same ServiceAccount bound to the
    /// Node, so that it carries the node's name
    /// (`authentication.kubernetes.io/node-name`) as the token of a DaemonSet pod
    /// does, and `deploy/admission.yaml` lets it change only that Node.
    pub fn node_agent_kubeconfig(&self, node: &str) -> PathBuf {
        self.k8s_dir().join(format!("agent-{node}.kubeconfig"))
    }

    /// kubectl with the admin kubeconfig, run inside the fabric (where the API server
    /// is); the fabric's descriptor stays open as long as the command.
    pub fn kubectl_command(&self) -> Result<(Command, Netns)> {
        let fabric = Netns::open(netns::named_path(&self.fabric_ns()))
            .with_context(|| format!("lab {} has no fabric; run `podnet lab up`", self.name))?;
        let mut cmd = Command::new(bin_dir()?.join("kubectl"));
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        netns::in_netns(&mut cmd, fabric.fd(), None, false);
        Ok((cmd, fabric))
    }

    /// Runs kubectl; its output, or an error with what kubectl said.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let (mut cmd, _fabric) = self.kubectl_command()?;
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("start kubectl")?;
        if let Some(s) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(s.as_bytes())
                .context("write to kubectl")?;
        }
        let o = child.wait_with_output().context("wait for kubectl")?;
        if !o.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn kubectl_json(&self, args: &[&str], stdin: Option<&str>) -> Result<Value> {
        let out = self.kubectl(args, stdin)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }

    /// Makes `<pki>/<name>.key` and a certificate for it signed by the lab's CA.
    pub(crate) fn sign_cert(&self, name: &str, subj: &str, ext: &str) -> Result<()> {
        let pki = self.k8s_dir().join("pki");
        let ossl = |args: &[&str]| openssl(&pki, args);
        openssl_key(&pki, &format!("{name}.key"))?;
        ossl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subj,
        ])?;
        std::fs::write(pki.join(format!("{name}.ext")), ext)?;
        ossl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "3650",
            "-extfile",
            &format!("{name}.ext"),
        ])
    }

    pub(crate) fn write_kubeconfig(&self, path: &Path, user: Value) -> Result<()> {
        let pki = self.k8s_dir().join("pki");
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {
                "server": format!("https://{API_ADDR}:{API_PORT}"),
                "certificate-authority": pki.join("ca.crt"),
            }}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "user"}}],
            "current-context": "lab",
        });
        // JSON is YAML: kubectl and kube-rs both read it.
        std::fs::write(path, serde_json::to_vec_pretty(&kc)?)
            .with_context(|| format!("write {}", path.display()))
    }

    /// Registers lab node `node` as a Node (InternalIP `ip`, and `ip6` on a dual-stack
    /// lab; Ready), as its kubelet would.
    pub(crate) fn register_node(
        &self,
        node: &str,
        ip: Ipv4Addr,
        ip6: Option<std::net::Ipv6Addr>,
    ) -> Result<()> {
        let obj = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {
                "kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}},
        });
        self.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()))?;
        let now = crate::now_rfc3339();
        let mut addresses = vec![json!({"type": "InternalIP", "address": ip.to_string()})];
        if let Some(ip6) = ip6 {
            addresses.push(json!({"type": "InternalIP", "address": ip6.to_string()}));
        }
        addresses.push(json!({"type": "Hostname", "address": node}));
        let status = json!({"status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "PodnetLab",
                            "message": "the podnet lab plays this node's kubelet",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }});
        self.kubectl(
            &[
                "patch",
                "node",
                node,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )?;
        // Made again with every registration: a token bound to a Node dies with it.
        let token = self.kubectl(
            &[
                "create",
                "token",
                "podnet",
                "-n",
                "podnet",
                "--bound-object-kind=Node",
                &format!("--bound-object-name={node}"),
                "--duration=720h",
            ],
            None,
        )?;
        self.write_kubeconfig(
            &self.node_agent_kubeconfig(node),
            json!({"token": token.trim()}),
        )?;
        Ok(())
    }

    /// Creates Pod objects for `lab up`'s pods (bound to their nodes).
    pub fn create_pods(&self, pods: &[(String, String)]) -> Result<()> {
        if pods.is_empty() {
            return Ok(());
        }
        let items: Vec<Value> = pods
            .iter()
            .map(|(pod, node)| {
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": pod, "namespace": "default"},
                       "spec": {"nodeName": node, "containers": [{"name": "echo", "image": "podnet-lab/echo"}]}})
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.kubectl(&["apply", "-f", "-"], Some(&list.to_string()))?;
        Ok(())
    }
}

/// Waits, without holding the lab's lock (the kubelet needs it), until every pod in
/// `ids` (the lab's ids) is made and has its address in the API, or `gone` ones are
/// torn down.
pub fn wait_pods(name: &str, ids: &[String], gone: &[String], timeout: Duration) -> Result<State> {
    let t = Instant::now();
    loop {
        let st = {
            let lab = Lab::open(name)?;
            lab.load()?.context("lab state")?
        };
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !st.pods.iter().any(|p| &&p.name == id && p.uid.is_some()))
            .chain(
                gone.iter()
                    .filter(|id| st.pods.iter().any(|p| &&p.name == id)),
            )
            .collect();
        if missing.is_empty() {
            return Ok(st);
        }
        if t.elapsed() > timeout {
            bail!(
                "the lab's kubelet did not finish pods {} within {timeout:?}; see {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                Path::new(crate::LAB_ROOT)
                    .join(name)
                    .join("k8s/kubelet.log")
                    .display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `"Pod ns/name"`: how agents key object versions.
fn version_key(v: &Value) -> Option<(String, String)> {
    let kind = v["kind"].as_str()?;
    let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
    let name = v["metadata"]["name"].as_str()?;
    let rv = v["metadata"]["resourceVersion"].as_str()?;
    Some((format!("{kind} {ns}/{name}"), rv.to_string()))
}

/// Waits until every agent's programmed verdicts reflect each object at least at the
/// given version (`None`: the object is gone).
pub fn wait_versions(
    name: &str,
    want: &BTreeMap<String, Option<u64>>,
    timeout: Duration,
) -> Result<()> {
    let (nodes, agents, datapath) = {
        let lab = Lab::open(name)?;
        let st = lab.load()?.context("lab state")?;
        let agents: Vec<_> = st.nodes.iter().map(|n| lab.agent(&n.name)).collect();
        (
            st.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
            agents,
            st.policy_datapath,
        )
    };
    if datapath == PolicyDatapath::None || want.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = want.keys().cloned().collect();
    let t = Instant::now();
    loop {
        let mut lagging = Vec::new();
        for (node, agent) in nodes.iter().zip(&agents) {
            let (behind, error) = match agent.policy_versions(keys.clone()) {
                Ok(v) => (
                    want.iter().any(|(k, w)| {
                        let have = v
                            .versions
                            .get(k)
                            .cloned()
                            .flatten()
                            .and_then(|s| s.parse::<u64>().ok());
                        match (w, have) {
                            (Some(w), Some(h)) => h < *w,
                            (Some(_), None) => true,
                            (None, h) => h.is_some(),
                        }
                    }),
                    v.error,
                ),
                Err(e) => (true, Some(e.to_string())),
            };
            if behind {
                lagging.push(format!(
                    "{node}{}",
                    error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            }
        }
        if lagging.is_empty() {
            return Ok(());
        }
        if t.elapsed() > timeout {
            bail!(
                "the policy datapath on {} does not reflect the applied objects after {timeout:?}; see the agents' logs in {}/{name}",
                lagging.join(", "),
                crate::LAB_ROOT
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `podnet lab apply` on a Kubernetes lab: the file is checked whole as on any lab,
/// then applied with kubectl; with `wait`, returns once the pods run and every agent
/// enforces the objects at the versions the API server gave them.
pub fn apply(name: &str, text: &str, wait: bool) -> Result<Vec<Change>> {
    let objs = parse_manifests(text)?;
    let out = {
        let lab = Lab::open(name)?;
        let st = lab.load()?.context("lab state")?;
        let nodes: Vec<String> = st.nodes.iter().map(|n| n.name.clone()).collect();
        for o in &objs {
            if let Object::Pod(p) = o {
                match p.spec.node_name.as_deref() {
                    Some(n) if nodes.iter().any(|x| x == n) => {}
                    Some(n) => bail!(
                        "nothing was applied: pod {}/{} asks for node {n}, which lab {name} does not have (nodes: {})",
                        p.metadata.ns(), p.metadata.name, nodes.join(", ")
                    ),
                    None => bail!(
                        "nothing was applied: pod {}/{} has no spec.nodeName; the lab runs no scheduler: bind it to one of {}",
                        p.metadata.ns(), p.metadata.name, nodes.join(", ")
                    ),
                }
            }
        }
        lab.kubectl(&["apply", "-f", "-"], Some(text))?
    };
    let changes = changes_of(&out);
    if wait {
        let ids: Vec<String> = objs
            .iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(pod_id(p)),
                _ => None,
            })
            .collect();
        wait_pods(name, &ids, &[], Duration::from_secs(60))?;
        let current =
            Lab::open(name)?.kubectl_json(&["get", "-f", "-", "-o", "json"], Some(text))?;
        let items = match current["kind"].as_str() {
            Some("List") => current["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![current],
        };
        let want: BTreeMap<String, Option<u64>> = items
            .iter()
            .filter_map(version_key)
            .map(|(k, rv)| (k, rv.parse().ok()))
            .collect();
        wait_versions(name, &want, Duration::from_secs(10))?;
    }
    Ok(changes)
}

/// kubectl's `kind/name action` lines as changes.
fn changes_of(out: &str) -> Vec<Change> {
    out.lines()
        .filter_map(|l| {
            let (obj, action) = l.split_once(' ')?;
            Some(Change {
                object: obj.to_string(),
                action: action.trim().to_string(),
                detail: None,
            })
        })
        .collect()
}

/// `podnet lab delete` on a Kubernetes lab: kubectl delete, then waits until the pods
/// are torn down and no agent holds the objects.
pub fn delete(name: &str, text: &str) -> Result<Vec<Change>> {
    let objs = parse_manifests(text)?;
    let out = Lab::open(name)?.kubectl(
        &["delete", "-f", "-", "--ignore-not-found", "--wait=false"],
        Some(text),
    )?;
    let changes = changes_of(&out);
    let mut gone: Vec<String> = Vec::new();
    let mut want = BTreeMap::new();
    {
        let st = Lab::open(name)?.load()?.context("lab state")?;
        for o in &objs {
            let (kind, ns, n) = o.key();
            want.insert(format!("{kind} {ns}/{n}"), None);
            match o {
                Object::Pod(p) => gone.push(pod_id(p)),
                Object::Namespace(_) => {
                    for p in st.pods.iter().filter(|p| p.namespace == n) {
                        gone.push(p.name.clone());
                        want.insert(format!("Pod {}/{}", p.namespace, p.pod_name()), None);
                    }
                }
                Object::NetworkPolicy(_) => {}
            }
        }
    }
    wait_pods(name, &[], &gone, Duration::from_secs(60))?;
    // A namespace lingers while its controller empties it; its pods and policies
    // are what the agents enforce.
    want.retain(|k, _| !k.starts_with("Namespace "));
    wait_versions(name, &want, Duration::from_secs(10))?;
    Ok(changes)
}
