//! The shared test kit of gemini-proxy: a mock Gemini upstream that speaks the real wire format
//! ([`wire`], [`mock`]), a loopback HTTP client that can time stream frames ([`client`]), the
//! proxy binary as a child process ([`process`]) and egress proxies ([`egress`]).
//! The benchmark uses the same mock (`mock-gemini` binary).

#![forbid(unsafe_code)]

pub mod client;
pub mod egress;
pub mod mock;
pub mod process;
pub mod redis;
pub mod tls;
pub mod wire;

pub use client::{Client, Reply};
pub use mock::{Behaviour, MockGemini};
pub use process::ProxyProcess;
pub use wire::Quota;
