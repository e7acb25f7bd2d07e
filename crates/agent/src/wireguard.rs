//! The `wireguard` backend: pod traffic between nodes encrypted by WireGuard.
//!
//! # Kernel objects and processes it owns
//! - The device `podnet.wg`. This kernel has no WireGuard module, so the device is a
//!   TUN device served by a userspace WireGuard (gotatun, Mullvad's maintained fork of
//!   boringtun) running in a *device process*: podnetd started again as
//!   `podnetd wireguard-device`, in a session of its own. It is a separate
//!   process so that a restart or `kill -9` of podnetd never stops the tunnels (a TUN
//!   device lives exactly as long as the process holding it). podnetd finds and adopts
//!   a running device process on start; it configures it through the WireGuard
//!   configuration protocol (the `wg` tool's) on a Unix socket, root only
//!   (`/var/run/wireguard/podnet.wg.sock` by default, so `wg show podnet.wg` works).
//!   The device process ends when its socket file is removed or replaced, or on
//!   SIGTERM; its pid is in its pid file.
//! - On the device: the address `<pod CIDR network>/32` (node-originated traffic to
//!   remote pods leaves from it, an address every peer accepts from this node), MTU
//!   = underlay MTU − [`WG_OVERHEAD`] (20 bytes more over an IPv6 underlay), and per
//!   peer node one WireGuard peer: its public key, endpoint `<underlay IP>:<port>`
//!   (`[<underlay IPv6>]:<port>` with `--underlay-family ipv6`), allowed IPs = its pod CIDR (and its IPv6
//!   pod CIDR on a dual-stack cluster: WireGuard carries IPv6 inside an IPv4 underlay
//!   as it does IPv4, and admits from a peer only sources in its allowed IPs). The
//!   routes per peer (IPv4 via the peer's first address, IPv6 straight to the device)
//!   are the plan's ([`crate::plan`]).
//! - The private key: a file of mode 0600 (`/var/lib/podnet/wireguard.key`), made on
//!   the node, never written anywhere else; only the public key is published (node
//!   record, Node annotation).
//!
//! Kernel WireGuard is not used even where the kernel has it (this machine's has not,
//! so that path could not be tested): the status says which implementation runs
//! (`wireguard.implementation`) and whether the kernel offers WireGuard
//! (`wireguard.kernel_has_wireguard`); `ip -d link show podnet.wg` shows `tun`.

use crate::Failure;
use crate::{Error, Result};
pub use podnet_api::Rotated;
use podnet_cni_spec::Ipv4Net;
use podnet_conventions::Ipv6Net;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use podnet_conventions::{WG_DEV, WG_OVERHEAD, WG_PORT};

/// What the status says runs the device.
pub const IMPLEMENTATION: &str = "userspace: gotatun 0.10 over TUN";

/// Whether this kernel has WireGuard (can make a `wireguard` link). podnet runs the
/// userspace device either way; the status and the log say which the kernel offers.
pub fn kernel_has_wireguard(sock: &mut podnet_netlink::Socket) -> bool {
    podnet_netlink::link::kind_supported(sock, "podnet.wgprobe", "wireguard").unwrap_or(false)
}

/// Where the backend keeps its things on a node.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dev: String,
    pub port: u16,
    pub key_file: PathBuf,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
}

/// A Curve25519 key, 32 bytes.
pub type Key = [u8; 32];

/// `wg genkey`'s text: standard base64.
pub fn to_base64(k: &Key) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// A public key as published: base64 of 32 bytes, not all zero (the all-zero key is
/// what a misconfigured node would publish; no one holds its private key).
pub fn parse_public_key(s: &str) -> std::result::Result<Key, Failure> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    let k: Key = b
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))?;
    if k == [0; 32] {
        return Err("all zero".into());
    }
    Ok(k)
}

/// The configuration protocol's key text: lowercase hex.
pub fn hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Key> {
    if s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// The public key of private key `k`.
pub fn public_key(k: &Key) -> Key {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*k)).to_bytes()
}

fn file_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::File {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// A new private key from the kernel's random source.
pub fn generate_key() -> Result<Key> {
    let mut k = [0u8; 32];
    // SAFETY: getrandom fills the buffer we own; 32 bytes never block once the pool is
    // initialised.
    let n = unsafe { libc::getrandom(k.as_mut_ptr().cast(), k.len(), 0) };
    if n != 32 {
        return Err(Error::File {
            what: "draw random bytes for a WireGuard key from",
            path: "getrandom(2)".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(k)
}

/// Writes `k` to `path` (base64, mode 0600, through a temporary file and a rename: a
/// crash leaves the old key or the new one, never half of one).
pub fn write_key(path: &Path, k: &Key) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(file_err("create the directory of", path))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_err("write the WireGuard key", &tmp))?;
    writeln!(f, "{}", to_base64(k)).map_err(file_err("write the WireGuard key", &tmp))?;
    f.sync_all()
        .map_err(file_err("write the WireGuard key", &tmp))?;
    std::fs::rename(&tmp, path).map_err(file_err("write the WireGuard key", path))
}

/// The node's private key: read from `path`, or made and written there if the file
/// does not exist. A key file readable by others than root is refused, as is one that
/// does not hold a key.
pub fn load_or_create_key(path: &Path) -> Result<(Key, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map_err(file_err("read the WireGuard key", path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::File {
                    what: "use the WireGuard key",
                    path: path.display().to_string(),
                    source: std::io::Error::other(format!(
                        "it is readable by others (mode {:o}); chmod 600 it, or remove it and restart podnetd to make a new key",
                        mode & 0o777
                    )),
                });
            }
            let k = parse_public_key(&text).map_err(|why| Error::File {
                what: "use the WireGuard key",
                path: path.display().to_string(),
                source: std::io::Error::other(format!(
                    "it does not hold a key ({why}); remove it and restart podnetd to make a new one"
                )),
            })?;
            Ok((k, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = generate_key()?;
            write_key(path, &k)?;
            Ok((k, true))
        }
        Err(e) => Err(file_err("read the WireGuard key", path)(e)),
    }
}

/// One peer as the device holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Ipv4Net>,
    /// Its IPv6 allowed IPs (a dual-stack peer's IPv6 pod CIDR).
    pub allowed_ips6: Vec<Ipv6Net>,
    /// Unix seconds of the latest completed handshake (0: none yet).
    pub last_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device's configuration as `get=1` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerConfig>,
}

/// Reads a `get=1` answer (without its `errno` line).
pub fn parse_get(lines: &[(String, String)]) -> std::result::Result<DeviceConfig, Failure> {
    let mut d = DeviceConfig::default();
    for (k, v) in lines {
        let bad = || format!("the device answered {k}={v}, which is not a valid value");
        if k == "public_key" {
            d.peers.push(PeerConfig {
                public_key: unhex(v).ok_or_else(bad)?,
                ..Default::default()
            });
            continue;
        }
        match (d.peers.last_mut(), k.as_str()) {
            (None, "private_key") => d.private_key = Some(unhex(v).ok_or_else(bad)?),
            (None, "listen_port") => d.listen_port = v.parse().map_err(|_| bad())?,
            (Some(p), "endpoint") => p.endpoint = Some(v.parse().map_err(|_| bad())?),
            (Some(p), "allowed_ip") => {
                if let Ok(n) = v.parse::<Ipv4Net>() {
                    p.allowed_ips.push(n);
                } else if let Ok(n) = v.parse::<Ipv6Net>() {
                    p.allowed_ips6.push(n);
                }
            }
            (Some(p), "last_handshake_time_sec") => {
                p.last_handshake = v.parse().map_err(|_| bad())?
            }
            (Some(p), "rx_bytes") => p.rx_bytes = v.parse().map_err(|_| bad())?,
            (Some(p), "tx_bytes") => p.tx_bytes = v.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(d)
}

/// A peer as the datastore says it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantPeer {
    /// The peer node (for the log).
    pub name: String,
    pub public_key: Key,
    pub endpoint: SocketAddr,
    pub cidr: Ipv4Net,
    /// Its IPv6 pod CIDR on a dual-stack cluster.
    pub cidr6: Option<Ipv6Net>,
}

/// One change to the device's peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// A peer no node wants any more.
    Remove(Key),
    /// A wanted peer, new or with another endpoint or allowed IPs: written whole.
    Set(WantPeer),
}

impl PeerChange {
    /// Its lines of a `set=1` request.
    pub fn render(&self) -> String {
        match self {
            PeerChange::Remove(k) => format!("public_key={}\nremove=true\n", hex(k)),
            PeerChange::Set(w) => {
                let mut s = format!(
                    "public_key={}\nendpoint={}\nreplace_allowed_ips=true\nallowed_ip={}\n",
                    hex(&w.public_key),
                    w.endpoint,
                    w.cidr
                );
                if let Some(c6) = w.cidr6 {
                    s += &format!("allowed_ip={c6}\n");
                }
                s
            }
        }
    }
}

/// What turns the device's peers `have` into `want` (pure, so it is tested without a
/// device): peers not wanted are removed, each wanted peer whose endpoint or allowed
/// IPs differ is (re)written with `replace_allowed_ips`. Empty when nothing differs.
pub fn peer_changes(want: &[WantPeer], have: &[PeerConfig]) -> Vec<PeerChange> {
    let mut out: Vec<PeerChange> = have
        .iter()
        .filter(|h| !want.iter().any(|w| w.public_key == h.public_key))
        .map(|h| PeerChange::Remove(h.public_key))
        .collect();
    for w in want {
        let same = have.iter().any(|h| {
            h.public_key == w.public_key
                && h.endpoint == Some(w.endpoint)
                && h.allowed_ips == [w.cidr]
                && h.allowed_ips6 == w.cidr6.into_iter().collect::<Vec<_>>()
        });
        if !same {
            out.push(PeerChange::Set(w.clone()));
        }
    }
    out
}

/// A client of a device's configuration socket.
#[derive(Clone, Debug)]
pub struct Uapi {
    pub socket: PathBuf,
}

impl Uapi {
    /// Sends one request (`get=1` or `set=1` and its lines) and reads the answer up to
    /// its blank line; an `errno` other than 0 is an error.
    fn request(&self, body: &str) -> std::result::Result<Vec<(String, String)>, Failure> {
        let s = UnixStream::connect(&self.socket)
            .map_err(|e| format!("cannot connect to {}: {e}", self.socket.display()))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        (&s).write_all(format!("{body}\n").as_bytes())
            .map_err(|e| format!("cannot send to {}: {e}", self.socket.display()))?;
        let mut out = Vec::new();
        let mut reader = BufReader::new(&s);
        let mut buf = String::new();
        loop {
            buf.clear();
            match reader.read_line(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("reading {}: {e}", self.socket.display()).into()),
            }
            let line: &str = buf.trim_end_matches('\n');
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            if k == "errno" {
                // The answer ends with a blank line: read it, so the device never
                // writes to a closed connection.
                let v = v.to_string();
                let mut blank = String::new();
                let _ = reader.read_line(&mut blank);
                if v != "0" {
                    return Err(format!(
                        "the device refused the request (errno {v}): {}",
                        body.lines().next().unwrap_or("")
                    )
                    .into());
                }
                return Ok(out);
            }
            out.push((k.to_string(), v.to_string()));
        }
        Err(format!(
            "{} closed the connection without an answer",
            self.socket.display()
        )
        .into())
    }

    pub fn get(&self) -> std::result::Result<DeviceConfig, Failure> {
        parse_get(&self.request("get=1\n")?)
    }

    /// `set=1` with `lines` (each ending in a newline).
    pub fn set(&self, lines: &str) -> std::result::Result<(), Failure> {
        self.request(&format!("set=1\n{lines}")).map(|_| ())
    }
}

/// The pid in `pid_file`, if that process runs the podnetd binary.
pub fn device_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
    (comm.trim() == "podnetd" && !matches!(state, Some(Some('Z' | 'X')))).then_some(pid)
}

/// Makes sure a device process serves `p.dev` on `p.socket`: adopts one that answers,
/// else starts one (a child of podnetd in its own session, so it outlives podnetd)
/// and waits until it answers. Returns the device process's pid.
pub fn ensure_device(p: &Paths, node: &str, log: &dyn Fn(&str)) -> Result<u32> {
    let uapi = Uapi {
        socket: p.socket.clone(),
    };
    if let (Some(pid), Ok(_)) = (device_pid(&p.pid_file), uapi.get()) {
        return Ok(pid);
    }
    // One that does not answer is stopped first: two processes must never compete
    // for the device name.
    stop_device(p);
    let exe = std::env::current_exe().map_err(file_err(
        "find podnetd's own binary",
        Path::new("/proc/self/exe"),
    ))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("wireguard-device")
        .arg("--node")
        .arg(node)
        .arg("--dev")
        .arg(&p.dev)
        .arg("--socket")
        .arg(&p.socket)
        .arg("--pid-file")
        .arg(&p.pid_file)
        .stdin(std::process::Stdio::null());
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; it runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(file_err(
        "start the WireGuard device process from",
        Path::new("/proc/self/exe"),
    ))?;
    let pid = child.id();
    log(&format!(
        "started the WireGuard device process for {} (pid {pid}, socket {})",
        p.dev,
        p.socket.display()
    ));
    let t = Instant::now();
    loop {
        if uapi.get().is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::WireGuard {
                dev: p.dev.clone(),
                why: format!(
                    "its device process exited at start ({status}); the reason is in podnetd's log above"
                ),
            });
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            return Err(Error::WireGuard {
                dev: p.dev.clone(),
                why: format!(
                    "its device process did not answer on {} within 10 s",
                    p.socket.display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reaped when it ends, so it never lingers as a zombie under a live podnetd.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// Stops the device process (if any) and removes its socket and pid file: its TUN
/// device, and the routes through it, go with it.
pub fn stop_device(p: &Paths) -> bool {
    let pid = device_pid(&p.pid_file);
    if let Some(pid) = pid {
        // SAFETY: signalling the process our pid file names, checked to run podnetd.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let t = Instant::now();
        while device_pid(&p.pid_file) == Some(pid) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(&p.socket);
    let _ = std::fs::remove_file(&p.pid_file);
    pid.is_some()
}

/// gotatun's UDP sockets, bound again and again until the port is free. A new key
/// makes gotatun stop its connection and bind the port anew at once, while the old
/// socket is still being closed by a task of its runtime: a plain bind then fails
/// with "address in use" and leaves the device without a socket (the rotation would
/// end every tunnel). The old socket is gone within milliseconds.
struct RebindingUdp(gotatun::udp::socket::UdpSocketFactory);

impl gotatun::udp::UdpTransportFactory for RebindingUdp {
    type Send = gotatun::udp::socket::UdpSocket;
    type Recv = gotatun::udp::socket::UdpSocket;

    async fn bind(
        &mut self,
        params: &gotatun::udp::UdpTransportFactoryParams,
    ) -> std::io::Result<(Self::Send, Self::Recv)> {
        let t = Instant::now();
        loop {
            match self.0.bind(params).await {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && t.elapsed() < Duration::from_secs(2) =>
                {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                r => return r,
            }
        }
    }
}

/// The device process's main: creates the TUN device `dev`, serves the configuration
/// protocol on `socket` (mode 0600, its directory 0700), writes `pid_file`, and runs
/// until its socket file is removed or replaced, or it is signalled.
pub fn run_device(dev: &str, socket: &Path, pid_file: &Path) -> std::result::Result<(), Failure> {
    use gotatun::device::uapi::UapiServer;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the device's runtime: {e}"))?;
    let dir = socket.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(socket);
    // The socket hands out the private key (`get=1`): root only, from its creation.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let listener = std::os::unix::net::UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(|e| format!("bind {}: {e}", socket.display()))?;
    let ino = std::fs::metadata(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?
        .ino();
    rt.block_on(async move {
        let (client, server) = UapiServer::new();
        let device = gotatun::device::build()
            .with_uapi(server)
            .with_udp(RebindingUdp(Default::default()))
            .create_tun(dev)
            .map_err(|e| format!("create the TUN device {dev}: {e}"))?
            .build()
            .await
            .map_err(|e| format!("start WireGuard on {dev}: {e}"))?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                client.clone().wrap_read_write(conn);
            }
        });
        std::fs::write(pid_file, std::process::id().to_string())
            .map_err(|e| format!("write {}: {e}", pid_file.display()))?;
        tracing::info!(
            "WireGuard device {dev} up, configuration socket {}",
            socket.display()
        );
        // Ends when the socket is gone or replaced: whoever removed it (lab down, a
        // podnetd switching backends) wants the device gone.
        let (socket, pid_file) = (socket.to_path_buf(), pid_file.to_path_buf());
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if std::fs::metadata(&socket).map(|m| m.ino()).ok() != Some(ino) {
                tracing::info!(
                    "{} is gone: stopping the WireGuard device",
                    socket.display()
                );
                if std::fs::read_to_string(&pid_file)
                    .is_ok_and(|p| p.trim() == std::process::id().to_string())
                {
                    let _ = std::fs::remove_file(&pid_file);
                }
                break;
            }
        }
        drop(device);
        Ok(())
    })
}

/// Key rotations asked for through the API and done by the agent's loop (which owns
/// the key, the device and the datastore registration): the API thread asks and
/// waits, the loop takes the request and finishes it.
#[derive(Default)]
pub struct Rotation {
    state: std::sync::Mutex<RotationState>,
    cv: std::sync::Condvar,
}

/// Why a rotation asked for through the API did not happen (every waiting request
/// gets the same answer, so it is a message, cloned).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RotationFailed(pub String);

#[derive(Default)]
struct RotationState {
    asked: u64,
    taken: u64,
    done: std::collections::BTreeMap<u64, std::result::Result<Rotated, RotationFailed>>,
}

impl Rotation {
    /// Asks for a rotation and waits (up to `timeout`) for its outcome.
    pub fn request(&self, timeout: Duration) -> std::result::Result<Rotated, RotationFailed> {
        let mut st = self.state.lock().unwrap();
        st.asked += 1;
        let me = st.asked;
        let t = Instant::now();
        loop {
            if let Some(r) = st.done.remove(&me) {
                return r;
            }
            let left = timeout.saturating_sub(t.elapsed());
            if left.is_zero() {
                return Err(RotationFailed(format!(
                    "the agent did not rotate the key within {} s; it will still do it: see its log",
                    timeout.as_secs()
                )));
            }
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
    }

    /// The newest request not yet taken, if any (older ones are answered by it too).
    pub fn take(&self) -> Option<(u64, u64)> {
        let mut st = self.state.lock().unwrap();
        (st.asked > st.taken).then(|| {
            let r = (st.taken + 1, st.asked);
            st.taken = st.asked;
            r
        })
    }

    pub fn finish(&self, (from, to): (u64, u64), r: std::result::Result<Rotated, RotationFailed>) {
        let mut st = self.state.lock().unwrap();
        for id in from..=to {
            st.done.insert(id, r.clone());
        }
        // Answers nobody waits for any more (timed out) are not kept forever.
        while st.done.len() > 64 {
            st.done.pop_first();
        }
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_keys_are_named() {
        let k = [7u8; 32];
        assert_eq!(parse_public_key(&to_base64(&k)).unwrap(), k);
        assert_eq!(unhex(&hex(&k)), Some(k));
        assert!(parse_public_key("not base64!")
            .unwrap_err()
            .to_string()
            .contains("base64"));
        assert!(parse_public_key("AAAA")
            .unwrap_err()
            .to_string()
            .contains("3 bytes"));
        assert!(parse_public_key(&to_base64(&[0; 32]))
            .unwrap_err()
            .to_string()
            .contains("zero"));
        // RFC 7748's test vector: Alice's private and public key.
        let alice =
            unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        assert_eq!(
            hex(&public_key(&alice)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn key_file_is_private_and_reused() {
        let d = std::env::temp_dir().join(format!("podnet-wgkey-{}", std::process::id()));
        let p = d.join("k");
        let (k1, made) = load_or_create_key(&p).unwrap();
        assert!(made);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, made) = load_or_create_key(&p).unwrap();
        assert!(!made);
        assert_eq!(k1, k2);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_key(&p).unwrap_err().to_string();
        assert!(e.contains("readable by others"), "{e}");
        std::fs::write(&p, "garbage").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create_key(&p).unwrap_err().to_string();
        assert!(e.contains("does not hold a key"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn get_answers_are_read_and_peer_changes_are_minimal() {
        let kv = |s: &str| -> Vec<(String, String)> {
            s.lines()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.into(), v.into())
                })
                .collect()
        };
        let a = [1u8; 32];
        let b = [2u8; 32];
        let text = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nendpoint=192.168.1.11:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\nrx_bytes=10\ntx_bytes=20\nallowed_ip=10.244.1.0/24\npublic_key={}\nendpoint=192.168.1.12:51820\nallowed_ip=10.244.2.0/24",
            hex(&[9; 32]),
            hex(&a),
            hex(&b)
        );
        let d = parse_get(&kv(&text)).unwrap();
        assert_eq!(d.private_key, Some([9; 32]));
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[0].last_handshake, 1_700_000_000);
        assert_eq!(d.peers[0].rx_bytes, 10);
        assert_eq!(
            d.peers[0].allowed_ips,
            vec!["10.244.1.0/24".parse().unwrap()]
        );
        assert!(parse_get(&kv("public_key=zz")).is_err());

        let render = |c: Vec<PeerChange>| c.iter().map(PeerChange::render).collect::<String>();
        let want = vec![
            WantPeer {
                name: "a".into(),
                public_key: a,
                endpoint: "192.168.1.11:51820".parse().unwrap(),
                cidr: "10.244.1.0/24".parse().unwrap(),
                cidr6: None,
            },
            WantPeer {
                name: "c".into(),
                public_key: [3; 32],
                endpoint: "192.168.1.13:51820".parse().unwrap(),
                cidr: "10.244.3.0/24".parse().unwrap(),
                cidr6: None,
            },
        ];
        let c = render(peer_changes(&want, &d.peers));
        // b removed, the new peer added, a untouched.
        assert!(
            c.contains(&format!("public_key={}\nremove=true\n", hex(&b))),
            "{c}"
        );
        assert!(
            c.contains(
                "endpoint=192.168.1.13:51820\nreplace_allowed_ips=true\nallowed_ip=10.244.3.0/24\n"
            ),
            "{c}"
        );
        assert!(!c.contains(&hex(&a)), "{c}");
        let mut now = d.peers.clone();
        now.retain(|p| p.public_key != b);
        now.push(PeerConfig {
            public_key: [3; 32],
            endpoint: Some("192.168.1.13:51820".parse().unwrap()),
            allowed_ips: vec!["10.244.3.0/24".parse().unwrap()],
            ..Default::default()
        });
        assert!(peer_changes(&want, &now).is_empty());
        // A moved endpoint is rewritten.
        now[0].endpoint = Some("192.168.1.99:51820".parse().unwrap());
        assert!(render(peer_changes(&want, &now)).contains("endpoint=192.168.1.11:51820"));
        // A dual-stack peer: both ranges written, read back and compared.
        let mut want6 = want.clone();
        want6[1].cidr6 = Some("fd00:10:244:3::/64".parse().unwrap());
        let c = render(peer_changes(&want6, &now));
        assert!(
            c.contains("allowed_ip=10.244.3.0/24\nallowed_ip=fd00:10:244:3::/64\n"),
            "{c}"
        );
        let back = parse_get(&kv(&format!(
            "public_key={}\nallowed_ip=10.244.3.0/24\nallowed_ip=fd00:10:244:3::/64",
            hex(&[3; 32])
        )))
        .unwrap();
        assert_eq!(back.peers[0].allowed_ips6, [want6[1].cidr6.unwrap()]);
        now[1].allowed_ips6 = back.peers[0].allowed_ips6.clone();
        now[0].endpoint = Some("192.168.1.11:51820".parse().unwrap());
        assert!(peer_changes(&want6, &now).is_empty());
        // The IPv6 range gone from the datastore: the peer is rewritten without it.
        assert_eq!(peer_changes(&want, &now).len(), 1);
    }
}
