use super::*;

#[test]
fn text_counts_four_bytes_a_token_and_ignores_the_structure() {
    let body = br#"{"contents":[{"role":"user","parts":[{"text":"abcdefgh"}]}]}"#;
    // "user" (1) + "abcdefgh" (2); keys and punctuation are free.
    assert_eq!(estimate_input_tokens(body), 3);
    let long = "x".repeat(400_001);
    let body = format!(r#"{{"contents":[{{"parts":[{{"text":"{long}"}}]}}]}}"#);
    assert_eq!(estimate_input_tokens(body.as_bytes()), 100_001);
}

#[test]
fn media_parts_count_as_one_image_whatever_their_size() {
    let data = "A".repeat(3_000_000);
    let native = format!(
        r#"{{"contents":[{{"parts":[{{"text":"what is this?"}},{{"inlineData":{{"mimeType":"image/png","data":"{data}"}}}},{{"file_data":{{"file_uri":"https://x/files/abc"}}}}]}}]}}"#
    );
    assert_eq!(
        estimate_input_tokens(native.as_bytes()),
        4 + 2 * MEDIA_PART_TOKENS
    );
    let openai = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"text","text":"hi"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{data}"}}}}]}}]}}"#
    );
    // "m", "user", "text", "hi", "image_url" (the type's value) and one image.
    assert_eq!(
        estimate_input_tokens(openai.as_bytes()),
        1 + 1 + 1 + 1 + 3 + MEDIA_PART_TOKENS
    );
}

#[test]
fn a_body_that_is_not_json_counts_as_text() {
    assert_eq!(estimate_input_tokens(b"not json at all!"), 4);
    assert_eq!(estimate_input_tokens(b""), 0);
}

#[test]
fn nesting_beyond_serde_json_limit_is_text_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(estimate_input_tokens(deep.as_bytes()), 50_000);
}
