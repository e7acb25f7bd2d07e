//! Building and reading netlink messages: a header, a fixed family header, then
//! type-length-value attributes, each padded to four bytes.

use crate::sys::*;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink request under construction. The sequence number is set when sent.
#[derive(Clone, Debug)]
pub struct Msg {
    pub(crate) buf: Vec<u8>,
}

impl Msg {
    /// A message of type `ty` with `flags` (NLM_F_REQUEST is always added).
    pub fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        Msg { buf }
    }

    /// Appends the family-specific fixed header (ifinfomsg, rtmsg, nfgenmsg…).
    pub fn fixed(mut self, hdr: &[u8]) -> Msg {
        self.buf.extend_from_slice(hdr);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn msg_type(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    pub(crate) fn add_flags(&mut self, f: u16) {
        let v = self.flags() | f;
        self.buf[6..8].copy_from_slice(&v.to_ne_bytes());
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn u8(&mut self, ty: u16, v: u8) -> &mut Msg {
        self.attr(ty, &[v])
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A big-endian u32 (nftables encodes all its integers this way).
    pub fn be32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Opens a nested attribute; close it with [`Msg::end`].
    pub fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub fn end(&mut self, at: usize) -> &mut Msg {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Sets length and sequence number; returns the wire bytes.
    pub(crate) fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// Iterates over the attributes in `buf`, yielding `(type, payload)`; the type has
/// the nested and byte-order flags masked off.
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            return None;
        }
        let payload = &self.buf[4..len];
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some((ty, payload))
    }
}

/// Finds the first attribute of type `ty`.
pub fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

pub fn as_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

pub fn as_be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

pub fn as_be64(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

/// A NUL-terminated (or not) string attribute.
pub fn as_str(p: &[u8]) -> String {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_nested_attributes() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_ACK).fixed(&[0u8; 16]);
        m.str(IFLA_IFNAME, "pn0");
        let n = m.nest(IFLA_LINKINFO);
        m.str(IFLA_INFO_KIND, "veth");
        m.end(n);
        m.u32(IFLA_MTU, 1450);
        let wire = m.finish(7).to_vec();
        assert_eq!(
            u32::from_ne_bytes(wire[0..4].try_into().unwrap()) as usize,
            wire.len()
        );
        assert_eq!(u32::from_ne_bytes(wire[8..12].try_into().unwrap()), 7);
        assert_eq!(m.flags() & NLM_F_REQUEST, NLM_F_REQUEST);
        let body = &wire[NLMSG_HDRLEN + 16..];
        let got: Vec<u16> = attrs(body).map(|(t, _)| t).collect();
        assert_eq!(got, vec![IFLA_IFNAME, IFLA_LINKINFO, IFLA_MTU]);
        assert_eq!(as_str(find(body, IFLA_IFNAME).unwrap()), "pn0");
        let info = find(body, IFLA_LINKINFO).unwrap();
        assert_eq!(as_str(find(info, IFLA_INFO_KIND).unwrap()), "veth");
        assert_eq!(as_u32(find(body, IFLA_MTU).unwrap()), Some(1450));
    }

    #[test]
    fn truncated_attributes_stop_iteration() {
        let bad = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(attrs(&bad).count(), 0);
    }
}
