//! Shell completions and man pages, made from a program's own clap
//! definition, so that they never disagree with `--help`. Each binary has
//! two hidden subcommands that call these (`completions SHELL`, `man --out
//! DIR`); the flake's package runs them at build time and installs what
//! they write (`installShellCompletion`, `installManPage`).
//!
//! A man page is made for the program and for each of its subcommands that
//! is not hidden, nested ones too, named as git names its pages:
//! `nixcast.1`, `nixcast-publish.1`, `nixcast-keys-sign.1`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Command;

pub use clap_complete::Shell;

/// `completions SHELL`: a shell's completion script for the program.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `man --out DIR`: the program's man pages.
#[derive(clap::Args)]
pub struct ManArgs {
    /// The directory the pages are written to (made if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The completion script of `cmd` for `shell`.
pub fn completions(mut cmd: Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// Writes the man pages of `cmd` and of every subcommand shown in its
/// help into `dir`; returns the files written.
pub fn man_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Gives each subcommand its display name (`nixcast-publish`).
    cmd.build();
    let mut written = Vec::new();
    write_pages(cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd);
    let mut page = Vec::new();
    man.render(&mut page).context("cannot render a man page")?;
    let path = dir.join(man.get_filename());
    crate::fs::write(&path, &page, 0o644)?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program() -> Command {
        Command::new("prog")
            .about("A program")
            .subcommand(
                Command::new("run")
                    .about("Run it")
                    .arg(clap::Arg::new("fast").long("fast")),
            )
            .subcommand(Command::new("man").hide(true))
    }

    #[test]
    fn pages_for_the_program_and_each_shown_subcommand() {
        let d = tempfile::tempdir().unwrap();
        let mut names: Vec<String> = man_pages(program(), d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["prog-run.1", "prog.1"]);
        let page = std::fs::read_to_string(d.path().join("prog-run.1")).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains(".TH prog-run 1"), "{page}");
        assert!(page.contains("fast"), "{page}");
    }

    #[test]
    fn a_completion_names_the_subcommands() {
        let bash = String::from_utf8(completions(program(), Shell::Bash)).unwrap();
        assert!(bash.contains("complete -F _prog"), "{bash}");
        assert!(bash.contains("run"), "{bash}");
    }
}
