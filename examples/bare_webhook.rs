//! The bare limit for the webhook benchmark: an axum server that only reads the request body
//! and answers 200, so `scripts/bench-webhooks` can measure herald's endpoints against what
//! the same machine does with no herald in the way, in the same run.
//!
//! ```sh
//! cargo run --release --example bare_webhook -- 127.0.0.1:9100
//! ```

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;

async fn accept(body: Bytes) -> &'static str {
    std::hint::black_box(body.len());
    "{\"errcode\":0,\"errmsg\":\"ok\"}"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    let app = Router::new().fallback(post(accept));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare webhook listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
