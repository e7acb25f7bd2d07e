//! `podnet bench …` and `podnet demo`: they make namespaces, so they run as root.

use super::args::{BenchCmd, Output};
use super::{emit, podnet_cni, progress, require_root};
use anyhow::Result;

pub(super) fn bench(what: BenchCmd) -> Result<()> {
    require_root()?;
    match what {
        BenchCmd::Datapath {
            seconds,
            round_trips,
            rounds,
            output,
        } => {
            use crate::bench::datapath as b;
            let opts = b::Options {
                seconds: seconds.max(1),
                round_trips: round_trips.max(10),
                rounds: rounds.max(1),
            };
            let report = b::run(&opts, &crate::Binaries::find()?, &mut progress(output))?;
            emit(output, &report, b::render)
        }
        BenchCmd::Policy {
            mut rules,
            seconds,
            rounds,
            changes,
            only,
            output,
        } => {
            use crate::bench::policy as b;
            if !rules.contains(&0) {
                rules.insert(0, 0);
            }
            rules.sort();
            rules.dedup();
            let opts = b::Options {
                rules,
                seconds: seconds.max(1),
                rounds: rounds.max(1),
                changes: changes.max(1),
                only,
            };
            let report = b::run(&opts, &crate::Binaries::find()?, &mut progress(output))?;
            emit(output, &report, b::render)
        }
        BenchCmd::Spray {
            seconds,
            rounds,
            output,
        } => {
            use crate::bench::policy::spray as b;
            let opts = b::Options {
                seconds: seconds.max(2),
                rounds: rounds.max(1),
            };
            let report = b::run(&opts, &crate::Binaries::find()?, &mut progress(output))?;
            emit(output, &report, b::render)
        }
        BenchCmd::Cni {
            pods,
            concurrency,
            reference_dir,
            podnet_cni: p,
            ip_family,
            output,
        } => {
            let opts = crate::bench::cni::Options {
                pods,
                concurrency,
                podnet_cni: podnet_cni(p)?,
                reference_dir,
                ip_family,
            };
            let report = crate::bench::cni::run(&opts, &mut progress(output))?;
            emit(output, &report, crate::bench::cni::render)
        }
    }
}

/// `podnet demo`: two pods on a scratch node, no NAT, a forged ARP reply dropped.
pub(super) fn demo(output: Output) -> Result<()> {
    require_root()?;
    let plugin = podnet_cni(None)?;
    let quiet = output == Output::Json;
    let report = crate::demo::run(&plugin, &mut |l| {
        if !quiet {
            println!("{l}");
        }
    })?;
    emit(output, &report, |_| String::new())?;
    if !report.no_nat || report.forged_arp_dropped == 0 {
        anyhow::bail!("the demo did not show what it should: see the lines above");
    }
    Ok(())
}
