//! The input-token guardrail (`limits.maxInputTokensPerRequest`): an estimate of a request's
//! input tokens, made before anything goes upstream, so that one giant prompt cannot burn a
//! project's per-minute token quota.
//!
//! The estimate follows how Gemini counts: text at about four bytes a token; each inline or
//! referenced media part (an image, audio, a file) at 258 tokens, Gemini's figure for one small
//! image (larger media count more upstream, so the estimate stays on the low side and never
//! refuses a request Google would count as smaller). Keys and JSON punctuation are not counted.
//! It runs only for groups that set the limit.

use serde_json::Value;

/// Tokens Gemini counts for one image up to 384 px (and per 768 px tile of larger ones).
pub const MEDIA_PART_TOKENS: u64 = 258;
/// Bytes of text per token, Google's rule of thumb for Gemini models.
const BYTES_PER_TOKEN: u64 = 4;

/// Object fields whose value is media, counted as one media part each, whatever their size:
/// the native API's `inlineData` / `fileData` (both spellings) and the OpenAI-compatible API's
/// `image_url`, `input_audio` and `file` parts.
const MEDIA_FIELDS: &[&str] = &[
    "inlineData",
    "inline_data",
    "fileData",
    "file_data",
    "image_url",
    "input_audio",
    "file",
];

/// The estimated input tokens of a request body. A body that is not JSON counts as text.
pub fn estimate_input_tokens(body: &[u8]) -> u64 {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => tokens_in(&v),
        Err(_) => text_tokens(body.len()),
    }
}

fn text_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

/// serde_json refuses documents nested deeper than 128 levels, so the recursion is bounded.
fn tokens_in(v: &Value) -> u64 {
    match v {
        Value::String(s) => text_tokens(s.len()),
        Value::Array(items) => items.iter().map(tokens_in).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                if MEDIA_FIELDS.contains(&k.as_str()) && !v.is_string() {
                    MEDIA_PART_TOKENS
                } else {
                    tokens_in(v)
                }
            })
            .sum(),
        Value::Number(_) | Value::Bool(_) | Value::Null => 0,
    }
}

#[cfg(test)]
mod tests;
