//! Shell completions and man pages, as the flake's package makes them:
//! `completions SHELL` and the hidden `man --out DIR` of both programs.

use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// The subcommands a program's `--help` lists (without `help`).
fn subcommands(program: &Path) -> Vec<String> {
    let help = stdout(&ok(Command::new(program).arg("--help")));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

fn has(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_and_man_pages_cover_every_subcommand_of_both_programs() {
    let bins = nixcast_pull_path().parent().unwrap().to_owned();
    let pages = tempfile::tempdir().unwrap();
    for name in ["nixcast", "nixcast-pull"] {
        let program = bins.join(name);
        let subs = subcommands(&program);
        assert!(subs.len() >= 3, "{name}: {subs:?}");

        // bash reads the script without a syntax error; it and the zsh and
        // fish scripts name every subcommand.
        let bash = ok(Command::new(&program).args(["completions", "bash"]));
        let file = pages.path().join(format!("{name}.bash"));
        std::fs::write(&file, &bash.stdout).unwrap();
        ok(Command::new("bash").arg("-n").arg(&file));
        for shell in ["bash", "zsh", "fish"] {
            let script = stdout(&ok(Command::new(&program).args(["completions", shell])));
            for s in &subs {
                assert!(script.contains(s.as_str()), "{name} {shell}: no {s}");
            }
        }

        // A page for the program and one for each subcommand.
        let out = ok(Command::new(&program)
            .args(["man", "--out"])
            .arg(pages.path()));
        let written = stdout(&out);
        let mut expected = vec![format!("{name}.1")];
        expected.extend(subs.iter().map(|s| format!("{name}-{s}.1")));
        for page in &expected {
            let path = pages.path().join(page);
            assert!(written.contains(page.as_str()), "{page} not in {written}");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains(&format!(".TH {} 1", page.trim_end_matches(".1"))),
                "{page}: {text}"
            );
        }
        // groff renders each without a warning (-ww), its input decoded as
        // man-db does (-k).
        assert!(
            has("groff"),
            "groff is missing: apt-get install -y groff-base"
        );
        for page in &expected {
            let out = ok(Command::new("groff")
                .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
                .arg(pages.path().join(page)));
            assert_eq!(stderr(&out), "", "{page}");
        }
    }
    // The man subcommand is for packaging: not in the help, nor paged.
    assert!(!pages.path().join("nixcast-man.1").exists());
}
