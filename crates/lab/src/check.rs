//! `lab check`: every pod to every other over TCP, held against NetworkPolicy and
//! against NAT.

use super::*;
use podnet_conventions::PolicyDatapath;

/// One cell of the connectivity matrix.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub src: String,
    pub dst: String,
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
    /// held against what NetworkPolicy says of that pair.
    pub fn check(&self) -> Result<Check> {
        let st = self
            .load()?
            .with_context(|| format!("no lab {}", self.name))?;
        let cluster = if st.policy_datapath == PolicyDatapath::None {
            None
        } else {
            Some(podnet_policy::Cluster::from_objects(&self.objects(&st)?))
        };
        let allowed = |src: &PodState, dst: &PodState| {
            let Some(c) = &cluster else { return true };
            let end = |p: &PodState| podnet_policy::End {
                ip: p.ip.into(),
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
        let mut jobs = Vec::new();
        {
            for src in &st.pods {
                for dst in st.pods.iter().filter(|d| d.name != src.name) {
                    let must = allowed(src, dst);
                    jobs.push(move || -> Result<Probe> {
                        let ns = Netns::open(netns::named_path(&src.netns))?;
                        let r = probe::tcp_request(
                            &ns,
                            SocketAddrV4::new(dst.ip, ECHO_PORT),
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
                        let no_nat = seen.as_deref() == Some(&src.ip.to_string());
                        Ok(Probe {
                            src: src.name.clone(),
                            dst: dst.name.clone(),
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
                    .find(|p| p.src == src.name && p.dst == dst.name)
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
        if p.ok {
            s.push_str(&format!(
                "  ! {} → {}: reached although NetworkPolicy denies it on port {ECHO_PORT}: see `podnet policy explain` and `podnet trace --port {ECHO_PORT}`\n",
                p.src, p.dst
            ));
        } else {
            s.push_str(&format!(
                "  ✗ {} → {}: {}\n",
                p.src,
                p.dst,
                p.error.as_deref().unwrap_or("")
            ));
        }
    }
    s
}
