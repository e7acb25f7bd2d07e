//! Building and removing a lab: the fabric, nodes and their agents, etcd or the
//! Kubernetes control plane, and `down`, which removes every namespace, process and file.

use super::*;

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
            if let Err(e) = self.choose_settings(&mut st, opts, datastore) {
                // Refused before anything was made: leave no empty lab behind.
                if self.load()?.is_none() {
                    let _ = std::fs::remove_dir(&self.dir);
                    let _ = std::fs::remove_file(
                        Path::new(LAB_ROOT).join(format!(".{}.lock", self.name)),
                    );
                }
                return Err(e);
            }
        } else {
            self.check_settings_unchanged(&st, opts, datastore)?;
        }
        st.name = self.name.clone();
        if st.real_nodes {
            // Everything real nodes need, before anything is made.
            super::real::preflight()?;
        }

        let down = format!(
            "`podnet lab down --name {}` removes what was made so far",
            self.name
        );
        let (fabric, mut fs, made) = self.ensure_fabric().with_context(|| {
            format!(
                "setting up the fabric (namespace {}, bridge fabric0); {down}",
                self.fabric_ns()
            )
        })?;
        if made {
            say(&format!("fabric {} (bridge fabric0)", self.fabric_ns()));
        }
        let dual = st.ip_family == podnet_conventions::IpFamily::Dual;
        self.ensure_outside(&fabric, &mut fs, bins, dual)
            .with_context(|| {
                format!(
                    "setting up the outside host {OUTSIDE_ADDR} in {}; {down}",
                    self.fabric_ns()
                )
            })?;
        if st.datastore == etcd_url {
            self.ensure_etcd(&fabric, &mut fs, say)
                .with_context(|| format!("starting etcd in {}; {down}", self.fabric_ns()))?;
        }
        if st.kubernetes {
            self.fabric_address(&mut fs)?;
            self.save(&st)?;
            self.ensure_control_plane(
                &fabric,
                st.real_nodes,
                st.ip_family == podnet_conventions::IpFamily::Dual,
                say,
            )
            .with_context(|| {
                format!(
                    "starting the Kubernetes control plane in {}; {down}",
                    self.fabric_ns()
                )
            })?;
        }

        if st.real_nodes {
            // podnet comes from deploy/, in an image of the lab's binaries.
            self.build_podnet_image(bins)
                .with_context(|| format!("building podnet's image; {down}"))?;
        }
        if st.policy_datapath == PolicyDatapath::Ebpf && !st.real_nodes {
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
        let fin = Finish {
            opts,
            bins,
            down: &down,
            t0,
        };
        if st.real_nodes {
            self.finish_real_nodes_up(st, &fin, say)
        } else if st.kubernetes {
            self.finish_kubernetes_up(st, &fabric, &fin, say)
        } else {
            self.finish_plain_up(st, &fin, say)
        }
    }

    /// Takes the settings of a new lab from `opts`, with their defaults.
    fn choose_settings(
        &self,
        st: &mut State,
        opts: &Options,
        datastore: Option<String>,
    ) -> Result<()> {
        st.backend = opts.backend.unwrap_or_default();
        st.repair = opts.repair.unwrap_or(true);
        st.underlay_family = opts.underlay_family.unwrap_or_default();
        podnet_conventions::underlay_family_fits(st.underlay_family, st.backend)
            .map_err(anyhow::Error::msg)?;
        (st.datapath, st.policy_datapath, _) =
            podnet_conventions::choose_datapaths(opts.datapath, opts.policy_datapath, st.backend)
                .map_err(anyhow::Error::msg)?;
        st.kubernetes = opts.kubernetes.unwrap_or(false);
        st.real_nodes = opts.real_nodes.unwrap_or(false);
        st.proxy_mode = opts.proxy_mode.clone().unwrap_or_else(default_proxy_mode);
        st.masquerade = opts.masquerade.unwrap_or(true);
        st.ip_family = opts.ip_family.unwrap_or_default();
        if st.real_nodes && !st.kubernetes {
            bail!("--kubelet runs real kubelets against the lab's Kubernetes control plane: add --kubernetes");
        }
        st.datastore = if st.kubernetes {
            if datastore.is_some() {
                bail!(
                    "--kubernetes brings its own datastore (the API server): leave --datastore out"
                );
            }
            format!("kubernetes:{}", self.agent_kubeconfig().display())
        } else {
            datastore.unwrap_or_else(|| format!("file:{}", self.dir.join("datastore").display()))
        };
        Ok(())
    }

    /// Fails if `opts` asks a built lab for settings other than those it was built with.
    fn check_settings_unchanged(
        &self,
        st: &State,
        opts: &Options,
        datastore: Option<String>,
    ) -> Result<()> {
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
        if let Some(d) = opts.datapath.as_ref().filter(|d| **d != st.datapath) {
            differs.push(format!("datapath {} (asked: {d})", st.datapath));
        }
        if let Some(f) = opts.ip_family.filter(|f| *f != st.ip_family) {
            differs.push(format!("IP family {} (asked: {f})", st.ip_family));
        }
        if let Some(f) = opts.underlay_family.filter(|f| *f != st.underlay_family) {
            differs.push(format!(
                "underlay family {} (asked: {f})",
                st.underlay_family
            ));
        }
        if opts.kubernetes.is_some_and(|k| k != st.kubernetes) {
            differs.push(format!(
                "Kubernetes {}",
                if st.kubernetes { "on" } else { "off" }
            ));
        }
        if opts.real_nodes.is_some_and(|r| r != st.real_nodes) {
            differs.push(format!(
                "real nodes {}",
                if st.real_nodes { "on" } else { "off" }
            ));
        }
        if let Some(m) = opts.proxy_mode.as_ref().filter(|m| **m != st.proxy_mode) {
            differs.push(format!("proxy mode {} (asked: {m})", st.proxy_mode));
        }
        if opts.masquerade.is_some_and(|m| m != st.masquerade) {
            differs.push(format!(
                "masquerade {}",
                if st.masquerade { "on" } else { "off" }
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
        Ok(())
    }

    /// Opens or makes the fabric namespace and its bridge fabric0, and brings the
    /// bridge up; says whether the namespace was made.
    fn ensure_fabric(&self) -> Result<(Netns, Socket, bool)> {
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
    }

    /// Real nodes: installs podnet, waits for the nodes, creates the pods and waits
    /// for the lab to converge.
    fn finish_real_nodes_up(
        &self,
        st: State,
        fin: &Finish,
        say: &mut dyn FnMut(&str),
    ) -> Result<State> {
        let (opts, down) = (fin.opts, fin.down);
        self.install_podnet(&st, say)
            .with_context(|| format!("installing podnet from deploy/; {down}"))?;
        self.finish_real_nodes(&st, say)
            .with_context(|| format!("waiting for the real nodes; {down}"))?;
        let pods: Vec<(String, String)> = (1..=opts.nodes)
            .flat_map(|i| {
                (0..opts.pods_per_node).map(move |j| (pod_name(i, j), format!("node{i}")))
            })
            .collect();
        self.create_real_pods(&pods)
            .with_context(|| format!("creating the lab's pods; {down}"))?;
        self.wait_converged(&st)?;
        say(&format!(
            "lab {} is up on real nodes: {} nodes, {} pods (kubectl: `podnet lab kubectl --name {} -- get pods -A -o wide`), in {:.1} s (backend {}, datapath {}, policy datapath {})",
            self.name,
            st.nodes.len(),
            pods.len(),
            self.name,
            fin.t0.elapsed().as_secs_f64(),
            st.backend,
            st.datapath,
            st.policy_datapath
        ));
        Ok(st)
    }

    /// Kubernetes: starts the lab's kubelet, waits for the agents, asks the kubelet
    /// for the pods and waits for the lab to converge.
    fn finish_kubernetes_up(
        &self,
        st: State,
        fabric: &Netns,
        fin: &Finish,
        say: &mut dyn FnMut(&str),
    ) -> Result<State> {
        let (opts, down) = (fin.opts, fin.down);
        self.ensure_kubelet(fabric, fin.bins)?;
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
        // has let go of the lab's lock (crate::kubernetes::wait_pods).
        self.create_pods(&pods)?;
        self.save(&st)?;
        self.wait_converged(&st)?;
        say(&format!(
            "lab {} control plane and {} nodes up in {:.1} s; {} pods asked of the kubelet",
            self.name,
            st.nodes.len(),
            fin.t0.elapsed().as_secs_f64(),
            pods.len()
        ));
        Ok(st)
    }

    /// No Kubernetes: waits for the agents, makes the pods itself and waits for the
    /// lab to converge and its policy to be in place.
    fn finish_plain_up(
        &self,
        mut st: State,
        fin: &Finish,
        say: &mut dyn FnMut(&str),
    ) -> Result<State> {
        let (opts, down) = (fin.opts, fin.down);
        for i in 1..=opts.nodes {
            let node = format!("node{i}");
            self.wait_agent(&node)
                .with_context(|| format!("waiting for podnetd on {node}; {down}"))?;
            for j in 0..opts.pods_per_node {
                let pod = pod_name(i, j);
                let made = self.ensure_pod(&mut st, &pod, &node, fin.bins, say);
                self.save(&st)?;
                made.with_context(|| format!("creating pod {pod} on {node}; {down}"))?;
            }
        }
        self.save(&st)?;
        self.wait_converged(&st)?;
        self.wait_policy(&st, None)?;
        say(&format!(
            "lab {} is up: {} nodes, {} pods, in {:.1} s (backend {}, datapath {}, policy datapath {})",
            self.name,
            st.nodes.len(),
            st.pods.len(),
            fin.t0.elapsed().as_secs_f64(),
            st.backend,
            st.datapath,
            st.policy_datapath
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
            cable_node(&mut s, node, i, ip, fabric, fs)?;
        }
        if st.ip_family == podnet_conventions::IpFamily::Dual || st.underlay_family.is_ipv6() {
            // The fabric's IPv6, where pods' IPv6 leaves the cluster (masqueraded)
            // and, with host-gw, crosses between nodes; over an IPv6 underlay, where
            // the overlay tunnels end.
            let eth0 = link::get_by_name(&mut s, "eth0")?.context("eth0")?;
            let ip6 = crate::underlay_ip6(i);
            for r in s.ack_all(vec![addr::add6_request(eth0.index, ip6, 64)]) {
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
        let ip6 = (st.ip_family == podnet_conventions::IpFamily::Dual
            || st.underlay_family.is_ipv6())
        .then(|| crate::underlay_ip6(i));
        if st.real_nodes {
            // Its kubelet registers the Node; podnetd comes with the DaemonSet.
            return self.ensure_real_node(st, node, (ip, ip6), say);
        }
        if st.kubernetes {
            self.register_node(node, ip, ip6)?;
        }
        if self.live_pid(node, "podnetd").is_none() {
            self.start_podnetd(st, node, &ns, bins, say)?;
        }
        Ok(())
    }

    /// Starts the node's podnetd in its namespace with the lab's settings and
    /// records its pid.
    fn start_podnetd(
        &self,
        st: &State,
        node: &str,
        ns: &Netns,
        bins: &Binaries,
        say: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let dir = self.node_dir(node);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut cmd = Command::new(&bins.podnetd);
        cmd.arg("--node")
            .arg(node)
            .arg("--datastore")
            .arg(if st.kubernetes {
                // Its own token, bound to its Node (deploy/admission.yaml).
                format!("kubernetes:{}", self.node_agent_kubeconfig(node).display())
            } else {
                st.datastore.clone()
            })
            .arg("--underlay-dev")
            .arg("eth0")
            .arg("--backend")
            .arg(st.backend.as_str())
            .arg("--node-file")
            .arg(dir.join("node.json"))
            .arg("--api-socket")
            .arg(self.api_socket(node))
            .arg("--policy-datapath")
            .arg(st.policy_datapath.as_str())
            .arg("--datapath")
            .arg(st.datapath.as_str())
            .arg("--bpf-dir")
            .arg(self.bpf_dir().join(node))
            // Every node's WireGuard things in its own directory (all nodes share
            // this machine's files); the device process's pid with the lab's, so
            // `down` stops it.
            .arg("--wireguard-key")
            .arg(dir.join("wireguard.key"))
            .arg("--wireguard-socket")
            .arg(self.wireguard_socket(node))
            .arg("--wireguard-pid-file")
            .arg(self.pid_file(&wireguard_pid_name(node)));
        if !st.repair {
            cmd.arg("--no-repair");
        }
        if !st.masquerade {
            cmd.arg("--masquerade=false");
        }
        if st.underlay_family.is_ipv6() {
            cmd.arg("--underlay-family").arg("ipv6");
        }
        if st.ip_family == podnet_conventions::IpFamily::Dual {
            cmd.arg("--cluster-cidr")
                .arg(format!("10.244.0.0/16,{CLUSTER_CIDR6}"))
                .arg("--service-cidr")
                .arg(crate::kubernetes::service_ranges(true));
        }
        let pid = spawn_in(ns, cmd, Some(&dir.join("podnetd.log")))?;
        self.record_pid(node, pid)?;
        say(&format!(
            "node {node}: podnetd started (pid {pid}, log {})",
            dir.join("podnetd.log").display()
        ));
        Ok(())
    }

    /// The outside host: [`OUTSIDE_ADDR`] on fabric0 and its echo server; in a
    /// dual-stack lab ([`OUTSIDE_ADDR6`]) over IPv6 too.
    fn ensure_outside(
        &self,
        fabric: &Netns,
        fs: &mut Socket,
        bins: &Binaries,
        dual: bool,
    ) -> Result<()> {
        let br = link::get_by_name(fs, "fabric0")?.context("fabric bridge")?;
        let mut addrs = vec![addr::add_request(br.index, OUTSIDE_ADDR, 24)];
        if dual {
            addrs.push(addr::add6_request(br.index, crate::OUTSIDE_ADDR6, 64));
        }
        for r in fs.ack_all(addrs) {
            if let Err(e) = r {
                if !e.is_exists() {
                    return Err(e.into());
                }
            }
        }
        if self.live_pid(OUTSIDE_ECHO, "podnet").is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&bins.podnet);
        cmd.args(["lab", "serve-echo", "--ip", &OUTSIDE_ADDR.to_string()]);
        if dual {
            cmd.args(["--ip6", &crate::OUTSIDE_ADDR6.to_string()]);
        }
        cmd.args(["--port", &ECHO_PORT.to_string()]);
        let pid = spawn_in(fabric, cmd, None)?;
        self.record_pid(OUTSIDE_ECHO, pid)
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
                .filter(|n| ask(self, &n.name).map(|a| a.peers.len()) != Some(want))
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

    /// Removes node `node` from the cluster: from the datastore (its peers drop their
    /// routes to it), its agent, its pods and its namespace.
    pub fn del_node(&self, st: &mut State, node: &str) -> Result<()> {
        if !st.nodes.iter().any(|n| n.name == node) {
            bail!("no node {node} in lab {}", self.name);
        }
        if st.real_nodes {
            bail!(
                "lab {} runs real nodes, which `node del` does not remove yet: `podnet lab kubectl -- drain {node}` and `delete node {node}` take it out of the cluster, `podnet lab down` removes everything",
                self.name
            );
        }
        self.stop(node, "podnetd");
        self.stop(&wireguard_pid_name(node), "podnetd");
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
        // Real nodes first: their kubelets would restart what is stopped below.
        self.real_down()?;
        // Every process the lab started has a pid file, recorded or not in lab.json.
        let mut pids: Vec<String> = std::fs::read_dir(self.dir.join("pids"))
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
        // Agents before WireGuard device processes: an agent still running would start
        // its device again.
        pids.sort_by_key(|w| w.ends_with("-wireguard"));
        for what in pids {
            let comm = if let Some(c) = crate::kubernetes::comm_of(&what) {
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

/// The pid name of the outside host's echo server (`echo-…`: `down` stops it as a
/// pod's).
const OUTSIDE_ECHO: &str = "echo-outside";

/// The name under which the lab keeps the pid of `node`'s WireGuard device process.
pub(crate) fn wireguard_pid_name(node: &str) -> String {
    format!("{node}-wireguard")
}

/// What the last steps of `up` need from its start.
struct Finish<'a> {
    opts: &'a Options,
    bins: &'a Binaries,
    down: &'a str,
    t0: Instant,
}

/// Cables a new node to the fabric: its eth0 with `ip`/24 in the node's namespace,
/// the other end (named after the node) on fabric0.
fn cable_node(
    s: &mut Socket,
    node: &str,
    i: usize,
    ip: Ipv4Addr,
    fabric: &Netns,
    fs: &mut Socket,
) -> Result<()> {
    // A stale fabric end from a node that was deleted would block the name.
    link::delete_by_name(fs, node)?;
    link::create_veth(
        s,
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
    let eth0 = link::get_by_name(s, "eth0")?.context("eth0")?;
    for r in s.ack_all(vec![addr::add_request(eth0.index, ip, 24)]) {
        if let Err(e) = r {
            if !e.is_exists() {
                return Err(e.into());
            }
        }
    }
    Ok(())
}
