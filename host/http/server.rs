//! The HTTP listener: accepts connections, speaks HTTP/1.1 and HTTP/2 cleartext (prior
//! knowledge, detected per connection), and hands each request to the router.
//!
//! Shutdown is graceful: when the `shutdown` future completes, the listener closes, every
//! connection is told to finish its in-flight requests, and the server waits for them up to
//! the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::http::router;
use crate::node::Node;

/// How long to pause accepting after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `node` on `listener` until `shutdown` completes, then drains for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let http = auto::Builder::new(TokioExecutor::new());
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let service = service_fn(move |request| {
            let node = node.clone();
            async move { Ok::<_, Infallible>(router::dispatch(node, request).await) }
        });
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, "connection ended with an error: {e}");
            }
        });
    }

    drop(listener);
    node.start_draining();
    info!("shutting down: finishing in-flight requests");
    tokio::select! {
        () = connections.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(grace) => warn!("grace period over; closing the remaining connections"),
    }
}
