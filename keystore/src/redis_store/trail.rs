//! The key lifecycle trail of a group: a capped stream.

use super::*;

impl RedisStore {
    pub(super) async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in &events {
            check_name(&e.group)?;
            let json = serde_json::to_string(e).map_err(corrupt)?;
            pipe.xadd_maxlen(
                self.group_key(&e.group, "audit"),
                redis::streams::StreamMaxlen::Approx(audit::KEEP),
                "*",
                &[("e", json)],
            )
            .ignore();
        }
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    pub(super) async fn audit(
        &self,
        group: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<Vec<(String, AuditEvent)>, StoreError> {
        check_name(group)?;
        let key = self.group_key(group, "audit");
        let start = if cursor.is_empty() {
            "-".to_owned()
        } else {
            format!("({cursor}")
        };
        let reply: redis::streams::StreamRangeReply = self
            .run(|mut c| async move { c.xrange_count(&key, start, "+", limit).await })
            .await?;
        let mut out = Vec::with_capacity(reply.ids.len());
        for entry in reply.ids {
            let Some(json) = entry.get::<String>("e") else {
                continue;
            };
            out.push((entry.id, serde_json::from_str(&json).map_err(corrupt)?));
        }
        Ok(out)
    }
}
