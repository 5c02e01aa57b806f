//! The client's credential, however its SDK sends it, and the headers and query that go
//! upstream without any client credential.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, header};

pub const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// What a client presented.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Credential<'a> {
    /// The token, from `x-goog-api-key`, `Authorization: Bearer` or `?key=` (in that order).
    pub token: Option<Cow<'a, str>>,
    /// True when the only credential was a Bearer token (how OpenAI SDKs authenticate).
    pub bearer_only: bool,
}

pub fn credential<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Credential<'a> {
    let goog = headers
        .get(X_GOOG_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|v| !v.is_empty());
    let query_key = query.and_then(query_key);
    let bearer_only = bearer.is_some() && goog.is_none() && query_key.is_none();
    let token = goog
        .map(Cow::Borrowed)
        .or(bearer.map(Cow::Borrowed))
        .or(query_key);
    Credential { token, bearer_only }
}

fn query_key(query: &str) -> Option<Cow<'_, str>> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The query without `key` parameters; `None` when nothing is left.
pub fn strip_key_from_query(query: Option<&str>) -> Option<Cow<'_, str>> {
    let q = query?;
    if !q.split('&').any(is_key_param) {
        return (!q.is_empty()).then_some(Cow::Borrowed(q));
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| !is_key_param(p) && !p.is_empty())
        .collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

/// Whether a query parameter is `key`, after the same decoding [`credential`] reads it with:
/// `%6Bey=...` and `k%65y=...` are `key` too, so one that authenticates is also one that is
/// stripped (and none slips upstream beside the proxy's own key).
fn is_key_param(p: &str) -> bool {
    let name = p.split_once('=').map_or(p, |(n, _)| n);
    if name == "key" {
        return true;
    }
    if !name.contains(['%', '+']) {
        return false;
    }
    url::form_urlencoded::parse(name.as_bytes())
        .next()
        .is_some_and(|(k, _)| k == "key")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and headers the proxy sets itself.
fn dropped_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            // Client credentials: never forwarded (a stray Bearer makes Google answer 401).
            | "authorization"
            | "x-goog-api-key"
            // Error bodies must be readable to classify them: ask for identity encoding.
            | "accept-encoding"
    )
}

/// The client's headers as they go upstream (the key is added per attempt).
pub fn upstream_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(client.len());
    let extra = connection_tokens(client);
    for (name, value) in client {
        if dropped_request_header(name)
            || extra.iter().any(|t| name.as_str().eq_ignore_ascii_case(t))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Response headers that must not be passed on.
pub fn dropped_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            // Points clients at Google's HTTP/3 endpoint, which is not this proxy.
            | "alt-svc"
    )
}

/// Header names listed in `Connection:` are hop-by-hop too.
fn connection_tokens(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn token_from_each_place() {
        let h = headers(&[("x-goog-api-key", "t1")]);
        assert_eq!(credential(&h, None).token.as_deref(), Some("t1"));
        let h = headers(&[("authorization", "Bearer t2")]);
        let c = credential(&h, None);
        assert_eq!(c.token.as_deref(), Some("t2"));
        assert!(c.bearer_only);
        let h = HeaderMap::new();
        let c = credential(&h, Some("alt=sse&key=t%203"));
        assert_eq!(c.token.as_deref(), Some("t 3"));
        assert!(!c.bearer_only);
        assert_eq!(credential(&h, Some("alt=sse")), Credential::default());
        // Google's header wins over Bearer, and then Bearer is not the only credential.
        let h = headers(&[("authorization", "bearer b"), ("x-goog-api-key", "g")]);
        let c = credential(&h, None);
        assert_eq!((c.token.as_deref(), c.bearer_only), (Some("g"), false));
        let h = headers(&[("authorization", "Basic abc")]);
        assert_eq!(credential(&h, None).token, None);
    }

    #[test]
    fn an_encoded_key_parameter_is_read_and_stripped_alike() {
        let none = HeaderMap::new();
        for q in [
            "%6Bey=sk-client",
            "k%65y=sk-client",
            "alt=sse&%6b%65%79=sk-client",
        ] {
            let c = credential(&none, Some(q));
            assert_eq!(c.token.as_deref(), Some("sk-client"), "{q}");
            let left = strip_key_from_query(Some(q));
            assert!(
                left.as_deref().is_none_or(|l| !l.contains("sk-client")),
                "{q}: the client's token would go upstream: {left:?}"
            );
        }
        assert_eq!(
            strip_key_from_query(Some("alt=sse&k%65y=x&%6Bey=y")).as_deref(),
            Some("alt=sse")
        );
        // Look-alikes stay.
        assert_eq!(
            strip_key_from_query(Some("keys=1&k%65ys=2&monkey=3")).as_deref(),
            Some("keys=1&k%65ys=2&monkey=3")
        );
    }

    #[test]
    fn key_is_stripped_from_query() {
        assert_eq!(strip_key_from_query(None), None);
        assert_eq!(strip_key_from_query(Some("key=abc")), None);
        assert_eq!(
            strip_key_from_query(Some("alt=sse&key=abc")).as_deref(),
            Some("alt=sse")
        );
        assert_eq!(
            strip_key_from_query(Some("key=a&alt=sse&key=b&x=1")).as_deref(),
            Some("alt=sse&x=1")
        );
        assert_eq!(
            strip_key_from_query(Some("keyword=1")).as_deref(),
            Some("keyword=1")
        );
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_are_not_forwarded() {
        let h = headers(&[
            ("authorization", "Bearer client"),
            ("x-goog-api-key", "client"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("host", "proxy"),
            ("accept-encoding", "gzip"),
            ("content-type", "application/json"),
            ("x-goog-upload-protocol", "resumable"),
            ("user-agent", "google-genai-sdk/3.4"),
        ]);
        let out = upstream_headers(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "x-goog-upload-protocol", "user-agent"]
        );
    }
}
