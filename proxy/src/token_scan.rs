//! Token counts read from answers as they stream past, without buffering them: the largest
//! `"totalTokenCount"` (native; cumulative in streams, so the largest is the last) or
//! `"total_tokens"` (OpenAI layer) seen anywhere in the body, even across chunk boundaries, and
//! likewise the prompt's `"promptTokenCount"` / `"prompt_tokens"` (what input-token quotas count).

use std::sync::LazyLock;

use memchr::memmem;

/// Every needle is `"total` or `"prompt` and then one of these endings: a SIMD search for the
/// endings, then a look at what precedes them, costs far less than stopping at every quote.
const ENDINGS: [&[u8]; 2] = [b"TokenCount\"", b"_tokens\""];
/// Enough to hold a needle, a colon, spaces and a number across a chunk boundary.
const CARRY: usize = 48;

pub struct TokenScan {
    /// The end of what came before (inline: no allocation per answer).
    carry: [u8; CARRY],
    carry_len: usize,
    best: u64,
    prompt: u64,
}

impl Default for TokenScan {
    fn default() -> Self {
        Self {
            carry: [0; CARRY],
            carry_len: 0,
            best: 0,
            prompt: 0,
        }
    }
}

impl TokenScan {
    pub fn feed(&mut self, chunk: &[u8]) {
        // The carried tail and the start of this chunk, for needles split between them.
        let n = self.carry_len;
        let take = chunk.len().min(CARRY);
        let mut joint = [0u8; 2 * CARRY];
        joint[..n].copy_from_slice(&self.carry[..n]);
        joint[n..n + take].copy_from_slice(&chunk[..take]);
        if n > 0 {
            self.scan(&joint[..n + take]);
        }
        self.scan(chunk);
        let tail = if chunk.len() >= CARRY {
            &chunk[chunk.len() - CARRY..]
        } else {
            let total = n + take;
            &joint[total - total.min(CARRY)..total]
        };
        self.carry[..tail.len()].copy_from_slice(tail);
        self.carry_len = tail.len();
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
        static FINDERS: LazyLock<[memmem::Finder<'static>; 2]> =
            LazyLock::new(|| ENDINGS.map(memmem::Finder::new));
        for finder in FINDERS.iter() {
            for at in finder.find_iter(buf) {
                let head = &buf[..at];
                let best = if head.ends_with(b"\"total") {
                    &mut self.best
                } else if head.ends_with(b"\"prompt") {
                    &mut self.prompt
                } else {
                    continue;
                };
                if let Some(n) = number_after(&buf[at + finder.needle().len()..]) {
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
