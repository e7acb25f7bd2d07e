//! Outbound masquerade: pod traffic that leaves the cluster leaves with the node's
//! address, so that its replies find their way back.
//!
//! # Kernel objects it owns
//! One table, `ip podnet_nat`, in the node's network namespace (nothing else is read
//! or changed). It holds the set `keep` (destinations reached with the pod's own
//! address) and the chain `postrouting` (nat hook postrouting, priority srcnat + 10)
//! with one counted rule: a packet from the cluster CIDR to an address outside `keep`
//! is masqueraded (SNAT to the address of the device it leaves by). `keep` is:
//! - the cluster CIDR: pod → pod is never NATed, on any backend;
//! - 169.254.0.0/16: link-local addresses are never masqueraded (ip-masq-agent's
//!   `masqLinkLocal: false`);
//! - the operator's `--non-masquerade-cidr`s (ip-masq-agent's `nonMasqueradeCIDRs`):
//!   destinations that route pod addresses back by themselves;
//! - with the host-gw backend, every peer's underlay address: the underlay routes pod
//!   CIDRs, so a peer node sees the pod's own address. With an overlay (VXLAN,
//!   WireGuard) a pod reaching another node's address *is* masqueraded, as in Flannel
//!   and Calico: that packet crosses the underlay unencapsulated, and the receiving
//!   node's underlay guard refuses pod sources off the wire ([`crate::guard`]).
//!
//! Traffic a pod sends to its own node is delivered locally and never reaches
//! postrouting: the node sees the pod's address. Service traffic is translated by
//! kube-proxy first (prerouting), so this rule judges the real destination: a
//! ClusterIP whose endpoint is a pod keeps the pod's address, one whose endpoint is
//! outside the cluster (the API server) is masqueraded.
//!
//! # How it changes
//! The whole table is written in one `nft -f -` transaction (`delete table` and the
//! new one together), when the agent starts, when the peers change (host-gw), and
//! whenever a round finds it missing or different (a firewall reload, `nft flush
//! ruleset`): that repair is logged and counted. With `--masquerade=false` the agent
//! removes the table if a previous run left it.

use crate::nft;
use crate::Failure;
use podnet_cni_spec::Ipv4Net;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

pub const TABLE: &str = "podnet_nat";
/// The comment on the masquerade rule: what `podnet trace` and doctor look for.
pub const RULE_COMMENT: &str = "podnet: pod traffic leaving the cluster";
/// Link-local destinations are never masqueraded.
pub fn link_local() -> Ipv4Net {
    Ipv4Net::truncating(Ipv4Addr::new(169, 254, 0, 0), 16)
}

/// What the table says: the cluster CIDR the rule matches sources in, and the
/// destinations kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    pub cluster: Ipv4Net,
    /// Sorted, without duplicates; the cluster CIDR and link-local included.
    pub keep: Vec<Ipv4Net>,
}

impl Masquerade {
    /// The table for `cluster`, the operator's `extra` CIDRs and the `peers`' underlay
    /// addresses (host-gw only: pass none otherwise).
    pub fn new(cluster: Ipv4Net, extra: &[Ipv4Net], peers: &[Ipv4Addr]) -> Masquerade {
        let mut keep: Vec<Ipv4Net> = [cluster, link_local()]
            .into_iter()
            .chain(extra.iter().copied())
            .chain(peers.iter().map(|&a| Ipv4Net::host(a)))
            .collect();
        keep.sort_by_key(|n| (n.bits(), n.prefix()));
        keep.dedup();
        // An interval set refuses overlapping elements: keep only the widest.
        let all = keep.clone();
        keep.retain(|n| !all.iter().any(|w| w != n && w.covers(n)));
        Masquerade { cluster, keep }
    }

    /// The transaction that replaces the table with this one.
    pub fn render(&self) -> String {
        let keep: Vec<String> = self.keep.iter().map(|n| n.to_string()).collect();
        format!(
            "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  set keep {{\n    type ipv4_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat + 10; policy accept;\n    ip saddr {} ip daddr != @keep counter masquerade comment \"{RULE_COMMENT}\"\n  }}\n}}\n",
            keep.join(", "),
            self.cluster,
        )
    }

    /// Writes the table (one transaction).
    pub fn apply(&self) -> Result<(), Failure> {
        nft::run(&self.render())
    }

    /// Whether the kernel's table is this one: `Err` says what differs.
    pub fn check(&self) -> Result<(), String> {
        let Some(text) = list()? else {
            return Err(format!("table ip {TABLE} is gone"));
        };
        let rule = format!("ip saddr {} ip daddr != @keep", self.cluster);
        if !text
            .lines()
            .any(|l| l.contains(&rule) && l.contains("masquerade") && l.contains(RULE_COMMENT))
        {
            return Err(format!(
                "the masquerade rule of table ip {TABLE} is missing or changed"
            ));
        }
        if !text.contains("hook postrouting") {
            return Err(format!("table ip {TABLE} has no postrouting chain"));
        }
        let have = keep_elements(&text);
        let want: Vec<String> = self.keep.iter().map(|n| short(*n)).collect();
        if have != want {
            return Err(format!(
                "set keep of table ip {TABLE} holds {} instead of {}",
                have.join(", "),
                want.join(", ")
            ));
        }
        Ok(())
    }
}

impl crate::Agent {
    /// One round of the masquerade table: written when what it should hold changed,
    /// otherwise verified (with repair on) and put back, logged and counted, if it
    /// drifted. A failure is logged and tried again next round; it never stops the
    /// agent (pod → pod traffic does not need the table).
    pub(crate) fn sync_masquerade(&mut self, peer_underlays: &[Ipv4Addr]) {
        if !self.cfg.masquerade {
            if !self.masq_cleared {
                match remove() {
                    Ok(true) => self.log(&format!(
                        "masquerade off (--masquerade=false): removed table ip {TABLE} an earlier run left"
                    )),
                    Ok(false) => {}
                    Err(e) => {
                        return self.warn(&format!(
                            "masquerade off, but cannot remove table ip {TABLE} an earlier run left: {e}; retrying next round"
                        ))
                    }
                }
                self.masq_cleared = true;
            }
            return;
        }
        let peers = match self.cfg.backend {
            crate::Backend::HostGw => peer_underlays,
            _ => &[],
        };
        let want = Masquerade::new(self.cfg.cluster_cidr, &self.cfg.non_masquerade, peers);
        let fresh = self.masq.as_ref() != Some(&want);
        if !fresh {
            if !self.cfg.repair {
                return;
            }
            let Err(why) = want.check() else { return };
            self.warn(&format!(
                "repairing drift: {why}: writing table ip {TABLE} again"
            ));
            if let Some(m) = &self.metrics {
                m.repaired("masquerade");
            }
        }
        match want.apply() {
            Ok(()) => {
                if fresh {
                    let keep: Vec<String> = want.keep.iter().map(|n| n.to_string()).collect();
                    self.log(&format!(
                        "masquerade: pod traffic to anything outside {} leaves with the node's address (table ip {TABLE})",
                        keep.join(", ")
                    ));
                }
                self.masq = Some(want);
            }
            Err(e) => {
                self.warn(&format!(
                    "cannot write table ip {TABLE}: {e}; pod traffic leaving the cluster is not masqueraded until it is (retrying next round)"
                ));
                self.masq = None;
            }
        }
    }
}

/// The masquerade's status for the API, read from the kernel now: `want` is what the
/// agent last wrote (`None` with `--masquerade=false`, or before the first write).
pub fn status_now(on: bool, want: Option<&Masquerade>) -> podnet_api::MasqueradeStatus {
    let Some(m) = want else {
        return podnet_api::MasqueradeStatus {
            on,
            problem: on.then(|| format!("table ip {TABLE} not written yet (see podnetd's log)")),
            ..Default::default()
        };
    };
    podnet_api::MasqueradeStatus {
        on,
        cluster: m.cluster.to_string(),
        keep: m.keep.iter().map(|n| n.to_string()).collect(),
        problem: m.check().err(),
        packets: packets().unwrap_or(0),
    }
}

impl Masquerade {
    /// Back from what [`status_now`] reported (for checking the kernel against it).
    pub fn from_status(s: &podnet_api::MasqueradeStatus) -> Option<Masquerade> {
        Some(Masquerade {
            cluster: s.cluster.parse().ok()?,
            keep: s
                .keep
                .iter()
                .map(|k| k.parse().ok())
                .collect::<Option<_>>()?,
        })
    }
}

/// nft prints a /32 as a bare address.
fn short(n: Ipv4Net) -> String {
    if n.prefix() == 32 {
        n.network().to_string()
    } else {
        n.to_string()
    }
}

/// The elements of set `keep` in `nft list table` output, in order.
fn keep_elements(text: &str) -> Vec<String> {
    let Some(start) = text.find("elements = {") else {
        return vec![];
    };
    let rest = &text[start + "elements = {".len()..];
    let end = rest.find('}').unwrap_or(rest.len());
    rest[..end]
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// The table as nft lists it, or `None` if there is none.
pub fn list() -> Result<Option<String>, String> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("cannot run nft ({e}): install nftables (apt-get install nftables)")
        })?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Removes the table if it exists (`--masquerade=false`); says whether it did.
pub fn remove() -> Result<bool, Failure> {
    if list().map_err(Failure::from)?.is_none() {
        return Ok(false);
    }
    nft::run(&format!("delete table ip {TABLE}\n"))?;
    Ok(true)
}

/// Packets masqueraded so far (the rule's counter), if the table is there.
pub fn packets() -> Option<u64> {
    let text = list().ok()??;
    let l = text.lines().find(|l| l.contains(RULE_COMMENT))?;
    let i = l.find("counter packets ")? + "counter packets ".len();
    l[i..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn keeps_the_cluster_link_local_and_extra_ranges_without_overlaps() {
        let m = Masquerade::new(
            net("10.244.0.0/16"),
            &[
                net("10.0.0.0/8"),
                net("192.168.7.0/24"),
                net("10.244.0.0/16"),
            ],
            &[
                "192.168.7.9".parse().unwrap(),
                "192.168.1.11".parse().unwrap(),
            ],
        );
        // 10.244/16 lies inside 10/8, 192.168.7.9 inside 192.168.7.0/24: an interval
        // set takes no overlapping elements, so only the widest stay.
        let keep: Vec<String> = m.keep.iter().map(|n| short(*n)).collect();
        assert_eq!(
            keep,
            [
                "10.0.0.0/8",
                "169.254.0.0/16",
                "192.168.1.11",
                "192.168.7.0/24"
            ]
        );
        let r = m.render();
        assert!(
            r.contains(
                "elements = { 10.0.0.0/8, 169.254.0.0/16, 192.168.1.11/32, 192.168.7.0/24 }"
            ),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 10.244.0.0/16 ip daddr != @keep counter masquerade"),
            "{r}"
        );
        // The table is replaced whole: created if missing, then deleted and rewritten.
        assert!(
            r.starts_with("table ip podnet_nat {}\ndelete table ip podnet_nat\n"),
            "{r}"
        );
    }

    #[test]
    fn reads_the_elements_nft_lists() {
        let listed = "table ip podnet_nat {\n\tset keep {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.0.0/16, 169.254.0.0/16,\n\t\t\t     192.168.1.11 }\n\t}\n}\n";
        assert_eq!(
            keep_elements(listed),
            ["10.244.0.0/16", "169.254.0.0/16", "192.168.1.11"]
        );
    }
}
