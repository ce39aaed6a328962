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

use anyhow::{Context, Result};
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
    tracing::info!(command = ?cmd, "activating");
    cmd.status().with_context(|| format!("cannot run {script}"))
}

/// Runs a health check with `sh -c`; a check that fails or outlives
/// `timeout` is returned as an error.
pub fn health_check(check: &str, timeout: std::time::Duration) -> Result<(), String> {
    let mut child = Command::new("sh")
        .args(["-c", check])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run health check {check:?}: {e}"))?;
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "health check {check:?} did not finish within {timeout:?}"
                ));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => return Err(format!("health check {check:?}: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("health check {check:?} exited with {status}"));
    }
    Ok(())
}

/// Runs `--reboot-command` with `sh -c`; its exit status.
pub fn reboot(command: &str) -> Result<ExitStatus> {
    Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run --reboot-command {command:?}"))
}
