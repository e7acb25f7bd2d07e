//! Outbound masquerade: pod traffic that leaves the cluster leaves with the node's
//! address, so that its replies find their way back.
//!
//! # Kernel objects it owns
//! One table per family, `ip podnet_nat` and, on a dual-stack node whose IPv6
//! masquerade is on, `ip6 podnet_nat`, in the node's network namespace (nothing else is
//! read or changed). Each holds the set `keep` (destinations reached with the pod's own
//! address) and the chain `postrouting` (nat hook postrouting, priority srcnat + 10)
//! with one counted rule: a packet from the cluster CIDR of that family to an address
//! outside `keep` is masqueraded (SNAT to the address of the device it leaves by).
//! `keep` is:
//! - the cluster CIDR: pod → pod is never NATed, on any backend;
//! - link-local addresses (169.254.0.0/16, fe80::/10) are never masqueraded
//!   (ip-masq-agent's `masqLinkLocal: false`);
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
//! IPv6 masquerade is on by default when the cluster's IPv6 range is a unique local
//! one (fc00::/7, which nothing outside routes back) and off when it is global (the
//! network routes it to the cluster, so pods keep their own addresses);
//! `--masquerade-ipv6=true|false` decides instead.
//!
//! # How it changes
//! Each table is written whole in one `nft -f -` transaction (`delete table` and the
//! new one together), when the agent starts, when the peers change (host-gw), and
//! whenever a round finds it missing or different (a firewall reload, `nft flush
//! ruleset`): that repair is logged and counted. With `--masquerade=false` the agent
//! removes the table if a previous run left it.

use crate::nft;
use crate::Failure;
use podnet_policy::net::Prefix;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

pub const TABLE: &str = "podnet_nat";
/// The comment on the masquerade rule: what `podnet trace` and doctor look for.
pub const RULE_COMMENT: &str = "podnet: pod traffic leaving the cluster";

/// Link-local destinations of one family are never masqueraded.
pub fn link_local(v6: bool) -> Prefix {
    if v6 {
        Prefix::truncating(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10)
    } else {
        Prefix::truncating(IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16)
    }
}

/// nftables' family of one address family's table: `ip` or `ip6`.
pub fn family(v6: bool) -> &'static str {
    if v6 {
        "ip6"
    } else {
        "ip"
    }
}

/// Whether IPv6 masquerade is on by default for the cluster's IPv6 range `cluster6`:
/// a unique local range (fc00::/7) is routed nowhere outside, so it is masqueraded; a
/// global one is routed to the cluster, so pods keep their own addresses.
pub fn default_ipv6(cluster6: &podnet_cni_spec::net::Ipv6Net) -> bool {
    cluster6.network().segments()[0] & 0xfe00 == 0xfc00
}

/// What one family's table says: the cluster CIDR the rule matches sources in, and
/// the destinations kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    pub cluster: Prefix,
    /// Sorted, without duplicates, all of the cluster's family; the cluster CIDR and
    /// link-local included.
    pub keep: Vec<Prefix>,
}

impl Masquerade {
    /// The table for `cluster`, the operator's `extra` CIDRs and the `peers`' underlay
    /// addresses (host-gw only: pass none otherwise); those of the other family are
    /// left out.
    pub fn new(cluster: Prefix, extra: &[Prefix], peers: &[IpAddr]) -> Masquerade {
        let v6 = cluster.is_v6();
        let mut keep: Vec<Prefix> = [cluster, link_local(v6)]
            .into_iter()
            .chain(extra.iter().copied())
            .chain(peers.iter().map(|&a| Prefix::host(a)))
            .filter(|n| n.is_v6() == v6)
            .collect();
        keep.sort_by_key(|n| (n.network(), n.prefix()));
        keep.dedup();
        // An interval set refuses overlapping elements: keep only the widest.
        let all = keep.clone();
        keep.retain(|n| !all.iter().any(|w| w != n && w.covers(n)));
        Masquerade { cluster, keep }
    }

    fn v6(&self) -> bool {
        self.cluster.is_v6()
    }

    /// `table ip podnet_nat` or `table ip6 podnet_nat`.
    pub fn table(&self) -> String {
        format!("table {} {TABLE}", family(self.v6()))
    }

    /// The rule's match: `ip saddr C ip daddr != @keep` (`ip6` for IPv6).
    fn rule_match(&self) -> String {
        let f = family(self.v6());
        format!("{f} saddr {} {f} daddr != @keep", self.cluster)
    }

    /// The transaction that replaces the table with this one.
    pub fn render(&self) -> String {
        let keep: Vec<String> = self.keep.iter().map(|n| n.to_string()).collect();
        let (t, f) = (self.table(), family(self.v6()));
        format!(
            "{t} {{}}\ndelete table {f} {TABLE}\n{t} {{\n  set keep {{\n    type {}\n    flags interval\n    elements = {{ {} }}\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat + 10; policy accept;\n    {} counter masquerade comment \"{RULE_COMMENT}\"\n  }}\n}}\n",
            if self.v6() { "ipv6_addr" } else { "ipv4_addr" },
            keep.join(", "),
            self.rule_match(),
        )
    }

    /// Writes the table (one transaction).
    pub fn apply(&self) -> Result<(), Failure> {
        nft::run(&self.render())
    }

    /// Whether the kernel's table is this one: `Err` says what differs.
    pub fn check(&self) -> Result<(), String> {
        let t = self.table();
        let Some(text) = list(self.v6())? else {
            return Err(format!("{t} is gone"));
        };
        let rule = self.rule_match();
        if !text
            .lines()
            .any(|l| l.contains(&rule) && l.contains("masquerade") && l.contains(RULE_COMMENT))
        {
            return Err(format!("the masquerade rule of {t} is missing or changed"));
        }
        if !text.contains("hook postrouting") {
            return Err(format!("{t} has no postrouting chain"));
        }
        let have = keep_elements(&text);
        let want: Vec<String> = self.keep.iter().map(|n| n.render()).collect();
        if have != want {
            return Err(format!(
                "set keep of {t} holds {} instead of {}",
                have.join(", "),
                want.join(", ")
            ));
        }
        Ok(())
    }
}

impl crate::Agent {
    /// One round of the masquerade tables: each family's written when what it should
    /// hold changed, otherwise verified (with repair on) and put back, logged and
    /// counted, if it drifted; one that is off is removed if an earlier run left it. A
    /// failure is logged and tried again next round; it never stops the agent (pod →
    /// pod traffic does not need the tables).
    pub(crate) fn sync_masquerade(&mut self, peer_underlays: &[IpAddr]) {
        let peers: Vec<IpAddr> = match self.cfg.backend {
            crate::Backend::HostGw => peer_underlays.to_vec(),
            _ => vec![],
        };
        let extra = self.cfg.non_masquerade.clone();
        let v4 = self
            .cfg
            .masquerade
            .then(|| Masquerade::new(Prefix::V4(self.cfg.cluster_cidr), &extra, &peers));
        let v6 = self
            .cfg
            .cluster_cidr6
            .filter(|_| self.cfg.masquerade6)
            .map(|(c, _)| Masquerade::new(Prefix::V6(c), &extra, &peers));
        self.sync_masquerade_family(false, v4);
        self.sync_masquerade_family(true, v6);
    }

    fn sync_masquerade_family(&mut self, v6: bool, want: Option<Masquerade>) {
        let slot = usize::from(v6);
        let t = format!("table {} {TABLE}", family(v6));
        let Some(want) = want else {
            self.masq[slot] = None;
            if !self.masq_cleared[slot] {
                match remove(v6) {
                    Ok(true) => self.log(&format!(
                        "masquerade off for {}: removed {t} an earlier run left",
                        if v6 { "IPv6" } else { "IPv4 (--masquerade=false)" }
                    )),
                    Ok(false) => {}
                    Err(e) => {
                        return self.warn(&format!(
                            "masquerade off, but cannot remove {t} an earlier run left: {e}; retrying next round"
                        ))
                    }
                }
                self.masq_cleared[slot] = true;
            }
            return;
        };
        self.masq_cleared[slot] = false;
        let fresh = self.masq[slot].as_ref() != Some(&want);
        if !fresh {
            if !self.cfg.repair {
                return;
            }
            let Err(why) = want.check() else { return };
            self.warn(&format!("repairing drift: {why}: writing {t} again"));
            if let Some(m) = &self.metrics {
                m.repaired("masquerade");
            }
        }
        match want.apply() {
            Ok(()) => {
                if fresh {
                    let keep: Vec<String> = want.keep.iter().map(|n| n.to_string()).collect();
                    self.log(&format!(
                        "masquerade: pod traffic to anything outside {} leaves with the node's address ({t})",
                        keep.join(", ")
                    ));
                }
                self.masq[slot] = Some(want);
            }
            Err(e) => {
                self.warn(&format!(
                    "cannot write {t}: {e}; pod traffic leaving the cluster is not masqueraded until it is (retrying next round)"
                ));
                self.masq[slot] = None;
            }
        }
    }
}

/// The masquerade's status for the API, read from the kernel now: `want` is what the
/// agent last wrote for one family (`None` when it is off, or before the first
/// write).
pub fn status_now(on: bool, want: Option<&Masquerade>) -> podnet_api::MasqueradeStatus {
    let Some(m) = want else {
        return podnet_api::MasqueradeStatus {
            on,
            problem: on.then(|| format!("{TABLE} not written yet (see podnetd's log)")),
            ..Default::default()
        };
    };
    podnet_api::MasqueradeStatus {
        on,
        cluster: m.cluster.to_string(),
        keep: m.keep.iter().map(|n| n.to_string()).collect(),
        problem: m.check().err(),
        packets: packets(m.v6()).unwrap_or(0),
        ipv6: None,
    }
}

/// Both families' status: IPv4's, with IPv6's inside it on a dual-stack node (`on6`
/// and `want6` as `on` and `want`).
pub fn status_both(
    (on, want): (bool, Option<&Masquerade>),
    dual: Option<(bool, Option<&Masquerade>)>,
) -> podnet_api::MasqueradeStatus {
    let mut st = status_now(on, want);
    st.ipv6 = dual.map(|(on6, want6)| Box::new(status_now(on6, want6)));
    st
}

impl Masquerade {
    /// Back from what [`status_now`] reported (for checking the kernel against it).
    pub fn from_status(s: &podnet_api::MasqueradeStatus) -> Option<Masquerade> {
        let p = |c: &str| podnet_policy::net::parse_cidr(c).ok();
        Some(Masquerade {
            cluster: p(&s.cluster)?,
            keep: s.keep.iter().map(|k| p(k)).collect::<Option<_>>()?,
        })
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

/// One family's table as nft lists it, or `None` if there is none.
pub fn list(v6: bool) -> Result<Option<String>, String> {
    let out = Command::new("nft")
        .args(["list", "table", family(v6), TABLE])
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

/// Removes one family's table if it exists (masquerade off); says whether it did.
pub fn remove(v6: bool) -> Result<bool, Failure> {
    if list(v6).map_err(Failure::from)?.is_none() {
        return Ok(false);
    }
    nft::run(&format!("delete table {} {TABLE}\n", family(v6)))?;
    Ok(true)
}

/// Packets one family's rule masqueraded so far (its counter), if the table is there.
pub fn packets(v6: bool) -> Option<u64> {
    let text = list(v6).ok()??;
    let l = text.lines().find(|l| l.contains(RULE_COMMENT))?;
    let i = l.find("counter packets ")? + "counter packets ".len();
    l[i..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Prefix {
        podnet_policy::net::parse_cidr(s).unwrap()
    }

    #[test]
    fn keeps_the_cluster_link_local_and_extra_ranges_without_overlaps() {
        let m = Masquerade::new(
            net("10.244.0.0/16"),
            &[
                net("10.0.0.0/8"),
                net("192.168.7.0/24"),
                net("10.244.0.0/16"),
                // Another family's CIDR is not this table's.
                net("fd00:77::/64"),
            ],
            &[
                "192.168.7.9".parse().unwrap(),
                "192.168.1.11".parse().unwrap(),
            ],
        );
        // 10.244/16 lies inside 10/8, 192.168.7.9 inside 192.168.7.0/24: an interval
        // set takes no overlapping elements, so only the widest stay.
        let keep: Vec<String> = m.keep.iter().map(|n| n.render()).collect();
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

    /// The IPv6 table: its own family, set type, link-local range and match; the
    /// operator's IPv6 CIDRs only; unique local ranges masqueraded by default,
    /// global ones not.
    #[test]
    fn the_ipv6_table_keeps_its_own_family() {
        let m = Masquerade::new(
            net("fd00:10:244::/56"),
            &[net("10.0.0.0/8"), net("2001:db8::/32")],
            &["192.168.1.11".parse().unwrap()],
        );
        let keep: Vec<String> = m.keep.iter().map(|n| n.render()).collect();
        assert_eq!(keep, ["2001:db8::/32", "fd00:10:244::/56", "fe80::/10"]);
        let r = m.render();
        assert!(
            r.starts_with("table ip6 podnet_nat {}\ndelete table ip6 podnet_nat\n"),
            "{r}"
        );
        assert!(r.contains("type ipv6_addr"), "{r}");
        assert!(
            r.contains("ip6 saddr fd00:10:244::/56 ip6 daddr != @keep counter masquerade"),
            "{r}"
        );
        let c = |s: &str| s.parse::<podnet_cni_spec::net::Ipv6Net>().unwrap();
        assert!(default_ipv6(&c("fd00:10:244::/56")));
        assert!(default_ipv6(&c("fc00:1::/48")));
        assert!(!default_ipv6(&c("2001:db8:1::/48")));
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
