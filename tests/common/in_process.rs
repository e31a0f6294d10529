//! A node started inside the test's own process through the library (`edge_infer::start`),
//! for tests where no process boundary is under test. It runs on a tokio runtime of its own
//! thread, so it outlives any one test's runtime, and listens on ephemeral loopback ports as
//! `edge-infer serve` would. Its log and its metrics are the test process's, shared with any
//! other node the same test binary runs: tests that read those start a process instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use edge_infer::node::config::Config;
use edge_infer::node::state::StateDir;
use edge_infer::serving::{Addresses, Listeners};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running in-process node: dropping it stops its listeners, and its runtime drains in the
/// background.
pub struct InProcessNode {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a node serving `config` (TOML; relative paths from `base`) on `state_dir`, and waits
/// until it is ready, for at most `timeout`; on failure, the error the library gave.
pub fn start(
    config: &str,
    base: &Path,
    state_dir: &Path,
    timeout: Duration,
) -> Result<(InProcessNode, Addresses), String> {
    let config = Config::from_toml(config, base).map_err(|e| format!("{e:#}"))?;
    start_config(config, state_dir.to_path_buf(), timeout)
}

/// Starts a node serving the bundled examples, as [`start`] does.
pub fn start_bundled(state_dir: &Path, timeout: Duration) -> Result<(InProcessNode, Addresses), String> {
    start_config(Config::bundled(), state_dir.to_path_buf(), timeout)
}

fn start_config(
    config: Config,
    state_dir: PathBuf,
    timeout: Duration,
) -> Result<(InProcessNode, Addresses), String> {
    let (ready, started) = mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("in-process-node".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
                let listeners = async {
                    Ok::<_, std::io::Error>(Listeners {
                        public: TcpListener::bind(loopback).await?,
                        admin: TcpListener::bind(loopback).await?,
                        grpc: TcpListener::bind(loopback).await?,
                    })
                };
                let listeners = match listeners.await {
                    Ok(listeners) => listeners,
                    Err(e) => return drop(ready.send(Err(format!("binding: {e}")))),
                };
                let state = match StateDir::open(&state_dir) {
                    Ok(state) => state,
                    Err(e) => return drop(ready.send(Err(format!("{e:#}")))),
                };
                let shutdown = async {
                    let _ = stopped.await;
                };
                match edge_infer::start(&config, listeners, state, shutdown).await {
                    Ok(serving) => {
                        let _ = ready.send(Ok(serving.addresses()));
                        let _ = serving.finished().await;
                    }
                    Err(e) => drop(ready.send(Err(format!("{e:#}")))),
                }
            });
            // What is still draining when the listeners have closed is dropped, not awaited.
            runtime.shutdown_background();
        })
        .unwrap();
    match started.recv_timeout(timeout) {
        Ok(Ok(addresses)) => Ok((InProcessNode { stop: Some(stop) }, addresses)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("the in-process node was not ready in {timeout:?}")),
    }
}
