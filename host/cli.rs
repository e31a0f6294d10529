//! The command line: `edge-infer serve`, logging set-up, and the process's exit status.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::loadgen::{self, Load, Report};
use crate::runtime::{Node, Runtime};
use crate::server;

/// A WebAssembly edge inference runtime.
#[derive(Parser)]
#[command(name = "edge-infer", version, about)]
struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured routes (with no --config: the bundled examples).
    Serve {
        /// Address to listen on [default: the config's, else 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load-test an HTTP endpoint (closed loop: each client sends its next request when the
    /// previous one is answered) and print throughput and latency percentiles.
    Bench {
        /// The endpoint, e.g. http://127.0.0.1:8080/digits
        url: http::Uri,
        /// Clients at each step, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        concurrency: Vec<usize>,
        /// Measured seconds per step.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Unmeasured seconds before each step.
        #[arg(long, default_value_t = 1.0)]
        warm_up: f64,
        /// Request body, read from this file; with a body the method defaults to POST.
        #[arg(long)]
        body: Option<PathBuf>,
        /// HTTP method [default: POST with a body, else GET].
        #[arg(long)]
        method: Option<http::Method>,
        /// Content-Type of the body.
        #[arg(long)]
        content_type: Option<String>,
        /// HTTP/2 with prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Serve { listen, config } => serve(listen, config, started),
        Command::Bench { url, concurrency, duration, warm_up, body, method, content_type, http2 } => {
            let body = match &body {
                Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
                None => Ok(Vec::new()),
            };
            body.and_then(|body| {
                let method =
                    method.unwrap_or(if body.is_empty() { http::Method::GET } else { http::Method::POST });
                let load = Load {
                    url,
                    method,
                    body: body.into(),
                    content_type,
                    concurrency: 1,
                    warm_up: Duration::from_secs_f64(warm_up),
                    duration: Duration::from_secs_f64(duration),
                    http2,
                };
                bench(load, &concurrency)
            })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(listen: Option<SocketAddr>, config_file: Option<PathBuf>, started: Instant) -> anyhow::Result<()> {
    let config = match &config_file {
        Some(path) => Config::from_file(path)?,
        None => Config::bundled(),
    };
    let listen = listen.unwrap_or(config.server.listen);
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    tokio.block_on(async {
        // Listen first, so health probes are answered (live, not ready) while loading.
        let listener = TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let address = listener.local_addr()?;
        let node = Arc::new(Node::default());
        let server = tokio::spawn(server::serve(listener, node.clone(), shutdown_signal(), grace));
        node.loaded(Runtime::load(&config).await?);
        info!(%address, ready_ms = started.elapsed().as_millis() as u64, "ready");
        // The one line on stdout, once ready: scripts and tests read the address from it.
        println!("edge-infer listening on http://{address}");
        std::io::stdout().flush()?;
        server.await?;
        Ok(())
    })
}

/// Runs one load step per concurrency level and prints a row for each.
fn bench(load: Load, steps: &[usize]) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("{} {} ({})", load.method, load.url, if load.http2 { "HTTP/2" } else { "HTTP/1.1" });
    println!("{}", Report::HEADER);
    for &concurrency in steps {
        let report = tokio.block_on(loadgen::run(&Load { concurrency, ..load.clone() }))?;
        println!("{}", report.row());
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
