//! The commands that ask the agents (`trace`, `doctor`, `observe`, `policy`,
//! `wireguard`): the arguments turned into `podnet_cli` calls, with the lab's names
//! when `--lab` is given.

use super::args::{Cmd, Output, PolicyCmd, Proto, TraceFamily, VerdictFilter, WireguardCmd};
use super::{agent_sockets, agents, emit, open_lab};
use anyhow::{Context, Result};

/// `podnet observe`: the nodes' events, followed until `--count` or `--for`.
pub(super) fn observe(cmd: Cmd) -> Result<()> {
    let Cmd::Observe {
        lab,
        node,
        pod,
        verdict,
        since,
        count,
        for_,
        agent,
        output,
    } = cmd
    else {
        unreachable!("observe")
    };
    let mut socks = agent_sockets(lab, agent)?;
    if let Some(n) = &node {
        if !socks.iter().any(|(s, _)| s == n) {
            anyhow::bail!(
                "no node {n} to observe; nodes: {}",
                socks
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        socks.retain(|(s, _)| s == n);
    }
    let duration = |d: Option<String>| {
        d.as_deref()
            .map(podnet_cli::observe::parse_duration)
            .transpose()
    };
    let filter = podnet_cli::observe::Filter {
        pod,
        verdict: verdict.map(|v| match v {
            VerdictFilter::Dropped => "dropped".into(),
            VerdictFilter::Allowed => "allowed".into(),
        }),
        since: duration(since)?,
    };
    let stop = podnet_cli::observe::Stop {
        count,
        after: duration(for_)?,
    };
    use std::io::Write;
    podnet_cli::observe::follow(&socks, &filter, stop, &mut |e| {
        let mut o = std::io::stdout().lock();
        match output {
            Output::Json => writeln!(o, "{}", serde_json::to_string(e)?)?,
            Output::Text => writeln!(o, "{}", podnet_cli::observe::render(e))?,
        }
        o.flush()?;
        Ok(())
    })?;
    Ok(())
}

/// `podnet doctor`: exits 1 when anything is broken.
pub(super) fn doctor(cmd: Cmd) -> Result<()> {
    let Cmd::Doctor {
        node,
        lab,
        agent,
        output,
    } = cmd
    else {
        unreachable!("doctor")
    };
    let r = podnet_cli::doctor::doctor(&*agents(lab, agent)?, node.as_deref())?;
    emit(output, &r, podnet_cli::doctor::render)?;
    if r.broken > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `podnet trace`: exits 1 when a hop is broken.
pub(super) fn trace(cmd: Cmd) -> Result<()> {
    let Cmd::Trace {
        src,
        dst,
        lab,
        agent,
        port,
        protocol,
        family,
        output,
    } = cmd
    else {
        unreachable!("trace")
    };
    let flow = podnet_cli::trace::Flow {
        proto: match protocol {
            Proto::Tcp => podnet_policy::Proto::Tcp,
            Proto::Udp => podnet_policy::Proto::Udp,
            Proto::Sctp => podnet_policy::Proto::Sctp,
            Proto::Icmp => podnet_policy::Proto::Other(1),
        },
        port,
    };
    use podnet_cli::trace::Family;
    let agents = agents(lab, agent)?;
    let one = |f: Option<Family>| podnet_cli::trace::trace(&*agents, &src, &dst, &flow, f);
    let broken = match family {
        Some(TraceFamily::Both) => {
            let ts = vec![one(Some(Family::Ipv4))?, one(Some(Family::Ipv6))?];
            emit(output, &ts, |ts| {
                ts.iter()
                    .map(podnet_cli::trace::render)
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            ts.iter().any(|t| t.broken_hop.is_some())
        }
        f => {
            let t = one(f.map(|f| match f {
                TraceFamily::Ipv6 => Family::Ipv6,
                _ => Family::Ipv4,
            }))?;
            emit(output, &t, podnet_cli::trace::render)?;
            t.broken_hop.is_some()
        }
    };
    if broken {
        std::process::exit(1);
    }
    Ok(())
}

pub(super) fn run_policy(cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Explain {
            from,
            to,
            port,
            protocol,
            ipv6,
            lab,
            datastore,
            output,
        } => {
            let objs = match &lab {
                Some(name) => crate::agents::lab_objects(&open_lab(name)?)?,
                None => crate::agents::datastore_objects(&datastore)?,
            };
            // A Service (with --lab: translated as the source's node does it, then judged
            // on each backend); else a pod or an address.
            if let Some(v) = explain_service(
                lab.as_deref(),
                &objs,
                (&from, &to),
                port,
                protocol.proto(),
                ipv6,
            )? {
                emit(output, &v, podnet_cli::policy::render_service_verdict)?;
                if v.verdict == "denied" {
                    std::process::exit(1);
                }
            } else {
                let v =
                    podnet_cli::policy::explain(&objs, &from, &to, port, protocol.proto(), ipv6)?;
                emit(output, &v, podnet_cli::policy::render_verdict)?;
            }
        }
        PolicyCmd::Stats { lab, agent, output } => {
            let socks = agent_sockets(lab, agent)?;
            let refs: Vec<(String, &std::path::Path)> = socks
                .iter()
                .map(|(n, p)| (n.clone(), p.as_path()))
                .collect();
            let s = podnet_cli::policy::stats(&refs)?;
            emit(output, &s, |s| podnet_cli::policy::render_stats(s))?;
        }
    }
    Ok(())
}

pub(super) fn run_wireguard(cmd: WireguardCmd) -> Result<()> {
    match cmd {
        WireguardCmd::Status { lab, agent, output } => {
            let socks = agent_sockets(lab, agent)?;
            let s = podnet_cli::wireguard::status(&socks);
            emit(output, &s, |s| podnet_cli::wireguard::render_status(s))?;
            if s.iter().any(|n| n.wireguard.is_none()) {
                std::process::exit(1);
            }
        }
        WireguardCmd::Rotate {
            node,
            lab,
            agent,
            output,
        } => {
            let r = match lab {
                Some(name) => {
                    let node = node.context("--lab needs --node: the node to re-key")?;
                    crate::agents::rotate_in_lab(&open_lab(&name)?, &node)?
                }
                None => podnet_cli::wireguard::rotate(agent)?,
            };
            emit(output, &r, podnet_cli::wireguard::render_rotation)?;
        }
    }
    Ok(())
}

/// `policy explain` to a Service: `None` when `to` is a pod, or no lab is given, or the
/// source's node has no kube-proxy rule for it.
fn explain_service(
    lab: Option<&str>,
    objs: &[podnet_policy::Object],
    (from, to): (&str, &str),
    port: u16,
    proto: podnet_policy::Proto,
    ipv6: bool,
) -> Result<Option<podnet_cli::policy::ServiceVerdict>> {
    let c = podnet_policy::Cluster::from_objects(objs);
    let is_pod = match to.parse::<std::net::IpAddr>() {
        Ok(ip) => c.pod_by_ip(ip).is_some(),
        Err(_) => {
            let (ns, name) = to.split_once('/').unwrap_or(("default", to));
            c.pod(ns, name).is_some()
        }
    };
    let Some(name) = lab.filter(|_| !is_pod) else {
        return Ok(None);
    };
    let lab = open_lab(name)?;
    let agents = crate::agents::LabAgents::new(&lab)?;
    let src: std::net::IpAddr = from
        .parse()
        .ok()
        .or_else(|| podnet_cli::trace::Agents::pod_ip(&agents, from).map(Into::into))
        .with_context(|| format!("{from:?} is neither an address nor a pod of lab {name}"))?;
    // The Service's IPv6 side when the flow is IPv6 (as `explain` takes it).
    let is6 = |s: &str| s.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_ipv6());
    let ipv6 = ipv6 || is6(from) || is6(to);
    let (_, r) = podnet_cli::trace::translation(&agents, src, to, port, proto, ipv6)?;
    let Some(p) = r.ports.iter().find(|p| !p.node_port) else {
        return Ok(None);
    };
    podnet_cli::policy::explain_service(objs, from, p, &r.proxy, proto).map(Some)
}
