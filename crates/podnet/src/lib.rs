//! The `podnet` command-line tool's library: running CNI plugins the way a runtime
//! does ([`exec`]), scratch namespaces that clean up after themselves ([`scratch`]),
//! the CNI benchmark ([`bench`]) and the single-node demo ([`demo`]).

pub mod apply;
pub mod bench;
pub mod datapath_bench;
pub mod demo;
pub mod doctor;
pub mod exec;
pub mod lab;
pub mod lab_k8s;
pub mod observe_cmd;
pub mod policy_bench;
pub mod policy_cmd;
pub mod probe;
pub mod reach;
pub mod scratch;
pub mod sctp;
pub mod trace;
pub mod wireguard_cmd;

use std::path::PathBuf;

/// Finds a sibling binary (`podnet-cni`, `podnetd`) next to the running executable;
/// test binaries live one directory deeper (`target/<profile>/deps`).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}
