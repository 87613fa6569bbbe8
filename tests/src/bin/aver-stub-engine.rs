//! A stand-in inference engine with the OpenAI chat-completions shape, for
//! the README demo and local experiments: it echoes the last user message,
//! streamed (SSE) when asked. Not a product component.
#![forbid(unsafe_code)]

use std::time::Duration;

use aver_tests::stub_upstream::StubUpstream;

/// Serves until interrupted, printing `listening on http://ADDR` first.
/// The address is the first argument (e.g. `127.0.0.1:8000`, as in the kind
/// suite's engine image), or a free loopback port.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let stub = match std::env::args().nth(1) {
        Some(addr) => {
            let addr = addr
                .parse()
                .map_err(|_| anyhow::anyhow!("{addr:?} is not an address like 127.0.0.1:8000"))?;
            StubUpstream::start_on(addr).await?
        }
        None => StubUpstream::start().await?,
    };
    println!("listening on {}", stub.url());
    // Streamed answers are held until released; release them continuously
    // so a streamed demo request completes.
    // SIGTERM too: as PID 1 of a container (the kind suite's engine image)
    // nothing else would end it before the grace period runs out.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        stub.release_stream();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
