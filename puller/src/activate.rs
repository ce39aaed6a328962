//! Running `switch-to-configuration`, as nixos-rebuild does, and the
//! commands that judge and complete a switch: health checks and the reboot.
//!
//! When systemd is the init system (`/run/systemd/system` exists, the test
//! sd_booted() makes), the switch runs in a transient unit through
//! `systemd-run --wait`: a switch that restarts our own service cannot then
//! kill the activation half way. Otherwise it runs as a child process.
//! Either way the switch holds the run lock until it ends (its standard input
//! is the lock file, which `systemd-run --pipe` hands on to the unit): a run
//! started while a killed run's switch is still going waits for it.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nixcast_cli::command::without_secrets;
use nixcast_common::StorePath;

use crate::lock::LockShare;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Switch,
    Boot,
    Test,
    DryActivate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
            Action::DryActivate => "dry-activate",
        }
    }

    /// nixos-rebuild sets the profile for `switch` and `boot` only.
    pub fn sets_profile(self) -> bool {
        matches!(self, Action::Switch | Action::Boot)
    }
}

pub fn switch_script(top: &StorePath) -> String {
    format!("{top}/bin/switch-to-configuration")
}

/// Runs the switch; returns its exit status (0 is success, anything else a failure).
pub fn activate(top: &StorePath, action: Action, lock: &LockShare) -> Result<ExitStatus> {
    let script = switch_script(top);
    let mut cmd = if Path::new("/run/systemd/system").exists() {
        let mut c = Command::new("systemd-run");
        c.args(["-E", "LOCALE_ARCHIVE", "-E", "NIXOS_INSTALL_BOOTLOADER"])
            .args(["--collect", "--no-ask-password", "--pipe", "--quiet"])
            .args(["--service-type=exec", "--wait"])
            .arg(format!(
                "--unit=nixcast-switch-to-configuration-{}",
                std::process::id()
            ))
            .arg(&script);
        c
    } else {
        Command::new(&script)
    };
    cmd.arg(action.as_str()).stdin(lock.stdin());
    without_secrets(&mut cmd);
    tracing::info!(command = ?cmd, "activating");
    cmd.status().with_context(|| format!("cannot run {script}"))
}

/// Runs a health check with `sh -c`; a check that fails or outlives
/// `timeout` is returned as an error.
pub fn health_check(check: &str, timeout: Duration) -> Result<(), String> {
    let status = bounded(check, timeout).map_err(|e| format!("health check {check:?}: {e}"))?;
    if !status.success() {
        return Err(format!("health check {check:?} exited with {status}"));
    }
    Ok(())
}

/// How long `--reboot-command` may take: it only asks for a reboot
/// (`systemctl reboot` returns at once), and a run must not hold its lock
/// on one that hangs.
pub const REBOOT_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 120 });

/// Runs `--reboot-command` with `sh -c`; its exit status, or an error when
/// it cannot run or outlives `REBOOT_TIMEOUT` (it is killed then).
pub fn reboot(command: &str) -> Result<ExitStatus> {
    bounded(command, REBOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("--reboot-command {command:?}: {e}"))
}

/// Runs `command` with `sh -c`, without the agent's credentials, and kills
/// it (and waits for it) when it outlives `timeout`.
fn bounded(command: &str, timeout: Duration) -> Result<ExitStatus, String> {
    use std::os::unix::process::CommandExt;
    // A group of its own, so that a timeout ends whatever the command
    // started too, not only its shell.
    let mut child = without_secrets(Command::new("sh").args(["-c", command]))
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if start.elapsed() >= timeout => {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100).min(timeout)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_command_that_hangs_is_killed_and_is_an_error() {
        let err = reboot("sleep 60").unwrap_err();
        assert!(err.to_string().contains("did not finish within"), "{err}");
        assert!(reboot("exit 0").unwrap().success());
        assert_eq!(reboot("exit 3").unwrap().code(), Some(3));
    }

    #[test]
    fn a_timeout_ends_what_the_command_started_too() {
        let d = tempfile::tempdir().unwrap();
        let pid_file = d.path().join("pid");
        let cmd = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let err = health_check(&cmd, Duration::from_millis(500)).unwrap_err();
        assert!(err.contains("did not finish within"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep was killed too: it is gone (a zombie at most,
        // until init reaps it) once the kernel has delivered the signal. Had
        // it been spared, it would run for a minute.
        let gone = || {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            state.is_empty() || state.split_whitespace().nth(2) == Some("Z")
        };
        let mut tries = 0;
        while !gone() && tries < 200 {
            std::thread::sleep(Duration::from_millis(50));
            tries += 1;
        }
        assert!(
            gone(),
            "the command's background process outlived the timeout"
        );
    }

    #[test]
    fn a_health_check_that_hangs_fails() {
        let err = health_check("sleep 60", Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(health_check("true", Duration::from_secs(5)).is_ok());
    }
}
