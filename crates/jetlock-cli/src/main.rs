//! The `jetlock` binary: everything lives in the `jetlock_cli` library.

/// A coordinator allocates and frees small objects for every message it
/// reads. Under glibc's malloc that was a fifth of its CPU, and a burst of
/// queued waiters left twice the memory behind (README, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jetlock_cli::main()
}
