//! A real node's credentials and configuration, written into its own
//! `/etc/kubernetes` (`/var/lib/podnet-lab/<lab>/<node>/etc/kubernetes` from outside):
//! the kubelet's and kube-proxy's certificates and kubeconfigs, the kubelet's and
//! containerd's configuration, and the runc wrapper where this machine needs one.

use super::*;

impl Lab {
    /// The node's credentials and configuration, in its own /etc/kubernetes: the
    /// kubelet's and kube-proxy's certificates and kubeconfigs, the kubelet's and
    /// containerd's configuration, and (without CAP_SYS_RESOURCE) the runc wrapper.
    pub(super) fn write_node_config(&self, node: &str) -> Result<()> {
        let root = self.real_root(node);
        let etc = root.join("etc/kubernetes");
        let pki = self.k8s_dir().join("pki");
        let npki = etc.join("pki");
        std::fs::create_dir_all(&npki)?;
        let kubelet_cert = format!("kubelet-{node}");
        if !pki.join(format!("{kubelet_cert}.crt")).exists() {
            self.sign_cert(
                &kubelet_cert,
                &format!("/O=system:nodes/CN=system:node:{node}"),
                "extendedKeyUsage=clientAuth\n",
            )?;
        }
        for f in [
            "ca.crt".to_string(),
            format!("{kubelet_cert}.crt"),
            format!("{kubelet_cert}.key"),
            "kube-proxy.crt".into(),
            "kube-proxy.key".into(),
        ] {
            std::fs::copy(pki.join(&f), npki.join(&f))
                .with_context(|| format!("copy {f} to {}", npki.display()))?;
        }
        let kubeconfig = |user: &str| {
            json!({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "lab", "cluster": {
                    "server": format!("https://{API_ADDR}:{API_PORT}"),
                    "certificate-authority": "/etc/kubernetes/pki/ca.crt"}}],
                "users": [{"name": "u", "user": {
                    "client-certificate": format!("/etc/kubernetes/pki/{user}.crt"),
                    "client-key": format!("/etc/kubernetes/pki/{user}.key")}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "u"}}],
                "current-context": "lab",
            })
            .to_string()
        };
        std::fs::write(etc.join("kubelet.kubeconfig"), kubeconfig(&kubelet_cert))?;
        std::fs::write(etc.join("kube-proxy.kubeconfig"), kubeconfig("kube-proxy"))?;
        self.write_runtime_config(node, &etc)
    }

    /// The kubelet's configuration (cgroup v1, this node's cgroup root, cluster DNS),
    /// containerd's (CRI, overlayfs, the pinned pause image, CNI in the node's
    /// directories, runc), and the runc wrapper where this machine needs one.
    fn write_runtime_config(&self, node: &str, etc: &Path) -> Result<()> {
        let cg = self.cgroup_root(node);
        // Pods with dnsPolicy Default get no nameserver: the lab has no DNS beyond
        // the cluster's, and no way out.
        std::fs::write(etc.join("resolv.conf"), "")?;
        let kubelet_yaml = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{cg}"),
            "failSwapOn": false,
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": false},
                               "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDomain": "cluster.local",
            "clusterDNS": ["10.96.0.10"],
            "resolvConf": "/etc/kubernetes/resolv.conf",
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "serializeImagePulls": false,
            // The machine's one disk is every node's: no node evicts for another's use.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
        });
        std::fs::write(etc.join("kubelet.yaml"), kubelet_yaml.to_string())?;
        let runc = if has_sys_resource() {
            "/usr/sbin/runc".to_string()
        } else {
            let w = etc.join("runc");
            std::fs::write(
                &w,
                "#!/bin/sh\n\
                 # podnet lab: this machine withholds CAP_SYS_RESOURCE, so no process may\n\
                 # lower its oom_score_adj; runc would fail every Guaranteed or node-critical\n\
                 # pod. A negative oomScoreAdj becomes 0; nothing else changes.\n\
                 prev=\n\
                 for a; do\n\
                 \x20 case $prev in\n\
                 \x20   --bundle|-b) sed -i 's/\"oomScoreAdj\":-[0-9]*/\"oomScoreAdj\":0/' \"$a/config.json\" ;;\n\
                 \x20   --process|-p) sed -i 's/\"oomScoreAdj\":-[0-9]*/\"oomScoreAdj\":0/' \"$a\" ;;\n\
                 \x20 esac\n\
                 \x20 prev=$a\n\
                 done\n\
                 exec /usr/sbin/runc \"$@\"\n",
            )?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755))?;
            "/etc/kubernetes/runc".to_string()
        };
        std::fs::write(
            etc.join("containerd.toml"),
            format!(
                "version = 3\n\
                 [plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"overlayfs\"\n\
                 [plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = \"registry.k8s.io/pause:3.10.2\"\n\
                 [plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"/opt/cni/bin\"]\n  conf_dir = \"/etc/cni/net.d\"\n  use_internal_loopback = true\n\
                 [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  BinaryName = \"{runc}\"\n  SystemdCgroup = false\n"
            ),
        )?;

        Ok(())
    }
}
