//! Key states of a group: read them, and apply transitions in one script per group.

use super::*;

impl RedisStore {
    pub(super) async fn key_statuses(
        &self,
        group: &str,
    ) -> Result<HashMap<KeyId, KeyStatus>, StoreError> {
        let key = self.group_key(group, "keys");
        let raw: HashMap<String, String> = self
            .run(|mut c| async move { c.hgetall(&key).await })
            .await?;
        raw.into_iter()
            .map(|(id, st)| {
                Ok((
                    KeyId::from_raw(id),
                    serde_json::from_str(&st).map_err(corrupt)?,
                ))
            })
            .collect()
    }

    pub(super) async fn transition(
        &self,
        group: &str,
        keys: &[KeyId],
        transition: &Transition,
        origin: &str,
    ) -> Result<Vec<(KeyId, KeyStatus)>, StoreError> {
        check_name(group)?;
        let mut inv = self.transition_script.prepare_invoke();
        inv.key(self.group_key(group, "keys"))
            .arg(now_ms())
            .arg(serde_json::to_string(transition).map_err(corrupt)?)
            .arg(origin)
            .arg(self.channel())
            .arg(group);
        for k in keys {
            inv.arg(k.as_str());
        }
        let raw: String = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let changes: Vec<(String, String)> = serde_json::from_str(&raw).map_err(corrupt)?;
        Ok(parse_changes(&changes))
    }
}

pub(super) fn parse_changes(raw: &[(String, String)]) -> Vec<(KeyId, KeyStatus)> {
    raw.iter()
        .filter_map(|(id, st)| Some((KeyId::from_raw(id.clone()), serde_json::from_str(st).ok()?)))
        .collect()
}
