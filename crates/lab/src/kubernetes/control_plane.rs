//! The lab's Kubernetes control plane: its certificates (made with `openssl`), etcd,
//! kube-apiserver and kube-controller-manager started inside the fabric and waited
//! for, the kubeconfigs and the agents' ServiceAccount, and the lab's kubelet.

use super::*;

/// `openssl ARGS` in `dir`, which must succeed.
pub(super) fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run_checked(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {} (apt-get install openssl)", args[0]),
    )
    .map(|_| ())
}

/// A P-256 key `dir/name`.
pub(super) fn openssl_key(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    )
}

impl Lab {
    /// Certificates (once): a CA, the API server's serving certificate, the admin's
    /// client certificate, the service-account signing key.
    pub(super) fn ensure_pki(&self) -> Result<()> {
        let pki = self.k8s_dir().join("pki");
        if pki.join("done").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&pki).with_context(|| format!("create {}", pki.display()))?;
        let ossl = |args: &[&str]| openssl(&pki, args);
        let key = |name: &str| openssl_key(&pki, name);
        key("ca.key")?;
        ossl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=podnet-lab-ca",
        ])?;
        self.sign_cert(
            "apiserver",
            "/CN=kube-apiserver",
            &format!("subjectAltName=IP:{API_ADDR},IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"),
        )?;
        self.sign_cert(
            "admin",
            "/O=system:masters/CN=podnet-lab-admin",
            "extendedKeyUsage=clientAuth\n",
        )?;
        self.sign_cert(
            "controller-manager",
            "/CN=system:kube-controller-manager",
            "extendedKeyUsage=clientAuth\n",
        )?;
        // Real nodes (crate::real): the scheduler, kube-proxy, and the API
        // server's client certificate for the kubelets (exec, logs, port-forward).
        self.sign_cert(
            "scheduler",
            "/CN=system:kube-scheduler",
            "extendedKeyUsage=clientAuth\n",
        )?;
        self.sign_cert(
            "kube-proxy",
            "/CN=system:kube-proxy",
            "extendedKeyUsage=clientAuth\n",
        )?;
        self.sign_cert(
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "extendedKeyUsage=clientAuth\n",
        )?;
        key("sa.key")?;
        ossl(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        std::fs::write(pki.join("done"), "")?;
        Ok(())
    }

    pub(super) fn spawn_control(&self, fabric: &Netns, what: &str, cmd: Command) -> Result<()> {
        if self.live_pid(what, comm_of(what).unwrap_or(what)).is_some() {
            return Ok(());
        }
        let log = self.k8s_dir().join(format!("{what}.log"));
        let pid = crate::spawn_in(fabric, cmd, Some(&log))?;
        self.record_pid(what, pid)
    }

    pub(super) fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Result<()> {
        let t = Instant::now();
        while !ok() {
            if self.live_pid(what, comm_of(what).unwrap_or(what)).is_none() {
                bail!(
                    "{what} exited; see {}",
                    self.k8s_dir().join(format!("{what}.log")).display()
                );
            }
            if t.elapsed() > timeout {
                bail!(
                    "{what} not ready within {timeout:?}; see {}",
                    self.k8s_dir().join(format!("{what}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// etcd, kube-apiserver, kube-controller-manager (each started unless running),
    /// the kubeconfigs, and the agents' ServiceAccount with `deploy/`'s RBAC.
    /// `dual`: dual-stack Service and cluster ranges (the IPv6 ones after the IPv4
    /// ones), so that every Node gets an IPv6 pod CIDR too.
    pub(crate) fn ensure_control_plane(
        &self,
        fabric: &Netns,
        real_nodes: bool,
        dual: bool,
        say: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let bin = bin_dir()?;
        let k8s = self.k8s_dir();
        std::fs::create_dir_all(&k8s).with_context(|| format!("create {}", k8s.display()))?;
        self.ensure_pki()?;
        self.start_k8s_etcd(fabric, &bin, &k8s)?;
        let kcm_kc = self.start_apiserver(fabric, &bin, &k8s, dual, say)?;
        self.start_controllers(fabric, &bin, &k8s, &kcm_kc, real_nodes, dual)?;
        self.ensure_agent_identity()
    }

    /// Starts the control plane's etcd on 127.0.0.1 in the fabric and waits until it
    /// takes connections.
    fn start_k8s_etcd(&self, fabric: &Netns, bin: &Path, k8s: &Path) -> Result<()> {
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args([
            "--name",
            "lab",
            "--data-dir",
            &k8s.join("etcd").display().to_string(),
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "lab=http://127.0.0.1:2380",
            "--log-level",
            "warn",
        ]);
        self.spawn_control(fabric, "k8s-etcd", etcd)?;
        self.wait_for("k8s-etcd", Duration::from_secs(20), || {
            fabric
                .run(|| {
                    std::net::TcpStream::connect_timeout(
                        &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2379).into(),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                })
                .unwrap_or(false)
        })?;
        Ok(())
    }

    /// Starts kube-apiserver, writes the admin's and the controller manager's
    /// kubeconfigs and waits until the API server is ready; returns the controller
    /// manager's kubeconfig.
    fn start_apiserver(
        &self,
        fabric: &Netns,
        bin: &Path,
        k8s: &Path,
        dual: bool,
        say: &mut dyn FnMut(&str),
    ) -> Result<PathBuf> {
        let pki = k8s.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args([
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            format!("--bind-address={API_ADDR}"),
            format!("--advertise-address={API_ADDR}"),
            format!("--secure-port={API_PORT}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--service-cluster-ip-range={}", service_ranges(dual)),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            format!("--cert-dir={}", k8s.join("apiserver-certs").display()),
            // To the kubelets of real nodes (exec, logs, port-forward), at their
            // InternalIP: the lab's nodes have no names in any DNS.
            format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]);
        self.spawn_control(fabric, "kube-apiserver", api)?;
        self.write_kubeconfig(
            &self.kubeconfig(),
            json!({"client-certificate": p("admin.crt"), "client-key": p("admin.key")}),
        )?;
        let kcm_kc = k8s.join("controller-manager.kubeconfig");
        self.write_kubeconfig(
            &kcm_kc,
            json!({"client-certificate": p("controller-manager.crt"), "client-key": p("controller-manager.key")}),
        )?;
        let t = Instant::now();
        self.wait_for("kube-apiserver", Duration::from_secs(90), || {
            self.kubectl(&["get", "--raw=/readyz"], None).is_ok()
        })?;
        say(&format!(
            "kube-apiserver v{K8S_VERSION} at https://{API_ADDR}:{API_PORT} in {} (ready in {:.1} s; kubeconfig {})",
            self.fabric_ns(),
            t.elapsed().as_secs_f64(),
            self.kubeconfig().display()
        ));
        Ok(kcm_kc)
    }

    /// Starts kube-controller-manager and, with real nodes, kube-scheduler.
    fn start_controllers(
        &self,
        fabric: &Netns,
        bin: &Path,
        k8s: &Path,
        kcm_kc: &Path,
        real_nodes: bool,
        dual: bool,
    ) -> Result<()> {
        let pki = k8s.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let mut kcm = Command::new(bin.join("kube-controller-manager"));
        kcm.args([
            format!("--kubeconfig={}", kcm_kc.display()),
            format!("--authentication-kubeconfig={}", kcm_kc.display()),
            format!("--authorization-kubeconfig={}", kcm_kc.display()),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=true".into(),
            // With real kubelets, every default controller (node lifecycle, endpoint
            // slices, Deployments and DaemonSets, garbage collection, the root CA
            // publisher…). With the lab's own kubelet, which sends no heartbeats, the
            // node lifecycle controller would evict every pod: only what it needs.
            if real_nodes {
                "--controllers=*".into()
            } else {
                "--controllers=node-ipam-controller,namespace-controller,serviceaccount-controller"
                    .into()
            },
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={}", cluster_ranges(dual)),
            format!("--service-cluster-ip-range={}", service_ranges(dual)),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=10257".into(),
        ]);
        if dual {
            kcm.args([
                "--node-cidr-mask-size-ipv4=24",
                "--node-cidr-mask-size-ipv6=64",
            ]);
        } else {
            kcm.arg("--node-cidr-mask-size=24");
        }
        self.spawn_control(fabric, "kube-controller-manager", kcm)?;
        if real_nodes {
            let sched_kc = k8s.join("scheduler.kubeconfig");
            self.write_kubeconfig(
                &sched_kc,
                json!({"client-certificate": p("scheduler.crt"), "client-key": p("scheduler.key")}),
            )?;
            let mut sched = Command::new(crate::real::bin_dir()?.join("kube-scheduler"));
            sched.args([
                format!("--kubeconfig={}", sched_kc.display()),
                format!("--authentication-kubeconfig={}", sched_kc.display()),
                format!("--authorization-kubeconfig={}", sched_kc.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
            ]);
            self.spawn_control(fabric, "kube-scheduler", sched)?;
        }
        Ok(())
    }

    /// The agents' identity: deploy/'s ServiceAccount and RBAC, and a token of it.
    fn ensure_agent_identity(&self) -> Result<()> {
        self.kubectl(&["apply", "-f", "-"], Some(NAMESPACE_YAML))?;
        self.kubectl(&["apply", "-f", "-"], Some(RBAC_YAML))?;
        // Each agent may change only its own Node (its token is bound to it).
        self.kubectl(&["apply", "-f", "-"], Some(ADMISSION_YAML))?;
        if !self.agent_kubeconfig().exists() {
            let token = self.kubectl(
                &[
                    "create",
                    "token",
                    "podnet",
                    "-n",
                    "podnet",
                    "--duration=720h",
                ],
                None,
            )?;
            self.write_kubeconfig(&self.agent_kubeconfig(), json!({"token": token.trim()}))?;
        }
        Ok(())
    }

    /// Starts the lab's kubelet unless it runs.
    pub(crate) fn ensure_kubelet(&self, fabric: &Netns, bins: &Binaries) -> Result<()> {
        let mut cmd = Command::new(&bins.podnet);
        cmd.args(["lab", "--name", &self.name, "kubelet"]);
        self.spawn_control(fabric, "kubelet", cmd)
    }
}

/// The Service range(s) kube-apiserver and kube-controller-manager take.
pub(crate) fn service_ranges(dual: bool) -> String {
    if dual {
        format!("{SERVICE_CIDR},{SERVICE_CIDR6}")
    } else {
        SERVICE_CIDR.to_string()
    }
}

/// The pod range(s) kube-controller-manager cuts Node pod CIDRs from.
pub(crate) fn cluster_ranges(dual: bool) -> String {
    if dual {
        format!("{CLUSTER_CIDR},{}", crate::CLUSTER_CIDR6)
    } else {
        CLUSTER_CIDR.to_string()
    }
}
