//! Links: veth pairs, bridges, and their state (`ip link`).

use crate::error::{Error, Result};
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use crate::sys::*;
use std::os::fd::RawFd;

/// What `ip -d link show` would tell about one link.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub flags: u32,
    pub mtu: u32,
    pub mac: Vec<u8>,
    /// Index of the bridge this link is enslaved to.
    pub master: Option<u32>,
    /// `veth`, `bridge`, `vxlan`… (none for physical and loopback links).
    pub kind: Option<String>,
    /// RFC 2863 operational state (6 = up, 2 = down, 7 = lower-layer down).
    pub operstate: u8,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace); other links
    /// report their own index here.
    pub peer_index: Option<u32>,
    /// The link's alias (`ip link set X alias …`); podnet records owners there.
    pub alias: Option<String>,
    /// For a VXLAN device: its parameters.
    pub vxlan: Option<VxlanInfo>,
    /// For a bridge port: whether hairpin mode is on (frames may leave by the port
    /// they came in on).
    pub hairpin: Option<bool>,
}

/// What `ip -d link show` says of a VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    /// Its local tunnel end: `IFLA_VXLAN_LOCAL` (IPv4) or `IFLA_VXLAN_LOCAL6`.
    pub local: Option<std::net::IpAddr>,
    pub dev: Option<u32>,
    pub learning: bool,
    /// Whether it takes IPv6 UDP datagrams with a zero checksum (`udp6zerocsumrx`).
    pub zero_csum6_rx: bool,
}

impl LinkInfo {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    pub fn mac_string(&self) -> String {
        crate::fmt_mac(&self.mac)
    }

    fn parse(body: &[u8]) -> Option<LinkInfo> {
        let index = u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?);
        let flags = u32::from_ne_bytes(body.get(8..12)?.try_into().ok()?);
        let mut li = LinkInfo {
            index,
            flags,
            ..Default::default()
        };
        for (ty, p) in msg::attrs(body.get(16..)?) {
            match ty {
                IFLA_IFNAME => li.name = msg::as_str(p),
                IFLA_MTU => li.mtu = msg::as_u32(p).unwrap_or(0),
                IFLA_ADDRESS => li.mac = p.to_vec(),
                IFLA_MASTER => li.master = msg::as_u32(p).filter(|&m| m != 0),
                IFLA_OPERSTATE => li.operstate = p.first().copied().unwrap_or(0),
                IFLA_LINK => li.peer_index = msg::as_u32(p).filter(|&i| i != 0),
                IFLA_IFALIAS => li.alias = Some(msg::as_str(p)).filter(|a| !a.is_empty()),
                IFLA_LINKINFO => {
                    li.kind = msg::find(p, IFLA_INFO_KIND).map(msg::as_str);
                    if msg::find(p, IFLA_INFO_SLAVE_KIND)
                        .map(msg::as_str)
                        .as_deref()
                        == Some("bridge")
                    {
                        li.hairpin = msg::find(p, IFLA_INFO_SLAVE_DATA)
                            .and_then(|d| msg::find(d, IFLA_BRPORT_MODE))
                            .and_then(|b| b.first().copied())
                            .map(|m| m != 0);
                    }
                    if li.kind.as_deref() == Some("vxlan") {
                        let d = msg::find(p, IFLA_INFO_DATA).unwrap_or(&[]);
                        li.vxlan = Some(VxlanInfo {
                            vni: msg::find(d, 1).and_then(msg::as_u32).unwrap_or(0),
                            port: msg::find(d, 15)
                                .and_then(|b| {
                                    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
                                })
                                .unwrap_or(0),
                            local: msg::find(d, 4)
                                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                                .map(std::net::IpAddr::from)
                                .or_else(|| {
                                    msg::find(d, 17)
                                        .and_then(|b| <[u8; 16]>::try_from(b).ok())
                                        .map(std::net::IpAddr::from)
                                }),
                            dev: msg::find(d, 3).and_then(msg::as_u32),
                            learning: msg::find(d, 7)
                                .and_then(|b| b.first().copied())
                                .unwrap_or(1)
                                != 0,
                            zero_csum6_rx: msg::find(d, 20)
                                .and_then(|b| b.first().copied())
                                .unwrap_or(0)
                                != 0,
                        });
                    }
                }
                _ => {}
            }
        }
        Some(li)
    }
}

fn ifinfo(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// `ip link show NAME`; `None` if there is no such link.
pub fn get_by_name(sock: &mut Socket, name: &str) -> Result<Option<LinkInfo>> {
    let mut m = Msg::new(RTM_GETLINK, 0).fixed(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, name);
    match sock.get(m, "look up link", name) {
        Ok(body) => parse_or_malformed(&body, name).map(Some),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `ip link show` by index; `None` if there is no such link.
pub fn get_by_index(sock: &mut Socket, index: u32) -> Result<Option<LinkInfo>> {
    let m = Msg::new(RTM_GETLINK, 0).fixed(&ifinfo(index, 0, 0));
    let obj = format!("index {index}");
    match sock.get(m, "look up link", &obj) {
        Ok(body) => parse_or_malformed(&body, &obj).map(Some),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_or_malformed(body: &[u8], obj: &str) -> Result<LinkInfo> {
    LinkInfo::parse(body).ok_or_else(|| Error::Malformed {
        op: "look up link",
        obj: obj.into(),
        why: "short netlink reply (ifinfomsg)".into(),
    })
}

/// `ip link show`: every link in the socket's namespace.
pub fn list(sock: &mut Socket) -> Result<Vec<LinkInfo>> {
    let m = Msg::new(RTM_GETLINK, 0).fixed(&ifinfo(0, 0, 0));
    Ok(sock
        .dump(m, "list links", "")?
        .iter()
        .filter_map(|b| LinkInfo::parse(b))
        .collect())
}

/// A veth pair whose peer is created directly inside another namespace.
#[derive(Clone, Debug)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub peer_name: &'a str,
    pub peer_mac: Option<[u8; 6]>,
    /// Namespace of the peer; `None` keeps it beside the first end.
    pub peer_netns_fd: Option<RawFd>,
    /// Bridge (index) the first end joins as it is created.
    pub master: Option<u32>,
    /// Bring the first end up as it is created. (The peer cannot be: the kernel
    /// opens it before the two ends know each other, and veth refuses with ENOTCONN.)
    pub up: bool,
}

/// One transmit and one receive queue, said at creation. A veth made without them gets
/// a queue per CPU, then cut to one real queue before the request returns — and cutting
/// the real queue count waits for an RCU grace period while holding the kernel's link
/// lock (`netif_set_real_num_tx_queues` → `synchronize_net`), twice per pair: every
/// other ADD on the node waits with it. The pair ends up with the same one real queue
/// either way.
fn one_queue(m: &mut Msg) {
    m.u32(IFLA_NUM_TX_QUEUES, 1);
    m.u32(IFLA_NUM_RX_QUEUES, 1);
}

/// `ip link add NAME mtu M [master BR] [up] type veth peer name PEER netns NS`, in one
/// request: the kernel registers both ends, then applies flags and master. Returns the
/// first end as the kernel echoes it (its `peer_index` is the peer's index in the
/// peer's namespace), when the kernel echoes it (6.1 and later).
pub fn create_veth(sock: &mut Socket, v: &VethSpec) -> Result<Option<LinkInfo>> {
    let up = |on: bool| if on { (IFF_UP, IFF_UP) } else { (0, 0) };
    let (f, c) = up(v.up);
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL).fixed(&ifinfo(0, f, c));
    m.str(IFLA_IFNAME, v.name);
    m.u32(IFLA_MTU, v.mtu);
    one_queue(&mut m);
    if let Some(master) = v.master {
        m.u32(IFLA_MASTER, master);
    }
    if let Some(mac) = v.mac {
        m.attr(IFLA_ADDRESS, &mac);
    }
    let li = m.nest(IFLA_LINKINFO);
    m.str(IFLA_INFO_KIND, "veth");
    let data = m.nest(IFLA_INFO_DATA);
    let peer = m.nest(VETH_INFO_PEER);
    m.buf.extend_from_slice(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, v.peer_name);
    m.u32(IFLA_MTU, v.mtu);
    one_queue(&mut m);
    if let Some(mac) = v.peer_mac {
        m.attr(IFLA_ADDRESS, &mac);
    }
    if let Some(fd) = v.peer_netns_fd {
        m.u32(IFLA_NET_NS_FD, fd as u32);
    }
    m.end(peer);
    m.end(data);
    m.end(li);
    let echoed = sock.ack_echo(
        m,
        "create veth pair",
        &format!("{} (peer {})", v.name, v.peer_name),
    )?;
    Ok(echoed
        .iter()
        .filter_map(|b| LinkInfo::parse(b))
        .find(|l| l.name == v.name))
}

/// `ip link add NAME address MAC mtu M type bridge` — down, no address.
pub fn create_bridge(
    sock: &mut Socket,
    name: &str,
    mac: Option<[u8; 6]>,
    mtu: Option<u32>,
) -> Result<()> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL).fixed(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, name);
    if let Some(mac) = mac {
        m.attr(IFLA_ADDRESS, &mac);
    }
    if let Some(mtu) = mtu {
        m.u32(IFLA_MTU, mtu);
    }
    let li = m.nest(IFLA_LINKINFO);
    m.str(IFLA_INFO_KIND, "bridge");
    m.end(li);
    sock.ack(m, "create bridge", name)
}

/// Whether this kernel can make links of `kind` (`ip link add … type KIND`): makes a
/// link of that kind named `probe`, down, and deletes it at once.
pub fn kind_supported(sock: &mut Socket, probe: &str, kind: &str) -> Result<bool> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL).fixed(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, probe);
    let li = m.nest(IFLA_LINKINFO);
    m.str(IFLA_INFO_KIND, kind);
    m.end(li);
    match sock.ack(m, "probe link kind", kind) {
        Ok(()) => {
            delete_by_name(sock, probe)?;
            Ok(true)
        }
        Err(e) if e.is_not_supported() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A VXLAN device (`ip link add NAME type vxlan id VNI local IP dev DEV dstport PORT
/// nolearning`).
#[derive(Clone, Debug)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    /// The local tunnel end; an IPv6 one makes an IPv6 device (its FDB entries name
    /// IPv6 destinations).
    pub local: std::net::IpAddr,
    /// The underlay link.
    pub dev: u32,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub learning: bool,
}

/// Creates the VXLAN device, down.
pub fn create_vxlan(sock: &mut Socket, v: &VxlanSpec) -> Result<()> {
    const IFLA_VXLAN_ID: u16 = 1;
    const IFLA_VXLAN_LINK: u16 = 3;
    const IFLA_VXLAN_LOCAL: u16 = 4;
    const IFLA_VXLAN_LEARNING: u16 = 7;
    const IFLA_VXLAN_PORT: u16 = 15;
    const IFLA_VXLAN_LOCAL6: u16 = 17;
    const IFLA_VXLAN_UDP_ZERO_CSUM6_RX: u16 = 20;
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL).fixed(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, v.name);
    m.u32(IFLA_MTU, v.mtu);
    m.attr(IFLA_ADDRESS, &v.mac);
    let li = m.nest(IFLA_LINKINFO);
    m.str(IFLA_INFO_KIND, "vxlan");
    let data = m.nest(IFLA_INFO_DATA);
    m.u32(IFLA_VXLAN_ID, v.vni);
    m.u32(IFLA_VXLAN_LINK, v.dev);
    match v.local {
        std::net::IpAddr::V4(a) => m.attr(IFLA_VXLAN_LOCAL, &a.octets()),
        std::net::IpAddr::V6(a) => {
            // The eBPF fast path sends VXLAN over IPv6 with a zero UDP checksum (RFC
            // 6935), as it does over IPv4; every IPv6 device takes them.
            m.u8(IFLA_VXLAN_UDP_ZERO_CSUM6_RX, 1);
            m.attr(IFLA_VXLAN_LOCAL6, &a.octets())
        }
    };
    m.u8(IFLA_VXLAN_LEARNING, v.learning as u8);
    m.attr(IFLA_VXLAN_PORT, &v.port.to_be_bytes());
    m.end(data);
    m.end(li);
    sock.ack(m, "create vxlan device", v.name)
}

/// Makes sure bridge `name` exists (created with `mac` and `mtu` if missing), is up,
/// and holds `addr/prefix`. Safe to race with another process doing the same.
pub fn ensure_bridge(
    sock: &mut Socket,
    name: &str,
    mac: [u8; 6],
    mtu: u32,
    addr: std::net::Ipv4Addr,
    prefix: u8,
) -> Result<LinkInfo> {
    let br = match get_by_name(sock, name)? {
        Some(l) => l,
        None => {
            match create_bridge(sock, name, Some(mac), Some(mtu)) {
                Err(e) if !e.is_exists() => return Err(e),
                _ => {} // made now, or by a concurrent caller just before
            }
            get_by_name(sock, name)?.ok_or_else(|| Error::NotFound {
                op: "look up bridge",
                obj: name.into(),
                ext: Some("it vanished right after it was created".into()),
            })?
        }
    };
    if br.kind.as_deref() != Some("bridge") {
        return Err(Error::WrongKind {
            name: name.into(),
            kind: br.kind.clone().unwrap_or_else(|| "plain link".into()),
            want: "bridge",
        });
    }
    // Adding an address takes the kernel's link lock even when the address is there
    // (every ADD but a node's first); reading the addresses does not.
    let has = crate::addr::list(sock, Some(br.index))?
        .iter()
        .any(|a| a.addr == addr && a.prefix == prefix);
    let mut reqs = vec![];
    if !has {
        reqs.push(crate::addr::add_request(br.index, addr, prefix));
    }
    if !br.is_up() {
        // Before it comes up: no duplicate address detection on the bridge. Its IPv6
        // link-local address (from its MAC, this node's alone) would stay tentative for
        // a second or two, and the node sends its neighbour solicitations for pods'
        // IPv6 addresses from it: a pod's first IPv6 packets through the node would be
        // lost meanwhile. (No such file: IPv6 is off, nothing to do.)
        match std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0") {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io {
                    op: "turn off duplicate address detection (net.ipv6.conf.BRIDGE.accept_dad) on bridge",
                    obj: name.into(),
                    source: e,
                })
            }
            _ => {}
        }
        reqs.push(change_request(
            Target::Index(br.index),
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        ));
    }
    for r in sock.ack_all(reqs) {
        match r {
            Err(e) if !e.is_exists() => return Err(e),
            _ => {}
        }
    }
    Ok(br)
}

/// Which link a change applies to.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Index(u32),
    Name(&'a str),
}

impl Target<'_> {
    fn describe(&self) -> String {
        match self {
            Target::Index(i) => format!("index {i}"),
            Target::Name(n) => n.to_string(),
        }
    }
}

/// A change to an existing link (`ip link set …`). Unset fields are left alone.
#[derive(Clone, Debug, Default)]
pub struct LinkChange {
    pub up: Option<bool>,
    /// `Some(0)` detaches from the bridge (`nomaster`).
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    pub alias: Option<String>,
    /// `ip link set … group G`.
    pub group: Option<u32>,
    /// `ip link set … type bridge_slave hairpin on|off`: whether the bridge may send a
    /// frame back out of the port it came in on. A pod that reaches itself through its
    /// own Service needs it: kube-proxy's DNAT turns the packet around on the node, and
    /// the bridge then delivers it to the port it came from. The link must already be
    /// a bridge port (the kernel applies this before `master`).
    pub hairpin: Option<bool>,
    /// `ip link set … addrgenmode none`: the kernel gives the link no IPv6 link-local
    /// address when it comes up, so no duplicate address detection or multicast
    /// listener work (each a turn of the link lock) follows. For links that need no
    /// address of their own, such as bridge ports. Refused (EAFNOSUPPORT) on a kernel
    /// without IPv6.
    pub no_ipv6_link_local: bool,
}

/// Builds the request for `ip link set TARGET [up|down] [master M] [mtu N] [alias A]
/// [group G] [type bridge_slave hairpin on|off]`: one message, one turn of the kernel's
/// link lock however many fields change.
pub fn change_request(target: Target, c: &LinkChange) -> Request {
    let (index, name) = match target {
        Target::Index(i) => (i, None),
        Target::Name(n) => (0, Some(n)),
    };
    let (flags, change) = match c.up {
        Some(true) => (IFF_UP, IFF_UP),
        Some(false) => (0, IFF_UP),
        None => (0, 0),
    };
    let mut m = Msg::new(RTM_NEWLINK, 0).fixed(&ifinfo(index, flags, change));
    if let Some(n) = name {
        m.str(IFLA_IFNAME, n);
    }
    if let Some(master) = c.master {
        m.u32(IFLA_MASTER, master);
    }
    if let Some(mtu) = c.mtu {
        m.u32(IFLA_MTU, mtu);
    }
    if let Some(a) = &c.alias {
        // Without a trailing NUL, as iproute2 sends it: the kernel counts a NUL
        // toward its 255-byte limit.
        m.attr(IFLA_IFALIAS, a.as_bytes());
    }
    if let Some(g) = c.group {
        m.u32(IFLA_GROUP, g);
    }
    if c.no_ipv6_link_local {
        let spec = m.nest(IFLA_AF_SPEC);
        let v6 = m.nest(AF_INET6_SPEC);
        m.u8(IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE);
        m.end(v6);
        m.end(spec);
    }
    if let Some(on) = c.hairpin {
        let li = m.nest(IFLA_LINKINFO);
        m.str(IFLA_INFO_SLAVE_KIND, "bridge");
        let d = m.nest(IFLA_INFO_SLAVE_DATA);
        m.u8(IFLA_BRPORT_MODE, on as u8);
        m.end(d);
        m.end(li);
    }
    Request::new(m, "change link", target.describe())
}

/// `ip link set TARGET …`.
pub fn change(sock: &mut Socket, target: Target, c: &LinkChange) -> Result<()> {
    let r = change_request(target, c);
    sock.ack(r.msg, r.op, r.obj)
}

/// `ip link del NAME`. Returns false if there was no such link.
/// `ip link del group G`: every link of the group, in one kernel batch (one set of
/// RCU synchronizations for all of them). Returns false if the group was empty.
pub fn delete_group(sock: &mut Socket, group: u32) -> Result<bool> {
    let mut m = Msg::new(RTM_DELLINK, 0).fixed(&ifinfo(0, 0, 0));
    m.u32(IFLA_GROUP, group);
    match sock.ack(m, "delete links of group", group.to_string()) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn delete_by_name(sock: &mut Socket, name: &str) -> Result<bool> {
    let mut m = Msg::new(RTM_DELLINK, 0).fixed(&ifinfo(0, 0, 0));
    m.str(IFLA_IFNAME, name);
    match sock.ack(m, "delete link", name) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
