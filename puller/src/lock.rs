//! The run lock: an flock on `STATE_DIR/lock`, held for a whole run and
//! shared with the Nix commands and the switch the run starts, so that a run
//! killed with SIGKILL keeps the lock until its last child has exited.
//!
//! The lock is a value, not a process global: each `StateDir` has one
//! [`LockShare`], the slot its held lock's file is kept in while a run holds
//! it, and the real store and switch (`host::NixStore`, `host::Switch`) are
//! made with a clone of that slot. Two state directories in one process
//! (two unit tests at once) never see each other's lock.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use nixcast_common::pointer::Timestamp;
use serde::{Deserialize, Serialize};

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "lock";

/// A clone of the held run lock's file (the same open file description, so
/// it holds the same flock), for the children a run starts; empty while no
/// run holds the lock. Clones share the slot.
#[derive(Clone, Default)]
pub struct LockShare(Arc<Mutex<Option<File>>>);

impl LockShare {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The standard input for a Nix command or the switch: the run's lock
    /// file while a lock is held, else nothing. A child holding it keeps the
    /// lock held after the agent dies (SIGKILL, the OOM killer), so that the
    /// next run waits (`--wait`) or exits 6 instead of racing an orphaned
    /// import or switch. systemd-run `--pipe` hands it on to the switch's
    /// transient unit. The file is empty and open for reading, so a child
    /// that reads its input sees an end of file, as from /dev/null. Without
    /// `unsafe_code` there is no parent-death signal to set between fork and
    /// exec; this needs none.
    pub fn stdin(&self) -> Stdio {
        match self.slot().as_ref().map(File::try_clone) {
            Some(Ok(f)) => f.into(),
            Some(Err(e)) => {
                tracing::warn!("cannot share the run lock with a child: {e}");
                Stdio::null()
            }
            None => Stdio::null(),
        }
    }
}

/// Held for the whole run; the lock is released when the file is closed by
/// the agent and by every child it was shared with ([`LockShare::stdin`]).
/// While held, the file says which process holds it and since when (for
/// `status`); it is emptied before it is released.
pub struct Lock(LockShare);

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(f) = self.0.slot().take() {
            let _ = f.set_len(0);
        }
    }
}

/// What the lock file says about the run holding it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub pid: u32,
    pub started_at: Timestamp,
}

impl RunInfo {
    /// Whether that process still exists (a run killed with -9 leaves its
    /// line behind; its pid may in time be another process's).
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// Takes the lock on `p` without waiting, or waits for it with `wait`; while
/// held, its file is in `share` for the run's children.
pub fn take(p: &Path, wait: bool, share: &LockShare) -> Result<Option<Lock>> {
    // Readable, as it becomes the standard input of children.
    let f = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(p)
        .with_context(|| format!("cannot open {}", p.display()))?;
    let held = |mut f: File| -> Result<Lock> {
        let info = RunInfo {
            pid: std::process::id(),
            started_at: Timestamp::now(),
        };
        f.set_len(0)?;
        f.write_all(&serde_json::to_vec(&info)?)?;
        *share.slot() = Some(f);
        Ok(Lock(share.clone()))
    };
    if wait {
        f.lock()
            .with_context(|| format!("cannot lock {}", p.display()))?;
        return held(f).map(Some);
    }
    match f.try_lock() {
        Ok(()) => held(f).map(Some),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", p.display()))
        }
    }
}

/// The run that holds the lock on `p` or held it last without releasing
/// it, if any.
pub fn running(p: &Path) -> Option<RunInfo> {
    let text = nixcast_cli::fs::read_small(p, 64 << 10).ok()?;
    serde_json::from_slice(&text).ok()
}
