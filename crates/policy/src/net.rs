//! Prefixes as policy sees them, of both families: `ipBlock` CIDRs (host bits allowed
//! and cleared, as Kubernetes reads them), pod addresses as /32 or /128, and `except`
//! subtracted into a list of disjoint prefixes — the form an LPM trie or an nftables
//! interval set holds. An IPv4 prefix never covers, overlaps or contains an IPv6
//! address, and the other way round: each family is its own address space.

use podnet_conventions::{Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::IpAddr;

/// One policy prefix (an IPv4 one sorts before every IPv6 one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl Prefix {
    /// The network `addr/len` with the host bits cleared (a length over the family's
    /// width is taken as the width).
    pub fn truncating(addr: IpAddr, len: u8) -> Prefix {
        match addr {
            IpAddr::V4(a) => Prefix::V4(Ipv4Net::truncating(a, len)),
            IpAddr::V6(a) => Prefix::V6(Ipv6Net::truncating(a, len)),
        }
    }

    /// `ip` alone (/32 or /128).
    pub fn host(ip: IpAddr) -> Prefix {
        match ip {
            IpAddr::V4(a) => Prefix::V4(Ipv4Net::host(a)),
            IpAddr::V6(a) => Prefix::V6(Ipv6Net::host(a)),
        }
    }

    /// Every address of a family: `0.0.0.0/0` or `::/0`.
    pub fn everything(v6: bool) -> Prefix {
        if v6 {
            Prefix::V6(Ipv6Net::truncating(std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            Prefix::V4(Ipv4Net::truncating(std::net::Ipv4Addr::UNSPECIFIED, 0))
        }
    }

    pub fn is_v6(&self) -> bool {
        matches!(self, Prefix::V6(_))
    }

    pub fn prefix(&self) -> u8 {
        match self {
            Prefix::V4(n) => n.prefix(),
            Prefix::V6(n) => n.prefix(),
        }
    }

    /// Whether the prefix is one address (/32, /128).
    pub fn is_host(&self) -> bool {
        self.prefix() == if self.is_v6() { 128 } else { 32 }
    }

    pub fn network(&self) -> IpAddr {
        match self {
            Prefix::V4(n) => n.network().into(),
            Prefix::V6(n) => n.network().into(),
        }
    }

    /// The last address of the prefix.
    pub fn last(&self) -> IpAddr {
        match self {
            Prefix::V4(n) => n.broadcast().into(),
            Prefix::V6(n) => n.last().into(),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Prefix::V4(n), IpAddr::V4(a)) => n.contains(a),
            (Prefix::V6(n), IpAddr::V6(a)) => n.contains(a),
            _ => false,
        }
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(&self, other: &Prefix) -> bool {
        match (self, other) {
            (Prefix::V4(a), Prefix::V4(b)) => a.covers(b),
            (Prefix::V6(a), Prefix::V6(b)) => a.covers(b),
            _ => false,
        }
    }

    pub fn overlaps(&self, other: &Prefix) -> bool {
        match (self, other) {
            (Prefix::V4(a), Prefix::V4(b)) => a.overlaps(b),
            (Prefix::V6(a), Prefix::V6(b)) => a.overlaps(b),
            _ => false,
        }
    }

    /// `self` less every prefix of `except` (those of the other family change
    /// nothing), as disjoint prefixes in address order.
    pub fn subtract(&self, except: &[Prefix]) -> Vec<Prefix> {
        match self {
            Prefix::V4(n) => {
                let e: Vec<Ipv4Net> = except
                    .iter()
                    .filter_map(|p| match p {
                        Prefix::V4(p) => Some(*p),
                        Prefix::V6(_) => None,
                    })
                    .collect();
                n.subtract(&e).into_iter().map(Prefix::V4).collect()
            }
            Prefix::V6(n) => {
                let e: Vec<Ipv6Net> = except
                    .iter()
                    .filter_map(|p| match p {
                        Prefix::V6(p) => Some(*p),
                        Prefix::V4(_) => None,
                    })
                    .collect();
                n.subtract(&e).into_iter().map(Prefix::V6).collect()
            }
        }
    }

    /// The address alone for a host prefix (`10.0.0.1`, `fd00::1`), else `net/len`:
    /// as nftables set elements are written.
    pub fn render(&self) -> String {
        if self.is_host() {
            self.network().to_string()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::V4(n) => n.fmt(f),
            Prefix::V6(n) => n.fmt(f),
        }
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `a.b.c.d/n` or an IPv6 CIDR; host bits may be set (they are cleared).
pub fn parse_cidr(s: &str) -> Result<Prefix, String> {
    let (a, l) = s.split_once('/').ok_or_else(|| {
        format!("{s:?} is not a CIDR: write it as address/length, e.g. 10.0.0.0/24")
    })?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR: {a:?} is not an IP address"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR: {l:?} is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!(
            "{s:?} is not a CIDR: prefix length {len} is too long"
        ));
    }
    Ok(Prefix::truncating(addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        parse_cidr(s).unwrap()
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(p("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert!(p("10.1.2.3/16").contains("10.1.200.1".parse().unwrap()));
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!(p("0.0.0.0/0").contains("255.1.2.3".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/-1"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(p("fd00::1/64").to_string(), "fd00::/64");
        assert!(parse_cidr("fd00::/129").is_err());
    }

    #[test]
    fn subtraction_is_exact() {
        let base = p("10.0.0.0/8");
        let out = base.subtract(&[p("10.1.0.0/16"), p("10.200.3.4/32")]);
        // Disjoint, none of the excepted addresses, all of the others.
        for w in out.windows(2) {
            assert!(!w[0].overlaps(&w[1]));
        }
        let inside = |ip: &str| out.iter().any(|q| q.contains(ip.parse().unwrap()));
        assert!(!inside("10.1.7.7"));
        assert!(!inside("10.200.3.4"));
        assert!(inside("10.200.3.5"));
        assert!(inside("10.0.0.1"));
        assert!(inside("10.255.255.255"));
        assert!(!inside("11.0.0.0"));
        assert_eq!(base.subtract(&[p("10.0.0.0/7")]), vec![]);
        assert_eq!(base.subtract(&[p("11.0.0.0/8")]), vec![base]);
    }
}

#[cfg(test)]
mod v6_tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        parse_cidr(s).unwrap()
    }

    #[test]
    fn ipv6_subtraction_is_exact() {
        let base = p("fd00:10::/32");
        let out = base.subtract(&[
            p("fd00:10:244::/48"),
            p("fd00:10:7::5/128"),
            p("10.0.0.0/8"),
        ]);
        for w in out.windows(2) {
            assert!(!w[0].overlaps(&w[1]));
            assert!(w[0] < w[1], "address order");
        }
        let inside = |ip: &str| out.iter().any(|q| q.contains(ip.parse().unwrap()));
        assert!(!inside("fd00:10:244:1::9"));
        assert!(!inside("fd00:10:7::5"));
        assert!(inside("fd00:10:7::6"));
        assert!(inside("fd00:10::1"));
        assert!(inside("fd00:10:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!inside("fd00:11::"));
        // Each of the 32 levels between /32 and /128 leaves one piece at most per hole.
        assert!(out.len() <= 16 + 96, "{}", out.len());
        assert_eq!(p("::/0").subtract(&[p("::/0")]), vec![]);
        assert_eq!(base.subtract(&[p("fd00:11::/32")]), vec![base]);
    }

    #[test]
    fn the_families_never_mix() {
        let v4 = p("0.0.0.0/0");
        let v6 = p("::/0");
        assert!(!v4.contains("::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(!v4.covers(&v6) && !v6.covers(&v4));
        assert!(!v4.overlaps(&v6));
        assert!(v4 < v6);
        assert_eq!(Prefix::host("fd00::1".parse().unwrap()).render(), "fd00::1");
        assert_eq!(p("fd00::/64").render(), "fd00::/64");
        assert_eq!(
            p("fd00::/64").last().to_string(),
            "fd00::ffff:ffff:ffff:ffff"
        );
        assert_eq!(Prefix::everything(true), v6);
    }
}
