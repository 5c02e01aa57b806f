//! HTTP/1.1 on the wire for the plain pool (RFC 9112): the request written in one buffer, the
//! response head parsed without copying its header values, and the body's framing with a
//! streaming chunked decoder.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Bodies up to this size go out in the same write as the head.
pub const INLINE_BODY: usize = 16 * 1024;
/// A response head larger than this is refused.
pub const MAX_HEAD: usize = 64 * 1024;
/// Response headers beyond this many are refused.
const MAX_HEADERS: usize = 100;
/// A chunk-size line (with extensions) or trailer line longer than this is refused.
const MAX_LINE: usize = 8 * 1024;

/// Request headers the pool sets itself or that only concern the client's hop.
fn skipped(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        // The body is already whole: there is nothing to wait for before sending it.
        || name == header::EXPECT
}

/// The request head, and the body too when it is small: one write for most requests.
/// `target` is the origin-form path and query.
pub fn encode_request(
    method: &Method,
    target: &str,
    host: &HeaderValue,
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    let inline = body.len() <= INLINE_BODY;
    let mut out =
        Vec::with_capacity(256 + headers.len() * 48 + if inline { body.len() } else { 0 });
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if skipped(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Methods that carry a body say how long it is, even when it is empty.
    let bodied = !body.is_empty()
        || matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
    if bodied {
        out.extend_from_slice(b"content-length: ");
        crate::access_log::push_u64(&mut out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if inline {
        out.extend_from_slice(body);
    }
    out
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this answer.
    pub keep_alive: bool,
}

/// What parsing the buffer gave.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// An informational answer (`100 Continue`, `103 Early Hints`): skipped, look again.
    Informational,
    Head(Head),
}

/// Parses a response head at the start of `buf`; on success the head's bytes are taken out of
/// `buf` (header values keep pointing into them, not copied).
pub fn parse_head(buf: &mut BytesMut, request_method: &Method) -> Result<Parsed, String> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(format!("response head larger than {MAX_HEAD} bytes"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("bad status code {code}"))?;
    if status.is_informational() {
        // 101 would switch protocols, which the pool never asks for.
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("the upstream switched protocols".into());
        }
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names are made while the buffer is borrowed; values afterwards, as slices of the head's
    // bytes (no copy), so only where each value lies is noted.
    let base = buf.as_ptr() as usize;
    let mut named = Vec::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad response header name {:?}", h.name))?;
        named.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    let head_bytes: Bytes = buf.split_to(len).freeze();
    // What framing and reuse depend on is noted while the map is filled, by comparing names
    // (a standard name compares as a number), rather than looked up again afterwards.
    let mut headers = HeaderMap::with_capacity(named.len());
    let mut connection = ConnectionTokens::default();
    let mut last_coding_chunked = None;
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    for (name, at, n) in named {
        let value = HeaderValue::from_maybe_shared(head_bytes.slice(at..at + n))
            .map_err(|_| format!("bad value for response header {name}"))?;
        if name == header::CONNECTION {
            connection.add(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            last_coding_chunked = Some(last_coding_is_chunked(value.as_bytes()));
        } else if name == header::CONTENT_LENGTH {
            length = length.and_then(|found| add_length(found, value.as_bytes()).map(Some));
        }
        headers.append(name, value);
    }

    let mut keep_alive = connection.allow_reuse(version);
    let no_body = *request_method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if let Some(chunked) = last_coding_chunked {
        if headers.contains_key(header::CONTENT_LENGTH) {
            // Both: Transfer-Encoding wins, the length is dropped, and the connection is not
            // reused (RFC 9112 §6.3: a sign of smuggling or a broken intermediary).
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            // Another coding last: the body runs until the connection closes (RFC 9112 §6.3).
            keep_alive = false;
            Framing::UntilClose
        }
    } else {
        match length {
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => {
                keep_alive = false;
                Framing::UntilClose
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(Parsed::Head(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// The `close` and `keep-alive` tokens of the answer's `Connection` headers.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep: bool,
}

impl ConnectionTokens {
    fn add(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',') {
            let t = token.trim_ascii();
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.keep |= t.eq_ignore_ascii_case(b"keep-alive");
        }
    }

    /// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when told to keep it.
    fn allow_reuse(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep)
    }
}

/// Whether the last coding a `Transfer-Encoding` value lists is `chunked`.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .eq_ignore_ascii_case(b"chunked")
}

/// Adds one `Content-Length` value to the length found so far: one length, however often it
/// is repeated; differing ones are an error (RFC 9110 §8.6).
fn add_length(mut found: Option<u64>, value: &[u8]) -> Result<u64, &'static str> {
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err("bad content-length in the response");
        }
        let n = digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err("conflicting content-lengths in the response");
        }
        found = Some(n);
    }
    found.ok_or("bad content-length in the response")
}

/// A streaming decoder for `Transfer-Encoding: chunked`: data leaves as soon as it is in the
/// buffer, whatever the chunk boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left.
    Data(u64),
    /// After a chunk's data: expecting its CRLF.
    DataEnd,
    /// After the last (zero) chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

/// What one decoding step gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds too little to go on: read more.
    NeedMore,
    /// The body ended.
    End,
}

impl Chunked {
    /// Decodes from the front of `buf` (consuming what it uses) until it has data, needs more
    /// bytes, or the body ends.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, String> {
        loop {
            match *self {
                Self::Done => return Ok(Step::End),
                Self::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    *self = if left == n as u64 {
                        Self::DataEnd
                    } else {
                        Self::Data(left - n as u64)
                    };
                    return Ok(Step::Data(data));
                }
                Self::DataEnd => match take_line(buf)? {
                    None => return Ok(Step::NeedMore),
                    Some(line) if line.is_empty() => *self = Self::Size,
                    Some(_) => return Err("chunk data longer than its size".into()),
                },
                Self::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    *self = if size == 0 {
                        Self::Trailers
                    } else {
                        Self::Data(size)
                    };
                }
                Self::Trailers => match take_line(buf)? {
                    None => return Ok(Step::NeedMore),
                    Some(line) if line.is_empty() => {
                        *self = Self::Done;
                        return Ok(Step::End);
                    }
                    // Trailer fields are not passed on.
                    Some(_) => {}
                },
            }
        }
    }
}

/// A line without its CRLF (a bare LF is accepted too), taken out of `buf`; `None` when the
/// line is not complete yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, String> {
    match memchr::memchr(b'\n', buf) {
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err("chunk line too long".into()),
        None => Ok(None),
    }
}

/// `1a3f;ext=1` → 0x1a3f.
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err("bad chunk size".into());
    }
    let mut n = 0u64;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err("bad chunk size".into()),
        };
        n = n * 16 + u64::from(v);
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
