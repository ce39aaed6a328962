//! `nixcast-pull`: the agent on each host. Reads its signed pointer, fetches
//! and verifies what is missing, imports it through Nix, sets the system
//! profile and switches.
//!
//! Exit codes: 0 applied or nothing to do, 1 local error, 2 usage,
//! 3 refused (verification failed), 4 fetch failed, 5 activation failed,
//! 6 another run holds the lock, 7 this host is retired (a verified
//! tombstone in place of its pointer: nothing applied), 8 (`enroll`) not
//! published within `--enroll-timeout`.

mod activate;
mod cmd;
mod config;
mod delta;
mod enroll;
mod fetch;
mod generations;
mod host;
mod lock;
mod pipeline;
mod reboot;
mod report;
mod run;
mod schedule;
mod source;
mod space;
mod staging;
mod state;
mod store;
#[cfg(test)]
mod testing;
mod window;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use nixcast_cli::docs;
use nixcast_cli::logging::{self, LogArgs, LogFormat};
use nixcast_cli::text;

#[derive(Parser)]
#[command(
    name = "nixcast-pull",
    version,
    about = "Pull and switch to this host's signed NixOS system"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the pointer once and apply it if it changed.
    Run(Box<cmd::run::Args>),
    /// Go back to the previous system generation by hand; the generation
    /// left is recorded as bad so that later runs do not apply it again.
    Rollback(cmd::rollback::Args),
    /// Show what the agent last did.
    Status(cmd::status::Args),
    /// Print a shell completion script (`nixcast-pull completions bash > …`).
    Completions(docs::CompletionsArgs),
    /// Write the man pages of nixcast-pull and its subcommands (for packaging).
    #[command(hide = true)]
    Man(docs::ManArgs),
    /// Join the fleet: send this host's SSH key with the token `nixcast invite` printed, wait
    /// until the host is accepted and published, then apply it as `run` does.
    Enroll(Box<cmd::enroll::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log.log_format;
    // Text logs are escaped: they quote what servers and files say.
    let text = logging::Text {
        writer: || text::CleanStderr,
        ansi: false,
    };
    logging::init(format, "info", text);
    let done = match cli.command {
        Cmd::Run(args) => cmd::run::run(*args),
        Cmd::Rollback(args) => cmd::rollback::rollback(&args),
        Cmd::Status(args) => cmd::status::status(&args),
        Cmd::Completions(a) => {
            use std::io::Write;
            let script = docs::completions(Cli::command(), a.shell);
            std::io::stdout()
                .write_all(&script)
                .map_err(|e| cmd::Failure {
                    code: 1,
                    message: e.to_string(),
                })
        }
        Cmd::Man(a) => man(&a.out),
        Cmd::Enroll(args) => cmd::enroll::enroll(*args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // Each error is told once: as the last line in text mode, as a
            // log event in JSON mode (where a bare line would break the stream).
            match format {
                LogFormat::Text => eprintln!("error: {}", text::clean(&f.message)),
                LogFormat::Json => tracing::error!("{}", text::clean(&f.message)),
            }
            ExitCode::from(f.code)
        }
    }
}

/// `man --out DIR`: the pages written, one path a line.
fn man(out: &std::path::Path) -> Result<(), cmd::Failure> {
    let pages = docs::man_pages(Cli::command(), out).map_err(|e| cmd::Failure {
        code: 1,
        message: format!("{e:#}"),
    })?;
    for page in pages {
        println!("{}", page.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
