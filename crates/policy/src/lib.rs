//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) for podnet, with no I/O.
//!
//! - [`objects`]: Namespace, Pod and NetworkPolicy in their API shape.
//! - [`validate`]: what the API server would refuse, with the field named.
//! - [`model`]: the semantics, written once — which policies select a pod, which
//!   peers and ports a rule admits, `policyTypes` defaulting.
//! - [`compile`]: per local pod, one verdict table per direction: open, or the set
//!   of (peer prefix, protocol, port range) admitted. This is what a datapath holds.
//! - [`eval`]: one flow judged straight from the definitions, with the reasons
//!   (`podnet policy explain`); the reference the compiler is tested against.
//!
//! # Semantics, in short
//! A pod is isolated for a direction when some policy in its namespace selects it
//! and governs that direction; then only what one of those policies' rules admits
//! passes, and policies add up. A flow passes when the source's egress and the
//! destination's ingress both admit it. Connection tracking lets the replies of an
//! admitted connection through (the datapath's business, not the model's), and the
//! pod's own node always reaches it (the node's traffic never crosses the hook that
//! filters). Not a pod: no policy of its own; only ipBlocks admit it.

pub mod compile;
pub mod eval;
pub mod model;
pub mod net;
pub mod objects;
pub mod validate;

pub use compile::{compile, Allow, PodTables, Ports, Table};
pub use eval::{evaluate, End, Verdict};
pub use model::{Cluster, Direction, PodInfo, Proto};
pub use objects::Object;

#[cfg(test)]
mod tests;
