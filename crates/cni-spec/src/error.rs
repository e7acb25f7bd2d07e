//! CNI errors: the one place where a failure becomes the JSON a runtime reads.
//!
//! The spec reserves codes 1–99; podnet's own codes start at 100 and are listed in the
//! README. Every message says what failed, on which object, and what to do next.

use serde_json::json;
use std::fmt;

/// Error codes: the spec's well-known ones and podnet's own (≥ 100).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (the runtime need not call DEL).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin can serve ADD, with limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    /// The kernel refused a link, address or route change (rtnetlink).
    pub const NETLINK: u32 = 100;
    /// The kernel refused the anti-spoofing filters (tc).
    pub const ANTISPOOF: u32 = 101;
    /// The pod address range has no free address left.
    pub const IPAM_EXHAUSTED: u32 = 102;
    /// The IPAM state on disk could not be read or written.
    pub const IPAM_STORE: u32 = 103;
    /// The pod's network namespace could not be entered or is not a network namespace.
    pub const NETNS: u32 = 104;
    /// CHECK found the pod's network different from what ADD made.
    pub const CHECK_MISMATCH: u32 = 105;
    /// The delegated IPAM plugin failed or could not be run.
    pub const DELEGATE: u32 = 106;
    /// An interface that ADD must create already exists in the pod.
    pub const INTERFACE_EXISTS: u32 = 107;
    /// Anything not classified above; the message says what happened.
    pub const INTERNAL: u32 = 999;
}

/// A CNI error as defined by the spec: a code, a short message and details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the runtime reads it on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (code {})", self.msg, self.code)
        } else {
            write!(f, "{}: {} (code {})", self.msg, self.details, self.code)
        }
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = CniError::new(code::INVALID_CONFIG, "bad subnet", "use a.b.c.d/n");
        let v = e.to_json("1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["msg"], "bad subnet");
        assert_eq!(v["details"], "use a.b.c.d/n");
        let bare = CniError::new(code::TRY_AGAIN, "busy", "").to_json("1.1.0");
        assert!(bare.get("details").is_none());
    }
}
