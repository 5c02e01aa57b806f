//! The state of one key: invalid or not, and its cooldowns.
//!
//! Quotas are per project *and per model*, so a cooldown carries the model it applies to when
//! Google named one (`quotaDimensions.model`); a cooldown without a model covers the whole key.
//! A key can therefore be cooling for `gemini-2.5-pro` (daily quota spent) while it still serves
//! `gemini-2.5-flash`.

use serde::{Deserialize, Serialize};

/// Why a key is cooling down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CooldownReason {
    /// A per-minute quota (requests or tokens) is spent.
    PerMinuteQuota,
    /// A per-day quota is spent: it resets at midnight Pacific for every key of the project.
    PerDayQuota,
    /// A 429 that said nothing about which quota: a short, growing backoff.
    RateLimited,
    /// The key keeps failing at the network level or the model is overloaded.
    Overloaded,
}

impl CooldownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerMinuteQuota => "PerMinuteQuota",
            Self::PerDayQuota => "PerDayQuota",
            Self::RateLimited => "RateLimited",
            Self::Overloaded => "Overloaded",
        }
    }
}

/// Why a key was retired. Retired keys are not used again until their Secret or config changes
/// (a new value is a new key id) or someone recovers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InvalidReason {
    /// 400 `API_KEY_INVALID`: not valid, not found or expired.
    ApiKeyInvalid,
    /// 403 "Your API key was reported as leaked".
    Leaked,
    /// 403 `API_KEY_SERVICE_BLOCKED`.
    ServiceBlocked,
    /// 403 `SERVICE_DISABLED`: the Generative Language API is not enabled in the key's project.
    ServiceDisabled,
    /// 403 `CONSUMER_SUSPENDED`.
    Suspended,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKeyInvalid => "ApiKeyInvalid",
            Self::Leaked => "Leaked",
            Self::ServiceBlocked => "ServiceBlocked",
            Self::ServiceDisabled => "ServiceDisabled",
            Self::Suspended => "Suspended",
        }
    }
}

/// A key may not serve `model` (or any model, when `model` is `None`) before `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cooldown {
    pub until_ms: u64,
    pub reason: CooldownReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Cooldown {
    /// Whether this cooldown stops a request for `model` at `now_ms`.
    pub fn blocks(&self, model: Option<&str>, now_ms: u64) -> bool {
        now_ms < self.until_ms
            && match (&self.model, model) {
                (None, _) => true,
                (Some(m), Some(req)) => m == req,
                // A request whose model is unknown is not held back by a model's cooldown.
                (Some(_), None) => false,
            }
    }
}

/// A change of a key's state. Applying one is idempotent and commutative enough that two
/// proxies cooling the same key end in the same state (the later `until` wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Transition {
    Cool(Cooldown),
    Retire {
        reason: InvalidReason,
    },
    /// Clears cooldowns and retirement (a person or the operator vouches for the key).
    Recover,
}

/// What the store keeps per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<InvalidReason>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cooldowns: Vec<Cooldown>,
    /// When the last transition was applied (Unix ms); the newer of two versions wins.
    #[serde(default)]
    pub updated_ms: u64,
}

impl KeyStatus {
    /// Applies `t` at `now_ms`; returns whether anything changed.
    pub fn apply(&mut self, t: &Transition, now_ms: u64) -> bool {
        self.prune(now_ms);
        let changed = match t {
            Transition::Cool(c) => self.merge_cooldown(c.clone()),
            Transition::Retire { reason } => {
                let changed = self.invalid != Some(*reason);
                self.invalid = Some(*reason);
                changed
            }
            Transition::Recover => {
                let changed = self.invalid.is_some() || !self.cooldowns.is_empty();
                self.invalid = None;
                self.cooldowns.clear();
                changed
            }
        };
        if changed {
            self.updated_ms = now_ms;
        }
        changed
    }

    fn merge_cooldown(&mut self, c: Cooldown) -> bool {
        match self.cooldowns.iter_mut().find(|x| x.model == c.model) {
            Some(existing) if existing.until_ms >= c.until_ms => false,
            Some(existing) => {
                *existing = c;
                true
            }
            None => {
                self.cooldowns.push(c);
                true
            }
        }
    }

    /// Drops cooldowns that have run out.
    pub fn prune(&mut self, now_ms: u64) {
        self.cooldowns.retain(|c| c.until_ms > now_ms);
    }

    /// The summary state shown in status and metrics.
    pub fn state(&self, disabled: bool, now_ms: u64) -> KeyState {
        if disabled {
            return KeyState::Disabled;
        }
        if let Some(reason) = self.invalid {
            return KeyState::Invalid { reason };
        }
        // A key-wide cooldown first, else the longest model cooldown.
        let active = self.cooldowns.iter().filter(|c| c.until_ms > now_ms);
        let pick = active
            .clone()
            .filter(|c| c.model.is_none())
            .max_by_key(|c| c.until_ms)
            .or_else(|| active.max_by_key(|c| c.until_ms));
        match pick {
            Some(c) => KeyState::CoolingDown {
                until_ms: c.until_ms,
                reason: c.reason,
                model: c.model.clone(),
            },
            None => KeyState::Active,
        }
    }
}

/// The state of a key in one word and its details (see "Keys and key states" in
/// docs/architecture.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state")]
pub enum KeyState {
    Active,
    CoolingDown {
        #[serde(rename = "untilMs")]
        until_ms: u64,
        reason: CooldownReason,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    Invalid {
        reason: InvalidReason,
    },
    Disabled,
}

impl KeyState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::CoolingDown { .. } => "CoolingDown",
            Self::Invalid { .. } => "Invalid",
            Self::Disabled => "Disabled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cool(until_ms: u64, model: Option<&str>) -> Transition {
        Transition::Cool(Cooldown {
            until_ms,
            reason: CooldownReason::PerMinuteQuota,
            model: model.map(str::to_owned),
        })
    }

    #[test]
    fn later_cooldown_wins_and_earlier_is_a_no_op() {
        let mut s = KeyStatus::default();
        assert!(s.apply(&cool(2_000, None), 1_000));
        assert!(!s.apply(&cool(1_500, None), 1_000));
        assert!(s.apply(&cool(3_000, None), 1_100));
        assert_eq!(s.cooldowns.len(), 1);
        assert_eq!(s.cooldowns[0].until_ms, 3_000);
        assert_eq!(s.updated_ms, 1_100);
    }

    #[test]
    fn model_cooldowns_are_separate_and_scoped() {
        let mut s = KeyStatus::default();
        s.apply(&cool(5_000, Some("gemini-2.5-pro")), 0);
        assert!(s.cooldowns[0].blocks(Some("gemini-2.5-pro"), 10));
        assert!(!s.cooldowns[0].blocks(Some("gemini-2.5-flash"), 10));
        assert!(!s.cooldowns[0].blocks(None, 10));
        s.apply(&cool(4_000, Some("gemini-2.5-flash")), 0);
        assert_eq!(s.cooldowns.len(), 2);
        assert!(matches!(
            s.state(false, 10),
            KeyState::CoolingDown {
                until_ms: 5_000,
                ..
            }
        ));
    }

    #[test]
    fn expired_cooldowns_go_and_state_becomes_active() {
        let mut s = KeyStatus::default();
        s.apply(&cool(2_000, None), 1_000);
        assert_eq!(s.state(false, 2_000), KeyState::Active);
        s.prune(2_000);
        assert!(s.cooldowns.is_empty());
    }

    #[test]
    fn retire_recover_and_disabled_precedence() {
        let mut s = KeyStatus::default();
        assert!(s.apply(
            &Transition::Retire {
                reason: InvalidReason::Leaked
            },
            1
        ));
        assert_eq!(
            s.state(false, 2),
            KeyState::Invalid {
                reason: InvalidReason::Leaked
            }
        );
        assert_eq!(s.state(true, 2), KeyState::Disabled);
        assert!(s.apply(&Transition::Recover, 3));
        assert_eq!(s.state(false, 4), KeyState::Active);
        assert!(!s.apply(&Transition::Recover, 5));
    }

    #[test]
    fn state_serialises_with_a_tag() {
        let st = KeyState::CoolingDown {
            until_ms: 7,
            reason: CooldownReason::PerDayQuota,
            model: None,
        };
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"state":"CoolingDown","untilMs":7,"reason":"PerDayQuota"}"#
        );
    }
}
