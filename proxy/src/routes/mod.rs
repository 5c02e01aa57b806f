//! Which API a request speaks and where it goes upstream.
//!
//! | client path                                   | API    | upstream path                          |
//! |-----------------------------------------------|--------|----------------------------------------|
//! | `/v1beta/openai/{rest}`                       | OpenAI | same                                   |
//! | `/v1/chat/completions`, `/v1/embeddings`, `/v1/images/generations` | OpenAI | `/v1beta/openai/{rest}` |
//! | `GET /v1/models[/{id}]` with `Authorization: Bearer` and no Google credential | OpenAI | `/v1beta/openai/models[/{id}]` |
//! | `/v1/...`, `/v1beta/...`, `/v1alpha/...`, `/upload/...`, `/download/...` | native | same |
//!
//! `GET /v1/models` is both Gemini's native model list (the GenAI SDK sends `x-goog-api-key`)
//! and OpenAI's (an OpenAI SDK on a `/v1` base URL sends `Bearer`): the credential decides.

use std::borrow::Cow;
use std::cell::OnceCell;

use http::Method;

/// The API family of a route: it decides how the key is sent and the shape of errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Gemini's own REST API: key in `x-goog-api-key`, errors in Google's envelope.
    Native,
    /// The OpenAI-compatible layer: key as `Bearer`, errors in OpenAI's envelope.
    OpenAi,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::OpenAi => "openai",
        }
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub api: Api,
    pub upstream_path: Cow<'a, str>,
    /// A short, bounded name of the operation for metrics (`generateContent`, `chat/completions`).
    pub operation: &'static str,
}

const OPENAI_PREFIX: &str = "/v1beta/openai/";
const OPENAI_ALIASES: [&str; 3] = ["chat/completions", "embeddings", "images/generations"];
const NATIVE_PREFIXES: [&str; 5] = ["/v1/", "/v1beta/", "/v1alpha/", "/upload/", "/download/"];

/// Routes `path`. `openai_credential` is true when the client authenticated with
/// `Authorization: Bearer` and sent no Google credential (`x-goog-api-key` or `?key=`).
pub fn route<'a>(method: &Method, path: &'a str, openai_credential: bool) -> Option<Route<'a>> {
    if let Some(rest) = path.strip_prefix(OPENAI_PREFIX) {
        return Some(Route {
            api: Api::OpenAi,
            upstream_path: Cow::Borrowed(path),
            operation: openai_operation(rest),
        });
    }
    if let Some(rest) = path.strip_prefix("/v1/") {
        let is_alias = OPENAI_ALIASES.contains(&rest)
            || (openai_credential && *method == Method::GET && is_openai_models_path(rest));
        if is_alias {
            return Some(Route {
                api: Api::OpenAi,
                upstream_path: Cow::Owned(format!("{OPENAI_PREFIX}{rest}")),
                operation: openai_operation(rest),
            });
        }
    }
    if NATIVE_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return Some(Route {
            api: Api::Native,
            upstream_path: Cow::Borrowed(path),
            operation: native_operation(path),
        });
    }
    None
}

/// Whether `path` could mean another path once normalised: a `.` or `..` segment, raw or
/// percent-encoded (`%2e`), an encoded `/` or `\\` (`%2f`, `%5c`), or a raw `\\`. Such paths
/// are refused: `/upload/../v1beta/models/m:generateContent` would pass as an upload here and be
/// a generate call wherever it is normalised. It runs on every request, and Gemini's model names
/// (`gemini-2.5-flash`) put a dot in almost every path: the bytes that matter are found by a
/// vectorised search, and only a `%` or `\\` sends the path through the full scan.
pub fn is_ambiguous_path(path: &str) -> bool {
    let b = path.as_bytes();
    for i in memchr::memchr3_iter(b'.', b'%', b'\\', b) {
        if b[i] != b'.' {
            return ambiguous_by_segments(b);
        }
        // The first dot of a segment made of dots only starts its segment, and the search
        // meets every first dot: `.` or `..` is a dot after a slash (or the start) followed
        // by a slash (or the end), or by one more dot and then that.
        let starts_segment = i == 0 || b[i - 1] == b'/';
        let ends_at = |j: usize| j == b.len() || b[j] == b'/';
        if starts_segment && (ends_at(i + 1) || (b.get(i + 1) == Some(&b'.') && ends_at(i + 2))) {
            return true;
        }
    }
    false
}

/// The full check, one pass over the segments, for paths with a `%` or `\\`.
fn ambiguous_by_segments(b: &[u8]) -> bool {
    // The current segment: how many dots it holds, and whether it holds anything else.
    let (mut dots, mut other) = (0u8, false);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' => {
                if !other && (dots == 1 || dots == 2) {
                    return true;
                }
                (dots, other) = (0, false);
            }
            b'\\' => return true,
            b'.' => dots = dots.saturating_add(1),
            b'%' if i + 2 < b.len() => match (b[i + 1], b[i + 2] | 0x20) {
                (b'2', b'f') | (b'5', b'c') => return true,
                (b'2', b'e') => {
                    dots = dots.saturating_add(1);
                    i += 3;
                    continue;
                }
                _ => other = true,
            },
            _ => other = true,
        }
        i += 1;
    }
    !other && (dots == 1 || dots == 2)
}

/// `models` or `models/{id}` (no `:method`, no deeper path).
fn is_openai_models_path(rest: &str) -> bool {
    match rest.strip_prefix("models") {
        Some("") => true,
        Some(id) => id
            .strip_prefix('/')
            .is_some_and(|id| !id.is_empty() && !id.contains([':', '/'])),
        None => false,
    }
}

fn openai_operation(rest: &str) -> &'static str {
    match rest {
        "chat/completions" => "chat/completions",
        "embeddings" => "embeddings",
        "images/generations" => "images/generations",
        r if r == "models" || r.starts_with("models/") => "models",
        _ => "other",
    }
}

fn native_operation(path: &str) -> &'static str {
    if path.starts_with("/upload/") {
        return "upload";
    }
    if path.starts_with("/download/") {
        return "download";
    }
    let method = path.rsplit_once(':').map(|(_, m)| m).unwrap_or("");
    match method {
        "generateContent" => "generateContent",
        "streamGenerateContent" => "streamGenerateContent",
        "countTokens" => "countTokens",
        "embedContent" => "embedContent",
        "batchEmbedContents" => "batchEmbedContents",
        "batchGenerateContent" => "batchGenerateContent",
        "" => {
            let rest = path.splitn(3, '/').nth(2).unwrap_or("");
            if rest.starts_with("models") {
                "models"
            } else if rest.starts_with("files") {
                "files"
            } else if rest.starts_with("cachedContents") {
                "cachedContents"
            } else if rest.starts_with("batches") {
                "batches"
            } else {
                "other"
            }
        }
        _ => "other",
    }
}

/// The model a native request names in its path (`/v1beta/models/{model}:method`).
pub fn model_in_path(path: &str) -> Option<&str> {
    segment_after(path, &["models"]).map(|(_, id)| id)
}

/// The first `/{kind}/{id}` in `path` with one of `kinds` and a non-empty id, the id running up
/// to the next `:` or `/` (`/v1beta/files/abc:download`, `files` → `abc`): `(kind, id)`. One
/// pass from slash to slash, without substring searchers (this runs on every request).
pub fn segment_after<'a, 'k>(path: &'a str, kinds: &[&'k str]) -> Option<(&'k str, &'a str)> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'/', &bytes[i..]) {
        let start = i + off + 1;
        let rest = &bytes[start..];
        let Some(&first) = rest.first() else {
            break;
        };
        for &kind in kinds {
            // The first byte rules most segments out before a comparison is called.
            if kind.as_bytes().first() == Some(&first)
                && rest.len() > kind.len() + 1
                && rest.starts_with(kind.as_bytes())
                && rest[kind.len()] == b'/'
            {
                let id = &rest[kind.len() + 1..];
                let end = memchr::memchr2(b':', b'/', id).unwrap_or(id.len());
                if end > 0 {
                    let from = start + kind.len() + 1;
                    return Some((kind, &path[from..from + end]));
                }
            }
        }
        i = start;
    }
    None
}

/// The model an OpenAI-layer body names (`"model": "gemini-2.5-flash"` or `"models/..."`).
pub fn model_in_body(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Model {
        model: Option<String>,
    }
    let m: Model = serde_json::from_slice(body).ok()?;
    m.model
        .map(|m| m.strip_prefix("models/").map(str::to_owned).unwrap_or(m))
}

/// Longest model name taken from a request (Google's are under 64 bytes).
pub const MAX_MODEL_BYTES: usize = 128;

/// The model of a request, looked up only when a model's cooldown makes it matter (for the
/// OpenAI layer it means parsing the body).
pub struct ModelOf<'a> {
    api: Api,
    path: &'a str,
    body: &'a [u8],
    cell: OnceCell<Option<String>>,
}

impl<'a> ModelOf<'a> {
    pub fn new(api: Api, path: &'a str, body: &'a [u8]) -> Self {
        Self {
            api,
            path,
            body,
            cell: OnceCell::new(),
        }
    }

    /// The model; a name longer than [`MAX_MODEL_BYTES`] counts as none (it would become a
    /// key of quota counters and cooldowns).
    pub fn get(&self) -> Option<&str> {
        self.cell
            .get_or_init(|| {
                match self.api {
                    Api::Native => model_in_path(self.path).map(str::to_owned),
                    Api::OpenAi => model_in_body(self.body),
                }
                .filter(|m| m.len() <= MAX_MODEL_BYTES)
            })
            .as_deref()
    }
}

#[cfg(test)]
mod tests;
