//! Scheduling counters per 10-second slot and per day, shared between proxies.

use super::*;

impl RedisStore {
    pub(super) async fn add_rates(
        &self,
        group: &str,
        proxy: &str,
        batch: Vec<RateDelta>,
    ) -> Result<(), StoreError> {
        check_name(group)?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for d in &batch {
            let key = self.group_key(group, &format!("rate:{}", d.window.tag()));
            if d.requests > 0 {
                pipe.hincr(&key, format!("r\t{proxy}\t{}", d.name), d.requests)
                    .ignore();
            }
            if d.tokens > 0 {
                pipe.hincr(&key, format!("t\t{proxy}\t{}", d.name), d.tokens)
                    .ignore();
            }
            pipe.expire(&key, d.window.ttl_secs() as i64).ignore();
        }
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    pub(super) async fn rates(
        &self,
        group: &str,
        windows: &[RateWindow],
        except_proxy: &str,
    ) -> Result<RateCounts, StoreError> {
        check_name(group)?;
        let mut pipe = redis::pipe();
        for w in windows {
            pipe.hgetall(self.group_key(group, &format!("rate:{}", w.tag())));
        }
        let raw: Vec<HashMap<String, u64>> = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        let mut out = RateCounts::new();
        for (w, fields) in windows.iter().zip(raw) {
            let sums = out.entry(w.clone()).or_default();
            for (field, n) in fields {
                let mut parts = field.splitn(3, '\t');
                let (Some(what), Some(proxy), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if proxy == except_proxy {
                    continue;
                }
                let c: &mut Counter = sums.entry(name.to_owned()).or_default();
                match what {
                    "r" => c.requests += n,
                    "t" => c.tokens += n,
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}
