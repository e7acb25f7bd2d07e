//! `podnet`: the command-line tool. Thin: parses arguments, calls the library, prints.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "podnet",
    version,
    about = "Kubernetes pod networking you can see through",
    long_about = "podnet gives every pod its own IP on a per-node bridge, stops pods from spoofing \
                  each other's MAC, ARP and IP addresses, and shows what it built.\n\n\
                  Commands that change the kernel must run as root. Every command takes --output json."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put two pods on a scratch node through the real podnet-cni, show them talking
    /// without NAT and a forged ARP reply being dropped; then remove everything.
    Demo {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// ADD and DEL latency (p50, p99) of podnet-cni against the reference bridge +
    /// host-local plugins, sequential and concurrent, in the same run.
    Cni {
        /// Pods per phase.
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// Parallel invocations in the concurrent phase.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// Directory holding the reference `bridge` and `host-local` plugins.
        #[arg(long, default_value = "/usr/lib/cni")]
        reference_dir: PathBuf,
        /// podnet-cni binary (default: next to this executable).
        #[arg(long)]
        podnet_cni: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

fn podnet_cni(explicit: Option<PathBuf>) -> Result<PathBuf> {
    explicit
        .or_else(|| podnet::sibling_binary("podnet-cni"))
        .context("podnet-cni not found next to the podnet executable; build the workspace (cargo build --release) or pass --podnet-cni")
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("this command creates network namespaces and must run as root (try sudo)");
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("podnet: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo { output } => {
            require_root()?;
            let plugin = podnet_cni(None)?;
            let quiet = output == Output::Json;
            let report = podnet::demo::run(&plugin, &mut |l| {
                if !quiet {
                    println!("{l}");
                }
            })?;
            if quiet {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            if !report.no_nat || report.forged_arp_dropped == 0 {
                anyhow::bail!("the demo did not show what it should: see the lines above");
            }
        }
        Cmd::Bench {
            what:
                BenchCmd::Cni {
                    pods,
                    concurrency,
                    reference_dir,
                    podnet_cni: p,
                    output,
                },
        } => {
            require_root()?;
            let opts = podnet::bench::Options {
                pods,
                concurrency,
                podnet_cni: podnet_cni(p)?,
                reference_dir,
            };
            let quiet = output == Output::Json;
            let report = podnet::bench::run(&opts, &mut |l| {
                if !quiet {
                    eprintln!("… {l}");
                }
            })?;
            if quiet {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", podnet::bench::render(&report));
            }
        }
    }
    Ok(())
}
