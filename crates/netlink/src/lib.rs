//! podnet's kernel interface.
//!
//! Everything podnet changes in the kernel goes through this crate, over raw netlink
//! sockets: rtnetlink for links, addresses, routes, neighbours and traffic control
//! ([`link`], [`addr`], [`route`], [`neigh`], [`tc`]), ctnetlink for connection
//! tracking ([`conntrack`]), the `bpf` system call for the datapath ([`bpf`]), and
//! namespace handling in [`netns`]. There are no subprocesses
//! (`ip`, `tc`, `nft`) on any hot path: a CNI ADD must finish in about a millisecond,
//! and an `nft` process alone costs ~2.5 ms.
//!
//! Conventions (see `design/STYLE.md`):
//! - one socket per namespace, opened inside that namespace ([`Socket::open_in`]);
//! - `ensure_*` creates idempotently, `delete_*` treats "not there" as success,
//!   `get_*`/`list_*` only read;
//! - every error names the operation and the object, and keeps the kernel's own
//!   explanation (netlink extended ack) when it gives one.

pub mod addr;
pub mod antispoof;
pub mod bpf;
pub mod conntrack;
pub mod error;
pub mod flows;
pub mod link;
pub mod msg;
pub mod neigh;
pub mod netns;
pub mod route;
pub mod socket;
pub(crate) mod sys;
pub mod tc;

pub use error::{Error, Result};
pub use msg::Msg;
pub use netns::Netns;
pub use socket::Socket;

/// Formats a MAC address the way `ip link` prints it.
pub fn fmt_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mac_roundtrip() {
        let m = super::parse_mac("0a:58:0a:f4:00:05").unwrap();
        assert_eq!(super::fmt_mac(&m), "0a:58:0a:f4:00:05");
        assert!(super::parse_mac("0a:58:0a:f4:00").is_none());
        assert!(super::parse_mac("0a:58:0a:f4:00:05:01").is_none());
        assert!(super::parse_mac("zz:58:0a:f4:00:05").is_none());
    }
}
