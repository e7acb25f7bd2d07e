//! podnet on real nodes as an operator installs it: the image built from the lab's
//! binaries and imported into every node's containerd (with the upstream images),
//! `deploy/` applied with the lab's settings, CoreDNS, and the lab's pods.

use super::*;

impl Lab {
    /// Imports into `node`'s containerd each image it does not hold yet.
    pub(super) fn import_images(&self, node: &str, bin: &Path) -> Result<()> {
        let ctr = bin.join("ctr");
        let (mut cmd, _m, _n) = self.node_command(node, &ctr, false)?;
        let have = run_checked(
            cmd.args(["-n", "k8s.io", "images", "ls", "-q"]),
            &format!("ctr images ls on {node}"),
        )?;
        let mut want: Vec<(PathBuf, String)> = IMAGES
            .iter()
            .map(|(f, n)| (bin.join("images").join(f), n.to_string()))
            .collect();
        want.push((self.dir.join("image/podnet.tar"), PODNET_IMAGE.into()));
        for (tar, name) in want {
            // podnet's image is rebuilt with every `up`: always imported.
            if name != PODNET_IMAGE && have.lines().any(|l| l == name) {
                continue;
            }
            // On standard input: the node's mount namespace hides the lab's directory.
            let f = File::open(&tar).with_context(|| format!("open {}", tar.display()))?;
            let (mut cmd, _m, _n) = self.node_command(node, &ctr, false)?;
            let o = cmd
                .args(["-n", "k8s.io", "images", "import", "-"])
                .stdin(Stdio::from(f))
                .output()
                .with_context(|| format!("run ctr images import on {node}"))?;
            if !o.status.success() {
                bail!(
                    "ctr images import {} on {node} failed ({}): {}",
                    tar.display(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Builds podnet's image from the lab's binaries (`deploy/Containerfile` on the
    /// Debian base of scripts/real-nodes.sh) into `<lab>/image/podnet.tar`.
    pub(crate) fn build_podnet_image(&self, bins: &Binaries) -> Result<()> {
        let bin = bin_dir()?;
        let ctx = self.dir.join("image");
        std::fs::create_dir_all(&ctx)?;
        let exists = Command::new("podman")
            .args(["image", "exists", BASE_IMAGE])
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            run_checked(
                Command::new("podman")
                    .args(["load", "-q", "-i"])
                    .arg(bin.join("images/podnet-lab-base.tar")),
                "podman load the lab's Debian base image",
            )?;
        }
        let portmap = bin.join("cni/portmap");
        for (src, name) in [
            (&bins.podnetd, "podnetd"),
            (&bins.cni, "podnet-cni"),
            (&bins.podnet, "podnet"),
            (&portmap, "portmap"),
        ] {
            std::fs::copy(src, ctx.join(name))
                .with_context(|| format!("copy {} into {}", src.display(), ctx.display()))?;
        }
        std::fs::write(ctx.join("Containerfile"), CONTAINERFILE)?;
        // One build at a time on this machine: the tag is shared by every lab.
        let _l = shared_lock("image")?;
        run_checked(
            Command::new("podman")
                .args(["build", "-q", "--build-arg"])
                .arg(format!("BASE={BASE_IMAGE}"))
                .args(["-t", PODNET_IMAGE, "-f"])
                .arg(ctx.join("Containerfile"))
                .arg(&ctx),
            "podman build podnet's image (deploy/Containerfile)",
        )?;
        let tar = ctx.join("podnet.tar");
        let _ = std::fs::remove_file(&tar);
        run_checked(
            Command::new("podman")
                .args(["save", "-q", "--format", "docker-archive", "-o"])
                .arg(&tar)
                .arg(PODNET_IMAGE),
            "podman save podnet's image",
        )?;
        for name in ["podnetd", "podnet-cni", "podnet", "portmap"] {
            let _ = std::fs::remove_file(ctx.join(name));
        }
        // The archive is what the nodes import: podman's store keeps no copy (every
        // `up` builds anew, and old builds would pile up there).
        let _ = Command::new("podman")
            .args(["rmi", "-f", PODNET_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        Ok(())
    }

    /// `deploy/` as an operator applies it, with the lab's settings: the backend (and a
    /// dual-stack lab's two ranges) in the ConfigMap, the policy datapath, datapath
    /// and underlay family in the DaemonSet.
    pub(crate) fn install_podnet(&self, st: &State, say: &mut dyn FnMut(&str)) -> Result<()> {
        let cm_anchor = "backend: \"vxlan\"";
        let ds_anchor = "- --policy-datapath=ebpf";
        if !CONFIGMAP_YAML.contains(cm_anchor) || !DAEMONSET_YAML.contains(ds_anchor) {
            bail!("deploy/configmap.yaml or deploy/daemonset.yaml no longer hold `{cm_anchor}` / `{ds_anchor}`, where the lab sets its backend and datapaths: update crate::real");
        }
        let cidr_anchor = format!("cluster-cidr: \"{}\"", crate::kubernetes::CLUSTER_CIDR);
        if !CONFIGMAP_YAML.contains(&cidr_anchor) {
            bail!("deploy/configmap.yaml no longer holds `{cidr_anchor}`, where the lab sets a dual-stack cluster's ranges: update crate::real");
        }
        let dual = st.ip_family == podnet_conventions::IpFamily::Dual;
        let svc_anchor = "service-cidr: \"10.96.0.0/12\"";
        if !CONFIGMAP_YAML.contains(svc_anchor) {
            bail!("deploy/configmap.yaml no longer holds `{svc_anchor}`, where the lab sets its Service ranges: update crate::real");
        }
        let cm = CONFIGMAP_YAML
            .replace(cm_anchor, &format!("backend: \"{}\"", st.backend))
            .replace(
                svc_anchor,
                &format!(
                    "service-cidr: \"{}\"",
                    crate::kubernetes::service_ranges(dual)
                ),
            )
            .replace(
                &cidr_anchor,
                &format!(
                    "cluster-cidr: \"{}\"",
                    crate::kubernetes::cluster_ranges(dual)
                ),
            );
        let indent = DAEMONSET_YAML
            .lines()
            .find(|l| l.trim() == ds_anchor)
            .map(|l| &l[..l.len() - l.trim_start().len()])
            .unwrap_or("            ");
        let mut args = format!("- --policy-datapath={}", st.policy_datapath);
        if st.datapath != podnet_conventions::Datapath::Bridge {
            args += &format!("\n{indent}- --datapath={}", st.datapath);
        }
        if !st.repair {
            args += &format!("\n{indent}- --no-repair");
        }
        if !st.masquerade {
            args += &format!("\n{indent}- --masquerade=false");
        }
        if st.underlay_family.is_ipv6() {
            // Each kubelet reports the node's IPv6 address too (--node-ip), which the
            // agents check a peer's published one against.
            args += &format!("\n{indent}- --underlay-family=ipv6");
        }
        let ds = DAEMONSET_YAML.replace(ds_anchor, &args);
        for (what, yaml) in [
            ("namespace", crate::kubernetes::NAMESPACE_YAML),
            ("rbac", crate::kubernetes::RBAC_YAML),
            ("admission", crate::kubernetes::ADMISSION_YAML),
            ("configmap", &cm),
            ("daemonset", &ds),
        ] {
            self.kubectl(&["apply", "-f", "-"], Some(yaml))
                .with_context(|| format!("kubectl apply deploy/{what}.yaml"))?;
        }
        say(&format!(
            "podnet installed from deploy/ (image {PODNET_IMAGE}, backend {}, policy datapath {}, datapath {})",
            st.backend, st.policy_datapath, st.datapath
        ));
        Ok(())
    }

    /// Waits for every node Ready with podnet running on it, routes the nodes' pod
    /// CIDRs from the fabric (the API server's host), and installs CoreDNS.
    pub(crate) fn finish_real_nodes(&self, st: &State, say: &mut dyn FnMut(&str)) -> Result<()> {
        let t = Instant::now();
        let n = st.nodes.len();
        loop {
            let ready = self
                .kubectl(
                    &[
                        "get",
                        "nodes",
                        "-o",
                        "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                    ],
                    None,
                )
                .unwrap_or_default();
            let up: Vec<(&str, &str)> = ready
                .lines()
                .filter_map(|l| {
                    let mut it = l.split('=');
                    let (name, cidr, r) = (it.next()?, it.next()?, it.next()?);
                    (r == "True" && !cidr.is_empty()).then_some((name, cidr))
                })
                .collect();
            if up.len() >= n {
                for (name, cidr) in up {
                    let Some(ns) = st.nodes.iter().find(|x| x.name == name) else {
                        continue;
                    };
                    let fab = self.fabric_ns();
                    run_checked(
                        Command::new("ip").args([
                            "-n",
                            &fab,
                            "route",
                            "replace",
                            cidr,
                            "via",
                            &ns.underlay_ip.to_string(),
                        ]),
                        &format!("ip route: {cidr} via {name} in {fab}"),
                    )?;
                }
                break;
            }
            if t.elapsed() > Duration::from_secs(180) {
                bail!(
                    "{} of {n} nodes Ready with a pod CIDR after 180 s ({ready}); see the kubelet and containerd logs in {}/node*/ and `podnet lab kubectl -- -n podnet get pods -o wide`",
                    up.len(),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.kubectl(
            &[
                "-n",
                "podnet",
                "rollout",
                "status",
                "daemonset/podnet",
                "--timeout=180s",
            ],
            None,
        )
        .context("podnet's DaemonSet did not become ready")?;
        say(&format!(
            "{n} nodes Ready, podnet ready on each ({:.1} s)",
            t.elapsed().as_secs_f64()
        ));
        self.kubectl(&["apply", "-f", "-"], Some(COREDNS_YAML))
            .context("kubectl apply CoreDNS")?;
        let ready = self.kubectl(
            &[
                "-n",
                "kube-system",
                "rollout",
                "status",
                "deployment/coredns",
                "--timeout=120s",
            ],
            None,
        );
        match ready {
            Ok(_) => say("CoreDNS ready as kube-dns (10.96.0.10)"),
            // The cluster is up without it: pods reach pods, and what cannot work is
            // itself a finding (CoreDNS needs the API server's ClusterIP). Loud, on
            // standard error, whatever the output format.
            Err(e) => eprintln!(
                "podnet: WARNING: lab {}: CoreDNS is not ready after 120 s, so cluster DNS does not work ({e:#}); its log: `podnet lab kubectl --name {} -- -n kube-system logs -l k8s-app=kube-dns`",
                self.name, self.name
            ),
        }
        Ok(())
    }

    /// Pods of `lab up --pods-per-node` on real nodes: agnhost netexec (HTTP on 8080,
    /// UDP on 8081) bound to their nodes, made by the kubelets.
    pub(crate) fn create_real_pods(&self, pods: &[(String, String)]) -> Result<()> {
        if pods.is_empty() {
            return Ok(());
        }
        let items: Vec<serde_json::Value> = pods
            .iter()
            .map(|(pod, node)| {
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": pod, "namespace": "default", "labels": {"app": pod}},
                       "spec": {"nodeName": node, "containers": [{
                           "name": "netexec", "image": IMAGES[1].1,
                           "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
                           "ports": [{"containerPort": 8080}, {"containerPort": 8081, "protocol": "UDP"}]}]}})
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.kubectl(&["apply", "-f", "-"], Some(&list.to_string()))?;
        let names: Vec<String> = pods.iter().map(|(p, _)| format!("pod/{p}")).collect();
        let mut args = vec!["wait", "--for=condition=Ready", "--timeout=120s"];
        args.extend(names.iter().map(|s| s.as_str()));
        self.kubectl(&args, None)
            .context("the lab's pods did not become Ready")?;
        Ok(())
    }
}
