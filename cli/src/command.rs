//! A Nix command run to its end: its standard output is returned, its
//! standard error goes into the error when it fails.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `cmd` with `stdin` as its standard input (the agent hands its run
/// lock to its children this way; the publisher gives nothing) and returns
/// what it printed.
pub fn run(cmd: &mut Command, stdin: Stdio) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(stdin)
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {shown}: is Nix installed?"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_status_and_error_text() {
        let out = run(Command::new("sh").args(["-c", "echo hi"]), Stdio::null()).unwrap();
        assert_eq!(out, "hi\n");
        let err = run(
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
            Stdio::null(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("exit status: 3") && err.ends_with(": broken"),
            "{err}"
        );
        let err = run(&mut Command::new("/nonexistent/nix"), Stdio::null()).unwrap_err();
        assert!(format!("{err:#}").contains("is Nix installed?"), "{err:#}");
    }
}
