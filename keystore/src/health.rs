//! Per-key health as one proxy saw it, reported to the store with a time to live.

use serde::{Deserialize, Serialize};

use crate::secret::KeyId;

/// One proxy's view of one key since it started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyHealth {
    pub id: KeyId,
    /// 0.0 (failing) to 1.0 (healthy), from recent outcomes.
    pub score: f64,
    pub requests: u64,
    pub failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What one proxy reports for one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    pub proxy_id: String,
    pub group: String,
    pub at_ms: u64,
    pub keys: Vec<KeyHealth>,
}
