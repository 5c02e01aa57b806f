//! gemini-proxy: spreads Gemini API traffic over many API keys.
//!
//! The layers of a request, outside in:
//! - [`app`]: the entry service (proxied requests straight to the forwarder) and the axum
//!   router (probes, metrics);
//! - [`routes`] and [`headers`]: which API a path speaks, the client's token, what goes upstream;
//! - [`registry`]: token to group, from an atomically swapped snapshot;
//! - [`pool`]: key choice per rotation strategy, per-key state and health;
//! - [`forward`]: admit, place, attempt, outcome, answer: one module a phase, with
//!   [`classify`] for upstream answers;
//! - [`upstream`]: a per-thread HTTP/1.1 pool (rustls for `https://`), egress proxies;
//! - [`store_sync`]: the store, off the request path;
//! - [`allocator`]: the memory allocator's settings.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod allocator;
pub mod app;
pub mod classify;
pub mod config;
pub mod envelope;
pub mod forward;
pub mod guardrail;
pub mod headers;
pub mod metrics;
pub mod pool;
#[cfg(test)]
mod proptests;
pub mod quota;
pub mod redact;
pub mod registry;
pub mod reload;
pub mod routes;
pub mod server;
pub mod shared;
pub mod status;
pub mod store_sync;
pub mod tls;
pub mod token_scan;
pub mod upstream;

pub use app::router;
pub use config::Settings;
pub use server::{Proxy, serve};
pub use shared::App;
