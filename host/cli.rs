//! The command line: `edge-infer serve` and `edge-infer bench` (see `bench`), logging
//! set-up, and the process's exit status.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing::info;
use tracing_subscriber::EnvFilter;

use edge_infer::http::server::{self, ConnectionLimits};
use edge_infer::http::tls;
use edge_infer::node::config::Config;
use edge_infer::node::{Node, Runtime};
use edge_infer_bench::{self as bench, BenchArgs};

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
    /// Load-test an HTTP endpoint and print throughput and latency percentiles per step.
    Bench(Box<BenchArgs>),
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
        Command::Bench(args) => bench::run(*args),
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
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    tokio.block_on(async {
        // Listen first, so health probes are answered (live, not ready) while loading.
        let listener = TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let address = listener.local_addr()?;
        let node = Arc::new(Node::default());
        let limits = ConnectionLimits::from_config(&config.server);
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = tokio::spawn(server::serve(listener, node.clone(), shutdown_signal(), limits, tls));
        node.loaded(Runtime::load(&config).await?);
        info!(%address, ready_ms = started.elapsed().as_millis() as u64, "ready");
        // The one line on stdout, once ready: scripts and tests read the address from it.
        println!("edge-infer listening on {scheme}://{address}");
        std::io::stdout().flush()?;
        server.await?;
        Ok(())
    })
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
