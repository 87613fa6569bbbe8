//! A stand-in inference engine with the OpenAI chat-completions shape, for
//! the README demo and local experiments: it echoes the last user message,
//! streamed (SSE) when asked. Not a product component.

use std::time::Duration;

use aver_tests::stub_upstream::StubUpstream;

/// Serves until interrupted, printing `listening on http://ADDR` first.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let stub = StubUpstream::start().await?;
    println!("listening on {}", stub.url());
    // Streamed answers are held until released; release them continuously
    // so a streamed demo request completes.
    loop {
        stub.release_stream();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
