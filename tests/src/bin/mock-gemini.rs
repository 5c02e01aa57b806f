//! `mock-gemini [ADDR]`: the mock upstream as a server, every key answered with success.
//! Used by `bench/` and for trying the proxy by hand. `MOCK_STREAM_CHUNKS` and
//! `MOCK_STREAM_DELAY_MS` make streamed answers that many chunks, that far apart.

#![forbid(unsafe_code)]

use gemini_proxy_tests::{Behaviour, MockGemini};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let mock = MockGemini::start_on(&addr).await;
    mock.accept_any_key(Behaviour::Ok);
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let (Some(chunks), Some(delay)) = (env("MOCK_STREAM_CHUNKS"), env("MOCK_STREAM_DELAY_MS")) {
        mock.set_stream(chunks as usize, std::time::Duration::from_millis(delay));
    }
    println!("mock-gemini listening on {}", mock.url());
    let _ = tokio::signal::ctrl_c().await;
}
