//! IPv4 prefixes as policy sees them: `ipBlock` CIDRs (host bits allowed and
//! cleared, as Kubernetes reads them), pod addresses as /32, and `except` subtracted
//! into a list of disjoint prefixes — the form an LPM trie or an nftables interval
//! set holds.

use std::net::IpAddr;

/// A policy prefix is the one CIDR type every program uses.
pub use podnet_conventions::Ipv4Net as Prefix;

pub fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// A CIDR as `ipBlock` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4(Prefix),
    /// Valid, but it never matches: podnet's pod network is IPv4.
    V6,
}

/// Parses `a.b.c.d/n` or an IPv6 CIDR; host bits may be set (they are cleared).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, l) = s.split_once('/').ok_or_else(|| {
        format!("{s:?} is not a CIDR: write it as address/length, e.g. 10.0.0.0/24")
    })?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR: {a:?} is not an IP address"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR: {l:?} is not a prefix length"))?;
    match addr {
        IpAddr::V4(v4) if len <= 32 => Ok(Cidr::V4(Prefix::truncating(v4, len))),
        IpAddr::V6(_) if len <= 128 => Ok(Cidr::V6),
        _ => Err(format!(
            "{s:?} is not a CIDR: prefix length {len} is too long"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        match parse_cidr(s).unwrap() {
            Cidr::V4(p) => p,
            Cidr::V6 => panic!("v6"),
        }
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
        assert_eq!(parse_cidr("fd00::/64").unwrap(), Cidr::V6);
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
