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

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// A command's own page (`jetlock man hold`: jetlock-hold(1), with its
    /// flags); without it, the page of `jetlock` and its commands.
    command: Option<String>,
}

/// A man page: `jetlock`'s (its options and commands), or one command's.
pub fn man<C: CommandFactory>(args: ManArgs) -> Result<(), CliError> {
    let top = C::command();
    let page = match &args.command {
        None => top,
        Some(name) => match top.find_subcommand(name) {
            Some(sub) => sub.clone().display_name(format!("jetlock-{name}")),
            None => {
                return Err(crate::Exit::with(
                    2,
                    format!("no command `{name}`: see `jetlock --help`"),
                ))
            }
        },
    };
    let mut out = std::io::stdout().lock();
    let written = clap_mangen::Man::new(page)
        .render(&mut out)
        .and_then(|()| out.flush());
    match written {
        // `jetlock man | head`: the reader had enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
