//! `mock-gemini [ADDR]`: the mock upstream as a server, every key answered with success.
//! Used by `bench/` and for trying the proxy by hand.

use gemini_proxy_tests::{Behaviour, MockGemini};

#[tokio::main]
async fn main() {
    let mock = MockGemini::start().await;
    mock.accept_any_key(Behaviour::Ok);
    println!("mock-gemini listening on {}", mock.url());
    let _ = tokio::signal::ctrl_c().await;
}
