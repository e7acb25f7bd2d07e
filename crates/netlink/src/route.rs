//! IPv4 routes in the main table (`ip route`).

use crate::error::Result;
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use crate::sys::*;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One IPv4 route, as `ip route` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub onlink: bool,
    pub prefsrc: Option<Ipv4Addr>,
}

impl RouteInfo {
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for RouteInfo {
    /// Like `ip route` (with the device shown by index; callers substitute names).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.dst, self.prefix)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

fn rtmsg(prefix: u8, protocol: u8, scope: u8, kind: u8, flags: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = libc::AF_INET as u8;
    h[1] = prefix;
    h[4] = RT_TABLE_MAIN;
    h[5] = protocol;
    h[6] = scope;
    h[7] = kind;
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h
}

/// A route to add.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    /// Route protocol number; podnet marks its own routes so it can find them.
    pub protocol: u8,
}

/// The request for `ip route add DST/PREFIX [via GW] [dev OIF] [onlink]`.
pub fn add_request(r: &RouteSpec) -> Request {
    let scope = if r.gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let flags = if r.onlink { RTNH_F_ONLINK } else { 0 };
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL).fixed(&rtmsg(
        r.prefix,
        r.protocol,
        scope,
        RTN_UNICAST,
        flags,
    ));
    if r.prefix > 0 {
        m.attr(RTA_DST, &r.dst.octets());
    }
    if let Some(gw) = r.gateway {
        m.attr(RTA_GATEWAY, &gw.octets());
    }
    if let Some(oif) = r.oif {
        m.u32(RTA_OIF, oif);
    }
    let mut obj = format!("{}/{}", r.dst, r.prefix);
    if let Some(gw) = r.gateway {
        obj.push_str(&format!(" via {gw}"));
    }
    Request::new(m, "add route", obj)
}

/// The request for `ip -6 route add DST/PREFIX [via GW] dev OIF proto PROTOCOL` (main
/// table): a dual-stack pod's IPv6 routes.
pub fn add6_request(
    dst: Ipv6Addr,
    prefix: u8,
    gateway: Option<Ipv6Addr>,
    oif: u32,
    protocol: u8,
    onlink: bool,
) -> Request {
    let scope = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    let flags = if onlink { RTNH_F_ONLINK } else { 0 };
    let mut h = rtmsg(prefix, protocol, scope, RTN_UNICAST, flags);
    h[0] = libc::AF_INET6 as u8;
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL).fixed(&h);
    if prefix > 0 {
        m.attr(RTA_DST, &dst.octets());
    }
    if let Some(gw) = gateway {
        m.attr(RTA_GATEWAY, &gw.octets());
    }
    m.u32(RTA_OIF, oif);
    let mut obj = format!("{dst}/{prefix}");
    if let Some(gw) = gateway {
        obj.push_str(&format!(" via {gw}"));
    }
    Request::new(m, "add route", obj)
}

/// The request for `ip route del DST/PREFIX [via GW] [dev OIF]` (main table).
pub fn del_request(r: &RouteInfo) -> Request {
    // The protocol is part of the match: podnet never deletes a route it did not make.
    let mut m = Msg::new(RTM_DELROUTE, 0).fixed(&rtmsg(r.prefix, r.protocol, r.scope, r.kind, 0));
    if r.prefix > 0 {
        m.attr(RTA_DST, &r.dst.octets());
    }
    if let Some(gw) = r.gateway {
        m.attr(RTA_GATEWAY, &gw.octets());
    }
    if let Some(oif) = r.oif {
        m.u32(RTA_OIF, oif);
    }
    Request::new(m, "delete route", format!("{}/{}", r.dst, r.prefix))
}

/// `ip route get DST`: the kernel's own route lookup (no packet is sent).
pub fn get(sock: &mut Socket, dst: Ipv4Addr) -> Result<RouteInfo> {
    let mut m = Msg::new(RTM_GETROUTE, 0).fixed(&rtmsg(32, 0, 0, 0, 0));
    m.attr(RTA_DST, &dst.octets());
    let obj = dst.to_string();
    let body = sock.get(m, "look up route to", &obj)?;
    parse(&body).ok_or_else(|| crate::Error::Malformed {
        op: "look up route to",
        obj,
        why: "not an IPv4 route".into(),
    })
}

fn parse(body: &[u8]) -> Option<RouteInfo> {
    if body.len() < 12 || body[0] != libc::AF_INET as u8 {
        return None;
    }
    let flags = u32::from_ne_bytes(body[8..12].try_into().ok()?);
    let mut r = RouteInfo {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: body[1],
        gateway: None,
        oif: None,
        table: body[4] as u32,
        protocol: body[5],
        scope: body[6],
        kind: body[7],
        onlink: flags & RTNH_F_ONLINK != 0,
        prefsrc: None,
    };
    let v4 = |p: &[u8]| (p.len() == 4).then(|| Ipv4Addr::new(p[0], p[1], p[2], p[3]));
    for (ty, p) in msg::attrs(&body[12..]) {
        match ty {
            RTA_DST => r.dst = v4(p)?,
            RTA_GATEWAY => r.gateway = v4(p),
            RTA_OIF => r.oif = msg::as_u32(p),
            RTA_TABLE => r.table = msg::as_u32(p).unwrap_or(r.table),
            RTA_PREFSRC => r.prefsrc = v4(p),
            _ => {}
        }
    }
    Some(r)
}

/// `ip -4 route show table main` (unicast routes only).
pub fn list(sock: &mut Socket) -> Result<Vec<RouteInfo>> {
    let m = Msg::new(RTM_GETROUTE, 0).fixed(&rtmsg(0, 0, 0, 0, 0));
    Ok(sock
        .dump(m, "list routes", "")?
        .iter()
        .filter_map(|b| parse(b))
        .filter(|r| r.table == RT_TABLE_MAIN as u32 && r.kind == RTN_UNICAST)
        .collect())
}

/// One IPv6 route of the main table: what podnet reads back of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route6Info {
    pub dst: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv6Addr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub onlink: bool,
}

/// `ip -6 route show table main` (unicast routes only).
pub fn list6(sock: &mut Socket) -> Result<Vec<Route6Info>> {
    let mut h = rtmsg(0, 0, 0, 0, 0);
    h[0] = libc::AF_INET6 as u8;
    let m = Msg::new(RTM_GETROUTE, 0).fixed(&h);
    let mut out = Vec::new();
    for b in sock.dump(m, "list routes", "")? {
        if b.len() < 12 || b[0] != libc::AF_INET6 as u8 || b[7] != RTN_UNICAST {
            continue;
        }
        let attrs = &b[12..];
        let table = msg::find(attrs, RTA_TABLE)
            .and_then(|t| t.try_into().ok())
            .map(u32::from_ne_bytes)
            .unwrap_or(u32::from(b[4]));
        if table != RT_TABLE_MAIN as u32 {
            continue;
        }
        let v6 = |a: Option<&[u8]>| {
            a.and_then(|a| <[u8; 16]>::try_from(a).ok())
                .map(Ipv6Addr::from)
        };
        out.push(Route6Info {
            dst: v6(msg::find(attrs, RTA_DST)).unwrap_or(Ipv6Addr::UNSPECIFIED),
            prefix: b[1],
            gateway: v6(msg::find(attrs, RTA_GATEWAY)),
            oif: msg::find(attrs, RTA_OIF)
                .and_then(|o| o.try_into().ok())
                .map(u32::from_ne_bytes),
            protocol: b[5],
            onlink: u32::from_ne_bytes(b[8..12].try_into().unwrap()) & RTNH_F_ONLINK != 0,
        });
    }
    Ok(out)
}

/// The request for `ip -6 route del DST/PREFIX [via GW] [dev OIF] proto PROTOCOL` (main
/// table; the protocol is part of the match).
pub fn del6_request(r: &Route6Info) -> Request {
    let mut h = rtmsg(r.prefix, r.protocol, 0, 0, 0);
    h[0] = libc::AF_INET6 as u8;
    let mut m = Msg::new(RTM_DELROUTE, 0).fixed(&h);
    if r.prefix > 0 {
        m.attr(RTA_DST, &r.dst.octets());
    }
    if let Some(gw) = r.gateway {
        m.attr(RTA_GATEWAY, &gw.octets());
    }
    if let Some(oif) = r.oif {
        m.u32(RTA_OIF, oif);
    }
    Request::new(m, "delete route", format!("{}/{}", r.dst, r.prefix))
}
