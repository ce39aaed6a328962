//! `nixcast`: the trusted side. Makes keys, publishes hosts into a signed
//! static cache, and serves a cache directory for tests and demos.
//!
//! Each subcommand's flags and call are in `cmd/<name>.rs`; the modules
//! beside this file do the work.
//!
//! Exit codes: 0 success (also "nothing to publish"), 1 error, 2 usage.

mod bundle;
mod cache;
mod cmd;
mod compress;
mod delta;
mod enroll;
mod fleet;
mod gc;
mod inspect;
mod invite;
mod keygen;
mod keys;
mod nix;
mod pad;
mod parallel;
mod promote;
mod publish;
mod resign;
mod retire;
mod sealing;
mod serve;
mod table;
mod target;
#[cfg(test)]
mod testing;
mod upstream;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use nixcast_cli::docs;
use nixcast_cli::logging::{self, LogArgs};

#[derive(Parser)]
#[command(
    name = "nixcast",
    version,
    about = "Publish NixOS hosts as a signed static Nix binary cache"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a signing key pair in Nix's format (as `nix-store --generate-binary-cache-key`).
    Keygen(cmd::keygen::Args),
    /// The key list: which keys may sign for the fleet, signed by offline root keys.
    #[command(subcommand)]
    Keys(cmd::keys::Args),
    /// Publish a host's system closure and a signed pointer to it.
    Publish(cmd::publish::Args),
    /// List every host in a cache: generation, store path, times, closure size.
    Hosts(cmd::hosts::Args),
    /// Make a staged generation current: sign a fresh pointer for it.
    Promote(cmd::promote::Args),
    /// What changed between two generations of a host (default: the latest and the one before).
    Diff(cmd::diff::Args),
    /// Write a host's pointer, manifest and the NARs a base lacks into one file.
    Bundle(cmd::bundle::Args),
    /// Retire a host: a signed tombstone replaces its pointer, its key leaves the recipients file.
    Retire(cmd::retire::Args),
    /// Delete what no kept generation of any host needs.
    Gc(cmd::gc::Args),
    /// Serve a cache directory over HTTP, read-only.
    Serve(cmd::serve::Args),
    /// Print a shell completion script (`nixcast completions bash > /etc/bash_completion.d/nixcast`).
    Completions(docs::CompletionsArgs),
    /// Write the man pages of nixcast and its subcommands (for packaging).
    #[command(hide = true)]
    Man(docs::ManArgs),
    /// Invite a new machine: publish the agent and print the one command that enrolls it.
    Invite(cmd::invite::Args),
    /// Enrollment requests of invited hosts.
    #[command(subcommand)]
    Enroll(cmd::enroll::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log.log_format;
    let text = logging::Text {
        writer: std::io::stderr,
        ansi: std::io::stderr().is_terminal(),
    };
    logging::init(format, "warn", text);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::report_error(&e);
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Keygen(a) => cmd::keygen::run(a),
        Cmd::Keys(a) => cmd::keys::run(a),
        Cmd::Publish(a) => cmd::publish::run(a),
        Cmd::Hosts(a) => cmd::hosts::run(a),
        Cmd::Promote(a) => cmd::promote::run(a),
        Cmd::Diff(a) => cmd::diff::run(a),
        Cmd::Bundle(a) => cmd::bundle::run(a),
        Cmd::Retire(a) => cmd::retire::run(a),
        Cmd::Gc(a) => cmd::gc::run(a),
        Cmd::Serve(a) => cmd::serve::run(a),
        Cmd::Completions(a) => {
            use std::io::Write;
            let script = docs::completions(Cli::command(), a.shell);
            Ok(std::io::stdout().write_all(&script)?)
        }
        Cmd::Man(a) => {
            for page in docs::man_pages(Cli::command(), &a.out)? {
                println!("{}", page.display());
            }
            Ok(())
        }
        Cmd::Invite(a) => cmd::invite::run(a),
        Cmd::Enroll(a) => cmd::enroll::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_spellings_are_accepted_and_not_shown() {
        Cli::command().debug_assert();
        let old: [&[&str]; 7] = [
            &["publish", "--host", "h", "--path", "p", "--to", "d"],
            &["bundle", "--host", "h", "--from", "d", "--output", "o"],
            &["hosts", "--to", "d", "--public-key-file", "k"],
            &["diff", "--to", "d", "--host", "h", "--public-key-file", "k"],
            &["gc", "--to", "d", "--keep", "1"],
            &["promote", "--to", "d", "--host", "h"],
            &["serve", "d"],
        ];
        for args in old {
            let argv = ["nixcast"].iter().chain(args).chain(
                // Given as a flag, not the environment, which tests share.
                ["--secret-key-file", "k"]
                    .iter()
                    .filter(|_| matches!(args[0], "publish" | "promote")),
            );
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("{args:?}: {e}");
            }
        }
        let mut cli = Cli::command();
        for name in ["publish", "bundle", "hosts", "diff", "gc", "promote"] {
            let help = cli
                .find_subcommand_mut(name)
                .unwrap()
                .render_long_help()
                .to_string();
            for spelling in ["--to", "--from", "--public-key-file"] {
                assert!(!help.contains(spelling), "{name} shows {spelling}: {help}");
            }
        }
    }
}
