//! Traffic the lab sends between its own namespaces: the connectivity matrix
//! ([`reach`]), raw SCTP probes ([`sctp`]: this kernel has no SCTP sockets) and the
//! TCP/UDP/ICMP probes run inside a pod ([`probe`]).

pub mod probe;
pub mod reach;
pub mod sctp;
