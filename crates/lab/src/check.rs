//! `lab check`: every pod to every other over TCP, held against NetworkPolicy and
//! against NAT — on a dual-stack lab over both families (each pod's IPv6 address to
//! each other's).

use super::*;
use podnet_conventions::PolicyDatapath;
use std::net::{IpAddr, SocketAddr};

/// One cell of the connectivity matrix.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub src: String,
    pub dst: String,
    /// `ipv4`, or `ipv6` (the pods' IPv6 addresses, on a dual-stack lab).
    pub family: &'static str,
    pub ok: bool,
    /// The source address the destination's echo server saw.
    pub seen_source: Option<String>,
    /// True when the destination saw the source pod's own IP.
    pub no_nat: bool,
    pub error: Option<String>,
    /// What NetworkPolicy says of this pair (TCP to the echo port): whether it must
    /// connect.
    pub allowed_by_policy: bool,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub pairs: Vec<Probe>,
    pub reachable: usize,
    pub total: usize,
    pub nat_free: bool,
    /// Pairs that policy denies, and that were indeed not reached.
    pub denied_by_policy: usize,
    /// Pairs whose outcome is not what policy says (unreachable although allowed, or
    /// reached although denied).
    pub unexpected: usize,
}

impl Lab {
    /// Every pod to every other pod, TCP to its echo server, all at once, each outcome
    /// held against what NetworkPolicy says of that pair; on a dual-stack lab over
    /// IPv6 too.
    pub fn check(&self) -> Result<Check> {
        let st = self
            .load()?
            .with_context(|| format!("no lab {}", self.name))?;
        let cluster = if st.policy_datapath == PolicyDatapath::None {
            None
        } else {
            Some(podnet_policy::Cluster::from_objects(&self.objects(&st)?))
        };
        let addr = |p: &PodState, v6: bool| -> Option<IpAddr> {
            if v6 {
                p.ip6.map(IpAddr::V6)
            } else {
                Some(p.ip.into())
            }
        };
        let allowed = |src: &PodState, dst: &PodState, v6: bool| {
            let Some(c) = &cluster else { return true };
            let end = |p: &PodState| podnet_policy::End {
                ip: addr(p, v6).expect("probed pods have an address of the family"),
                pod: c.pod(&p.namespace, p.pod_name()),
            };
            podnet_policy::evaluate(
                c,
                &end(src),
                &end(dst),
                podnet_policy::Proto::Tcp,
                ECHO_PORT,
            )
            .allowed()
        };
        let families: &[bool] = if st.ip_family == podnet_conventions::IpFamily::Dual {
            &[false, true]
        } else {
            &[false]
        };
        let mut jobs = Vec::new();
        for &v6 in families {
            for src in &st.pods {
                for dst in st.pods.iter().filter(|d| d.name != src.name) {
                    let (Some(from), Some(to)) = (addr(src, v6), addr(dst, v6)) else {
                        continue;
                    };
                    let must = allowed(src, dst, v6);
                    jobs.push(move || -> Result<Probe> {
                        let ns = Netns::open(netns::named_path(&src.netns))?;
                        let r = probe::tcp_request(
                            &ns,
                            SocketAddr::new(to, ECHO_PORT),
                            "check",
                            Duration::from_secs(2),
                        );
                        let (ok, seen, error) = match r {
                            Ok(line) => {
                                let seen = line
                                    .strip_prefix("from=")
                                    .and_then(|l| l.split(' ').next())
                                    .map(String::from);
                                (true, seen, None)
                            }
                            Err(e) => (false, None, Some(format!("{e:#}"))),
                        };
                        let no_nat = seen.as_deref() == Some(&from.to_string());
                        Ok(Probe {
                            src: src.name.clone(),
                            dst: dst.name.clone(),
                            family: if v6 { "ipv6" } else { "ipv4" },
                            ok,
                            seen_source: seen,
                            no_nat,
                            error,
                            allowed_by_policy: must,
                        })
                    });
                }
            }
        }
        let pairs = crate::traffic::reach::all_at_once(jobs)?;
        let reachable = pairs.iter().filter(|p| p.ok).count();
        let nat_free = pairs.iter().filter(|p| p.ok).all(|p| p.no_nat);
        Ok(Check {
            total: pairs.len(),
            reachable,
            nat_free,
            denied_by_policy: pairs
                .iter()
                .filter(|p| !p.ok && !p.allowed_by_policy)
                .count(),
            unexpected: pairs.iter().filter(|p| p.ok != p.allowed_by_policy).count(),
            pairs,
        })
    }
}

/// The matrix for people: ✓ reachable with the source address preserved, N reachable
/// but NATed, P not reached and denied by policy (as it should be), ✗ unreachable
/// although allowed, ! reached although policy denies it.
pub fn render_check(c: &Check, pods: &[PodState]) -> String {
    let mut s = String::new();
    for family in ["ipv4", "ipv6"] {
        if !c.pairs.iter().any(|p| p.family == family) {
            continue;
        }
        if family == "ipv6" {
            s.push_str("over IPv6:\n");
        }
        s.push_str(&render_family(c, pods, family));
    }
    s.push_str(&format!(
        "{}/{} pairs reachable, {} denied by NetworkPolicy as it should be; {}\n",
        c.reachable,
        c.total,
        c.denied_by_policy,
        if c.nat_free {
            "every destination saw the sender's own pod IP (no NAT)"
        } else {
            "SOME DESTINATIONS SAW A REWRITTEN SOURCE (NAT)"
        }
    ));
    for p in c.pairs.iter().filter(|p| p.ok != p.allowed_by_policy) {
        let v6 = if p.family == "ipv6" { " (IPv6)" } else { "" };
        if p.ok {
            s.push_str(&format!(
                "  ! {} → {}{v6}: reached although NetworkPolicy denies it on port {ECHO_PORT}: see `podnet policy explain` and `podnet trace --port {ECHO_PORT}`\n",
                p.src, p.dst
            ));
        } else {
            s.push_str(&format!(
                "  ✗ {} → {}{v6}: {}\n",
                p.src,
                p.dst,
                p.error.as_deref().unwrap_or("")
            ));
        }
    }
    s
}

/// One family's matrix.
fn render_family(c: &Check, pods: &[PodState], family: &str) -> String {
    let w = pods.iter().map(|p| p.name.len()).max().unwrap_or(0).max(5) + 1;
    let mut s = format!("{:<w$}", "from\\to");
    for d in pods {
        s.push_str(&format!("{:>w$}", d.name));
    }
    s.push('\n');
    for src in pods {
        s.push_str(&format!("{:<w$}", src.name));
        for dst in pods {
            let cell = if src.name == dst.name {
                "·"
            } else {
                match c
                    .pairs
                    .iter()
                    .find(|p| p.family == family && p.src == src.name && p.dst == dst.name)
                {
                    Some(p) if p.ok && !p.allowed_by_policy => "!",
                    Some(p) if p.ok && p.no_nat => "✓",
                    Some(p) if p.ok => "N",
                    Some(p) if !p.allowed_by_policy => "P",
                    _ => "✗",
                }
            };
            s.push_str(&format!("{cell:>w$}"));
        }
        s.push('\n');
    }
    s
}
