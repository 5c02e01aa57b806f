//! Health reports per proxy and group, and the proxies' heartbeats, each with an expiry.

use super::*;

impl RedisStore {
    pub(super) async fn report_health(
        &self,
        report: HealthReport,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.group_key(&report.group, "health");
        let field = report.proxy_id.clone();
        let value = serde_json::to_string(&StoredHealth {
            expires_ms: now_ms() + ttl.as_millis() as u64,
            report,
        })
        .map_err(corrupt)?;
        self.run(|mut c| async move { c.hset::<_, _, _, ()>(&key, field, value).await })
            .await
    }

    pub(super) async fn health_reports(
        &self,
        group: &str,
    ) -> Result<Vec<HealthReport>, StoreError> {
        let key = self.group_key(group, "health");
        let k2 = key.clone();
        let raw: HashMap<String, String> = self
            .run(|mut c| async move { c.hgetall(&k2).await })
            .await?;
        let now = now_ms();
        let mut live = Vec::new();
        let mut expired = Vec::new();
        for (proxy, v) in raw {
            match serde_json::from_str::<StoredHealth>(&v) {
                Ok(h) if h.expires_ms > now => live.push(h.report),
                _ => expired.push(proxy),
            }
        }
        if !expired.is_empty() {
            self.run(|mut c| async move { c.hdel::<_, _, ()>(&key, expired).await })
                .await?;
        }
        live.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        Ok(live)
    }

    pub(super) async fn heartbeat(&self, proxy_id: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = self.index_key("proxies");
        let expires = now_ms() + ttl.as_millis() as u64;
        self.run(|mut c| async move { c.hset::<_, _, _, ()>(&key, proxy_id, expires).await })
            .await
    }

    pub(super) async fn live_proxies(&self) -> Result<Vec<String>, StoreError> {
        let key = self.index_key("proxies");
        let k2 = key.clone();
        let raw: HashMap<String, u64> = self
            .run(|mut c| async move { c.hgetall(&k2).await })
            .await?;
        let now = now_ms();
        let (mut live, dead): (Vec<_>, Vec<_>) = raw.into_iter().partition(|(_, e)| *e > now);
        if !dead.is_empty() {
            let dead: Vec<String> = dead.into_iter().map(|(p, _)| p).collect();
            self.run(|mut c| async move { c.hdel::<_, _, ()>(&key, dead).await })
                .await?;
        }
        live.sort();
        Ok(live.into_iter().map(|(p, _)| p).collect())
    }
}

#[derive(serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StoredHealth {
    expires_ms: u64,
    report: HealthReport,
}
