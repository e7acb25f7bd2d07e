//! Turning library errors into CNI errors: the one place codes are chosen.

use podnet_cni_spec::{code, CniError};

/// A failed link, address or route change (code 100).
pub fn netlink(e: podnet_netlink::Error, next: &str) -> CniError {
    CniError::new(code::NETLINK, e.to_string(), next)
}

/// An IPAM failure: exhaustion is 102, storage problems 103.
pub fn ipam(e: podnet_ipam::Error) -> CniError {
    let c = match e {
        podnet_ipam::Error::Exhausted { .. } => code::IPAM_EXHAUSTED,
        podnet_ipam::Error::Busy { .. } => code::TRY_AGAIN,
        podnet_ipam::Error::Pool { .. } => code::INVALID_CONFIG,
        _ => code::IPAM_STORE,
    };
    CniError::new(c, e.to_string(), "")
}

/// Opening the pod's namespace: a missing one is code 3 (the runtime need not clean
/// up), anything else code 104.
pub fn netns(e: podnet_netlink::Error, path: &str) -> CniError {
    if e.is_not_found() {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("network namespace {path} does not exist"),
            "the container is gone or CNI_NETNS is wrong; nothing was changed",
        )
    } else {
        CniError::new(
            code::NETNS,
            e.to_string(),
            "CNI_NETNS must name a network namespace file such as /run/netns/NAME or /proc/PID/ns/net",
        )
    }
}

/// Appends rollback notes to an error's details.
pub fn with_notes(mut e: CniError, notes: &[String]) -> CniError {
    if !notes.is_empty() {
        let extra = format!("rollback: {}", notes.join("; "));
        e.details = if e.details.is_empty() {
            extra
        } else {
            format!("{}; {extra}", e.details)
        };
    }
    e
}
