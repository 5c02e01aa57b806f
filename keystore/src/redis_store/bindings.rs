//! Bindings of project-bound resources (files, caches, batches, upload sessions) to the key
//! that created them; an ended binding is announced on the events channel.

use super::*;

impl RedisStore {
    pub(super) async fn bind(
        &self,
        resource: &str,
        binding: &Binding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.binding_key(resource);
        let value = serde_json::to_string(binding).map_err(corrupt)?;
        let ms = ttl.as_millis().max(1) as u64;
        self.run(|mut c| async move { c.pset_ex::<_, _, ()>(&key, value, ms).await })
            .await
    }

    pub(super) async fn unbind(&self, resource: &str) -> Result<(), StoreError> {
        let key = self.binding_key(resource);
        let channel = self.channel();
        let event = serde_json::json!({"type": "unbound", "resource": resource}).to_string();
        self.run(|mut c| async move {
            c.del::<_, ()>(&key).await?;
            c.publish::<_, _, ()>(&channel, event).await
        })
        .await
    }

    pub(super) async fn bound(&self, resource: &str) -> Result<Option<Binding>, StoreError> {
        let key = self.binding_key(resource);
        let raw: Option<String> = self.run(|mut c| async move { c.get(&key).await }).await?;
        raw.map(|r| serde_json::from_str(&r).map_err(corrupt))
            .transpose()
    }
}
