//! Privileged integration tests: real namespaces, real veths, the real podnet-cni
//! binary invoked as a runtime would. Each test makes its own uniquely named node and
//! pod namespaces and data directory, and removes them on drop, also on failure, so
//! tests run in parallel without colliding. They must run as root.

mod attack;
mod budget;
mod chain;
mod common;
mod datapath;
mod drift;
mod dual_stack;
mod errors;
mod fastpath;
mod host_gw6;
mod ipam;
mod kubernetes;
mod lab;
mod masquerade;
mod observe;
mod podman;
mod policy;
mod policy_changes;
mod policy_datapath;
mod real_nodes;
mod real_services;
mod semantics;
mod services;
mod trace;
mod trace_ipv6;
mod underlay6;
mod upgrade;
mod verbs;
mod wireguard;
