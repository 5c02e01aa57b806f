//! Gemini's wire format, byte for byte (docs/gemini-errors.md): error envelopes, JSON answers,
//! SSE and JSON-array stream framing, the OpenAI layer's shapes.
//!
//! Google pretty-prints JSON answers with two spaces and keeps its own field order
//! (`code`, `message`, `status`, `details`), so bodies are written out here, not serialised
//! from maps (which would sort the fields).

/// `application/json; charset=UTF-8`, as Google labels JSON answers.
pub const JSON: &str = "application/json; charset=UTF-8";
/// The SSE content type of `streamGenerateContent?alt=sse`.
pub const SSE: &str = "text/event-stream";

const HELP_RATE_LIMITS: &str = r#"      {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
          {
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits"
          }
        ]
      }"#;

/// Google's error envelope. `details` are pre-indented detail objects joined by `,\n`.
pub fn error(code: u16, message: &str, status: &str, details: &[String]) -> String {
    let message = json_string(message);
    if details.is_empty() {
        format!(
            "{{\n  \"error\": {{\n    \"code\": {code},\n    \"message\": {message},\n    \"status\": \"{status}\"\n  }}\n}}\n"
        )
    } else {
        format!(
            "{{\n  \"error\": {{\n    \"code\": {code},\n    \"message\": {message},\n    \"status\": \"{status}\",\n    \"details\": [\n{}\n    ]\n  }}\n}}\n",
            details.join(",\n")
        )
    }
}

fn error_info(reason: &str) -> String {
    format!(
        r#"      {{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "{reason}",
        "domain": "googleapis.com",
        "metadata": {{
          "service": "generativelanguage.googleapis.com"
        }}
      }}"#
    )
}

fn localized(message: &str) -> String {
    format!(
        r#"      {{
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": {}
      }}"#,
        json_string(message)
    )
}

/// 400 `API_KEY_INVALID`.
pub fn api_key_invalid() -> String {
    let m = "API key not valid. Please pass a valid API key.";
    error(
        400,
        m,
        "INVALID_ARGUMENT",
        &[error_info("API_KEY_INVALID"), localized(m)],
    )
}

/// 403 `API_KEY_SERVICE_BLOCKED`.
pub fn service_blocked() -> String {
    error(
        403,
        "Requests to this API generativelanguage.googleapis.com method google.ai.generativelanguage.v1beta.GenerativeService.GenerateContent are blocked.",
        "PERMISSION_DENIED",
        &[error_info("API_KEY_SERVICE_BLOCKED")],
    )
}

/// 403 `SERVICE_DISABLED`.
pub fn service_disabled() -> String {
    error(
        403,
        "Generative Language API has not been used in project 123456789 before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/generativelanguage.googleapis.com/overview?project=123456789 then retry.",
        "PERMISSION_DENIED",
        &[error_info("SERVICE_DISABLED")],
    )
}

/// 403, a key reported as leaked (no details).
pub fn leaked() -> String {
    error(
        403,
        "Your API key was reported as leaked. Please use another API key.",
        "PERMISSION_DENIED",
        &[],
    )
}

/// 403 `CONSUMER_SUSPENDED`, naming the key twice, as Google does: in the message and as the
/// consumer in the ErrorInfo metadata.
pub fn suspended(key: &str) -> String {
    let consumer = format!("api_key:{key}");
    error(
        403,
        &format!("Permission denied: Consumer '{consumer}' has been suspended."),
        "PERMISSION_DENIED",
        &[format!(
            r#"      {{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "CONSUMER_SUSPENDED",
        "domain": "googleapis.com",
        "metadata": {{
          "consumer": {},
          "service": "generativelanguage.googleapis.com"
        }}
      }}"#,
            json_string(&consumer)
        )],
    )
}

/// 400 `INVALID_ARGUMENT` about the request whose message quotes the key (a client's fault, so
/// passed through, but never with a key in it).
pub fn bad_request_quoting(key: &str) -> String {
    error(
        400,
        &format!("Invalid value in request sent with key {key} (consumer 'api_key:{key}')."),
        "INVALID_ARGUMENT",
        &[],
    )
}

/// 403 for a file of another project: not the key's fault.
pub fn file_permission(file: &str) -> String {
    error(
        403,
        &format!("You do not have permission to access the File {file} or it may not exist."),
        "PERMISSION_DENIED",
        &[],
    )
}

/// 403 without any key.
pub fn unregistered_caller() -> String {
    error(
        403,
        "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        "PERMISSION_DENIED",
        &[],
    )
}

/// 401 for a stray `Authorization: Bearer` on a native route.
pub fn unauthenticated() -> String {
    error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "UNAUTHENTICATED",
        &[error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED")],
    )
}

/// A quota that a 429 can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    RequestsPerMinute,
    InputTokensPerMinute,
    RequestsPerDay,
}

impl Quota {
    fn ids(self) -> (&'static str, &'static str) {
        match self {
            Self::RequestsPerMinute => (
                "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            ),
            Self::InputTokensPerMinute => (
                "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
                "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            ),
            Self::RequestsPerDay => (
                "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            ),
        }
    }
}

/// 429 `RESOURCE_EXHAUSTED` naming `quota` for `model`, with `RetryInfo` when `retry_delay`
/// (e.g. `"22s"`, `"45.837906927s"`) is given.
pub fn quota_exceeded(quota: Quota, model: &str, limit: u64, retry_delay: Option<&str>) -> String {
    let (metric, id) = quota.ids();
    let mut message = format!(
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}"
    );
    if let Some(d) = retry_delay {
        message.push_str(&format!("\nPlease retry in {d}."));
    }
    let mut details = vec![
        format!(
            r#"      {{
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {{
            "quotaMetric": "{metric}",
            "quotaId": "{id}",
            "quotaDimensions": {{
              "location": "global",
              "model": "{model}"
            }},
            "quotaValue": "{limit}"
          }}
        ]
      }}"#
        ),
        HELP_RATE_LIMITS.to_owned(),
    ];
    if let Some(d) = retry_delay {
        details.push(format!(
            r#"      {{
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "{d}"
      }}"#
        ));
    }
    error(429, &message, "RESOURCE_EXHAUSTED", &details)
}

/// A 429 that names no quota: only a Help link.
pub fn rate_limited_bare() -> String {
    error(
        429,
        "Resource has been exhausted (e.g. check quota).",
        "RESOURCE_EXHAUSTED",
        &[HELP_RATE_LIMITS.to_owned()],
    )
}

pub fn internal() -> String {
    error(
        500,
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        "INTERNAL",
        &[],
    )
}

pub fn overloaded() -> String {
    error(
        503,
        "The model is overloaded. Please try again later.",
        "UNAVAILABLE",
        &[],
    )
}

pub fn deadline_exceeded() -> String {
    error(
        504,
        "Deadline expired before operation could complete.",
        "DEADLINE_EXCEEDED",
        &[],
    )
}

/// 400 that is the client's fault.
pub fn token_limit_exceeded() -> String {
    error(
        400,
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        "INVALID_ARGUMENT",
        &[],
    )
}

pub fn model_not_found(model: &str) -> String {
    error(
        404,
        &format!(
            "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
        ),
        "NOT_FOUND",
        &[],
    )
}

/// The OpenAI layer's wrapping of an error envelope: `[{...}]`.
pub fn openai_wrap(envelope: &str) -> String {
    format!("[{}]", envelope.trim_end())
}

/// Usage figures as Gemini reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub candidates: u64,
}

/// A non-streaming `generateContent` answer, pretty-printed.
pub fn generate_content(model: &str, text: &str, usage: Usage) -> String {
    let total = usage.prompt + usage.candidates;
    format!(
        r#"{{
  "candidates": [
    {{
      "content": {{
        "parts": [
          {{
            "text": {text}
          }}
        ],
        "role": "model"
      }},
      "finishReason": "STOP",
      "index": 0
    }}
  ],
  "usageMetadata": {{
    "promptTokenCount": {prompt},
    "candidatesTokenCount": {cand},
    "totalTokenCount": {total},
    "promptTokensDetails": [
      {{
        "modality": "TEXT",
        "tokenCount": {prompt}
      }}
    ]
  }},
  "modelVersion": "{model}",
  "responseId": "mock-response-id"
}}
"#,
        text = json_string(text),
        prompt = usage.prompt,
        cand = usage.candidates,
    )
}

/// One streamed chunk as Gemini writes it on one line (cumulative usage).
pub fn stream_chunk(model: &str, text: &str, usage: Usage, last: bool) -> String {
    let finish = if last {
        r#","finishReason": "STOP""#
    } else {
        ""
    };
    format!(
        r#"{{"candidates": [{{"content": {{"parts": [{{"text": {}}}],"role": "model"}}{finish},"index": 0}}],"usageMetadata": {{"promptTokenCount": {},"candidatesTokenCount": {},"totalTokenCount": {}}},"modelVersion": "{model}","responseId": "mock-response-id"}}"#,
        json_string(text),
        usage.prompt,
        usage.candidates,
        usage.prompt + usage.candidates
    )
}

/// One SSE event: `data: <json>\r\n\r\n`.
pub fn sse_event(json: &str) -> String {
    format!("data: {json}\r\n\r\n")
}

/// The pieces of a JSON-array stream: `[`, chunk, `,\n`, chunk, ..., `]`; piece `i` is what is
/// sent when chunk `i` is ready.
pub fn json_array_piece(json: &str, index: usize) -> String {
    if index == 0 {
        format!("[{json}")
    } else {
        format!(",\n{json}")
    }
}

pub const JSON_ARRAY_END: &str = "]";

/// `countTokens`.
pub fn count_tokens(total: u64) -> String {
    format!("{{\n  \"totalTokens\": {total}\n}}\n")
}

/// `GET models` (native).
pub fn models_list() -> String {
    r#"{
  "models": [
    {
      "name": "models/gemini-2.5-flash",
      "version": "001",
      "displayName": "Gemini 2.5 Flash",
      "inputTokenLimit": 1048576,
      "outputTokenLimit": 65536,
      "supportedGenerationMethods": [
        "generateContent",
        "countTokens"
      ]
    }
  ],
  "nextPageToken": ""
}
"#
    .to_owned()
}

/// The OpenAI layer's non-streaming chat completion.
pub fn openai_chat_completion(model: &str, text: &str, usage: Usage) -> String {
    format!(
        r#"{{"choices":[{{"finish_reason":"stop","index":0,"message":{{"content":{},"role":"assistant"}}}}],"created":1763769600,"id":"mock-chatcmpl","model":"{model}","object":"chat.completion","usage":{{"completion_tokens":{},"prompt_tokens":{},"total_tokens":{}}}}}"#,
        json_string(text),
        usage.candidates,
        usage.prompt,
        usage.prompt + usage.candidates
    )
}

/// One OpenAI-layer stream event, `data: {...}\n\n`.
pub fn openai_chunk(model: &str, text: &str, last: bool) -> String {
    let finish = if last { r#""stop""# } else { "null" };
    format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":{},\"role\":\"assistant\"}},\"finish_reason\":{finish},\"index\":0}}],\"created\":1763769600,\"id\":\"mock-chatcmpl\",\"model\":\"{model}\",\"object\":\"chat.completion.chunk\"}}\n\n",
        json_string(text)
    )
}

pub const OPENAI_DONE: &str = "data: [DONE]\n\n";

pub fn openai_models() -> String {
    r#"{"data":[{"created":0,"id":"models/gemini-2.5-flash","object":"model","owned_by":"google"}],"object":"list"}"#.to_owned()
}

pub fn openai_embeddings(model: &str) -> String {
    format!(
        r#"{{"data":[{{"embedding":[0.1,0.2,0.3],"index":0,"object":"embedding"}}],"model":"{model}","object":"list","usage":{{"prompt_tokens":3,"total_tokens":3}}}}"#
    )
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A `File` resource as `files.get` and the upload's final answer carry it (pretty-printed;
/// the final upload answer wraps it as `{"file": ...}`, see [`upload_final`]).
pub fn file_resource(id: &str, display_name: &str, mime: &str, size: usize) -> String {
    format!(
        r#"{{
  "name": "files/{id}",
  "displayName": {display},
  "mimeType": "{mime}",
  "sizeBytes": "{size}",
  "createTime": "2026-11-22T05:00:00.000000Z",
  "updateTime": "2026-11-22T05:00:00.000000Z",
  "expirationTime": "2026-11-24T05:00:00.000000Z",
  "sha256Hash": "ZmFrZS1oYXNo",
  "uri": "https://generativelanguage.googleapis.com/v1beta/files/{id}",
  "state": "ACTIVE",
  "source": "UPLOADED"
}}
"#,
        display = json_string(display_name),
    )
}

/// The answer to the chunk that finalizes a resumable upload.
pub fn upload_final(file_json: &str) -> String {
    let indented: String = file_json
        .trim_end()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_owned()
            } else {
                format!("\n  {l}")
            }
        })
        .collect();
    format!("{{\n  \"file\": {indented}\n}}\n")
}

/// A `CachedContent` as `cachedContents.create` answers it.
pub fn cached_content(id: &str, model: &str, tokens: u64) -> String {
    format!(
        r#"{{
  "name": "cachedContents/{id}",
  "model": "models/{model}",
  "createTime": "2026-11-22T05:00:00.000000Z",
  "updateTime": "2026-11-22T05:00:00.000000Z",
  "expireTime": "2026-11-22T06:00:00.000000Z",
  "displayName": "",
  "usageMetadata": {{
    "totalTokenCount": {tokens}
  }}
}}
"#
    )
}

/// 403 for a cached content of another project.
pub fn cached_content_denied(id: &str) -> String {
    error(
        403,
        &format!("CachedContent not found (or permission denied): cachedContents/{id}"),
        "PERMISSION_DENIED",
        &[],
    )
}

/// The operation `batchGenerateContent` answers with.
pub fn batch_operation(id: &str, model: &str) -> String {
    format!(
        r#"{{
  "name": "batches/{id}",
  "metadata": {{
    "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
    "model": "models/{model}",
    "name": "batches/{id}",
    "displayName": "batch",
    "createTime": "2026-11-22T05:00:00.000000Z",
    "updateTime": "2026-11-22T05:00:00.000000Z",
    "batchStats": {{
      "requestCount": "1",
      "pendingRequestCount": "1"
    }},
    "state": "BATCH_STATE_PENDING"
  }}
}}
"#
    )
}

/// 404 for a batch of another project (or none).
pub fn batch_not_found(id: &str) -> String {
    error(
        404,
        &format!("Requested entity was not found: batches/{id}"),
        "NOT_FOUND",
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse_and_keep_googles_field_order() {
        let body = quota_exceeded(
            Quota::RequestsPerMinute,
            "gemini-2.5-flash",
            10,
            Some("22s"),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["details"][2]["retryDelay"], "22s");
        let code = body.find("\"code\"").unwrap();
        let msg = body.find("\"message\"").unwrap();
        let status = body.find("\"status\"").unwrap();
        let details = body.find("\"details\"").unwrap();
        assert!(code < msg && msg < status && status < details);
        for b in [
            api_key_invalid(),
            leaked(),
            service_blocked(),
            overloaded(),
            rate_limited_bare(),
        ] {
            serde_json::from_str::<serde_json::Value>(&b).unwrap();
        }
        serde_json::from_str::<serde_json::Value>(&openai_wrap(&api_key_invalid())).unwrap();
    }

    #[test]
    fn stream_framing() {
        let c = stream_chunk(
            "m",
            "hi",
            Usage {
                prompt: 1,
                candidates: 2,
            },
            true,
        );
        serde_json::from_str::<serde_json::Value>(&c).unwrap();
        assert!(!c.contains('\n'));
        assert_eq!(sse_event("{}"), "data: {}\r\n\r\n");
        let arr = format!(
            "{}{}{}",
            json_array_piece(&c, 0),
            json_array_piece(&c, 1),
            JSON_ARRAY_END
        );
        let v: serde_json::Value = serde_json::from_str(&arr).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        serde_json::from_str::<serde_json::Value>(&generate_content(
            "m",
            "x",
            Usage {
                prompt: 1,
                candidates: 1,
            },
        ))
        .unwrap();
        serde_json::from_str::<serde_json::Value>(
            openai_chunk("m", "x", false)
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
    }
}
