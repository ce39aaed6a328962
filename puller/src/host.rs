//! What a run asks of this host, behind two small traits, so that the run's
//! steps take them as values (`config::Ports::store`, `::activator`): the real
//! ones here drive Nix and switch-to-configuration; the unit tests use fakes
//! that need neither root nor Nix.
//!
//! `Store` is everything that reads or changes the Nix store and the system
//! profile, through Nix's commands: the import, the profile's generations,
//! and the collection of what deleted generations alone held. `Activator`
//! is everything that acts on the running system through a command of the
//! host's: the switch, the health checks and the reboot. The health checks
//! and the reboot belong with the switch (not in a third trait) as they are
//! what a switch is judged by and what completes a `boot`: a test replaces
//! them together, and a run takes two values, not three.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Result;
use nixcast_common::{PublicKey, StorePath};

use crate::activate::{self, Action};
use crate::lock::LockShare;
use crate::staging::Staging;
use crate::store::{self, Collected};

/// The Nix store and the system profile.
pub trait Store: Send + Sync {
    /// The paths among `paths` that are not valid, in the order asked.
    fn missing(&self, paths: &[&StorePath]) -> Result<Vec<StorePath>>;
    /// Imports `paths` from the staging cache (their references valid or
    /// among them), protected from garbage collection by roots in its
    /// `roots()`.
    fn import(&self, staging: &Staging, paths: &[StorePath], trusted: &[PublicKey]) -> Result<()>;
    /// Makes a new generation of `profile` pointing to the valid `path`.
    fn set_profile(&self, profile: &Path, path: &StorePath) -> Result<()>;
    /// The store path `profile` points to now.
    fn profile_target(&self, profile: &Path) -> Option<StorePath>;
    /// The generation `profile` points to now.
    fn profile_generation(&self, profile: &Path) -> Option<u64>;
    /// Every generation of `profile`.
    fn list_generations(&self, profile: &Path) -> Result<Vec<u64>>;
    /// Points `profile` back at an earlier generation.
    fn switch_generation(&self, profile: &Path, generation: u64) -> Result<()>;
    fn delete_generation(&self, profile: &Path, generation: u64) -> Result<()>;
    /// Where generation `generation` of `profile` points, followed to the
    /// end (`PROFILE-N-link`); none if it cannot be read.
    fn generation_target(&self, profile: &Path, generation: u64) -> Option<PathBuf>;
    /// Deletes, of the closures of `systems` (valid paths), those paths
    /// Nix's garbage collector finds dead; what it deleted.
    fn collect_garbage(&self, systems: &[StorePath]) -> Result<Collected>;
}

/// Switching the running system.
pub trait Activator: Send + Sync {
    /// Whether `top` is a NixOS system (it has `bin/switch-to-configuration`).
    fn is_system(&self, top: &StorePath) -> bool;
    /// Runs the switch; its exit status (0 is success).
    fn activate(&self, top: &StorePath, action: Action) -> Result<ExitStatus>;
    /// Runs one health check; an error says why it failed (its exit
    /// status, or that it outlived `timeout`).
    fn health_check(&self, check: &str, timeout: Duration) -> Result<(), String>;
    /// Runs the reboot command; its exit status.
    fn reboot(&self, command: &str) -> Result<ExitStatus>;
}

/// The local store, through Nix's own commands (`store.rs`), which hold the
/// run lock of the state directory `lock` came from.
pub struct NixStore {
    lock: LockShare,
}

impl NixStore {
    pub fn new(lock: LockShare) -> Self {
        NixStore { lock }
    }
}

impl Store for NixStore {
    fn missing(&self, paths: &[&StorePath]) -> Result<Vec<StorePath>> {
        store::missing(paths.iter().copied(), &self.lock)
    }
    fn import(&self, staging: &Staging, paths: &[StorePath], trusted: &[PublicKey]) -> Result<()> {
        store::import(staging, paths, trusted, store::IMPORT_JOBS, &self.lock)
    }
    fn set_profile(&self, profile: &Path, path: &StorePath) -> Result<()> {
        store::set_profile(profile, path, &self.lock)
    }
    fn profile_target(&self, profile: &Path) -> Option<StorePath> {
        store::profile_target(profile)
    }
    fn profile_generation(&self, profile: &Path) -> Option<u64> {
        store::profile_generation(profile)
    }
    fn list_generations(&self, profile: &Path) -> Result<Vec<u64>> {
        store::list_generations(profile)
    }
    fn switch_generation(&self, profile: &Path, generation: u64) -> Result<()> {
        store::switch_generation(profile, generation, &self.lock)
    }
    fn delete_generation(&self, profile: &Path, generation: u64) -> Result<()> {
        store::delete_generation(profile, generation, &self.lock)
    }
    fn generation_target(&self, profile: &Path, generation: u64) -> Option<PathBuf> {
        store::generation_target(profile, generation)
    }
    fn collect_garbage(&self, systems: &[StorePath]) -> Result<Collected> {
        store::collect_garbage(systems, &self.lock)
    }
}

/// The system's own switch-to-configuration (`activate.rs`), holding the
/// run lock of the state directory `lock` came from.
pub struct Switch {
    lock: LockShare,
}

impl Switch {
    pub fn new(lock: LockShare) -> Self {
        Switch { lock }
    }
}

impl Activator for Switch {
    fn is_system(&self, top: &StorePath) -> bool {
        Path::new(&activate::switch_script(top)).is_file()
    }
    fn activate(&self, top: &StorePath, action: Action) -> Result<ExitStatus> {
        activate::activate(top, action, &self.lock)
    }
    fn health_check(&self, check: &str, timeout: Duration) -> Result<(), String> {
        activate::health_check(check, timeout)
    }
    fn reboot(&self, command: &str) -> Result<ExitStatus> {
        activate::reboot(command)
    }
}
