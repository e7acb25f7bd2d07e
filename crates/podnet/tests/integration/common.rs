//! Shared test fixtures: a scratch node with its own namespace and IPAM directory.

use podnet_lab::exec::{self, Call, Outcome};
use podnet_lab::scratch::{unique, ScratchDir, ScratchNs};
use podnet_netlink::{link, Socket};
use podnet_netlink::{netns, Netns};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests create network namespaces: run them as root"
    );
}

pub fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podnet-cni"))
}

/// A scratch node: a network namespace, a data directory, a base config.
pub struct Node {
    pub ns: ScratchNs,
    pub dir: ScratchDir,
    pub conf: Value,
}

impl Node {
    pub fn new(subnet: &str) -> Node {
        require_root();
        let ns = ScratchNs::new(unique("pnt-node")).expect("create node namespace");
        let dir = ScratchDir::new("podnet-test").expect("create data dir");
        let conf = json!({
            "cniVersion": "1.1.0", "name": "testnet", "type": "podnet-cni",
            "subnet": subnet, "dataDir": dir.path(),
        });
        Node { ns, dir, conf }
    }

    pub fn pod(&self) -> ScratchNs {
        ScratchNs::new(unique("pnt-pod")).expect("create pod namespace")
    }

    /// Runs the plugin inside this node with `conf`.
    pub fn call_with(
        &self,
        conf: &Value,
        command: &str,
        cid: &str,
        netns: &str,
        ifname: &str,
    ) -> Outcome {
        let bytes = serde_json::to_vec(conf).unwrap();
        let plugin = plugin();
        exec::run(
            &Call {
                plugin: &plugin,
                command,
                container_id: cid,
                netns,
                ifname,
                cni_path: None,
                config: &bytes,
            },
            Some(&self.ns.ns),
        )
        .expect("run podnet-cni")
    }

    pub fn call(&self, command: &str, cid: &str, pod: &ScratchNs) -> Outcome {
        self.call_with(
            &self.conf,
            command,
            cid,
            &pod.path().display().to_string(),
            "eth0",
        )
    }

    /// ADD that must succeed; returns the result.
    pub fn add(&self, cid: &str, pod: &ScratchNs) -> Value {
        let o = self.call("ADD", cid, pod);
        assert!(o.ok(), "ADD {cid} failed: {} {}", o.stdout, o.stderr);
        o.json()
    }

    pub fn del(&self, cid: &str, pod: &ScratchNs) {
        let o = self.call("DEL", cid, pod);
        assert!(o.ok(), "DEL {cid} failed: {} {}", o.stdout, o.stderr);
    }

    pub fn sock(&self) -> Socket {
        self.ns.ns.run(Socket::route).unwrap().unwrap()
    }

    /// Names of podnet's host veths in the node.
    pub fn host_veths(&self) -> Vec<String> {
        link::list(&mut self.sock())
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("pn"))
            .collect()
    }

    /// Addresses the built-in IPAM holds for this node's network.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        podnet_ipam::Store::open(self.dir.path(), "testnet")
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .map(|(ip, o)| (ip, o.container_id))
            .collect()
    }
}

/// The IPv4 address in an ADD result.
pub fn result_ip(r: &Value) -> Ipv4Addr {
    r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {r}"))
}

/// Runs an iproute2 command (tests only use it to break things on purpose).
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A lab of its own, uniquely named, taken down on drop (also when the test fails).
pub struct TestLab {
    pub name: String,
}

pub fn podnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_podnet"))
}

impl TestLab {
    pub fn up(args: &[&str]) -> TestLab {
        require_root();
        // Short and unique: lab names become namespace names.
        let name = unique("t").replace('-', "x");
        let lab = TestLab { name };
        let o = lab.run(&[&["up"], args].concat());
        assert!(
            o.status.success(),
            "lab up failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        lab
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["lab", "--name", &self.name];
        full.extend_from_slice(args);
        podnet().args(&full).output().expect("run podnet")
    }

    /// `podnet lab kubectl -- ARGS` (stdin if given): success, stdout, stderr.
    pub fn kubectl_try(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut cmd = podnet();
        cmd.args(["lab", "--name", &self.name, "kubectl", "--"])
            .args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("run podnet lab kubectl");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        let o = child.wait_with_output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// kubectl, which must succeed; its output.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.kubectl_try(args, stdin);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let o = self.run(args);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: {e}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
    }

    /// Whether the lab is dual-stack (`lab up --ip-family dual`), as its status says.
    pub fn dual(&self) -> bool {
        let st = self.json(&["status", "--output", "json"]);
        match st["ip_family"].as_str() {
            Some("dual") => true,
            Some("ipv4") => false,
            other => panic!("lab status names no IP family ({other:?}): {st}"),
        }
    }

    pub fn ns(&self, suffix: &str) -> Netns {
        Netns::open(netns::named_path(&format!("{}-{suffix}", self.name))).unwrap()
    }

    /// Runs `cmd` inside the lab's namespace `node`: (succeeded, stdout, stderr).
    pub fn sh_status(&self, node: &str, cmd: &[&str]) -> (bool, String, String) {
        let o = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{node}", self.name)])
            .args(cmd)
            .output()
            .expect("run ip netns exec");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Runs `cmd` inside the lab's namespace `node`, which must succeed; its output.
    pub fn sh(&self, node: &str, cmd: &[&str]) -> String {
        let (ok, out, err) = self.sh_status(node, cmd);
        assert!(ok, "{cmd:?} in {}-{node} failed: {err}", self.name);
        out
    }

    /// `podnetd`'s `/metrics` answer (headers and body) on lab node `node`, fetched
    /// inside its namespace (the agent serves 127.0.0.1:9465 too).
    pub fn metrics_text(&self, node: &str) -> String {
        self.ns(node)
            .run(|| {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect("127.0.0.1:9465").expect("metrics");
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: podnetd\r\n\r\n")
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .unwrap()
    }

    /// The findings of `check` in `podnet doctor --lab L --output json` (every node).
    pub fn doctor_findings(&self, check: &str) -> Vec<Value> {
        let o = podnet()
            .args(["doctor", "--lab", &self.name, "--output", "json"])
            .output()
            .expect("run podnet doctor");
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("doctor: {e}: {}", String::from_utf8_lossy(&o.stderr)));
        v["findings"]
            .as_array()
            .expect("doctor's findings")
            .iter()
            .filter(|f| f["check"] == check)
            .cloned()
            .collect()
    }

    /// `lab apply` or `lab delete` of `yaml` on stdin, which must succeed.
    pub fn pipe_ok(&self, verb: &str, yaml: &str) {
        use std::io::Write;
        let mut c = podnet()
            .args(["lab", "--name", &self.name, verb, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run podnet");
        c.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "lab {verb} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn full_mesh(&self) -> Value {
        let c = self.json(&["check", "--output", "json"]);
        assert_eq!(
            c["reachable"], c["total"],
            "not every pair is reachable: {c}"
        );
        assert_eq!(
            c["nat_free"], true,
            "a destination saw a rewritten source: {c}"
        );
        c
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let o = self.run(&["down"]);
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() && !err.contains("no lab") {
            eprintln!("lab {} was not removed: {err}", self.name);
        }
    }
}

pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// A lab pod's address and MAC, from `lab status --output json`.
pub fn lab_pod(st: &Value, name: &str) -> (Ipv4Addr, [u8; 6]) {
    let p = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pod {name}: {st}"));
    (
        p["ip"].as_str().unwrap().parse().unwrap(),
        podnet_netlink::parse_mac(p["mac"].as_str().unwrap()).unwrap(),
    )
}

/// A lab pod's IPv6 address, from `lab status --output json`.
pub fn lab_ip6(st: &Value, name: &str) -> std::net::Ipv6Addr {
    st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["ip6"].as_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 address for {name}: {st}"))
}

/// Lab node `node`'s eth0 MAC (its underlay link).
pub fn eth0_mac(lab: &TestLab, node: &str) -> [u8; 6] {
    let m = lab
        .ns(node)
        .run(|| {
            let mut s = podnet_netlink::Socket::route().unwrap();
            podnet_netlink::link::get_by_name(&mut s, "eth0")
                .unwrap()
                .unwrap()
                .mac
        })
        .unwrap();
    m[..6].try_into().unwrap()
}

/// A UDP socket bound in lab pod `pod` to `[addr]:port`, whose reads time out after
/// 300 ms.
pub fn udp6_listener(
    lab: &TestLab,
    pod: &str,
    addr: std::net::Ipv6Addr,
    port: u16,
) -> std::net::UdpSocket {
    let rx = lab
        .ns(pod)
        .run(|| std::net::UdpSocket::bind(std::net::SocketAddrV6::new(addr, port, 0, 0)))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind [{addr}]:{port} in {pod}: {e}"));
    rx.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    rx
}
