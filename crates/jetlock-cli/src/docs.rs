//! `jetlock completions SHELL` and `jetlock man`: generated from the clap
//! definitions, so they never fall behind the flags.

use super::CliError;
use clap::CommandFactory;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

pub fn completions<C: CommandFactory>(args: CompletionsArgs) -> Result<(), CliError> {
    let mut command = C::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "jetlock", &mut out);
    out.flush()?;
    Ok(())
}

/// The man page of `jetlock` (its options and subcommands; each
/// subcommand's flags are in `jetlock help <command>`).
pub fn man<C: CommandFactory>() -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let written = clap_mangen::Man::new(C::command())
        .render(&mut out)
        .and_then(|()| out.flush());
    match written {
        // `jetlock man | head`: the reader had enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
