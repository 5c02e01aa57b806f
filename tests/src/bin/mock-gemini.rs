//! `mock-gemini [ADDR]`: the mock upstream as a server, every key answered with success.
//! Used by `bench/` and for trying the proxy by hand.

use gemini_proxy_tests::{Behaviour, MockGemini};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let mock = MockGemini::start_on(&addr).await;
    mock.accept_any_key(Behaviour::Ok);
    println!("mock-gemini listening on {}", mock.url());
    let _ = tokio::signal::ctrl_c().await;
}
