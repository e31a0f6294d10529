//! Builds the example guests in `guest/` for `wasm32-wasip2`, so that `cargo build`,
//! `cargo run` and `cargo test` need no separate step.
//!
//! The guests are a workspace of their own, built in release mode into a target folder of
//! their own (beside this build's, shared by all profiles). Their folder is handed to the
//! crate as `EDGE_INFER_GUEST_DIR` (the bundled config and the tests read it). If the
//! `wasm32-wasip2` standard library is missing, this script adds it with rustup first.
//!
//! It also generates the gRPC service of the Open Inference Protocol from
//! `proto/inference.proto`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    for watched in ["guest", "wit"] {
        println!("cargo:rerun-if-changed={}", manifest_dir.join(watched).display());
    }

    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let target_dir = out_dir.ancestors().nth(4).expect("OUT_DIR is inside the target folder");
    let guest_target_dir = target_dir.join("wasm-guests");
    ensure_guest_target_installed();
    build_guests(&manifest_dir.join("guest/Cargo.toml"), &guest_target_dir);

    let built = guest_target_dir.join(GUEST_TARGET).join("release");
    println!("cargo:rustc-env=EDGE_INFER_GUEST_DIR={}", built.display());

    compile_grpc_service(&manifest_dir.join("proto"));
}

/// Generates the gRPC service (server side) from `proto/inference.proto`.
fn compile_grpc_service(proto_dir: &Path) {
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let protoc =
        protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this machine");
    // SAFETY: a build script is one thread; nothing reads the environment concurrently.
    unsafe { env::set_var("PROTOC", protoc) };
    tonic_build::configure()
        .build_client(false)
        .bytes(["."])
        .compile_protos(&[proto_dir.join("inference.proto")], &[proto_dir])
        .expect("compiling proto/inference.proto");
}

/// Adds the wasm32-wasip2 standard library to this toolchain if it is not there yet.
fn ensure_guest_target_installed() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = sysroot.is_some_and(|root| root.join("lib/rustlib").join(GUEST_TARGET).is_dir());
    if installed {
        return;
    }
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", GUEST_TARGET]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    let status = rustup.status();
    if !status.is_ok_and(|s| s.success()) {
        panic!(
            "the {GUEST_TARGET} target is missing and `rustup target add {GUEST_TARGET}` failed: install it by hand"
        );
    }
}

/// Runs `cargo build --release --target wasm32-wasip2` on the guest workspace.
fn build_guests(manifest: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", GUEST_TARGET, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    // This script runs inside another cargo build: drop what that build set for itself
    // (flags, wrappers such as clippy's, its target folder) so the guests build as if
    // from a plain shell. The jobserver is kept, so both builds share the same CPU budget.
    for (name, _) in env::vars() {
        let inherited_by_build_scripts =
            name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_MAKEFLAGS";
        if inherited_by_build_scripts
            || matches!(
                name.as_str(),
                "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            )
        {
            command.env_remove(name);
        }
    }
    let status = command.status().expect("running cargo to build the guests");
    if !status.success() {
        panic!("building the guests in {} failed (see the cargo output above)", manifest.display());
    }
}
