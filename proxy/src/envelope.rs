//! Errors the proxy itself answers, in the envelope the client's SDK parses: Google's on
//! native routes, OpenAI's on the OpenAI layer.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

use crate::routes::Api;

/// Google's `status` string for an HTTP code.
fn google_status(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// OpenAI's `type` and `code` for an HTTP code.
fn openai_kind(code: StatusCode) -> (&'static str, &'static str) {
    match code.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        404 => ("invalid_request_error", "not_found"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        400..=499 => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "upstream_error"),
    }
}

/// An error answer. `retry_after_secs` adds `Retry-After` (and Google's `RetryInfo`).
pub fn error(api: Api, code: StatusCode, message: &str, retry_after_secs: Option<u64>) -> Response {
    let msg = serde_json::Value::String(message.to_owned());
    let body = match api {
        Api::Native => {
            let details = match retry_after_secs {
                Some(s) => format!(
                    ",\n    \"details\": [\n      {{\n        \"@type\": \"type.googleapis.com/google.rpc.RetryInfo\",\n        \"retryDelay\": \"{s}s\"\n      }}\n    ]"
                ),
                None => String::new(),
            };
            format!(
                "{{\n  \"error\": {{\n    \"code\": {},\n    \"message\": {msg},\n    \"status\": \"{}\"{details}\n  }}\n}}\n",
                code.as_u16(),
                google_status(code)
            )
        }
        Api::OpenAi => {
            let (kind, c) = openai_kind(code);
            format!(r#"{{"error":{{"message":{msg},"type":"{kind}","param":null,"code":"{c}"}}}}"#)
        }
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = code;
    let content_type = match api {
        Api::Native => "application/json; charset=UTF-8",
        Api::OpenAi => "application/json",
    };
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(s) = retry_after_secs {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    res
}

/// Seconds from `now_ms` until `until_ms`, rounded up, at least 1.
pub fn retry_after_secs(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(res: Response) -> serde_json::Value {
        let b = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn google_envelope_with_retry_info() {
        let res = error(
            Api::Native,
            StatusCode::TOO_MANY_REQUESTS,
            "all keys cooling",
            Some(17),
        );
        assert_eq!(res.headers()["retry-after"], "17");
        let v = body(res).await;
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["error"]["details"][0]["retryDelay"], "17s");
    }

    #[tokio::test]
    async fn openai_envelope() {
        let res = error(Api::OpenAi, StatusCode::UNAUTHORIZED, "bad \"token\"", None);
        assert_eq!(res.status(), 401);
        let v = body(res).await;
        assert_eq!(v["error"]["message"], "bad \"token\"");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(10_001, 0), 11);
        assert_eq!(retry_after_secs(5, 10), 1);
    }
}
