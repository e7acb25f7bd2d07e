//! Pods: made and deleted through podnet-cni exactly as a runtime would, each with
//! its servers; `lab exec` runs a command inside one.

use super::*;

impl Lab {
    /// The network configuration a runtime would pass; `ip` (the pod's annotation: an
    /// IPv4 address, and an IPv6 one after a comma) is asked for through the `ips`
    /// capability, as a runtime does with `runtimeConfig`.
    fn cni_config(&self, st: &State, node: &str, ip: Option<&str>) -> Vec<u8> {
        let dir = self.node_dir(node);
        let datapath = &st.datapath;
        let mut c = serde_json::json!({
            "cniVersion": "1.1.0", "name": "podnet", "type": "podnet-cni",
            "nodeFile": dir.join("node.json"), "dataDir": dir.join("ipam"),
            "datapath": datapath,
        });
        if let Some(ip) = ip {
            let ips: Vec<&str> = ip.split(',').map(str::trim).collect();
            c["runtimeConfig"] = serde_json::json!({ "ips": ips });
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
                    config: &self.cni_config(st, node, requested.as_deref()),
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
        if let Some(a) = attached {
            record_attached(st, pod, node, &ns_name, object, a, say);
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
        if let Some(ip6) = p.ip6 {
            cmd.args(["--ip6", &ip6.to_string()]);
        }
        let pid = spawn_in(ns, cmd, None)?;
        self.record_pid(&echo, pid)?;
        // Serving once its echo port accepts (bound last): a probe never meets a pod
        // whose server is still starting, however loaded the machine.
        let at = SocketAddrV4::new(p.ip, ECHO_PORT);
        let t0 = Instant::now();
        loop {
            let up = ns.run(|| {
                std::net::TcpStream::connect_timeout(&at.into(), Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if self.live_pid(&echo, "podnet").is_none() {
                bail!(
                    "the server of pod {} exited at start (a port it cannot bind?)",
                    p.key()
                );
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the server of pod {} does not accept on {at} after 10 s",
                    p.key()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
                    config: &self.cni_config(st, &p.node, None),
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
    let mut cmd = Command::new(prog);
    cmd.args(args);
    netns::in_netns(&mut cmd, ns.fd(), None, false);
    let status = cmd.status().with_context(|| format!("run {prog}"))?;
    Ok(status.code().unwrap_or(1))
}

/// Records a pod podnet-cni just attached (replacing any old record of it) and says
/// where it is.
fn record_attached(
    st: &mut State,
    pod: &str,
    node: &str,
    ns_name: &str,
    object: podnet_policy::objects::Pod,
    a: exec::Attached,
    say: &mut dyn FnMut(&str),
) {
    let namespace = object.metadata.ns().to_string();
    let ip = a.ip;
    st.pods.retain(|p| p.name != pod);
    st.pods.push(PodState {
        name: pod.into(),
        node: node.into(),
        netns: ns_name.to_string(),
        ip,
        ip6: a.ip6,
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
}
