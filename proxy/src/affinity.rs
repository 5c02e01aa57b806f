//! Key affinity: files, resumable upload sessions, cached contents and batches belong to the
//! project whose key created them, so a request that names one goes to a key of that project.
//!
//! The proxy learns who created what from the answers it forwards (the upload start's
//! `X-Goog-Upload-URL`, the final upload answer's `file.name`, the `name` of a new cached content
//! or batch) and keeps it in the store with the resource's lifetime, so every proxy routes alike.
//! Upload sessions are stored by a digest of their id: the session URL is a credential (the SDK
//! sends the chunks with no key at all), so it is kept like one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method};
use keystore::clock::now_ms;
use keystore::{Binding, KeyStore};
use sha2::{Digest, Sha256};

/// Files live 48 hours on Google.
pub const FILE_TTL: Duration = Duration::from_secs(48 * 3600);
/// Batches may run for 48 hours, and their results are fetched after that.
pub const BATCH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A resumable upload session, and a cached content without a readable `expireTime`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(48 * 3600);
/// A store lookup on a request's path gives up after this (the request then routes normally).
/// Writes of bindings (after an answer, off the critical first byte) wait at most this long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Lookups on the request path wait at most this long in all, however many names a request
/// holds (they run concurrently).
pub const PATH_LOOKUP_TIMEOUT: Duration = Duration::from_millis(200);
/// After a store error or timeout, lookups of names not in the cache skip the store this long
/// (and the failed names are remembered as unknown), so a hung store costs one bounded wait,
/// not one per request.
const STORE_TROUBLE_FOR: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 100_000;
/// A name the store does not know is not asked for again for this long.
const MISS_FOR: Duration = Duration::from_secs(5);
/// Names looked up per request at most (a request naming hundreds of files is routed by the
/// first ones).
pub const MAX_NAMES: usize = 8;
/// Longest resource name taken from a request (Google's file, cache and batch names are tens
/// of bytes): longer ones are not looked up or cached, so a client cannot fill memory with
/// made-up names.
pub const MAX_NAME_BYTES: usize = 256;

/// What a successful answer to a request creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creates {
    /// `POST /upload/v1beta/files` with `X-Goog-Upload-Command: start`: a session URL.
    UploadSession,
    /// The final chunk of an upload, or a one-shot (multipart) upload: `{"file": {"name": ...}}`.
    File,
    CachedContent,
    Batch,
}

const X_GOOG_UPLOAD_COMMAND: http::HeaderName =
    http::HeaderName::from_static("x-goog-upload-command");

impl Creates {
    pub fn of(method: &Method, path: &str, headers: &HeaderMap) -> Option<Self> {
        if method != Method::POST {
            return None;
        }
        let command = headers
            .get(X_GOOG_UPLOAD_COMMAND)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if path.starts_with("/upload/") && path.ends_with("/files") {
            return Some(if command.contains("start") {
                Self::UploadSession
            } else {
                Self::File
            });
        }
        if path.ends_with("/cachedContents") {
            return Some(Self::CachedContent);
        }
        if path.ends_with(":batchGenerateContent") || path.ends_with(":asyncBatchEmbedContent") {
            return Some(Self::Batch);
        }
        None
    }
}

/// The id of the upload session a chunk request continues (`?upload_id=`), when the request is
/// a chunk command (`upload`, `finalize`, `query`, `cancel`) sent as `POST` or `PUT` to the
/// upload endpoint itself (`/upload/v1beta/files`, `/upload/v1/files`): the session authorises
/// nothing else, not another path and not another method.
pub fn chunk_of_session<'q>(
    method: &Method,
    path: &str,
    query: Option<&'q str>,
    headers: &HeaderMap,
) -> Option<&'q str> {
    if !matches!(*method, Method::POST | Method::PUT)
        || !matches!(path, "/upload/v1beta/files" | "/upload/v1/files")
    {
        return None;
    }
    let command = headers
        .get(X_GOOG_UPLOAD_COMMAND)
        .and_then(|v| v.to_str().ok())?
        .to_ascii_lowercase();
    let chunk = command
        .split(',')
        .map(str::trim)
        .all(|c| matches!(c, "upload" | "finalize" | "query" | "cancel"));
    if !chunk {
        return None;
    }
    upload_id(path, query)
}

/// The id of the upload session a URL names (`?upload_id=`).
pub fn upload_id<'q>(path: &str, query: Option<&'q str>) -> Option<&'q str> {
    if !path.starts_with("/upload/") {
        return None;
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("upload_id="))
        .filter(|id| !id.is_empty() && id.len() <= MAX_NAME_BYTES)
}

/// The store name of an upload session: a digest, never the id itself.
pub fn session_resource(upload_id: &str) -> String {
    let d = Sha256::digest(upload_id.as_bytes());
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("upload:{hex}")
}

/// The resource a path names: `/v1beta/files/abc`, `/download/v1beta/files/abc:download`,
/// `/v1beta/cachedContents/x`, `/v1beta/batches/y:cancel` → `files/abc` ...
pub fn named_in_path(path: &str) -> Option<&str> {
    let (kind, id) = crate::routes::segment_after(path, &["files", "cachedContents", "batches"])?;
    // `kind/id` lies in `path` right before and including `id`.
    let end = id.as_ptr() as usize - path.as_ptr() as usize + id.len();
    Some(&path[end - id.len() - kind.len() - 1..end]).filter(|n| n.len() <= MAX_NAME_BYTES)
}

/// The resources a request body names: `fileData.fileUri` (a URI or `files/ID`),
/// `cachedContent`, a batch's input `fileName`. Bodies that mention none of those fields are not
/// parsed; the others are read as a stream (no document tree is built, so memory stays at the
/// nesting depth whatever the body's size), keeping at most [`MAX_NAMES`] names.
pub fn named_in_body(body: &[u8]) -> Vec<String> {
    // Every field that can name a resource starts with `"file` or `"cached` (JSON keys are
    // quoted; a quote inside a string is escaped): two fast scans decide whether to parse.
    static FIELDS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
        std::sync::LazyLock::new(|| {
            [b"\"file".as_slice(), b"\"cached"].map(memchr::memmem::Finder::new)
        });
    if !FIELDS.iter().any(|f| f.find(body).is_some()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    // A body that is not JSON names nothing (what it named before the error is dropped too).
    if serde::de::DeserializeSeed::deserialize(body_scan::Walk { out: &mut out }, &mut de).is_err()
    {
        return Vec::new();
    }
    out
}

/// The streaming walk of [`named_in_body`].
mod body_scan {
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

    use super::{MAX_NAME_BYTES, MAX_NAMES};

    /// Numbers, booleans and null name nothing.
    macro_rules! scalars {
        () => {
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
                Ok(())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
                Ok(())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
                Ok(())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
                Ok(())
            }
            fn visit_unit<E: de::Error>(self) -> Result<(), E> {
                Ok(())
            }
        };
    }

    /// Any value: maps and lists are walked, the rest skipped.
    pub struct Walk<'a> {
        pub out: &'a mut Vec<String>,
    }

    /// What a field can name.
    #[derive(Clone, Copy)]
    enum Field {
        File,
        Cache,
        Other,
    }

    struct FieldName;

    impl<'de> DeserializeSeed<'de> for FieldName {
        type Value = Field;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl Visitor<'_> for FieldName {
        type Value = Field;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E: de::Error>(self, k: &str) -> Result<Field, E> {
            Ok(match k {
                "fileUri" | "file_uri" | "fileName" | "file_name" => Field::File,
                "cachedContent" | "cached_content" => Field::Cache,
                _ => Field::Other,
            })
        }
    }

    /// The value of a naming field: a string is taken, anything else walked.
    struct Named<'a> {
        field: Field,
        out: &'a mut Vec<String>,
    }

    impl<'de> DeserializeSeed<'de> for Named<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Named<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
            if self.out.len() >= MAX_NAMES {
                return Ok(());
            }
            match self.field {
                Field::File => {
                    if let Some(name) = s.find("files/").map(|i| &s[i..]) {
                        let end = name.find(['?', '#', ':']).unwrap_or(name.len());
                        if end <= MAX_NAME_BYTES {
                            self.out.push(name[..end].to_owned());
                        }
                    }
                }
                Field::Cache if s.starts_with("cachedContents/") && s.len() <= MAX_NAME_BYTES => {
                    self.out.push(s.to_owned())
                }
                _ => {}
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
            Walk { out: self.out }.visit_map(map)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
            Walk { out: self.out }.visit_seq(seq)
        }
        scalars!();
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(field) = map.next_key_seed(FieldName)? {
                match field {
                    Field::Other => map.next_value_seed(Walk { out: self.out })?,
                    field => map.next_value_seed(Named {
                        field,
                        out: self.out,
                    })?,
                }
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Walk { out: self.out })?.is_some() {}
            Ok(())
        }
        scalars!();
    }
}

/// The name of what an answer created, and how long it lives.
pub fn created(kind: Creates, body: &[u8]) -> Option<(String, Duration)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let name = match kind {
        Creates::File => v.pointer("/file/name")?.as_str()?,
        Creates::CachedContent | Creates::Batch => v.get("name")?.as_str()?,
        Creates::UploadSession => return None,
    };
    let ttl = match kind {
        Creates::File => FILE_TTL,
        Creates::Batch => BATCH_TTL,
        _ => v
            .get("expireTime")
            .and_then(|t| t.as_str())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| {
                let left = t.as_millisecond() - now_ms() as i64;
                // A cache can be extended: keep the binding an hour past its expiry.
                Duration::from_millis(left.max(0) as u64) + Duration::from_secs(3600)
            })
            .unwrap_or(DEFAULT_TTL),
    };
    Some((name.to_owned(), ttl))
}

/// Points Google's `X-Goog-Upload-URL` back at this proxy: same path and query, the client's
/// scheme and host (`X-Forwarded-Proto`/`X-Forwarded-Host` when a load balancer set them; an
/// HTTP/2 client names the host in `:authority`, given as `authority`).
pub fn rewrite_upload_url(
    google: &str,
    client_headers: &HeaderMap,
    authority: Option<&str>,
) -> Option<String> {
    let after_scheme = google.split_once("://")?.1;
    let path_and_query = &after_scheme[after_scheme.find('/')?..];
    let header = |n: &str| client_headers.get(n).and_then(|v| v.to_str().ok());
    let host = header("x-forwarded-host")
        .and_then(|h| h.split(',').next())
        .or_else(|| header("host"))
        .or(authority)?
        .trim();
    let scheme = header("x-forwarded-proto")
        .and_then(|p| p.split(',').next())
        .map(str::trim)
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    Some(format!("{scheme}://{host}{path_and_query}"))
}

/// How long a binding is trusted from the local cache. Upload sessions end (and are unbound) on
/// whichever proxy sees the last chunk, so the others ask the store again soon.
fn cached_for(resource: &str) -> Duration {
    if resource.starts_with("upload:") {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(300)
    }
}

type Cache = Mutex<HashMap<String, (Option<Binding>, u64)>>;

/// Bindings: a local cache in front of the store.
pub struct Affinity {
    store: Arc<dyn KeyStore>,
    /// resource → (binding, or none known; until when this is trusted, Unix ms).
    cache: Arc<Cache>,
    /// Until when (Unix ms) the store is taken as unreachable by lookups.
    trouble_until: std::sync::atomic::AtomicU64,
}

impl Affinity {
    /// The cache, and (inside a runtime) a task that drops ended bindings from it as the store
    /// announces them: a finished upload session stops working on every proxy at once.
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        let cache = Arc::new(Mutex::new(HashMap::new()));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(follow_unbinds(store.subscribe(), Arc::downgrade(&cache)));
        }
        Self {
            store,
            cache,
            trouble_until: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn store_in_trouble(&self, now: u64) -> bool {
        self.trouble_until
            .load(std::sync::atomic::Ordering::Relaxed)
            > now
    }

    fn mark_trouble(&self, names: &[&str]) {
        let now = now_ms();
        self.trouble_until.store(
            now + STORE_TROUBLE_FOR.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        for n in names {
            self.remember(n, None, STORE_TROUBLE_FOR);
        }
    }

    /// The first of `names` (in order) that has a binding for which `fits` holds. Cached names
    /// answer at once; the others are asked of the store concurrently, within
    /// [`PATH_LOOKUP_TIMEOUT`] in all. A store that fails or does not answer in time means "no
    /// binding" (the request routes normally) and is not asked again for a while.
    pub async fn first_bound(
        &self,
        names: &[String],
        fits: impl Fn(&Binding) -> bool,
    ) -> Option<(usize, Binding)> {
        let now = now_ms();
        let mut known: Vec<Option<Option<Binding>>> = Vec::with_capacity(names.len());
        let mut ask: Vec<usize> = Vec::new();
        {
            let cache = self.cache();
            for (i, n) in names.iter().enumerate() {
                match cache.get(n.as_str()) {
                    Some((b, exp)) if *exp > now => known.push(Some(b.clone())),
                    _ => {
                        known.push(None);
                        ask.push(i);
                    }
                }
            }
        }
        if !ask.is_empty() && !self.store_in_trouble(now) {
            let mut lookups = tokio::task::JoinSet::new();
            for &i in &ask {
                let store = self.store.clone();
                let name = names[i].clone();
                lookups.spawn(async move { (i, store.bound(&name).await) });
            }
            let answered = tokio::time::timeout(PATH_LOOKUP_TIMEOUT, async {
                let mut failed = false;
                while let Some(joined) = lookups.join_next().await {
                    match joined {
                        Ok((i, Ok(b))) => {
                            let ttl = if b.is_some() {
                                cached_for(&names[i])
                            } else {
                                MISS_FOR
                            };
                            self.remember(&names[i], b.as_ref(), ttl);
                            known[i] = Some(b);
                        }
                        Ok((_, Err(e))) => {
                            tracing::warn!(error = %e, "affinity lookup failed; routing without it");
                            failed = true;
                        }
                        Err(_) => failed = true,
                    }
                }
                failed
            })
            .await;
            let unanswered: Vec<&str> = ask
                .iter()
                .filter(|&&i| known[i].is_none())
                .map(|&i| names[i].as_str())
                .collect();
            match answered {
                Ok(false) => {}
                Ok(true) => self.mark_trouble(&unanswered),
                Err(_) => {
                    tracing::warn!(
                        wait_ms = PATH_LOOKUP_TIMEOUT.as_millis() as u64,
                        "affinity lookups timed out; routing without them"
                    );
                    self.mark_trouble(&unanswered);
                }
            }
        }
        known
            .into_iter()
            .enumerate()
            .find_map(|(i, b)| b.flatten().filter(|b| fits(b)).map(|b| (i, b)))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<Binding>, u64)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The binding of `resource`: from the cache, else from the store (see [`first_bound`]).
    ///
    /// [`first_bound`]: Self::first_bound
    pub async fn lookup(&self, resource: &str) -> Option<Binding> {
        self.first_bound(&[resource.to_owned()], |_| true)
            .await
            .map(|(_, b)| b)
    }

    fn remember(&self, resource: &str, binding: Option<&Binding>, ttl: Duration) {
        let now = now_ms();
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, exp)| *exp > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            resource.to_owned(),
            (binding.cloned(), now + ttl.as_millis() as u64),
        );
    }

    /// Records who created `resource`, here and in the store (awaited, bounded), so that the
    /// client's next request finds it on any proxy.
    pub async fn bind(&self, resource: &str, binding: Binding, ttl: Duration) {
        self.remember(resource, Some(&binding), ttl.min(cached_for(resource)));
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.store.bind(resource, &binding, ttl)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "affinity binding not stored; other proxies will not see it")
            }
            Err(_) => tracing::warn!("affinity binding timed out; other proxies will not see it"),
        }
    }

    /// Ends a binding here and in the store (a finished upload session is no credential).
    pub async fn unbind(&self, resource: &str) {
        self.cache().remove(resource);
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.store.unbind(resource)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "affinity binding not removed from the store"),
            Err(_) => tracing::warn!("removing an affinity binding timed out"),
        }
    }
}

/// Drops ended bindings from `cache` as the store announces them. When announcements may
/// have been missed (the store's link was re-established, or this follower lagged), every
/// cached upload session is dropped: the next chunk asks the store. Ends with the cache.
async fn follow_unbinds(
    mut events: tokio::sync::broadcast::Receiver<keystore::StoreEvent>,
    cache: std::sync::Weak<Cache>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = events.recv().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(keystore::StoreEvent::Unbound { resource }) => {
                cache.remove(&resource);
            }
            Ok(keystore::StoreEvent::Resync) | Err(RecvError::Lagged(_)) => {
                cache.retain(|name, _| !name.starts_with("upload:"));
            }
            Ok(_) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests;
