//! Service traffic on the eBPF policy datapath: NetworkPolicy judges a packet to a
//! Service on the backend kube-proxy chose, not on the Service address.
//!
//! kube-proxy translates a Service address (DNAT in prerouting) after the pod's veth,
//! where `from_pod_policy` runs. So that program marks such a packet and lets it into
//! the node's stack (never onto the fast path); the first tc egress hook after the
//! translation judges the client pod's egress on the real destination and port:
//! `to_pod_policy` on the destination pod's veth, or `after_translation` on the device
//! the packet leaves by (`bpf/lib/service.h`). The destination pod's ingress then
//! judges the client pod's own address, even when kube-proxy masqueraded it (a pod
//! reaching itself through its Service).
//!
//! # Kernel objects it owns
//! - the value of the map `svc_config`: the Service range (`--service-cidr`), the
//!   node's pod CIDR, and the cluster CIDR (the fast path carries only packets to pods:
//!   the rest takes the node's stack, where it is masqueraded);
//! - tc filter `podnet_svc_out` at priority 0xc0df on the egress of the underlay
//!   device (the node's own device: podnet adds nothing else there and removes only
//!   this filter, when the eBPF datapath is not in use) and of the VXLAN device, or
//!   `podnet_svc_out3` (the program for a device without link-layer header) on the
//!   WireGuard device. Each round finds them and puts back what is missing.

use super::datapath::ebpf;
use super::Policy;
use crate::Failure;
use podnet_cni_spec::Ipv4Net;

/// Where Service traffic leaves the node.
#[derive(Clone, Debug)]
pub struct Services {
    /// The Service range (kube-apiserver's `--service-cluster-ip-range`).
    pub range: Ipv4Net,
    /// A dual-stack cluster's IPv6 Service range.
    pub range6: Option<podnet_conventions::Ipv6Net>,
    /// The cluster CIDR: the fast path carries packets to these addresses only.
    pub cluster: Ipv4Net,
    /// The cluster's IPv6 range (dual-stack): likewise for IPv6.
    pub cluster6: Option<podnet_conventions::Ipv6Net>,
    /// The node's underlay device (host-gw routes and destinations outside the
    /// cluster leave by it).
    pub underlay_dev: String,
    /// The overlay device, and whether it has no link-layer header (WireGuard).
    pub overlay_dev: Option<(String, bool)>,
}

/// The filters, by device: (device, program, filter).
fn wanted(s: &Services) -> Vec<(String, &'static str, &'static str)> {
    let mut v = vec![(
        s.underlay_dev.clone(),
        ebpf::AFTER_TRANSLATION,
        ebpf::FILTER_SVC_OUT,
    )];
    if let Some((dev, l3)) = &s.overlay_dev {
        v.push(if *l3 {
            (
                dev.clone(),
                ebpf::AFTER_TRANSLATION_L3,
                ebpf::FILTER_SVC_OUT_L3,
            )
        } else {
            (dev.clone(), ebpf::AFTER_TRANSLATION, ebpf::FILTER_SVC_OUT)
        });
    }
    v
}

impl Policy {
    /// One round: `svc_config` and the filters in place with the eBPF datapath; without
    /// it, podnet's filter off the node's devices (once).
    pub(super) fn refresh_services(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        let cidr = self.cidr;
        let Some(s) = self.services.clone() else {
            return Ok(());
        };
        let mut sock = podnet_netlink::Socket::route().map_err(Failure::from)?;
        let Some(e) = self.dp.ebpf() else {
            if !self.services_cleared {
                remove_filters(&mut sock, log)?;
                self.services_cleared = true;
            }
            return Ok(());
        };
        let six = s.range6.zip(self.cidr6);
        if e.set_services6(six)? {
            if let Some((r6, _)) = six {
                log(&format!(
                    "policy: packets to IPv6 Services ({r6}) are judged after kube-proxy's translation"
                ));
            }
        }
        if e.set_services(s.range, cidr, s.cluster, s.cluster6)? {
            log(&format!(
                "policy: packets to Services ({}) are judged after kube-proxy's translation{}",
                s.range,
                if cidr.prefix() < 22 {
                    format!(
                        "; the pod CIDR {cidr} is wider than /22, so a pod's Service traffic that the node masquerades is refused"
                    )
                } else {
                    String::new()
                }
            ));
        }
        for (dev, prog, filter) in wanted(&s) {
            let Some(l) =
                podnet_netlink::link::get_by_name(&mut sock, &dev).map_err(Failure::from)?
            else {
                continue;
            };
            let has = podnet_netlink::tc::list_egress(&mut sock, l.index)
                .map_err(Failure::from)?
                .iter()
                .any(|f| f.name.as_deref() == Some(filter) && f.prio == ebpf::FILTER_SVC_PRIO);
            if has {
                continue;
            }
            let fd = e.program_fd(prog)?;
            for r in sock.ack_all(vec![
                podnet_netlink::tc::clsact_request(l.index),
                podnet_netlink::tc::bpf_egress_request(l.index, ebpf::FILTER_SVC_PRIO, &fd, filter),
            ]) {
                if let Err(err) = r {
                    if !err.is_exists() {
                        return Err(format!("attach {prog} to the egress of {dev}: {err}").into());
                    }
                }
            }
            log(&format!(
                "policy: {prog} on the egress of {dev}: Service packets leaving the node meet their pod's egress policy there"
            ));
        }
        Ok(())
    }
}

/// Removes podnet's Service filters from every link that has them (only podnet's, by
/// priority and name).
fn remove_filters(sock: &mut podnet_netlink::Socket, log: &dyn Fn(&str)) -> Result<(), Failure> {
    for l in podnet_netlink::link::list(sock).map_err(Failure::from)? {
        let ours = podnet_netlink::tc::list_egress(sock, l.index)
            .map_err(Failure::from)?
            .iter()
            .any(|f| {
                f.prio == ebpf::FILTER_SVC_PRIO
                    && matches!(
                        f.name.as_deref(),
                        Some(ebpf::FILTER_SVC_OUT | ebpf::FILTER_SVC_OUT_L3)
                    )
            });
        if ours {
            let del = podnet_netlink::tc::del_egress_request(l.index, ebpf::FILTER_SVC_PRIO);
            for r in sock.ack_all(vec![del]) {
                r.map_err(Failure::from)?;
            }
            log(&format!(
                "policy: not on the eBPF datapath: removed {} from the egress of {}",
                ebpf::FILTER_SVC_OUT,
                l.name
            ));
        }
    }
    Ok(())
}
