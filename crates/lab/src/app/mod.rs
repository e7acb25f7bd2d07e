//! The `podnet` command: its arguments ([`args`]), and which crate runs each command
//! — the lab's here ([`lab_cmd`], [`bench_cmd`]), the agents' questions through
//! `podnet_cli` ([`agent_cmd`]). Parses, calls, prints.

mod agent_cmd;
mod args;
mod bench_cmd;
mod lab_cmd;

use anyhow::{Context, Result};
use args::{Cli, Cmd, LabCmd, Output};
use clap::Parser;
use std::path::PathBuf;

pub(crate) fn podnet_cni(explicit: Option<PathBuf>) -> Result<PathBuf> {
    explicit
        .or_else(|| crate::sibling_binary("podnet-cni"))
        .context("podnet-cni not found next to the podnet executable; build the workspace (cargo build --release) or pass --podnet-cni")
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("this command creates network namespaces and must run as root (try sudo)");
    }
    Ok(())
}

pub fn main() {
    let cli = Cli::parse();
    // Results go to standard output and errors to standard error, as text or JSON;
    // logs (RUST_LOG, default warn) are for what runs in the background: the lab's
    // kubelet logs every pod it makes (info).
    let daemon = matches!(
        cli.cmd,
        Cmd::Lab {
            cmd: LabCmd::Kubelet,
            ..
        }
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("podnet: error: {e:#}");
        std::process::exit(1);
    }
}

/// Every result the tool prints goes out here: one JSON document with `--output json`,
/// else the text `render` makes of it.
fn emit<T: serde::Serialize + ?Sized>(
    output: Output,
    v: &T,
    render: impl FnOnce(&T) -> String,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Text => print!("{}", render(v)),
    }
    Ok(())
}

/// The agents `trace` and `doctor` ask: a lab's nodes, or the local node's agent.
fn agents(lab: Option<String>, agent: PathBuf) -> Result<Box<dyn podnet_cli::trace::Agents>> {
    Ok(match lab {
        Some(name) => Box::new(crate::agents::LabAgents::new(&open_lab(&name)?)?),
        None => Box::new(podnet_cli::trace::LocalAgent(agent)),
    })
}

/// A lab that exists; `lab up` is the only way to make one.
fn open_lab(name: &str) -> Result<crate::Lab> {
    if !crate::Lab::exists(name) {
        anyhow::bail!(
            "no lab {name} on this machine; start one with `podnet lab up --name {name}`"
        );
    }
    crate::Lab::open(name)
}

/// Each lab node's agent socket, by node; or the local agent's, as `local`.
fn agent_sockets(lab: Option<String>, agent: PathBuf) -> Result<Vec<(String, PathBuf)>> {
    Ok(match lab {
        Some(name) => {
            let l = open_lab(&name)?;
            let st = l.load()?.unwrap_or_default();
            st.nodes
                .iter()
                .map(|n| (n.name.clone(), l.api_socket(&n.name)))
                .collect()
        }
        None => vec![("local".into(), agent)],
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        cmd @ Cmd::Observe { .. } => agent_cmd::observe(cmd),
        cmd @ Cmd::Doctor { .. } => agent_cmd::doctor(cmd),
        cmd @ Cmd::Trace { .. } => agent_cmd::trace(cmd),
        Cmd::Wireguard { cmd } => agent_cmd::run_wireguard(cmd),
        Cmd::Policy { cmd } => agent_cmd::run_policy(cmd),
        Cmd::Lab { name, cmd } => lab_cmd::run_lab(&name, cmd),
        Cmd::Demo { output } => bench_cmd::demo(output),
        Cmd::Bench { what } => bench_cmd::bench(what),
    }
}

/// Progress lines on standard error, unless the result goes out as JSON.
fn progress(output: Output) -> impl FnMut(&str) {
    move |l: &str| {
        if output != Output::Json {
            eprintln!("… {l}");
        }
    }
}
