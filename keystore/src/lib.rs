//! The key-state model of gemini-proxy and the stores that hold it.
//!
//! This crate is the one contract between the operator and the proxies:
//! - [`snapshot::GroupSnapshot`]: a group (upstream, keys with their secrets, rotation, access,
//!   retries), published as a whole with a version;
//! - [`state::KeyStatus`] and [`state::Transition`]: a key's cooldowns (per model or key-wide)
//!   and retirement, changed atomically;
//! - [`health::HealthReport`]: each proxy's view of its keys, with a time to live;
//! - [`rate`]: scheduling counters (project quotas, client allowances) shared by proxies;
//! - [`store::Binding`]: which key created a file, cache, batch or upload session (affinity);
//! - [`audit::AuditEvent`]: the trail of key lifecycle changes;
//! - [`store::KeyStore`]: the interface, implemented by [`memory::MemoryStore`] (one process)
//!   and [`redis_store::RedisStore`] (many pods; its module documents the layout).
//!
//! A key is known everywhere by its [`secret::KeyId`]; its value is a [`secret::Secret`] that never
//! prints itself.

#![forbid(unsafe_code)]

pub mod audit;
pub mod clock;
pub mod health;
pub mod memory;
pub mod pacific;
pub mod rate;
pub mod redis_store;
pub mod secret;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod usage;

pub use audit::{AuditEvent, AuditKind};
pub use health::{HealthReport, KeyHealth};
pub use memory::MemoryStore;
pub use rate::{RateCounts, RateDelta, RateWindow};
pub use redis_store::{EncryptionKey, RedisConfig, RedisStore, RedisTarget};
pub use secret::{KeyId, Secret, TokenDigest};
pub use snapshot::{
    AccessMode, AccessSpec, ClientEntry, ClientLimits, GroupSnapshot, KeyEntry, QuotaLimits,
    RetrySpec, RotationStrategy, UpstreamSpec,
};
pub use state::{Cooldown, CooldownReason, InvalidReason, KeyState, KeyStatus, Transition};
pub use store::{Binding, BoxFuture, KeyStore, StoreError, StoreEvent};
pub use usage::{Counter, UsageCounts, UsageDelta, UsageWindow};
