//! Token counts read from answers as they stream past, without buffering them: the largest
//! `"totalTokenCount"` (native; cumulative in streams, so the largest is the last) or
//! `"total_tokens"` (OpenAI layer) seen anywhere in the body, even across chunk boundaries, and
//! likewise the prompt's `"promptTokenCount"` / `"prompt_tokens"` (what input-token quotas count).

/// (needle, counts the prompt rather than the total)
const NEEDLES: [(&[u8], bool); 4] = [
    (b"\"totalTokenCount\"", false),
    (b"\"total_tokens\"", false),
    (b"\"promptTokenCount\"", true),
    (b"\"prompt_tokens\"", true),
];
/// Enough to hold a needle, a colon, spaces and a number across a chunk boundary.
const CARRY: usize = 48;

#[derive(Default)]
pub struct TokenScan {
    carry: Vec<u8>,
    best: u64,
    prompt: u64,
}

impl TokenScan {
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.carry.is_empty() {
            let mut joint = std::mem::take(&mut self.carry);
            joint.extend_from_slice(&chunk[..chunk.len().min(CARRY)]);
            self.scan(&joint);
            self.carry = joint;
        }
        self.scan(chunk);
        if chunk.len() >= CARRY {
            self.carry.clear();
            self.carry.extend_from_slice(&chunk[chunk.len() - CARRY..]);
        } else {
            // `carry` holds the old tail and the whole short chunk: keep its end.
            let start = self.carry.len().saturating_sub(CARRY);
            self.carry.drain(..start);
            if self.carry.is_empty() {
                self.carry.extend_from_slice(chunk);
            }
        }
    }

    /// The token count found so far (0 if none).
    pub fn tokens(&self) -> u64 {
        self.best
    }

    /// The prompt's token count found so far (0 if none).
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt
    }

    fn scan(&mut self, buf: &[u8]) {
        let mut i = 0;
        while let Some(off) = memchr::memchr(b'"', &buf[i..]) {
            let at = i + off;
            i = at + 1;
            // Every needle starts with `"t` or `"p`: most quotes are passed at once.
            if !matches!(buf.get(at + 1), Some(b't' | b'p')) {
                continue;
            }
            for (needle, prompt) in NEEDLES {
                if buf[at..].starts_with(needle)
                    && let Some(n) = number_after(&buf[at + needle.len()..])
                {
                    let best = if prompt {
                        &mut self.prompt
                    } else {
                        &mut self.best
                    };
                    *best = (*best).max(n);
                }
            }
        }
    }
}

/// `: 123,` → 123; `None` when the number may run on past the end of `buf`.
fn number_after(buf: &[u8]) -> Option<u64> {
    let mut it = buf
        .iter()
        .copied()
        .enumerate()
        .skip_while(|(_, b)| b.is_ascii_whitespace());
    let (_, colon) = it.next()?;
    if colon != b':' {
        return None;
    }
    let mut value: u64 = 0;
    let mut digits = 0;
    for (_, b) in it.skip_while(|(_, b)| b.is_ascii_whitespace()) {
        if b.is_ascii_digit() {
            value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            digits += 1;
        } else {
            return (digits > 0).then_some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(text: &str, piece: usize) -> u64 {
        scanned(text, piece).tokens()
    }

    fn scanned(text: &str, piece: usize) -> TokenScan {
        let mut s = TokenScan::default();
        for c in text.as_bytes().chunks(piece) {
            s.feed(c);
        }
        s
    }

    #[test]
    fn finds_native_and_openai_counts_in_any_split() {
        let native = r#"{"candidates": [],"usageMetadata": {"promptTokenCount": 5,"totalTokenCount": 1234}}"#;
        let pretty = "{\n  \"usageMetadata\": {\n    \"totalTokenCount\" : 77\n  }\n}\n";
        let openai = r#"{"usage":{"completion_tokens":7,"prompt_tokens":5,"total_tokens":12}}"#;
        for piece in [1, 2, 3, 7, 16, 1000] {
            assert_eq!(scan_in_pieces(native, piece), 1234, "piece {piece}");
            assert_eq!(scan_in_pieces(pretty, piece), 77, "piece {piece}");
            assert_eq!(scan_in_pieces(openai, piece), 12, "piece {piece}");
            assert_eq!(scanned(native, piece).prompt_tokens(), 5, "piece {piece}");
            assert_eq!(scanned(openai, piece).prompt_tokens(), 5, "piece {piece}");
        }
    }

    #[test]
    fn streams_keep_the_cumulative_total() {
        let sse = "data: {\"usageMetadata\": {\"totalTokenCount\": 7}}\r\n\r\ndata: {\"usageMetadata\": {\"totalTokenCount\": 19}}\r\n\r\n";
        for piece in [1, 5, 64] {
            assert_eq!(scan_in_pieces(sse, piece), 19);
        }
    }

    #[test]
    fn nothing_found_is_zero() {
        assert_eq!(scan_in_pieces("{\"totalTokenCount\": }", 4), 0);
        assert_eq!(scan_in_pieces("no usage here", 3), 0);
    }
}
