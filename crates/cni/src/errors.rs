//! Turning library errors into CNI errors: the one place codes are chosen.

use podnet_cni_spec::{code, CniError};

/// A failed link, address or route change (code 100).
pub fn netlink(e: podnet_netlink::Error, next: &str) -> CniError {
    CniError::new(code::NETLINK, e.to_string(), next)
}

/// An IPAM failure: exhaustion is 102, storage problems 103.
pub fn ipam(e: podnet_ipam::Error) -> CniError {
    use podnet_ipam::Error as E;
    let (c, next) = match e {
        E::Exhausted { .. } => (code::IPAM_EXHAUSTED, ""),
        E::Busy { .. } => (code::TRY_AGAIN, ""),
        E::Pool { .. } => (
            code::INVALID_CONFIG,
            "fix \"subnet\" or \"gateway\" in the network configuration",
        ),
        E::Corrupt { .. } => (code::IPAM_STORE, ""),
        E::Requested { .. } => (code::INVALID_CONFIG, ""),
        E::Dir { .. } | E::Lock { .. } | E::Read { .. } | E::Write { .. } => (
            code::IPAM_STORE,
            "dataDir must be on a local, writable filesystem; check free space and permissions",
        ),
    };
    CniError::new(c, e.to_string(), next)
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
