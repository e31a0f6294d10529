//! The `edge-infer` binary: its command line (`cli`) over the `edge_infer` library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
