//! What the agent starts so that an operator can see the node: the event reader
//! ([`crate::observe`]), the Prometheus endpoint ([`crate::metrics`]) and the socket
//! podnet-cni reports each invocation to. Metrics that cannot be served stop the agent
//! (an operator asked for them); events that cannot be read are logged and the rest
//! goes on.
//!
//! # Kernel and file objects it owns
//! The CNI report socket beside the node file (mode 0600).

use crate::{metrics, observe, policy, Agent, Error, PolicyDatapath, Result};
use std::net::Ipv4Addr;

impl Agent {
    /// Starts the event thread, the metrics endpoint and the CNI report socket.
    /// `underlay_ip` is the node's address, where `--metrics-addr node:PORT` serves.
    pub(crate) fn observe(&mut self, pol: &policy::Policy, underlay_ip: Ipv4Addr) -> Result<()> {
        let src = observe::Sources {
            node: self.cfg.node.clone(),
            log: self.events.clone(),
            policy: pol.status.clone(),
            bpf_dir: (self.cfg.policy_datapath == PolicyDatapath::Ebpf)
                .then(|| self.cfg.bpf_dir.clone()),
            nftables: self.cfg.policy_datapath == PolicyDatapath::Nftables,
        };
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || observe::run(src))
            .map_err(|source| Error::File {
                what: "start the event thread for",
                path: self.cfg.node.clone(),
                source,
            })?;
        let Some(spec) = self.cfg.metrics_addr.clone() else {
            return Ok(());
        };
        let m = metrics::Metrics::new(pol.status.clone(), self.events.clone());
        let served = metrics::listen_addrs(&spec, underlay_ip)
            .and_then(|addrs| metrics::serve(&addrs, m.clone(), metrics::Limits::default()))
            .map_err(|why| Error::File {
                what: "serve metrics",
                path: spec.clone(),
                source: std::io::Error::other(why),
            })?;
        let addr = served
            .iter()
            .map(|a| format!("http://{a}/metrics"))
            .collect::<Vec<_>>()
            .join(" and ");
        let path = self.cni_reports(&m)?;
        self.log(&format!(
            "metrics on {addr}; podnet-cni reports on {}",
            path.display()
        ));
        self.metrics = Some(m);
        Ok(())
    }

    /// The socket podnet-cni reports to, read on a thread of its own into `m`.
    fn cni_reports(&self, m: &metrics::Metrics) -> Result<std::path::PathBuf> {
        let path = metrics::cni_socket(&self.cfg.node_file);
        let _ = std::fs::remove_file(&path);
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let sock = std::os::unix::net::UnixDatagram::bind(&path).map_err(|source| Error::File {
            what: "read podnet-cni's reports on",
            path: path.display().to_string(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        let cm = m.clone();
        std::thread::Builder::new()
            .name("cni-reports".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = sock.recv(&mut buf) {
                    cm.cni_report(&buf[..n]);
                }
            })
            .map_err(|source| Error::File {
                what: "start the CNI report thread for",
                path: path.display().to_string(),
                source,
            })?;
        Ok(path)
    }

    pub(crate) fn datastore_error(&self) {
        if let Some(m) = &self.metrics {
            m.datastore_errors.inc();
        }
    }
}
