//! The accept loop: at most `max_connections` connections at once (others get a 503 and are
//! closed), each served by hyper's HTTP/1 server with an idle limit, and a graceful shutdown.

use std::{
    convert::Infallible,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
    sync::Semaphore,
    task::JoinSet,
};
use tower::Service;

use crate::{metrics::Metrics, Limits};

/// The whole answer to a connection over the limit.
fn busy() -> Vec<u8> {
    let body = r#"{"error":"too many connections: try again when one has closed"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` until `stop` turns true, then lets the requests in flight
/// finish (within `limits.shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(stop.clone()) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks as we go.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: at the connection limit");
            tokio::spawn(async move {
                let mut stream = stream;
                // Answer, then read what the client sent until it closes (for a second at
                // most), so closing does not reset the connection before it reads the 503.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&busy()).await;
                    let _ = stream.shutdown().await;
                    let mut sink = [0u8; 1024];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, metrics, stop) = (router.clone(), metrics.clone(), stop.clone());
        let idle = limits.idle_time;
        connections.spawn(async move {
            let _slot = slot;
            metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut router = router.clone();
                async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
            });
            // The header read timeout runs from the moment hyper waits for a request head,
            // so it also closes a keep-alive connection left idle between requests.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .max_headers(64)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                _ = stopped(stop.clone()) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "connections still open after {} s of shutdown grace: closing them",
            limits.shutdown_grace.as_secs_f64()
        );
        connections.abort_all();
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
