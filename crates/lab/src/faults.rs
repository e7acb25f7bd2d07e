//! `lab fault inject|clear`: breaking the lab on purpose, one function per fault,
//! each recording how to undo what it changed.

use super::*;

/// An underlay address no lab node has (nodes count up from 192.168.1.10; etcd is .2).
const MISROUTE_VIA: &str = "192.168.1.250";

/// Faults `podnet lab fault inject` can make, for learning and for tests.
pub const FAULTS: &[(&str, &str)] = &[
    (
        "vxlan-port-blocked",
        "the physical network drops UDP 8472 (an nftables rule on the fabric switch)",
    ),
    (
        "underlay-mtu",
        "the physical network's MTU drops to 1400 (the fabric switch ports)",
    ),
    (
        "missing-route",
        "a node loses its routes to its peers' pod CIDRs (--node)",
    ),
    (
        "misrouted",
        "a node's routes to its peers' pod CIDRs point at an address nobody has (--node)",
    ),
    ("missing-fdb", "a node loses its VXLAN FDB entries (--node)"),
    (
        "missing-neigh",
        "a node loses its neighbour entries for peer VTEPs (--node)",
    ),
    ("veth-down", "a pod's host-side veth goes down (--pod)"),
    (
        "pod-no-default-route",
        "a pod loses its default route (--pod)",
    ),
    (
        "pod-mtu",
        "a pod's eth0 MTU drops below what its node gives pods (--pod)",
    ),
    (
        "pod-wrong-gateway",
        "a pod's default route points at an address that is not its bridge (--pod)",
    ),
    ("forwarding-off", "a node stops forwarding IPv4 (--node)"),
    (
        "wireguard-port-blocked",
        "the physical network drops UDP 51820, WireGuard's port (wireguard backend)",
    ),
    (
        "wireguard-wrong-key",
        "a node's record in the datastore publishes a WireGuard key its device does not hold, as a stale or forged record would (--node; file datastore)",
    ),
    ("vxlan-down", "a node's VXLAN device goes down (--node)"),
];

pub(crate) fn run_cmd(argv: &[String], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().with_context(|| format!("run {}", argv[0]))?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        i.write_all(text.as_bytes())?;
    }
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// podnet's routes on a node (protocol 0x50), each as the words of `ip route show`.
fn podnet_routes(nns: &str) -> Result<Vec<Vec<String>>> {
    let out = run_cmd(
        &argv(&["ip", "-n", nns, "route", "show", "proto", "80"]),
        None,
    )?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect())
}

/// The command that puts a route from [`podnet_routes`] back, protocol included
/// (`show proto 80` leaves it out of each line).
fn route_back(nns: &str, r: &[String]) -> Vec<String> {
    let mut add = argv(&["ip", "-n", nns, "route", "replace"]);
    add.extend(r.iter().cloned());
    add.extend(argv(&["proto", "80"]));
    add
}

/// The permanent neighbour entries on a node's VXLAN device: `(ip, mac)`.
fn vtep_neighs(nns: &str) -> Result<Vec<(String, String)>> {
    let out = run_cmd(
        &argv(&[
            "ip",
            "-n",
            nns,
            "neigh",
            "show",
            "dev",
            "podnet.vxlan",
            "nud",
            "permanent",
        ]),
        None,
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "lladdr")?;
            Some((w.first()?.to_string(), w.get(i + 1)?.to_string()))
        })
        .collect())
}

fn neigh_back(nns: &str, ip: &str, mac: &str) -> Vec<String> {
    argv(&[
        "ip",
        "-n",
        nns,
        "neigh",
        "replace",
        ip,
        "lladdr",
        mac,
        "dev",
        "podnet.vxlan",
        "nud",
        "permanent",
    ])
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

impl Lab {
    fn faults_file(&self) -> PathBuf {
        self.dir.join("faults.json")
    }

    /// Breaks the lab in one of the [`FAULTS`] ways; remembers how to undo it.
    pub fn inject(
        &self,
        st: &State,
        kind: &str,
        node: Option<&str>,
        pod: Option<&str>,
    ) -> Result<String> {
        let node = node.unwrap_or("node1");
        let nns = self.node_ns(node);
        let Some(run) = runner(kind) else {
            bail!(
                "unknown fault {kind:?}; known: {}",
                FAULTS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if !st.nodes.iter().any(|n| n.name == node) {
            bail!("no node {node} in lab {}", self.name);
        }
        let pod = match pod {
            Some(p) => st
                .pods
                .iter()
                .find(|q| q.name == p)
                .with_context(|| format!("no pod {p} in lab {}", self.name))?
                .clone(),
            None => st
                .pods
                .iter()
                .find(|q| q.node == node)
                .or(st.pods.first())
                .cloned()
                .context("the lab has no pods")?,
        };
        let f = Fault {
            lab: self,
            st,
            node,
            nns,
            fab: self.fabric_ns(),
            pod,
        };
        // A fault that fails half-way has still recorded the undo steps of what it
        // changed, for `fault clear`.
        let mut undo: Vec<Vec<String>> = Vec::new();
        let result = run(&f, &mut undo);
        if !undo.is_empty() {
            let mut all = self.read_faults()?;
            all.extend(undo);
            let path = self.faults_file();
            std::fs::write(&path, serde_json::to_vec_pretty(&all)?).with_context(|| {
                format!(
                    "could not record how to undo fault {kind} in {}; `podnet lab down --name {}` removes the whole lab",
                    path.display(),
                    self.name
                )
            })?;
        }
        result.with_context(|| {
            format!(
                "injecting fault {kind} on {node} failed; whatever it changed is undone by `podnet lab fault clear --name {}`",
                self.name
            )
        })
    }

    fn read_faults(&self) -> Result<Vec<Vec<String>>> {
        let path = self.faults_file();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is not a list of undo steps; remove it, or `podnet lab down --name {}`",
                    path.display(),
                    self.name
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Undoes every injected fault, newest first; returns how many steps ran.
    pub fn clear_faults(&self) -> Result<usize> {
        let all = self.read_faults()?;
        let mut failed = Vec::new();
        for cmd in all.iter().rev() {
            if let Err(e) = run_cmd(cmd, None) {
                failed.push(e.to_string());
            }
        }
        // A step that failed is not kept for another try: it fails again the same
        // way (most often the agent already repaired that object).
        let _ = std::fs::remove_file(self.faults_file());
        if !failed.is_empty() {
            bail!(
                "{} of {} undo steps failed (an agent may have repaired them already): {}; \
                 `podnet lab check --name {}` shows what is still broken, `podnet lab down --name {}` removes the lab",
                failed.len(),
                all.len(),
                failed.join("; "),
                self.name,
                self.name
            );
        }
        Ok(all.len())
    }
}

type FaultFn = fn(&Fault, &mut Vec<Vec<String>>) -> Result<String>;

/// The function that makes fault `kind` (one per entry of [`FAULTS`]).
fn runner(kind: &str) -> Option<FaultFn> {
    Some(match kind {
        "vxlan-port-blocked" => fault_vxlan_port_blocked,
        "underlay-mtu" => fault_underlay_mtu,
        "missing-route" => fault_missing_route,
        "misrouted" => fault_misrouted,
        "missing-fdb" => fault_missing_fdb,
        "missing-neigh" => fault_missing_neigh,
        "veth-down" => fault_veth_down,
        "pod-no-default-route" => fault_pod_no_default_route,
        "forwarding-off" => fault_forwarding_off,
        "pod-mtu" => fault_pod_mtu,
        "pod-wrong-gateway" => fault_pod_wrong_gateway,
        "vxlan-down" => fault_vxlan_down,
        "wireguard-port-blocked" => fault_wireguard_port_blocked,
        "wireguard-wrong-key" => fault_wireguard_wrong_key,
        _ => return None,
    })
}

fn fault_pod_mtu(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let pod = &f.pod;
    let show = run_cmd(
        &argv(&["ip", "-n", &pod.netns, "-o", "link", "show", "eth0"]),
        None,
    )?;
    let mtu = show
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .context("eth0 shows no MTU")?
        .to_string();
    let set = |mtu| ["ip", "-n", &pod.netns, "link", "set", "eth0", "mtu", mtu];
    step(undo, &set("1280"), &set(&mtu))?;
    Ok(format!("pod {}'s eth0 has MTU 1280 (was {mtu})", pod.name))
}

fn fault_pod_wrong_gateway(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let pod = &f.pod;
    let r = run_cmd(
        &argv(&["ip", "-n", &pod.netns, "route", "show", "default"]),
        None,
    )?;
    let line = r
        .lines()
        .next()
        .context("the pod has no default route")?
        .to_string();
    // An address of the pod's own subnet that nobody holds (the bridge is .1).
    let o = pod.ip.octets();
    let wrong = std::net::Ipv4Addr::new(o[0], o[1], o[2], 254).to_string();
    run_cmd(
        &argv(&[
            "ip", "-n", &pod.netns, "route", "replace", "default", "via", &wrong, "dev", "eth0",
        ]),
        None,
    )?;
    let mut back = argv(&["ip", "-n", &pod.netns, "route", "replace"]);
    back.extend(line.split_whitespace().map(String::from));
    undo.push(back);
    Ok(format!(
        "pod {}'s default route points at {wrong}",
        pod.name
    ))
}

/// What a fault acts on.
struct Fault<'a> {
    lab: &'a Lab,
    st: &'a State,
    /// The node (`--node`, default node1) and its namespace.
    node: &'a str,
    nns: String,
    fab: String,
    /// The pod (`--pod`, default the node's first).
    pod: PodState,
}

fn fault_vxlan_port_blocked(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    block_udp_port(f, podnet_conventions::VXLAN_PORT, undo)
}

fn fault_wireguard_port_blocked(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    block_udp_port(f, podnet_conventions::WG_PORT, undo)
}

fn fault_wireguard_wrong_key(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let Some(dir) = f.st.datastore.strip_prefix("file:") else {
        bail!(
            "this fault edits the lab's file datastore; lab {} uses {}",
            f.lab.name,
            f.st.datastore
        );
    };
    let path = Path::new(dir)
        .join("nodes")
        .join(format!("{}.json", f.node));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read {}'s record {}", f.node, path.display()))?;
    let mut rec: podnet_datastore::NodeRecord = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a node record", path.display()))?;
    let Some(w) = rec.wireguard.as_mut() else {
        bail!(
            "{} publishes no WireGuard key: the lab does not run the wireguard backend",
            f.node
        );
    };
    // Another node's key, as far as anyone can tell: 32 random bytes (every one is a
    // Curve25519 public key), base64 as WireGuard writes it.
    let mut forged = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut forged))
        .context("read /dev/urandom for a forged key")?;
    w.public_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, forged);
    let key = w.public_key.clone();
    let backup = f.lab.dir.join(format!("fault-{}-record.json", f.node));
    std::fs::write(&backup, &text).with_context(|| format!("write {}", backup.display()))?;
    let tmp = path.with_extension("fault-tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&rec)?)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("write {}", path.display()))?;
    undo.push(argv(&[
        "cp",
        &backup.display().to_string(),
        &path.display().to_string(),
    ]));
    Ok(format!(
        "{}'s record publishes WireGuard key {key}, which its device does not hold (its agent publishes the real one again at its next lease renewal)",
        f.node
    ))
}

/// The fabric switch drops UDP to `port`.
fn block_udp_port(f: &Fault, port: u16, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let fab = &f.fab;
    let rules = format!("table bridge podnet_fault {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  udp dport {port} drop\n }}\n}}\n");
    run_cmd(
        &argv(&["ip", "netns", "exec", fab, "nft", "-f", "-"]),
        Some(&rules),
    )?;
    undo.push(argv(&[
        "ip",
        "netns",
        "exec",
        fab,
        "nft",
        "delete",
        "table",
        "bridge",
        "podnet_fault",
    ]));
    Ok(format!("fabric {fab} drops UDP {port}"))
}

/// One step of a fault: runs `doit`, and records `undo_it`, which puts it back.
fn step(undo: &mut Vec<Vec<String>>, doit: &[&str], undo_it: &[&str]) -> Result<()> {
    run_cmd(&argv(doit), None)?;
    undo.push(argv(undo_it));
    Ok(())
}

fn fault_underlay_mtu(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let (st, fab) = (f.st, &f.fab);
    for n in &st.nodes {
        let set = |mtu| ["ip", "-n", fab, "link", "set", &n.name, "mtu", mtu];
        step(undo, &set("1400"), &set("1500"))?;
    }
    Ok("fabric ports now carry at most 1400 bytes".into())
}

fn fault_missing_route(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let (node, nns) = (f.node, &f.nns);
    for r in podnet_routes(nns)? {
        let mut del = argv(&["ip", "-n", nns, "route", "del"]);
        del.extend(r.iter().cloned());
        run_cmd(&del, None)?;
        undo.push(route_back(nns, &r));
    }
    Ok(format!("{node} lost its podnet routes"))
}

fn fault_misrouted(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let (node, nns) = (f.node, &f.nns);
    // Same prefixes, still podnet's protocol, but the wrong next hop: a
    // route that exists is not enough, trace must check where it points.
    for r in podnet_routes(nns)? {
        let mut bad = argv(&["ip", "-n", nns, "route", "replace"]);
        bad.extend(r.first().cloned());
        bad.extend(argv(&["via", MISROUTE_VIA, "dev", "eth0", "proto", "80"]));
        run_cmd(&bad, None)?;
        undo.push(route_back(nns, &r));
    }
    Ok(format!(
        "{node}'s podnet routes now point at {MISROUTE_VIA}, which no node has"
    ))
}

fn fault_missing_fdb(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let (node, nns) = (f.node, &f.nns);
    let fdb = run_cmd(
        &argv(&["bridge", "-n", nns, "fdb", "show", "dev", "podnet.vxlan"]),
        None,
    )?;
    for l in fdb.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let dst = w
            .iter()
            .position(|x| *x == "dst")
            .and_then(|i| w.get(i + 1));
        if let (Some(mac), Some(&dst)) = (w.first(), dst) {
            let entry = |verb| {
                [
                    "bridge",
                    "-n",
                    nns,
                    "fdb",
                    verb,
                    mac,
                    "dev",
                    "podnet.vxlan",
                    "dst",
                    dst,
                    "self",
                ]
            };
            let mut back = entry("append").to_vec();
            back.push("permanent");
            step(undo, &entry("del"), &back)?;
        }
    }
    Ok(format!("{node} lost its VXLAN FDB entries"))
}

fn fault_missing_neigh(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let (node, nns) = (f.node, &f.nns);
    for (ip, mac) in vtep_neighs(nns)? {
        run_cmd(
            &argv(&["ip", "-n", nns, "neigh", "del", &ip, "dev", "podnet.vxlan"]),
            None,
        )?;
        undo.push(neigh_back(nns, &ip, &mac));
    }
    Ok(format!("{node} lost its neighbour entries for peer VTEPs"))
}

fn fault_veth_down(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let pod = &f.pod;
    let pns = f.lab.node_ns(&pod.node);
    let set = |state| ["ip", "-n", &pns, "link", "set", &pod.host_veth, state];
    step(undo, &set("down"), &set("up"))?;
    Ok(format!(
        "host veth {} of pod {} is down",
        pod.host_veth, pod.name
    ))
}

fn fault_pod_no_default_route(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let pod = &f.pod;
    let r = run_cmd(
        &argv(&["ip", "-n", &pod.netns, "route", "show", "default"]),
        None,
    )?;
    run_cmd(
        &argv(&["ip", "-n", &pod.netns, "route", "del", "default"]),
        None,
    )?;
    if let Some(l) = r.lines().next() {
        let mut add = argv(&["ip", "-n", &pod.netns, "route", "add"]);
        add.extend(l.split_whitespace().map(String::from));
        undo.push(add);
    }
    Ok(format!("pod {} has no default route", pod.name))
}

fn fault_forwarding_off(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let (node, nns) = (f.node, &f.nns);
    let set = |v| ["ip", "netns", "exec", nns, "sysctl", "-qw", v];
    step(
        undo,
        &set("net.ipv4.ip_forward=0"),
        &set("net.ipv4.ip_forward=1"),
    )?;
    Ok(format!("{node} no longer forwards IPv4"))
}

fn fault_vxlan_down(f: &Fault, undo: &mut Vec<Vec<String>>) -> Result<String> {
    let (node, nns) = (f.node, &f.nns);
    // Down flushes the device's routes and neighbours: keep them to put back.
    let (routes, neighs) = (podnet_routes(nns)?, vtep_neighs(nns)?);
    run_cmd(
        &argv(&["ip", "-n", nns, "link", "set", "podnet.vxlan", "down"]),
        None,
    )?;
    // Undone newest first: these run after the link is up again.
    undo.extend(neighs.iter().map(|(ip, mac)| neigh_back(nns, ip, mac)));
    undo.extend(routes.iter().map(|r| route_back(nns, r)));
    undo.push(argv(&[
        "ip",
        "-n",
        nns,
        "link",
        "set",
        "podnet.vxlan",
        "up",
    ]));
    Ok(format!("{node}'s VXLAN device is down"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_listed_fault_has_its_function() {
        for (kind, _) in super::FAULTS {
            assert!(super::runner(kind).is_some(), "{kind}");
        }
        assert!(super::runner("no-such-fault").is_none());
    }
}
