//! The `edge-infer` binary: see `cli` for its commands.

fn main() -> std::process::ExitCode {
    edge_infer::cli::main()
}
