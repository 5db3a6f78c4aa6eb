//! The load benchmark's ceiling: the least a hyper 1 server can do for a WeChat callback. It
//! buffers the whole body and answers `success`, with no signature check, no store and no
//! delivery, on the same runtime and HTTP stack as the proxy. The proxy's throughput is reported
//! as a fraction of this one's.
//!
//! `load-bare --listen 127.0.0.1:9100`
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(about = "Load-bench ceiling: buffer the body, answer `success`")]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("load-bare listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let response = match request.into_body().collect().await {
                        Ok(_) => Response::new(Full::new(Bytes::from_static(b"success"))),
                        Err(_) => {
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = StatusCode::BAD_REQUEST;
                            response
                        }
                    };
                    Ok::<_, Infallible>(response)
                },
            );
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
