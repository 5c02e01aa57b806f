//! What the mock knows about Google Cloud projects: which project each key belongs to, the
//! per-project quotas its keys share (a sliding minute per model), and the resources a project
//! owns (files, resumable upload sessions, cached contents, batches), which keys of other
//! projects cannot use.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A resumable upload in progress.
#[derive(Clone, Debug)]
pub struct UploadSession {
    pub project: String,
    pub display_name: String,
    pub mime: String,
    pub received: usize,
}

#[derive(Default)]
pub struct Projects {
    /// key → project; a key not listed is a project of its own.
    of_key: HashMap<String, String>,
    /// project → requests per minute, per model.
    rpm: HashMap<String, u64>,
    /// (project, model) → when each counted request was accepted.
    sent: HashMap<(String, String), VecDeque<Instant>>,
    /// upload id → session.
    pub uploads: HashMap<String, UploadSession>,
    /// `files/ID`, `cachedContents/ID`, `batches/ID` → owning project.
    owners: HashMap<String, String>,
    next_id: u64,
}

impl Projects {
    pub fn assign(&mut self, key: &str, project: &str) {
        self.of_key.insert(key.to_owned(), project.to_owned());
    }

    pub fn set_rpm(&mut self, project: &str, rpm: u64) {
        self.rpm.insert(project.to_owned(), rpm);
    }

    pub fn project_of(&self, key: &str) -> String {
        self.of_key
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_owned())
    }

    /// Counts a request of `project` for `model`, or says how long until the quota has room.
    pub fn admit(
        &mut self,
        project: &str,
        model: &str,
        now: Instant,
    ) -> Result<(), (u64, Duration)> {
        let Some(&limit) = self.rpm.get(project) else {
            return Ok(());
        };
        let window = Duration::from_secs(60);
        let sent = self
            .sent
            .entry((project.to_owned(), model.to_owned()))
            .or_default();
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            sent.pop_front();
        }
        if sent.len() as u64 >= limit {
            let oldest = sent.front().copied().unwrap_or(now);
            return Err((limit, window.saturating_sub(now.duration_since(oldest))));
        }
        sent.push_back(now);
        Ok(())
    }

    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:06}", self.next_id)
    }

    pub fn own(&mut self, resource: String, project: &str) {
        self.owners.insert(resource, project.to_owned());
    }

    /// Whether `project` may use `resource` (`files/ID` ...). Unknown resources are nobody's.
    pub fn may_use(&self, resource: &str, project: &str) -> bool {
        self.owners.get(resource).is_some_and(|p| p == project)
    }
}

/// The resources a request body names: `fileData.fileUri` (a full URI or `files/ID`),
/// `cachedContent`, a batch's input `fileName`.
pub fn referenced(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x.as_str()) {
                    ("fileUri" | "file_uri" | "fileName" | "file_name", Some(s)) => {
                        if let Some(i) = s.find("files/") {
                            out.push(s[i..].to_owned());
                        }
                    }
                    ("cachedContent" | "cached_content", Some(s)) => out.push(s.to_owned()),
                    _ => walk(x, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}
