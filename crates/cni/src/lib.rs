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
pub mod bandwidth;
pub mod check;
pub mod del;
pub mod delegate;
pub mod errors;
pub mod gc;
pub mod settings;
pub mod status;
pub mod timing;

use podnet_cni_spec::{code, version, CniError, Command, Env, NetConf, Version};
use podnet_netlink::Netns;
use serde_json::{json, Value};
use std::io::Read;

/// The most bytes read from stdin. A network configuration is a few kilobytes, with
/// a `prevResult` and runtime capabilities rarely more than tens; what is larger is a
/// runtime bug, and the plugin would hold it in memory twice over (bytes and JSON).
pub const MAX_STDIN: usize = 1 << 20;

/// Reads stdin, at most [`MAX_STDIN`] bytes: more is an error (code 6) naming the
/// limit, a failed read is code 5.
pub fn read_stdin(r: impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    r.take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            CniError::new(
                code::IO,
                format!("cannot read the network configuration on stdin: {e}"),
                "the runtime must pass the configuration on stdin and close it",
            )
        })?;
    if buf.len() > MAX_STDIN {
        return Err(CniError::new(
            code::DECODE,
            format!("the network configuration on stdin is larger than {MAX_STDIN} bytes (1 MiB)"),
            "a CNI configuration is a few kilobytes: check what the runtime passes (a prevResult, runtimeConfig or padding that grew without bound)",
        ));
    }
    Ok(buf)
}

/// [`run`] on a reader: stdin read through [`read_stdin`] (what the binary calls).
pub fn run_reader(get_env: impl Fn(&str) -> Option<String>, stdin: impl Read) -> (String, i32) {
    match read_stdin(stdin) {
        Ok(bytes) => run(get_env, &bytes),
        Err(e) => {
            let verb = get_env("CNI_COMMAND").unwrap_or_default();
            report(b"", &verb, false, std::time::Duration::ZERO);
            (e.to_json(version::LATEST).to_string(), 1)
        }
    }
}

/// Opens the pod's network namespace (`CNI_NETNS`) for ADD and CHECK: it must exist
/// (else code 3), be a network namespace (else 104), and not be the plugin's own —
/// the node's — namespace (104): a runtime that passes that would have the pod's
/// interface, address and default route made on the node itself.
pub fn pod_netns(path: &str) -> Result<Netns, CniError> {
    let ns = Netns::open(path).map_err(|e| errors::netns(e, path))?;
    let own = Netns::current().map_err(|e| {
        CniError::new(
            code::NETNS,
            format!("cannot open podnet-cni's own network namespace to compare CNI_NETNS {path} with it: {e}"),
            "podnet-cni needs /proc mounted",
        )
    })?;
    if ns.inode() == own.inode() {
        return Err(CniError::new(
            code::NETNS,
            format!("CNI_NETNS {path} is podnet-cni's own network namespace (the node's), not a pod's"),
            "the runtime passed the host's namespace: the pod's interface, address and default route would be made on the node; \
             pass the pod's namespace (/run/netns/NAME or /proc/PID/ns/net); nothing was changed",
        ));
    }
    Ok(ns)
}

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
    timing::mark("started");
    let verb = get_env("CNI_COMMAND").unwrap_or_default();
    let mut version_for_errors = version::LATEST.to_string();
    let out = match dispatch(get_env, stdin, &mut version_for_errors) {
        Ok(Some(v)) => (v.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => (e.to_json(&version_for_errors).to_string(), 1),
    };
    report(stdin, &verb, out.1 == 0, t.elapsed());
    timing::mark("reported to the agent");
    timing::flush();
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
    let msg = podnet_conventions::CniReport {
        verb: verb.to_string(),
        result: if ok { "ok" } else { "error" }.to_string(),
        seconds: took.as_secs_f64(),
    };
    let _ = s.send_to(
        &serde_json::to_vec(&msg).expect("a report serializes"),
        path,
    );
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
    let (conf, raw) = NetConf::parse_raw(stdin)?;
    let version = conf.version()?;
    *version_for_errors = conf.cni_version.clone();
    conf.require_identity()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_read_up_to_one_mib() {
        let exact = vec![b' '; MAX_STDIN];
        assert_eq!(read_stdin(exact.as_slice()).unwrap().len(), MAX_STDIN);
        let e = read_stdin(std::io::repeat(b' ')).unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert!(e.msg.contains("1048576 bytes"), "{e}");
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("EIO"))
            }
        }
        assert_eq!(read_stdin(Broken).unwrap_err().code, code::IO);
        // The binary's path: the error is the spec's JSON with code, msg and details.
        let (out, rc) = run_reader(
            |k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()),
            std::io::repeat(b'{'),
        );
        assert_eq!(rc, 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], 6, "{v}");
        assert!(v["details"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    }

    #[test]
    fn pod_netns_is_a_network_namespace_and_not_ours() {
        for own in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
            let e = pod_netns(own).unwrap_err();
            assert_eq!(e.code, code::NETNS, "{own}");
            assert!(e.msg.contains("own network namespace"), "{e}");
        }
        let tmp = std::env::temp_dir().display().to_string();
        for not_net in [
            tmp.as_str(),
            "/proc/self/ns/mnt",
            "/proc/self/ns/uts",
            "/proc/self/exe",
            "/dev/null",
        ] {
            let e = pod_netns(not_net).unwrap_err();
            assert_eq!(e.code, code::NETNS, "{not_net}: {e}");
            assert!(e.details.contains("CNI_NETNS"), "{not_net}: {e}");
        }
        let e = pod_netns("/run/netns/podnet-no-such-namespace").unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_CONTAINER);
    }

    /// Random damage to a full configuration, through everything up to the point
    /// where ADD and CHECK would first open the pod's namespace (here: one that does
    /// not exist, so nothing is made). Every outcome is a result or a spec error.
    #[test]
    fn hostile_stdin_never_panics() {
        let base = json!({
            "cniVersion": "1.1.0", "name": "n", "type": "podnet-cni",
            "subnet": "10.9.0.0/24", "gateway": "10.9.0.1", "mtu": 1450,
            "lockTimeoutMs": 100, "nodeFile": "/nonexistent/podnet-node.json",
            "dataDir": "/nonexistent/podnet-ipam",
            "runtimeConfig": {"ips": ["10.9.0.7/24"]},
            "prevResult": {
                "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
                "ips": [{"address": "10.9.0.7/24", "gateway": "10.9.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        });
        let hostile = [
            json!(null),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(0.5),
            json!(""),
            json!("0.0.0.0/0"),
            json!("127.0.0.1/8"),
            json!("10.9.0.7/99"),
            json!([]),
            json!({}),
            json!([[[[{"interface": -1}]]]]),
            json!({"ips": [{"address": "10.9.0.7/24", "interface": 99}]}),
        ];
        let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for round in 0..4000 {
            let mut v = base.clone();
            let k = &keys[rnd(keys.len())];
            v[k] = hostile[rnd(hostile.len())].clone();
            if rnd(2) == 0 && v["prevResult"]["ips"][0].is_object() {
                let sub = ["interface", "address", "mtu", "ips", "interfaces"][rnd(5)];
                v["prevResult"]["ips"][0][sub] = hostile[rnd(hostile.len())].clone();
            }
            // Never point at a real agent or data directory.
            if k == "nodeFile" || k == "dataDir" {
                v[k] = json!(format!("/nonexistent/{k}"));
            }
            let mut bytes = serde_json::to_vec(&v).unwrap();
            if round % 3 == 0 {
                let i = rnd(bytes.len());
                bytes[i] = [0xff, b'[', b'"', b'}', 0xc3][rnd(5)];
            }
            for verb in ["ADD", "CHECK"] {
                let mut ver = String::new();
                let r = dispatch(
                    |k| match k {
                        "CNI_COMMAND" => Some(verb.to_string()),
                        "CNI_CONTAINERID" => Some("c1".into()),
                        "CNI_NETNS" => Some("/run/netns/podnet-no-such-namespace".into()),
                        "CNI_IFNAME" => Some("eth0".into()),
                        "CNI_PATH" => Some("/nonexistent".into()),
                        _ => None,
                    },
                    &bytes,
                    &mut ver,
                );
                let e = r.expect_err("nothing can succeed without a namespace");
                assert!(!e.msg.is_empty() && e.code != 0, "{e}");
            }
        }
    }
}
