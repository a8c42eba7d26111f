//! The reference server of `bench/http/run.sh`: bare hyper (HTTP/1.1,
//! keep-alive, the same multi-threaded tokio runtime as the hub) answering
//! every request `204 No Content`. Prints `listening on ADDR`, serves until
//! killed.
//!
//! `cargo run --release -p polyhub-http --example bare_hyper -- 127.0.0.1:0`

use std::convert::Infallible;

use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                let mut resp = Response::new(String::new());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
