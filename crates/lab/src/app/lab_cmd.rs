//! `podnet lab …`: the lab's commands.

use super::args::{FaultCmd, LabCmd, LabProxyMode, NodeCmd, Output, PodCmd};
use super::{emit, open_lab, progress, require_root};
use crate::{Binaries, Lab};
use anyhow::{Context, Result};
use std::time::Duration;

pub(super) fn run_lab(name: &str, cmd: LabCmd) -> Result<()> {
    if let LabCmd::ServeEcho {
        ip,
        ip6,
        port,
        tcp,
        udp,
        sctp,
    } = cmd
    {
        use crate::traffic::reach::{parse_ports, serve};
        return serve(
            ip,
            ip6,
            port,
            &parse_ports(&tcp)?,
            &parse_ports(&udp)?,
            &parse_ports(&sctp)?,
        );
    }
    require_root()?;
    if let LabCmd::Kubelet = cmd {
        return crate::kubernetes::run_kubelet(name);
    }
    let lab = if matches!(cmd, LabCmd::Up { .. }) {
        Lab::open(name)?
    } else {
        open_lab(name)?
    };
    match cmd {
        LabCmd::Up { .. } => up(lab, name, cmd)?,
        LabCmd::Kubeconfig | LabCmd::Kubectl { .. } => kube(lab, name, cmd)?,
        LabCmd::Kubelet | LabCmd::ServeEcho { .. } => unreachable!("handled above"),
        LabCmd::Down => {
            let n = lab.down()?;
            println!("lab {name} removed ({n} namespaces)");
        }
        LabCmd::Status { output } => print_status(&lab, output)?,
        LabCmd::Check { output } => {
            let c = lab.check()?;
            let pods = lab.load()?.map(|s| s.pods).unwrap_or_default();
            emit(output, &c, |c| crate::render_check(c, &pods))?;
            if c.unexpected > 0 || !c.nat_free {
                std::process::exit(1);
            }
        }
        LabCmd::Exec { pod, cmd } => {
            let code = crate::exec_in(&lab, &pod, &cmd)?;
            std::process::exit(code);
        }
        LabCmd::Pod { cmd } => pod(lab, name, cmd)?,
        LabCmd::Node {
            cmd: NodeCmd::Del { node },
        } => {
            let mut st = lab.load()?.unwrap_or_default();
            lab.del_node(&mut st, &node)?;
            lab.save(&st)?;
            println!("node {node} removed from lab {name} and from the datastore");
        }
        LabCmd::Fault { cmd } => fault(&lab, cmd)?,
        LabCmd::Apply { .. } | LabCmd::Delete { .. } => manifests(lab, name, cmd)?,
        LabCmd::Probe { .. } => probe(&lab, cmd)?,
    }
    Ok(())
}

/// `lab up`: the lab built (or completed), then its status once its pods run.
fn up(lab: Lab, name: &str, cmd: LabCmd) -> Result<()> {
    let LabCmd::Up {
        nodes,
        pods_per_node,
        backend,
        datastore,
        no_repair,
        no_masquerade,
        policy_datapath,
        kubernetes,
        kubelet,
        proxy_mode,
        datapath,
        ip_family,
        underlay_family,
        output,
    } = cmd
    else {
        unreachable!("lab up")
    };
    if nodes == 0 || nodes > 200 {
        anyhow::bail!("--nodes must be between 1 and 200");
    }
    if pods_per_node > 26 {
        anyhow::bail!("--pods-per-node must be at most 26 (pods are named p<node><letter>); add more with `podnet lab pod add`");
    }
    let opts = crate::Options {
        nodes,
        pods_per_node,
        backend,
        datastore,
        repair: no_repair.then_some(false),
        policy_datapath,
        kubernetes: kubernetes.then_some(true),
        real_nodes: kubelet.then_some(true),
        proxy_mode: proxy_mode.map(|m| match m {
            LabProxyMode::Nftables => "nftables".into(),
            LabProxyMode::Iptables => "iptables".into(),
        }),
        datapath,
        masquerade: no_masquerade.then_some(false),
        ip_family,
        underlay_family,
    };
    let st = lab.up(&opts, &Binaries::find()?, &mut progress(output))?;
    if st.kubernetes && !st.real_nodes {
        // The lab's kubelet makes the pods; it needs the lab's lock.
        drop(lab);
        let ids: Vec<String> = (1..=nodes)
            .flat_map(|i| (0..pods_per_node).map(move |j| crate::pod_name(i, j)))
            .collect();
        crate::kubernetes::wait_pods(name, &ids, &[], Duration::from_secs(60))?;
        return print_status(&open_lab(name)?, output);
    }
    print_status(&lab, output)
}

/// `lab kubeconfig` and `lab kubectl`.
fn kube(lab: Lab, name: &str, cmd: LabCmd) -> Result<()> {
    let st = lab.load()?.unwrap_or_default();
    if !st.kubernetes {
        anyhow::bail!("lab {name} runs no Kubernetes; build one with `podnet lab up --kubernetes`");
    }
    match cmd {
        LabCmd::Kubectl { args } => {
            let (mut cmd, _fabric) = lab.kubectl_command()?;
            drop(lab);
            let status = cmd.args(&args).status().context("run kubectl")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        _ => println!("{}", lab.kubeconfig().display()),
    }
    Ok(())
}

/// `lab pod add|del`: through the lab's Kubernetes when it runs one (its kubelet makes
/// the pod), else through podnet-cni directly.
fn pod(lab: Lab, name: &str, cmd: PodCmd) -> Result<()> {
    let kubernetes = lab.load()?.is_some_and(|s| s.kubernetes);
    match cmd {
        PodCmd::Add { pod, node } if kubernetes => {
            lab.create_pods(&[(pod.clone(), node)])?;
            drop(lab);
            let wait = Duration::from_secs(60);
            crate::kubernetes::wait_pods(name, std::slice::from_ref(&pod), &[], wait)?;
            println!("pod {pod} created");
        }
        PodCmd::Del { pod } if kubernetes => {
            let st = lab.load()?.unwrap_or_default();
            let p = st
                .find_pod(&pod)
                .with_context(|| format!("no pod {pod} in lab {name}"))?;
            let (ns, pname, id) = (
                p.namespace.clone(),
                p.pod_name().to_string(),
                p.name.clone(),
            );
            lab.kubectl(&["delete", "pod", "-n", &ns, &pname, "--wait=false"], None)?;
            drop(lab);
            crate::kubernetes::wait_pods(name, &[], &[id], Duration::from_secs(60))?;
            println!("pod {pod} deleted");
        }
        PodCmd::Add { pod, node } => {
            let mut st = lab.load()?.unwrap_or_default();
            lab.ensure_pod(&mut st, &pod, &node, &Binaries::find()?, &mut |l| {
                println!("{l}")
            })?;
            lab.save(&st)?;
        }
        PodCmd::Del { pod } => {
            let mut st = lab.load()?.unwrap_or_default();
            lab.del_pod(&mut st, &pod, &Binaries::find()?)?;
            lab.save(&st)?;
            println!("pod {pod} deleted");
        }
    }
    Ok(())
}

/// `lab fault inject|clear`.
fn fault(lab: &Lab, cmd: FaultCmd) -> Result<()> {
    match cmd {
        FaultCmd::Inject { kind, node, pod } => {
            let st = lab.load()?.unwrap_or_default();
            let done = lab.inject(&st, &kind, node.as_deref(), pod.as_deref())?;
            println!("fault {kind}: {done}");
        }
        FaultCmd::Clear => {
            let n = lab.clear_faults()?;
            println!("{n} fault steps undone");
        }
    }
    Ok(())
}

/// `lab apply` and `lab delete`: through the lab's Kubernetes API when it runs one,
/// else into its datastore.
fn manifests(lab: Lab, name: &str, cmd: LabCmd) -> Result<()> {
    let (file, apply, wait, output) = match cmd {
        LabCmd::Apply {
            file,
            no_wait,
            output,
        } => (file, true, !no_wait, output),
        LabCmd::Delete { file, output } => (file, false, false, output),
        _ => unreachable!("lab apply or delete"),
    };
    let text = crate::apply::read_source(&file)?;
    if lab.load()?.is_some_and(|s| s.kubernetes) {
        drop(lab);
        let changes = if apply {
            crate::kubernetes::apply(name, &text, wait)?
        } else {
            crate::kubernetes::delete(name, &text)?
        };
        return print_changes(&changes, output);
    }
    let objs = crate::apply::parse_manifests(&text)?;
    let changes = if apply {
        lab.apply(&objs, wait, &Binaries::find()?, &mut progress(output))?
    } else {
        lab.delete(&objs, &Binaries::find()?)?
    };
    print_changes(&changes, output)
}

/// `lab probe`: one flow, or every pod against every other (`--matrix`).
fn probe(lab: &Lab, cmd: LabCmd) -> Result<()> {
    let LabCmd::Probe {
        from,
        to,
        port,
        protocol,
        matrix,
        ipv6,
        output,
    } = cmd
    else {
        unreachable!("lab probe")
    };
    if matrix {
        let m = lab.matrix(port, protocol.proto(), ipv6)?;
        return emit(output, &m, crate::traffic::reach::render_matrix);
    }
    let (from, to) = (from.unwrap_or_default(), to.unwrap_or_default());
    let r = lab.probe(&from, &to, port, protocol.proto(), ipv6)?;
    emit(output, &r, |r| {
        format!(
            "{} → {} ({}) {} port {}: {}\n",
            r.from,
            r.to,
            r.address,
            r.protocol.name(),
            r.port,
            if r.connected {
                "connected"
            } else {
                "NOT connected"
            }
        )
    })?;
    if !r.connected {
        std::process::exit(1);
    }
    Ok(())
}

pub(super) fn print_status(lab: &Lab, output: Output) -> Result<()> {
    let st = lab.status()?;
    if output == Output::Json {
        return emit(output, &st, |_| String::new());
    }
    println!(
        "lab {}: fabric {} (bridge {}); backend {}, datapath {}, policy datapath {}{}",
        st.name,
        st.fabric.netns,
        st.fabric.bridge,
        st.backend,
        st.datapath,
        st.policy_datapath,
        if st.ip_family == podnet_conventions::IpFamily::Dual {
            "; dual-stack pods"
        } else {
            ""
        }
    );
    println!(
        "{:<8} {:<14} {:<16} {:<18} {:>8} {:>6}",
        "NODE", "UNDERLAY", "POD CIDR", "VTEP MAC", "AGENT", "PEERS"
    );
    for n in &st.nodes {
        // On real nodes podnetd is the DaemonSet's pod: no pid of the lab's.
        let agent = match (n.agent_pid, n.pod_cidr.is_some()) {
            (Some(p), _) => p.to_string(),
            (None, true) => "pod".into(),
            (None, false) => "DOWN".into(),
        };
        println!(
            "{:<8} {:<14} {:<16} {:<18} {:>8} {:>6}",
            n.name,
            n.underlay_ip,
            n.pod_cidr.as_deref().unwrap_or("?"),
            n.vtep_mac.as_deref().unwrap_or("-"),
            agent,
            n.peers
        );
    }
    // A dual-stack lab's pods have an IPv6 address too: a column for it.
    let dual = st.pods.iter().any(|p| p.ip6.is_some());
    let ip6 = |p: Option<std::net::Ipv6Addr>| {
        if dual {
            format!(
                " {:<24}",
                p.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            )
        } else {
            String::new()
        }
    };
    let head6 = if dual {
        format!(" {:<24}", "IPV6")
    } else {
        String::new()
    };
    println!(
        "{:<6} {:<8} {:<14}{head6} {:<18} {:<16}",
        "POD", "NODE", "IP", "MAC", "HOST VETH"
    );
    for p in &st.pods {
        println!(
            "{:<6} {:<8} {:<14}{} {:<18} {:<16}",
            p.name,
            p.node,
            p.ip,
            ip6(p.ip6),
            p.mac,
            p.host_veth
        );
    }
    Ok(())
}

fn print_changes(changes: &[crate::apply::Change], output: Output) -> Result<()> {
    emit(output, changes, |changes| {
        changes
            .iter()
            .map(|c| match &c.detail {
                Some(d) => format!("{} {} ({d})\n", c.object, c.action),
                None => format!("{} {}\n", c.object, c.action),
            })
            .collect()
    })
}
