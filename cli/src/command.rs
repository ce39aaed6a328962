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

/// Leaves out of a child's environment what opens the program's caches:
/// `AWS_*` credentials and settings, and systemd's credentials directory
/// (where the NixOS module hands over the netrc and environment files).
/// The agent's children (Nix importing from a local directory, the switch,
/// health checks, the reboot command) need none of it; everything else
/// (`PATH`, locale, proxies a health check may use) is passed on.
pub fn without_secrets(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if is_secret(&name.to_string_lossy()) {
            cmd.env_remove(&name);
        }
    }
    cmd
}

fn is_secret(name: &str) -> bool {
    name.starts_with("AWS_") || name == "CREDENTIALS_DIRECTORY"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_opens_a_cache_is_not_passed_on() {
        for name in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "CREDENTIALS_DIRECTORY",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["PATH", "LANG", "https_proxy", "NIX_PATH", "HOME"] {
            assert!(!is_secret(name), "{name}");
        }
    }

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
