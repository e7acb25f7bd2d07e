//! Benchmarks, each against a baseline measured in the same run: the CNI plugin against
//! the reference plugins ([`cni`]), the datapath against a plain veth pair and a
//! Flannel-style peer ([`datapath`]), NetworkPolicy against no policy ([`policy`]).

pub mod cni;
pub mod datapath;
pub mod policy;
