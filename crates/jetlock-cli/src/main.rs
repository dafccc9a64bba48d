//! The `jetlock` binary: everything lives in the `jetlock_cli` library.

fn main() -> std::process::ExitCode {
    jetlock_cli::main()
}
