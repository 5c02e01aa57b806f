//! Usage counters per key and scope, per minute and per Pacific day.

use super::*;

impl RedisStore {
    pub(super) async fn record_usage(&self, batch: Vec<UsageDelta>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for d in &batch {
            for (window, ttl) in [
                (UsageWindow::minute_of(d.at_ms), 2 * 3600),
                (UsageWindow::day_of(d.at_ms), 3 * 86_400),
            ] {
                let key = self.group_key(&d.group, &format!("usage:{}", window.tag()));
                pipe.hincr(&key, format!("k:{}:req", d.key), d.requests)
                    .ignore();
                pipe.hincr(&key, format!("s:{}:req", d.scope), d.requests)
                    .ignore();
                if d.tokens > 0 {
                    pipe.hincr(&key, format!("k:{}:tok", d.key), d.tokens)
                        .ignore();
                    pipe.hincr(&key, format!("s:{}:tok", d.scope), d.tokens)
                        .ignore();
                }
                pipe.expire(&key, ttl).ignore();
            }
        }
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    pub(super) async fn put_usage_totals(
        &self,
        group: &str,
        proxy: &str,
        totals: Vec<(UsageWindow, UsageCounts)>,
    ) -> Result<(), StoreError> {
        check_name(group)?;
        if totals.is_empty() {
            return Ok(());
        }
        // Two commands per window, whatever the number of keys: one field per proxy holds
        // its running totals (HSET replaces it), readers add the proxies up.
        let mut pipe = redis::pipe();
        for (w, counts) in &totals {
            let key = self.group_key(group, &format!("usage:{}", w.tag()));
            let ttl = match w {
                UsageWindow::Minute(_) => 2 * 3600,
                UsageWindow::Day(_) => 3 * 86_400,
            };
            pipe.hset(&key, format!("p:{proxy}"), counts.encode())
                .ignore();
            pipe.expire(&key, ttl).ignore();
        }
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    pub(super) async fn usage(
        &self,
        group: &str,
        window: &UsageWindow,
    ) -> Result<UsageCounts, StoreError> {
        let key = self.group_key(group, &format!("usage:{}", window.tag()));
        let raw: HashMap<String, String> = self
            .run(|mut c| async move { c.hgetall(&key).await })
            .await?;
        let mut counts = UsageCounts::default();
        add_usage_fields(&mut counts, raw);
        Ok(counts)
    }

    pub(super) async fn usage_sum(
        &self,
        group: &str,
        windows: &[UsageWindow],
    ) -> Result<UsageCounts, StoreError> {
        let mut counts = UsageCounts::default();
        if windows.is_empty() {
            return Ok(counts);
        }
        // One pipeline: the windows of a group share its hash tag (one Cluster slot).
        let mut pipe = redis::pipe();
        for w in windows {
            pipe.hgetall(self.group_key(group, &format!("usage:{}", w.tag())));
        }
        let raws: Vec<HashMap<String, String>> = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        for raw in raws {
            add_usage_fields(&mut counts, raw);
        }
        Ok(counts)
    }
}

/// Lines read from one proxy's usage totals at most (a key and a scope line per key).
const USAGE_LINES_MAX: usize = 2 * 100_000;

/// Adds a usage hash's fields to `counts`: per-proxy totals (`p:PROXY`, see
/// [`UsageCounts::encode`]) and single counters (`k:ID:req`, `s:SCOPE:tok`, ...).
fn add_usage_fields(counts: &mut UsageCounts, raw: HashMap<String, String>) {
    for (field, value) in raw {
        if field.starts_with("p:") {
            counts.add_encoded(&value, USAGE_LINES_MAX);
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            continue;
        };
        let Some((kind, rest)) = field.split_once(':') else {
            continue;
        };
        let Some((name, what)) = rest.rsplit_once(':') else {
            continue;
        };
        let counter: &mut Counter = match kind {
            "k" => counts.keys.entry(KeyId::from_raw(name)).or_default(),
            "s" => counts.scopes.entry(name.to_owned()).or_default(),
            _ => continue,
        };
        match what {
            "req" => counter.requests += n,
            "tok" => counter.tokens += n,
            _ => {}
        }
    }
}
