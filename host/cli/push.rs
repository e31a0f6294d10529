//! `edge-infer push FILE oci://REGISTRY/REPOSITORY:TAG`: publishes a component or a model as
//! an OCI artifact and prints the reference pinned by digest, for configs and deploys.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use edge_infer::node::oci::{OciReference, Registries};

#[derive(Args)]
pub struct PushArgs {
    /// The component (`.wasm`) or the model (`.onnx`); which one is told by its first bytes.
    file: PathBuf,
    /// Where to publish it: oci://REGISTRY/REPOSITORY:TAG.
    reference: String,
    /// Registry credentials in the Docker config format [default: the Docker config, if any].
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// A registry (HOST:PORT) to speak plain HTTP to; those on loopback always are.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

/// Pushes, then prints the pinned reference on stdout.
pub fn run(args: PushArgs) -> anyhow::Result<()> {
    let reference: OciReference = args.reference.parse()?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let registries = Registries::load(args.credentials.as_deref(), args.insecure_registries)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let pushed = runtime.block_on(registries.push(bytes, &reference))?;
    eprintln!("pushed {} to {reference}", pushed.kind);
    println!("{}", pushed.pinned);
    Ok(())
}
