//! Running a CNI plugin exactly as a container runtime does: the CNI environment
//! variables, the network configuration on stdin, JSON on stdout.
//!
//! `node` runs the plugin inside a node's network namespace (the lab's nodes, the
//! benchmark's node), entered between fork and exec so that no shell or `ip netns exec`
//! adds its own cost to what is measured.

use podnet_netlink::Netns;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One plugin invocation.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub plugin: &'a Path,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    /// CNI_PATH; defaults to the plugin's directory plus /usr/lib/cni.
    pub cni_path: Option<String>,
    pub config: &'a [u8],
}

/// What the plugin did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// `CLOCK_MONOTONIC` just before the spawn and just after the exit, in
    /// nanoseconds: the frame for the plugin's timing marks.
    pub spawned_ns: u64,
    pub exited_ns: u64,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// stdout as JSON (`Null` if empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }
}

/// Runs the plugin, optionally inside `node`'s network namespace.
pub fn run(call: &Call, node: Option<&Netns>) -> std::io::Result<Outcome> {
    run_with_env(call, node, &[])
}

/// [`run`], with more environment variables for the plugin (`PODNET_CNI_TIMING`).
pub fn run_with_env(
    call: &Call,
    node: Option<&Netns>,
    env: &[(&str, &str)],
) -> std::io::Result<Outcome> {
    let cni_path = call.cni_path.clone().unwrap_or_else(|| {
        let dir = call.plugin.parent().map(PathBuf::from).unwrap_or_default();
        format!("{}:/usr/lib/cni:/opt/cni/bin", dir.display())
    });
    let mut cmd = Command::new(call.plugin);
    cmd.env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(env.iter().copied());
    if let Some(ns) = node {
        podnet_netlink::netns::in_netns(&mut cmd, ns.fd(), None, false);
    }
    let spawned_ns = podnet_cni::timing::monotonic_ns();
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(call.config);
    }
    let out = child.wait_with_output()?;
    let elapsed = start.elapsed();
    let exited_ns = podnet_cni::timing::monotonic_ns();
    Ok(Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
        spawned_ns,
        exited_ns,
    })
}

/// What podnet-cni's ADD result says about the pod it attached.
#[derive(Clone, Debug)]
pub struct Attached {
    pub ip: std::net::Ipv4Addr,
    /// A dual-stack pod's IPv6 address.
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mac: String,
    pub host_veth: String,
}

impl Attached {
    /// Reads a podnet-cni ADD result: interfaces are bridge, host veth, pod interface.
    pub fn from_result(r: &serde_json::Value) -> anyhow::Result<Attached> {
        use anyhow::Context;
        let ip = r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("ADD result without an IPv4 address: {r}"))?;
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let ip6 = r["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .next();
        Ok(Attached {
            ip,
            ip6,
            mac: s(&r["interfaces"][2]["mac"]),
            host_veth: s(&r["interfaces"][1]["name"]),
        })
    }
}
