//! Group snapshots: publish (one script: version, fingerprint, sealed data), remove, list and
//! read them; a snapshot that does not authenticate is refused (see [`super::crypto`]).

use super::*;

impl RedisStore {
    pub(super) async fn load_group(&self, name: &str) -> Result<Option<GroupSnapshot>, StoreError> {
        let key = self.group_key(name, "group");
        let fields: HashMap<String, String> = self
            .run(|mut c| async move { c.hgetall(&key).await })
            .await?;
        let (Some(version), Some(data)) = (fields.get("version"), fields.get("data")) else {
            return Ok(None);
        };
        let version = version.parse().map_err(corrupt)?;
        codec::decode(name, data, version, &self.sealer).map(Some)
    }

    pub(super) async fn publish_group(&self, snapshot: GroupSnapshot) -> Result<u64, StoreError> {
        check_name(&snapshot.name)?;
        // For the audit trail: which keys come and go (recorded only by the publish that
        // changed the group). A group that cannot be read (another encryption key) counts
        // as new.
        // A stored value that does not authenticate (forged, moved, an older format) is
        // rewritten even when its fingerprint claims it is current.
        let (old, force) = match self.load_group(&snapshot.name).await {
            Ok(old) => (old, "0"),
            Err(StoreError::Corrupt(_)) => (None, "1"),
            Err(e) => return Err(e),
        };
        let data = codec::encode(&snapshot, &self.sealer)?;
        let mut inv = self.publish_script.prepare_invoke();
        inv.key(self.group_key(&snapshot.name, "group"))
            .key(self.group_key(&snapshot.name, "keys"))
            .arg(codec::fingerprint(&snapshot))
            .arg(data)
            .arg(self.channel())
            .arg(&snapshot.name)
            .arg(force);
        for k in &snapshot.keys {
            inv.arg(k.id.as_str());
        }
        let (version, changed): (u64, u8) = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let index = self.index_key("groups");
        let name = snapshot.name.clone();
        self.run(|mut c| async move { c.sadd::<_, _, ()>(&index, &name).await })
            .await?;
        if changed == 1 {
            // A group made again under a removed one's name keeps its trail.
            let trail = self.group_key(&snapshot.name, "audit");
            self.run(|mut c| async move { c.persist::<_, ()>(&trail).await })
                .await?;
        }
        // The diff holds only when nobody published in between.
        let consecutive = match &old {
            Some(o) => o.version + 1 == version,
            None => version == 1,
        };
        if changed == 1 && consecutive {
            let mut published = snapshot;
            published.version = version;
            let changes = audit::key_changes(old.as_ref(), Some(&published), "publish", now_ms());
            self.append_audit(changes).await?;
        }
        Ok(version)
    }

    pub(super) async fn remove_group(&self, name: &str) -> Result<(), StoreError> {
        check_name(name)?;
        if let Ok(Some(old)) = self.load_group(name).await {
            let changes = audit::key_changes(Some(&old), None, "publish", now_ms());
            self.append_audit(changes).await?;
        }
        // The trail outlives the group for a day, for whoever reports on it.
        let trail = self.group_key(name, "audit");
        self.run(|mut c| async move { c.expire::<_, ()>(&trail, 86_400).await })
            .await?;
        let keys = vec![
            self.group_key(name, "group"),
            self.group_key(name, "keys"),
            self.group_key(name, "health"),
        ];
        let index = self.index_key("groups");
        let channel = self.channel();
        let event = serde_json::json!({"type": "removed", "name": name}).to_string();
        self.run(|mut c| async move {
            c.del::<_, ()>(&keys).await?;
            c.srem::<_, _, ()>(&index, name).await?;
            c.publish::<_, _, ()>(&channel, event).await
        })
        .await
    }

    pub(super) async fn group_names(&self) -> Result<Vec<String>, StoreError> {
        let index = self.index_key("groups");
        self.run(|mut c| async move { c.smembers(&index).await })
            .await
    }

    pub(super) async fn groups(&self) -> Result<Vec<GroupSnapshot>, StoreError> {
        let index = self.index_key("groups");
        let mut names: Vec<String> = self
            .run(|mut c| async move { c.smembers(&index).await })
            .await?;
        // A namespace's key reads its namespace's groups; the others are not its business.
        names.retain(|n| self.sealer.reads(n));
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        let mut refused = Vec::new();
        for n in names {
            match self.load_group(&n).await {
                Ok(Some(g)) => out.push(g),
                Ok(None) => {}
                // One unreadable or unauthenticated group (another state key, a damaged or
                // forged value) is refused; it must not take the others down with it.
                Err(StoreError::Corrupt(e)) => {
                    tracing::error!(group = %n, error = %e, "group refused: its snapshot in the store cannot be trusted or read");
                    refused.push((n, e));
                }
                Err(e) => return Err(e),
            }
        }
        let last = refused.last().map(|(_, e)| e.clone());
        if let Ok(mut r) = self.refused.lock() {
            *r = refused;
        }
        match (out.is_empty(), last) {
            (true, Some(e)) => Err(StoreError::Corrupt(e)),
            _ => Ok(out),
        }
    }
}
