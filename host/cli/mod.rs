//! The command line: `edge-infer serve`, `push` and `deploy`, and `edge-infer bench` (see
//! `bench`); logging set-up, and the process's exit status.

mod deploy;
mod log_writer;
mod push;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use edge_infer::http::server::{self, ListenerPolicy, Service};
use edge_infer::http::tls;
use edge_infer::node::config::Config;
use edge_infer::node::control::{self, ControlSettings};
use edge_infer::node::oci::Registries;
use edge_infer::node::state::StateDir;
use edge_infer::node::{Node, NodeLimits};
use edge_infer::request::memory::MemoryBudget;
use edge_infer::request::tenant::TenantDirectory;
use edge_infer_bench::{self as bench, BenchArgs};

use self::log_writer::LogWriter;

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
        /// Address of the admin API [default: the config's, else 127.0.0.1:9091].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Address of the Open Inference Protocol over gRPC [default: the config's, else
        /// 127.0.0.1:8001].
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
        /// Folder keeping what was deployed, so restarts serve it again [default: the
        /// config's, else a temporary folder removed at exit].
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Publish a component or a model to an OCI registry; prints the reference pinned by
    /// digest.
    Push(push::PushArgs),
    /// Roll a route (and its models) out to many nodes: a canary, then the rest; on any
    /// failure, put back the nodes changed.
    Deploy(Box<deploy::DeployArgs>),
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
    keep_backtraces_for_panics();
    let cli = Cli::parse();
    // A server logs a line per request: its lines go through a writer thread. The other
    // commands write theirs straight away, in order with what they print.
    let background_log = matches!(cli.command, Command::Serve { .. });
    let log = init_logging(cli.log_format, background_log);
    let outcome = match cli.command {
        Command::Serve { listen, config, admin_listen, grpc_listen, state_dir } => {
            serve(Addresses { listen, admin_listen, grpc_listen, state_dir }, config, started, log.as_ref())
        }
        Command::Push(args) => push::run(args),
        Command::Deploy(args) => deploy::run(*args),
        Command::Bench(args) => bench::run(*args),
    };
    if let Some(log) = log {
        log.flush();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Unless `RUST_LIB_BACKTRACE` says otherwise, errors capture no Rust backtrace, while
/// `RUST_BACKTRACE` still gives panics theirs. Some errors are made on every request (a guest
/// stream reaching its end, an instance being torn down), and capturing a backtrace for each
/// was 7% of the server's CPU time in a profile of `/hello` with `RUST_BACKTRACE=1`.
fn keep_backtraces_for_panics() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the process has one thread so far; nothing reads the environment meanwhile.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Logs to stderr, through a writer thread if `background` (and it can be started): the
/// writer is returned, to be flushed before the process exits.
fn init_logging(format: LogFormat, background: bool) -> Option<LogWriter> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stderr().is_terminal());
    let writer = background.then(|| LogWriter::start(std::io::stderr())).and_then(Result::ok);
    match (format, &writer) {
        (LogFormat::Text, Some(writer)) => builder.with_writer(writer.clone()).init(),
        (LogFormat::Json, Some(writer)) => builder.json().with_writer(writer.clone()).init(),
        (LogFormat::Text, None) => builder.with_writer(std::io::stderr).init(),
        (LogFormat::Json, None) => builder.json().with_writer(std::io::stderr).init(),
    }
    if let Some(writer) = &writer {
        writer.flush_on_panic();
    }
    writer
}

/// Open files kept for what is not a connection (models, the state folder, the log, pipes),
/// beside the listeners' `max_connections`.
const RESERVED_DESCRIPTORS: u64 = 1024;

/// Where `serve` listens and keeps its state, from the command line.
struct Addresses {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    grpc_listen: Option<SocketAddr>,
    state_dir: Option<PathBuf>,
}

fn read_config(file: Option<&Path>) -> anyhow::Result<Config> {
    match file {
        Some(path) => Config::from_file(path),
        None => Ok(Config::bundled()),
    }
}

fn serve(
    addresses: Addresses,
    config_file: Option<PathBuf>,
    started: Instant,
    log: Option<&LogWriter>,
) -> anyhow::Result<()> {
    let config = read_config(config_file.as_deref())?;
    let server = &config.server;
    let listen = addresses.listen.unwrap_or(server.listen);
    let admin_listen = addresses.admin_listen.unwrap_or(server.admin_listen);
    let grpc_listen = addresses.grpc_listen.unwrap_or(server.grpc_listen);
    if !admin_listen.ip().is_loopback() && server.admin_token_file.is_none() {
        anyhow::bail!(
            "the admin API would listen on {admin_listen}, beyond this machine, without a token: set server.admin_token_file"
        );
    }
    let state = match addresses.state_dir.as_ref().or(server.state_dir.as_ref()) {
        Some(folder) => StateDir::open(folder)?,
        None => {
            warn!(
                "no state folder (--state-dir): what is deployed through the admin API lasts until this process exits"
            );
            StateDir::temporary()?
        }
    };
    let (admin_token, token_file) = control::admin_token(server.admin_token_file.as_deref(), &state)?;
    if let Some(file) = token_file {
        info!(file = %file.display(), "admin token made");
    }
    let registries =
        Registries::load(server.registry_credentials.as_deref(), server.insecure_registries.clone())?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    tokio.block_on(async {
        // Listen first, so health probes are answered (live, not ready) while loading.
        let listener = TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let address = listener.local_addr()?;
        let admin_listener = TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("listening on {admin_listen} for the admin API (--admin-listen)"))?;
        let admin_address = admin_listener.local_addr()?;
        let grpc_listener = TcpListener::bind(grpc_listen)
            .await
            .with_context(|| format!("listening on {grpc_listen} for gRPC (--grpc-listen)"))?;
        let grpc_address = grpc_listener.local_addr()?;
        let mut public_policy = ListenerPolicy::for_listener(server, Service::Public);
        let mut admin_policy = ListenerPolicy::for_listener(server, Service::Admin);
        let mut grpc_policy = ListenerPolicy::for_listener(server, Service::Grpc);
        server::fit_to_descriptor_limit(
            &mut [&mut public_policy, &mut admin_policy, &mut grpc_policy],
            RESERVED_DESCRIPTORS,
        );
        let tls = match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, server.tls_client_ca.as_deref())?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let settings = ControlSettings {
            compilation_cache: server.compilation_cache,
            admin_token,
            max_artifact_bytes: server.max_artifact_bytes,
            repository_changes_on_main_listener: listen.ip().is_loopback()
                || server.admin_token_file.is_some(),
            repository_changes_on_grpc_listener: grpc_listen.ip().is_loopback()
                || server.admin_token_file.is_some(),
            registries,
            public_listener: (scheme, address.port()),
        };
        let limits = NodeLimits {
            memory: MemoryBudget::new(usize::try_from(server.memory_budget_mib << 20).unwrap_or(usize::MAX)),
            tenants: TenantDirectory::new(config.tenant_policies(), server.require_credentials),
            max_infer_request_bytes: server.max_infer_request_bytes,
        };
        let node = Arc::new(Node::new(state, settings, limits));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        let public = tokio::spawn(server::serve(
            Service::Public,
            listener,
            node.clone(),
            stopped(stopping.clone()),
            public_policy,
            tls.clone(),
        ));
        let admin = tokio::spawn(server::serve(
            Service::Admin,
            admin_listener,
            node.clone(),
            stopped(stopping.clone()),
            admin_policy,
            tls.clone(),
        ));
        let grpc = tokio::spawn(server::serve(
            Service::Grpc,
            grpc_listener,
            node.clone(),
            stopped(stopping),
            grpc_policy,
            tls,
        ));
        // Taken before loading, so a SIGHUP while loading waits instead of ending the process.
        #[cfg(unix)]
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("handling SIGHUP")?;
        node.start(&config).await?;
        #[cfg(unix)]
        tokio::spawn(apply_config_on_hangup(node, config_file, hangups));
        info!(%address, %admin_address, ready_ms = started.elapsed().as_millis() as u64, "ready");
        // What start-up logged is out before the node says it is ready.
        if let Some(log) = log {
            log.flush();
        }
        // The lines on stdout, once ready: scripts and tests read the addresses from them.
        println!("edge-infer listening on {scheme}://{address}");
        println!("edge-infer admin API on {scheme}://{admin_address}");
        let grpc_scheme = if scheme == "https" { "grpcs" } else { "grpc" };
        println!("edge-infer gRPC on {grpc_scheme}://{grpc_address}");
        std::io::stdout().flush()?;
        public.await?;
        admin.await?;
        grpc.await?;
        Ok(())
    })
}

/// On each SIGHUP (from `hangups`), reads the config file again and applies its routes and
/// models (a failure is logged and changes nothing).
#[cfg(unix)]
async fn apply_config_on_hangup(
    node: Arc<Node>,
    config_file: Option<PathBuf>,
    mut hangups: tokio::signal::unix::Signal,
) {
    while hangups.recv().await.is_some() {
        let applied = match read_config(config_file.as_deref()) {
            Ok(config) => node.apply_config(&config).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match applied {
            Ok(outcome) => info!(?outcome, "SIGHUP: config file applied"),
            Err(e) => error!("SIGHUP: config file not applied, nothing changed: {e:#}"),
        }
    }
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
