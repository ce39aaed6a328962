//! `--allow-reboot`: a new system whose kernel differs from the running one
//! is installed with `boot` instead of `switch`, and the host reboots into
//! it inside `--reboot-window`.
//!
//! "Differs" is what NixOS's `system.autoUpgrade` compares: the targets of
//! the `kernel`, `initrd` and `kernel-modules` links of the new system and
//! of `/run/booted-system` (`readlink`, not followed further). A host whose
//! booted system cannot be read (a container) is never rebooted.
//!
//! The pending reboot is kept in `status.json` (shown by `status` and in
//! reports) until the host runs that kernel: outside the window, a later
//! run reboots once the window comes. The reboot command (`--reboot-command`,
//! default `systemctl reboot`) runs once per system, after the status is
//! saved and the report sent: if the host comes back on the old kernel (a
//! boot loader that did not take the new entry), it is not rebooted again
//! for that system, which `status` says.

use std::path::{Path, PathBuf};

use anyhow::bail;
use nixcast_common::pointer::Timestamp;
use nixcast_common::StorePath;

use crate::activate::Action;
use crate::config::Config;
use crate::state::{RebootPending, Status};

/// What decides whether a system needs a reboot, in `system.autoUpgrade`'s order.
const KERNEL_LINKS: [&str; 3] = ["initrd", "kernel", "kernel-modules"];

fn kernel_of(system: &Path) -> [Option<PathBuf>; 3] {
    KERNEL_LINKS.map(|l| std::fs::read_link(system.join(l)).ok())
}

/// Whether `system` boots another kernel, initrd or modules than the booted system.
fn differs(system: &Path, booted: &Path) -> bool {
    if std::fs::metadata(booted).is_err() {
        tracing::debug!(booted = %booted.display(), "no booted system to compare kernels with");
        return false;
    }
    kernel_of(system) != kernel_of(booted)
}

/// The action for `top`: `boot` instead of `switch` when reboots are
/// allowed and its kernel is not the running one.
pub fn action_for(cfg: &Config, top: &StorePath) -> Action {
    if cfg.after.reboot.is_some()
        && cfg.apply.action.sets_profile()
        && differs(Path::new(&top.to_string()), &cfg.ports.booted_system)
    {
        tracing::info!(store_path = %top, booted = %cfg.ports.booted_system.display(), "the kernel changes: installing for the next boot");
        return Action::Boot;
    }
    cfg.apply.action
}

/// After `top` was applied with `action`: the reboot it leaves pending, if
/// any (a system applied with `switch` needs none, whatever an earlier one did).
pub fn applied(cfg: &Config, status: &mut Status, top: &StorePath, action: Action) {
    if !cfg.apply.action.sets_profile() {
        return;
    }
    let needs = cfg.after.reboot.is_some()
        && action == Action::Boot
        && differs(Path::new(&top.to_string()), &cfg.ports.booted_system);
    status.reboot_pending = match status.reboot_pending.take() {
        Some(p) if needs && p.system == *top => Some(p),
        _ if needs => Some(RebootPending {
            system: top.clone(),
            since: Timestamp::now(),
            window: window(cfg),
            requested_at: None,
        }),
        _ => None,
    };
}

fn window(cfg: &Config) -> Option<String> {
    cfg.after.reboot.as_ref()?.window.map(|w| w.to_string())
}

/// After a run: forgets a reboot the host has made, and says whether to
/// reboot now (marking it requested, so it is made once). The caller saves
/// the status and sends the report before it calls [`reboot`].
pub fn due(cfg: &Config, status: &mut Status) -> bool {
    let Some(p) = status.reboot_pending.as_mut() else {
        return false;
    };
    if !differs(Path::new(&p.system.to_string()), &cfg.ports.booted_system) {
        tracing::info!(system = %p.system, "running the new kernel: no reboot pending");
        status.reboot_pending = None;
        return false;
    }
    let Some(policy) = &cfg.after.reboot else {
        return false;
    };
    p.window = policy.window.map(|w| w.to_string());
    if let Some(at) = p.requested_at {
        tracing::warn!(
            system = %p.system,
            "a reboot into this system was requested at {at}, but the host still runs another \
             kernel; not rebooting again for it (check the boot loader)"
        );
        return false;
    }
    if let Some(w) = policy.window.filter(|w| !w.contains_now()) {
        tracing::info!(system = %p.system, window = %w, "reboot pending: waiting for the window");
        return false;
    }
    p.requested_at = Some(Timestamp::now());
    true
}

/// Runs the reboot command; on failure the reboot is pending again.
pub fn reboot(cfg: &Config, status: &mut Status) -> anyhow::Result<()> {
    let Some(policy) = &cfg.after.reboot else {
        return Ok(());
    };
    tracing::info!(command = %policy.command, "rebooting into the new kernel");
    let st = cfg.ports.activator.reboot(&policy.command);
    match st {
        Ok(st) if st.success() => Ok(()),
        st => {
            if let Some(p) = status.reboot_pending.as_mut() {
                p.requested_at = None;
            }
            match st {
                Ok(st) => bail!("--reboot-command {:?} exited with {st}", policy.command),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn system(root: &Path, name: &str, kernel: &str, initrd: &str) -> PathBuf {
        let s = root.join(name);
        std::fs::create_dir(&s).unwrap();
        symlink(format!("/nix/store/{kernel}/bzImage"), s.join("kernel")).unwrap();
        symlink(format!("/nix/store/{initrd}/initrd"), s.join("initrd")).unwrap();
        symlink(
            format!("/nix/store/{kernel}/lib/modules"),
            s.join("kernel-modules"),
        )
        .unwrap();
        s
    }

    #[test]
    fn kernel_initrd_and_modules_decide() {
        let d = tempfile::tempdir().unwrap();
        let booted = system(d.path(), "booted", "linux-6.1", "initrd-1");
        let same = system(d.path(), "same", "linux-6.1", "initrd-1");
        let kernel = system(d.path(), "kernel", "linux-6.2", "initrd-1");
        let initrd = system(d.path(), "initrd", "linux-6.1", "initrd-2");
        assert!(!differs(&same, &booted));
        assert!(differs(&kernel, &booted));
        assert!(differs(&initrd, &booted));
        // A system without the links (not NixOS) against one with them.
        let bare = d.path().join("bare");
        std::fs::create_dir(&bare).unwrap();
        assert!(differs(&bare, &booted));
        // No booted system to compare with: never a reboot.
        assert!(!differs(&kernel, &d.path().join("missing")));
    }
}
