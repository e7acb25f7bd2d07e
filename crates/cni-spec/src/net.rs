//! The address types, from `podnet-conventions` (one CIDR type for every program).

pub use podnet_conventions::net::*;
