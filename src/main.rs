//! The `jetlock` binary: everything lives in [`jetlock::cli`].

fn main() -> std::process::ExitCode {
    jetlock::cli::main()
}
