//! The podnet CNI plugin.
//!
//! A container runtime executes `podnet-cni` once per pod event with the CNI
//! environment and the network configuration on stdin; [`run`] answers with the JSON
//! to print and the exit code. Each verb lives in its own module and reads top to
//! bottom: configuration, host side, pod side, result.
//!
//! Kernel objects this plugin owns (see also [`antispoof`]):
//! - per node: the bridge (default `podnet0`) with the gateway address, created on the
//!   first ADD if no agent made it; never removed by the plugin (other pods use it);
//! - per pod: a veth pair — `eth0` (or `CNI_IFNAME`) in the pod, `pn<hash>` on the
//!   bridge — the pod's address and routes inside its namespace, its anti-spoofing
//!   filter and datapath entry, and its IPAM record. DEL removes exactly these; GC removes them for
//!   attachments the runtime no longer knows.

pub mod add;
pub mod antispoof;
pub mod check;
pub mod del;
pub mod delegate;
pub mod errors;
pub mod gc;
pub mod settings;
pub mod status;

use podnet_cni_spec::{code, version, CniError, Command, Env, NetConf, Version};
use serde_json::{json, Value};

/// Everything one invocation was given.
pub struct Invocation {
    pub env: Env,
    pub conf: NetConf,
    /// The configuration as raw JSON (for podnet keys outside the spec struct).
    pub raw: Value,
    /// stdin as received, passed unchanged to a delegated IPAM plugin.
    pub stdin: Vec<u8>,
    pub version: Version,
}

/// Runs one invocation; returns what to print on stdout and the exit code.
///
/// Call it from a single-threaded process (as the `podnet-cni` binary does): DEL and
/// GC fork a helper that goes on allocating after the fork.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, i32) {
    let t = std::time::Instant::now();
    let verb = get_env("CNI_COMMAND").unwrap_or_default();
    let mut version_for_errors = version::LATEST.to_string();
    let out = match dispatch(get_env, stdin, &mut version_for_errors) {
        Ok(Some(v)) => (v.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => (e.to_json(&version_for_errors).to_string(), 1),
    };
    report(stdin, &verb, out.1 == 0, t.elapsed());
    out
}

/// Tells the node's agent what this invocation did (for its metrics): one datagram to
/// the socket beside the node file, sent without waiting; an absent agent costs one
/// failed send and changes nothing.
fn report(stdin: &[u8], verb: &str, ok: bool, took: std::time::Duration) {
    if !matches!(verb, "ADD" | "DEL" | "CHECK") {
        return;
    }
    let node_file = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["nodeFile"].as_str().map(String::from))
        .unwrap_or_else(|| podnet_conventions::DEFAULT_NODE_FILE.to_string());
    let path = podnet_conventions::cni_report_socket(std::path::Path::new(&node_file));
    let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let _ = s.set_nonblocking(true);
    let msg = json!({
        "verb": verb,
        "result": if ok { "ok" } else { "error" },
        "seconds": took.as_secs_f64(),
    });
    let _ = s.send_to(msg.to_string().as_bytes(), path);
}

fn dispatch(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    version_for_errors: &mut String,
) -> Result<Option<Value>, CniError> {
    let env = Env::from_lookup(get_env)?;
    let command = env.command.expect("from_lookup sets the command");
    if command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": version::LATEST,
            "supportedVersions": version::SUPPORTED,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    let version = conf.version()?;
    *version_for_errors = conf.cni_version.clone();
    conf.require_identity()?;
    let raw: Value = serde_json::from_slice(stdin).unwrap_or(Value::Null);
    let needs = |ok: bool, verb: &str, since: &str| {
        if ok {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("{verb} is not defined for cniVersion {version}"),
                format!("{verb} exists from CNI {since} on; set cniVersion to {since} or later"),
            ))
        }
    };
    let inv = Invocation {
        env,
        conf,
        raw,
        stdin: stdin.to_vec(),
        version,
    };
    match command {
        Command::Add => add::run(&inv).map(|r| Some(r.encode(version))),
        Command::Del => del::run(&inv).map(|_| None),
        Command::Check => {
            needs(version.has_check(), "CHECK", "0.4.0")?;
            check::run(&inv).map(|_| None)
        }
        Command::Status => {
            needs(version.has_status_and_gc(), "STATUS", "1.1.0")?;
            status::run(&inv).map(|_| None)
        }
        Command::Gc => {
            needs(version.has_status_and_gc(), "GC", "1.1.0")?;
            gc::run(&inv).map(|_| None)
        }
        Command::Version => unreachable!("handled above"),
    }
}
