//! Small address types: an IPv4 network ([`Ipv4Net`], podnet's one CIDR type — pod
//! CIDRs, the cluster and Service ranges, policy peers as the datapaths hold them), an
//! IPv6 network ([`Ipv6Net`], a dual-stack node's second pod CIDR) and an
//! address-with-prefix of either family ([`IpNet`], as CNI results write it).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 network such as `10.244.0.0/24`, always stored with host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// Builds a network; `None` if the prefix is over 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        if prefix > 32 {
            return None;
        }
        let net = Ipv4Net { addr, prefix };
        (net.network() == addr).then_some(net)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Number of addresses in the network, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The address at offset `n` from the network address, if inside the network.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }

    /// Offset of `ip` from the network address.
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u64> {
        self.contains(ip)
            .then(|| (u32::from(ip) - u32::from(self.addr)) as u64)
    }

    /// True if the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The network `addr/prefix` with the host bits cleared, as NetworkPolicy reads an
    /// `ipBlock` (a prefix over 32 is taken as 32).
    pub fn truncating(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
        let prefix = prefix.min(32);
        let net = Ipv4Net { addr, prefix };
        Ipv4Net {
            addr: net.network(),
            prefix,
        }
    }

    /// `ip` as a /32.
    pub fn host(ip: Ipv4Addr) -> Ipv4Net {
        Ipv4Net {
            addr: ip,
            prefix: 32,
        }
    }

    /// The network address as a number (host order).
    pub fn bits(&self) -> u32 {
        u32::from(self.addr)
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && other.bits() & self.mask() == self.bits()
    }

    /// `self` minus every network of `except`, as disjoint networks in address order.
    /// Linear in the number of exceptions (times the prefix depth), so a block with
    /// thousands of holes stays cheap.
    pub fn subtract(&self, except: &[Ipv4Net]) -> Vec<Ipv4Net> {
        let bits = |n: &Ipv4Net| Bits {
            addr: u128::from(n.bits()),
            prefix: n.prefix,
        };
        subtract(32, bits(self), except.iter().map(bits))
            .into_iter()
            .map(|b| Ipv4Net {
                addr: Ipv4Addr::from(b.addr as u32),
                prefix: b.prefix,
            })
            .collect()
    }

    /// Why this network cannot be a node's pod CIDR, or `None` if it can: wider than
    /// [`MIN_POD_CIDR_PREFIX`] (0.0.0.0/0 would route everything to the pods), or
    /// touching a [`RESERVED`] range (loopback, link-local, multicast, …), whose
    /// addresses a pod cannot use and a node must not route to a bridge.
    pub fn pod_cidr_problem(&self) -> Option<String> {
        if self.prefix < MIN_POD_CIDR_PREFIX {
            return Some(format!(
                "/{} is wider than any node's pod CIDR (/{MIN_POD_CIDR_PREFIX} at most)",
                self.prefix
            ));
        }
        RESERVED
            .iter()
            .find(|(net, _)| self.overlaps(net))
            .map(|(net, what)| format!("it overlaps {net}, {what}"))
    }
}

/// A network of either family as its address bits (right-aligned) and prefix length:
/// the arithmetic [`Ipv4Net::subtract`] and [`Ipv6Net::subtract`] share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Bits {
    addr: u128,
    prefix: u8,
}

impl Bits {
    fn mask(self, width: u8) -> u128 {
        let all = u128::MAX >> (128 - u32::from(width));
        all & !(all.checked_shr(u32::from(self.prefix)).unwrap_or(0))
    }

    fn overlaps(self, o: Bits, width: u8) -> bool {
        let m = self.mask(width) & o.mask(width);
        self.addr & m == o.addr & m
    }
}

/// `p` minus every network of `except` in a `width`-bit address space, as disjoint
/// networks in address order. Linear in the number of exceptions (times the prefix
/// depth), so a block with thousands of holes stays cheap.
fn subtract(width: u8, p: Bits, except: impl Iterator<Item = Bits>) -> Vec<Bits> {
    let mut inside: Vec<Bits> = except.filter(|e| e.overlaps(p, width)).collect();
    inside.sort();
    let mut out = Vec::new();
    subtract_into(width, p, &inside, &mut out);
    out
}

/// `p` minus `except` (sorted, every one overlapping `p`), in address order.
fn subtract_into(width: u8, p: Bits, except: &[Bits], out: &mut Vec<Bits>) {
    if except.is_empty() {
        out.push(p);
        return;
    }
    // One that overlaps p and is no longer than p covers it.
    if except.iter().any(|e| e.prefix <= p.prefix) {
        return;
    }
    // The rest lie strictly inside p, each within one half.
    let prefix = p.prefix + 1;
    let a = Bits {
        addr: p.addr,
        prefix,
    };
    let b = Bits {
        addr: p.addr | (1u128 << (width - prefix)),
        prefix,
    };
    let split = except.partition_point(|e| e.addr < b.addr);
    subtract_into(width, a, &except[..split], out);
    subtract_into(width, b, &except[split..], out);
}

/// The widest network a pod CIDR may be (a /8).
pub const MIN_POD_CIDR_PREFIX: u8 = 8;

/// IPv4 ranges no pod address may come from, with what they are (RFC 6890).
pub const RESERVED: [(Ipv4Net, &str); 5] = [
    (
        Ipv4Net {
            addr: Ipv4Addr::new(0, 0, 0, 0),
            prefix: 8,
        },
        "\"this network\" (source-only addresses)",
    ),
    (
        Ipv4Net {
            addr: Ipv4Addr::new(127, 0, 0, 0),
            prefix: 8,
        },
        "the loopback range",
    ),
    (
        Ipv4Net {
            addr: Ipv4Addr::new(169, 254, 0, 0),
            prefix: 16,
        },
        "the link-local range",
    ),
    (
        Ipv4Net {
            addr: Ipv4Addr::new(224, 0, 0, 0),
            prefix: 4,
        },
        "the multicast range",
    ),
    (
        Ipv4Net {
            addr: Ipv4Addr::new(240, 0, 0, 0),
            prefix: 4,
        },
        "the reserved range with the broadcast address 255.255.255.255",
    ),
];

/// The [`RESERVED`] range `ip` is in, described, if any.
pub fn reserved(ip: Ipv4Addr) -> Option<String> {
    RESERVED
        .iter()
        .find(|(net, _)| net.contains(ip))
        .map(|(net, what)| format!("{net}, {what}"))
}

/// Whether `ip` can be a host's address on a network between nodes: not unspecified,
/// loopback, multicast, link-local (fe80::/10) or IPv4-mapped. Unique local
/// addresses (fc00::/7) qualify: they are how a private underlay numbers its hosts.
pub fn is_global_unicast6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || s[0] & 0xffc0 == 0xfe80
        || ip.to_ipv4_mapped().is_some())
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: CidrError| serde::de::Error::custom(e.0))
    }
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Ipv4Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let a = IpNet::from_str(s)?;
        let IpAddr::V4(v4) = a.addr else {
            return Err(CidrError(format!("{s:?} is not an IPv4 network")));
        };
        Ipv4Net::new(v4, a.prefix).ok_or_else(|| {
            let masked = Ipv4Net {
                addr: v4,
                prefix: a.prefix,
            }
            .network();
            CidrError(format!(
                "{s:?} has host bits set; did you mean {masked}/{}?",
                a.prefix
            ))
        })
    }
}

/// An IPv6 network such as `fd00:10:244:1::/64`, always stored with host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    prefix: u8,
}

/// The widest network an IPv6 pod CIDR may be (a /32: a node's range is usually a /64,
/// Kubernetes' `--node-cidr-mask-size-ipv6` default).
pub const MIN_POD_CIDR6_PREFIX: u8 = 32;
/// The narrowest: room for the subnet-router anycast address, the gateway and pods.
pub const MAX_POD_CIDR6_PREFIX: u8 = 126;

/// IPv6 ranges no pod address may come from, with what they are (RFC 6890, RFC 4291).
pub const RESERVED6: [(Ipv6Addr, u8, &str); 3] = [
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        8,
        "the range of the unspecified, loopback and IPv4-mapped addresses",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "the link-local range",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "the multicast range",
    ),
];

impl Ipv6Net {
    /// Builds a network; `None` if the prefix is over 128 or host bits are set.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Option<Ipv6Net> {
        if prefix > 128 {
            return None;
        }
        let net = Ipv6Net { addr, prefix };
        (net.network() == addr).then_some(net)
    }

    /// The network `addr/prefix` with the host bits cleared (a prefix over 128 is taken
    /// as 128).
    pub fn truncating(addr: Ipv6Addr, prefix: u8) -> Ipv6Net {
        let prefix = prefix.min(128);
        Ipv6Net {
            addr: Ipv6Addr::from(u128::from(addr) & mask6(prefix)),
            prefix,
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn mask(&self) -> u128 {
        mask6(self.prefix)
    }

    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr)
    }

    /// Number of addresses in the network; `u128::MAX` for a /0.
    pub fn size(&self) -> u128 {
        1u128
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(u128::MAX)
    }

    /// The address at offset `n` from the network address, if inside the network.
    pub fn nth(&self, n: u128) -> Option<Ipv6Addr> {
        (n < self.size()).then(|| Ipv6Addr::from(u128::from(self.addr) + n))
    }

    /// Offset of `ip` from the network address.
    pub fn offset_of(&self, ip: Ipv6Addr) -> Option<u128> {
        self.contains(ip)
            .then(|| u128::from(ip) - u128::from(self.addr))
    }

    /// True if the two networks share an address.
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// `ip` as a /128.
    pub fn host(ip: Ipv6Addr) -> Ipv6Net {
        Ipv6Net {
            addr: ip,
            prefix: 128,
        }
    }

    /// The network address as a number.
    pub fn bits(&self) -> u128 {
        u128::from(self.addr)
    }

    /// The last address of the network.
    pub fn last(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.bits() | !self.mask())
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(&self, other: &Ipv6Net) -> bool {
        other.prefix >= self.prefix && other.bits() & self.mask() == self.bits()
    }

    /// `self` minus every network of `except`, as disjoint networks in address order
    /// (see [`Ipv4Net::subtract`]).
    pub fn subtract(&self, except: &[Ipv6Net]) -> Vec<Ipv6Net> {
        let bits = |n: &Ipv6Net| Bits {
            addr: n.bits(),
            prefix: n.prefix,
        };
        subtract(128, bits(self), except.iter().map(bits))
            .into_iter()
            .map(|b| Ipv6Net {
                addr: Ipv6Addr::from(b.addr),
                prefix: b.prefix,
            })
            .collect()
    }

    /// Why this network cannot be a node's pod CIDR, or `None` if it can: wider than
    /// [`MIN_POD_CIDR6_PREFIX`], narrower than [`MAX_POD_CIDR6_PREFIX`], or touching a
    /// [`RESERVED6`] range.
    pub fn pod_cidr_problem(&self) -> Option<String> {
        if self.prefix < MIN_POD_CIDR6_PREFIX {
            return Some(format!(
                "/{} is wider than any node's IPv6 pod CIDR (/{MIN_POD_CIDR6_PREFIX} at most; /64 is usual)",
                self.prefix
            ));
        }
        if self.prefix > MAX_POD_CIDR6_PREFIX {
            return Some(format!(
                "/{} leaves no room for the gateway and pods (/{MAX_POD_CIDR6_PREFIX} at least; /64 is usual)",
                self.prefix
            ));
        }
        RESERVED6
            .iter()
            .find(|(a, p, _)| self.overlaps(&Ipv6Net::truncating(*a, *p)))
            .map(|(a, p, what)| format!("it overlaps {a}/{p}, {what}"))
    }
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Ipv6Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv6Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: CidrError| serde::de::Error::custom(e.0))
    }
}

impl FromStr for Ipv6Net {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let a = IpNet::from_str(s)?;
        let IpAddr::V6(v6) = a.addr else {
            return Err(CidrError(format!("{s:?} is not an IPv6 network")));
        };
        Ipv6Net::new(v6, a.prefix).ok_or_else(|| {
            let masked = Ipv6Net::truncating(v6, a.prefix);
            CidrError(format!("{s:?} has host bits set; did you mean {masked}?"))
        })
    }
}

/// A pod CIDR of either family, as a node's `podCIDRs` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodCidr {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl FromStr for PodCidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(PodCidr::V6)
        } else {
            s.parse().map(PodCidr::V4)
        }
    }
}

impl fmt::Display for PodCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodCidr::V4(n) => n.fmt(f),
            PodCidr::V6(n) => n.fmt(f),
        }
    }
}

/// An address with its prefix length, as CNI results write it (`10.244.0.5/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> IpNet {
        IpNet { addr, prefix }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| CidrError(format!("{s:?} is not in address/prefix form")))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| CidrError(format!("{a:?} in {s:?} is not an IP address")))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| CidrError(format!("{p:?} in {s:?} is not a prefix length")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError(format!(
                "prefix /{prefix} in {s:?} is longer than {max}"
            )));
        }
        Ok(IpNet { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn global_unicast6_leaves_out_what_no_host_on_a_link_between_nodes_is() {
        for (a, want) in [
            ("fd00:192:168:1::a", true),
            ("2001:db8::1", true),
            ("::", false),
            ("::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("ff02::1", false),
            ("::ffff:10.0.0.1", false),
        ] {
            assert_eq!(is_global_unicast6(a.parse().unwrap()), want, "{a}");
        }
    }

    use super::*;

    #[test]
    fn ipv4net_basics() {
        let n: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(n.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(n.nth(1), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(n.nth(256), None);
        assert!(n.contains(Ipv4Addr::new(10, 244, 1, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(n.offset_of(Ipv4Addr::new(10, 244, 1, 9)), Some(9));
        assert_eq!(n.size(), 256);
    }

    #[test]
    fn ipv6net_basics_and_pod_cidrs() {
        let n: Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
        assert_eq!(n.nth(1), Some("fd00:10:244:1::1".parse().unwrap()));
        assert_eq!(n.size(), 1u128 << 64);
        assert!(n.contains("fd00:10:244:1::ffff".parse().unwrap()));
        assert!(!n.contains("fd00:10:244:2::1".parse().unwrap()));
        assert_eq!(n.offset_of("fd00:10:244:1::9".parse().unwrap()), Some(9));
        assert_eq!(n.nth(1u128 << 64), None);
        let e = "fd00:10:244:1::5/64".parse::<Ipv6Net>().unwrap_err();
        assert!(e.0.contains("fd00:10:244:1::/64"), "{e}");
        assert!("10.0.0.0/8".parse::<Ipv6Net>().is_err());
        assert!("fd00::/129".parse::<Ipv6Net>().is_err());
        assert_eq!(n.pod_cidr_problem(), None);
        for bad in [
            "fd00::/16",
            "fd00::/127",
            "fe80::/64",
            "ff02::/64",
            "::/64",
            "::ffff:0:0/96",
        ] {
            let n: Ipv6Net = bad.parse().unwrap();
            assert!(n.pod_cidr_problem().is_some(), "{bad}");
        }
        assert_eq!(
            "fd00::/64".parse::<PodCidr>().unwrap(),
            PodCidr::V6("fd00::/64".parse().unwrap())
        );
        assert_eq!(
            "10.1.0.0/24".parse::<PodCidr>().unwrap().to_string(),
            "10.1.0.0/24"
        );
    }

    #[test]
    fn rejects_host_bits_with_hint() {
        let e = "10.244.1.5/24".parse::<Ipv4Net>().unwrap_err();
        assert!(e.0.contains("10.244.1.0/24"), "{e}");
        assert!("10.244.1.0".parse::<Ipv4Net>().is_err());
        assert!("10.244.1.0/33".parse::<Ipv4Net>().is_err());
        assert!("fd00::/64".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn pod_cidrs_that_no_node_can_have() {
        for (bad, why) in [
            ("0.0.0.0/0", "wider"),
            ("10.0.0.0/7", "wider"),
            ("0.0.0.0/24", "this network"),
            ("127.0.0.0/24", "loopback"),
            ("127.0.0.0/8", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("169.254.3.0/24", "link-local"),
            ("169.0.0.0/8", "link-local"),
            ("224.0.0.0/24", "multicast"),
            ("239.255.0.0/16", "multicast"),
            ("240.0.0.0/24", "broadcast"),
            ("255.255.255.252/30", "broadcast"),
        ] {
            let n: Ipv4Net = bad.parse().unwrap();
            let p = n
                .pod_cidr_problem()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(p.contains(why), "{bad}: {p}");
        }
        for good in [
            "10.0.0.0/8",
            "10.244.0.0/24",
            "172.16.0.0/12",
            "100.64.0.0/10",
        ] {
            let n: Ipv4Net = good.parse().unwrap();
            assert_eq!(n.pod_cidr_problem(), None, "{good}");
        }
        assert!(reserved(Ipv4Addr::new(255, 255, 255, 255)).is_some());
        assert!(reserved(Ipv4Addr::new(127, 0, 0, 1)).is_some());
        assert!(reserved(Ipv4Addr::new(10, 0, 0, 1)).is_none());
    }

    #[test]
    fn ipnet_roundtrip() {
        let a: IpNet = "10.1.2.3/16".parse().unwrap();
        assert_eq!(a.to_string(), "10.1.2.3/16");
        let b: IpNet = "fd00::5/64".parse().unwrap();
        assert_eq!(b.to_string(), "fd00::5/64");
    }
}
