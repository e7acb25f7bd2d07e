//! The agent's NetworkPolicy threads. Policy reads the datastore through a handle of
//! its own and programs on a thread of its own, so a long compile never delays a
//! peer's routes. It wakes on a datastore change, every interval, and at once when
//! nftables changes in this namespace (a firewall reload): what it then finds missing
//! it puts back (see [`crate::policy::Policy::sync`]).

use crate::backend::NodeInfo;
use crate::policy::{self, PolicyState};
use crate::{log, nft, open_datastore_waiting, warn, Agent, Error, PolicyDatapath, Result};
use std::sync::{Arc, Mutex};

impl Agent {
    /// The policy datapath prepared (every pod closed until its verdicts are
    /// programmed), then the node file written (which lets podnet-cni make pods),
    /// events and metrics started, and the policy threads running. The policy's
    /// status, for the API.
    pub(crate) fn start_policy(&mut self, n: &NodeInfo) -> Result<Arc<Mutex<PolicyState>>> {
        let pds = open_datastore_waiting(&self.cfg.datastore, &self.cfg.node)?;
        let node = self.cfg.node.clone();
        let plog = move |m: &str| log(&node, m);
        // The nftables datapath's backstop comes with the underlay guard's object.
        let backstop = match self.cfg.policy_datapath {
            PolicyDatapath::Nftables => Some(
                self.guard
                    .as_ref()
                    .expect("the guard is loaded before the policy")
                    .backstop_fd()
                    .map_err(Error::Guard)?,
            ),
            _ => None,
        };
        let mut pol = policy::Policy::new(
            Box::new(policy::DatastoreSource::new(pds.clone())),
            &self.cfg.node,
            policy::Setup {
                kind: self.cfg.policy_datapath,
                cidr: n.record.pod_cidr,
                cidr6: n.record.pod_cidr6,
                bridge: self.cfg.bridge.clone(),
                bpf_dir: Some(self.cfg.bpf_dir.clone()),
                backstop,
            },
        );
        if self.cfg.fast_path() {
            if self.cfg.policy_datapath != PolicyDatapath::Ebpf {
                return Err(Error::Policy {
                    datapath: self.cfg.policy_datapath.as_str(),
                    source: "the eBPF fast path (--datapath ebpf) skips the bridge and the node's netfilter, where this datapath works: run --policy-datapath ebpf with it".into(),
                });
            }
            pol.set_fast(policy::FastPath {
                overlay_dev: self.backend.fast_path_overlay(),
            });
        }
        pol.set_services(policy::Services {
            range: self.cfg.service_cidr,
            range6: self.cfg.service_cidr6,
            cluster: self.cfg.cluster_cidr,
            cluster6: self.cfg.cluster_cidr6.map(|(n, _)| n),
            underlay_dev: self.cfg.underlay_dev.clone(),
            overlay_dev: self
                .backend
                .device_name()
                .map(|d| (d.to_string(), self.cfg.backend == crate::Backend::Wireguard)),
        });
        pol.prepare(&plog).map_err(|source| Error::Policy {
            datapath: self.cfg.policy_datapath.as_str(),
            source,
        })?;
        self.write_node_file(n, pol.node_file_extra())?;
        self.observe(&pol, n.underlay_ip)?;
        if let Some(m) = self.metrics.clone() {
            pol.on_repair = Some(Box::new(move |object: &str| m.repaired(object)));
        }
        let status = pol.status.clone();
        self.spawn_policy(pol, pds, plog)?;
        Ok(status)
    }

    fn spawn_policy(
        &self,
        mut pol: policy::Policy,
        pds: Arc<dyn podnet_datastore::Datastore>,
        plog: impl Fn(&str) + Send + 'static,
    ) -> Result<()> {
        let interval = self.cfg.interval;
        let (wake, woken) = std::sync::mpsc::channel::<()>();
        let dwake = wake.clone();
        let node = self.cfg.node.clone();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| Error::File {
                    what: "start a thread for",
                    path: format!("{} ({name})", self.cfg.node),
                    source,
                })
        };
        let dnode = node.clone();
        spawn(
            "policy-watch",
            Box::new(move || loop {
                if let Err(e) = pds.wait_change(interval) {
                    warn(&dnode, &format!("policy: cannot watch the datastore: {e}"));
                    std::thread::sleep(interval);
                }
                if dwake.send(()).is_err() {
                    return;
                }
            }),
        )?;
        if self.cfg.policy_datapath == PolicyDatapath::Nftables {
            let nnode = node.clone();
            spawn(
                "nft-watch",
                Box::new(move || {
                    if let Err(e) = nft::watch(|| wake.send(()).is_ok()) {
                        warn(&nnode, &format!("policy: cannot follow nftables changes ({e}); drift is found at the next round instead"));
                    }
                }),
            )?;
        }
        spawn(
            "policy",
            Box::new(move || loop {
                if let Err(e) = pol.sync(&plog) {
                    warn(&node, &format!("policy: {e}; retrying"));
                }
                if woken.recv().is_err() {
                    return;
                }
                while woken.try_recv().is_ok() {}
            }),
        )?;
        Ok(())
    }
}
