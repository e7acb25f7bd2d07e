//! The agent's local API as types: every request and every reply, shared by podnetd
//! (which serves them) and every client (the `podnet` tool, the lab, the tests),
//! through the one [`Client`]. This crate is the boundary: it holds data and the
//! client, nothing of the agent (no eBPF loader, no WireGuard, no async runtime), so a
//! client compiles without them.
//!
//! On the wire: one JSON object per line each way. A request is
//! `{"v":1,"get":"<kind>",…}` ([`Request`]); `v` is [`API_VERSION`] (absent means 1). An
//! agent refuses a version it does not speak, with an error that says which it does. A
//! refused request is answered `{"error":"…"}` ([`ErrorReply`]).

mod client;
mod events;
mod node;
mod policy;
pub mod probe;
mod reply;
mod request;
mod service;
mod status;

pub use client::{Client, ClientError};
pub use events::Event;
pub use node::*;
pub use policy::*;
pub use reply::*;
pub use request::{parse_request, Request, API_VERSION};
pub use service::*;
pub use status::*;
