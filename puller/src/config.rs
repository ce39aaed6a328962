//! What a run is given, and how it can fail: below both the run's steps
//! (`run.rs`) and the download pipeline (`pipeline.rs`), so that neither
//! module reaches back into the other.

use std::path::PathBuf;
use std::sync::Arc;

use nixcast_common::PublicKey;

use crate::activate::Action;
use crate::host::{Activator, Store};
use crate::source::Source;
use crate::state::{Outcome, StateDir};

/// A run's settings, by concern. The groups live here, below every step,
/// and name only data types (the state directory, the host traits, the
/// source, the action, the window): `config.rs` sits right above `state.rs`,
/// and the steps that read it (`pipeline.rs`, `reboot.rs`, `report.rs`) one
/// floor above it.
pub struct Config {
    pub policy: Policy,
    pub ports: Ports,
    pub apply: Apply,
    pub after: After,
}

/// What a pointer must be for this host to act on it, and what opens it.
pub struct Policy {
    pub host: String,
    pub system: String,
    /// The keys pointers and narinfos must be signed by.
    pub trusted: Trusted,
    /// What opens a sealed pointer's objects; empty: the SSH host key.
    pub identity_files: Vec<PathBuf>,
    /// The largest step up from the highest accepted generation.
    pub max_generation_jump: u64,
}

/// Where the keys a host trusts come from: pinned (`--trusted-key`), or
/// the newest key list a threshold of its roots signed (`--root-key`),
/// which each run reads before it verifies a pointer.
pub enum Trusted {
    Pinned(Vec<PublicKey>),
    Roots {
        roots: nixcast_common::keylist::Trust,
        /// The signing keys of the key list the last run accepted.
        current: std::sync::Mutex<Vec<PublicKey>>,
    },
}

impl Trusted {
    /// The keys that sign for this host now.
    pub fn keys(&self) -> Vec<PublicKey> {
        match self {
            Trusted::Pinned(k) => k.clone(),
            Trusted::Roots { current, .. } => current.lock().expect("not poisoned").clone(),
        }
    }
}

/// What a run reads and changes: the cache and its upstreams, the Nix
/// store and the profile, the running system, the state directory.
pub struct Ports {
    pub source: Source,
    /// For upstream caches named in a manifest: plain http allowed, time limits, proxy.
    pub http: crate::source::HttpOptions,
    /// What opens private caches (`--netrc-file`, `--environment-file`), the upstreams' too.
    pub secrets: Arc<nixcast_cache::Secrets>,
    /// The Nix store and the profile (`host::NixStore`).
    pub store: Arc<dyn Store>,
    /// The switch, the health checks and the reboot (`host::Switch`).
    pub activator: Arc<dyn Activator>,
    pub state: StateDir,
    pub profile: PathBuf,
    /// The system the running kernel booted (`/run/booted-system`).
    pub booted_system: PathBuf,
}

/// How a run goes, up to the switch and its health checks.
pub struct Apply {
    pub action: Action,
    pub jobs: usize,
    pub dry_run: bool,
    pub wait: bool,
    /// The whole run's time limit, up to the switch.
    pub run_timeout: std::time::Duration,
    pub health_checks: Vec<String>,
    pub health_timeout: std::time::Duration,
}

/// What follows the switch and the run; none of it fails the run.
pub struct After {
    /// Where reports go (`--report-to`); none: no reports.
    pub report: Option<ReportTo>,
    /// `--allow-reboot`: none, the agent never reboots.
    pub reboot: Option<RebootPolicy>,
    /// `--keep-generations`: profile generations kept after a switch.
    pub keep_generations: Option<u32>,
    pub metrics_file: Option<PathBuf>,
}

/// The identity a sealed host opens its objects with, and signs its reports
/// with, when none is given.
pub const DEFAULT_IDENTITY: &str = "/etc/ssh/ssh_host_ed25519_key";

pub struct ReportTo {
    /// A directory, `file://DIR`, `http(s)://…` (by PUT) or `s3://…`.
    pub target: Source,
    /// A quiet host reports at least this often.
    pub interval: std::time::Duration,
    /// Reports are sealed to these (`--report-recipient`).
    pub recipients: Vec<nixcast_common::seal::Recipient>,
}

pub struct RebootPolicy {
    /// None: reboot as soon as a new kernel is installed.
    pub window: Option<crate::window::Window>,
    /// Run with `sh -c`.
    pub command: String,
}

/// Why a run failed; each kind has its own exit code (see the README).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refused: {0:#}")]
    Refused(anyhow::Error),
    #[error("fetch failed: {0:#}")]
    Fetch(anyhow::Error),
    #[error("activation failed: {0:#}")]
    Activation(anyhow::Error),
    #[error("another nixcast-pull run holds the lock in {0}; try again later or pass --wait")]
    Locked(String),
    /// Nix refused or failed to import verified paths.
    #[error("{0:#}")]
    Import(anyhow::Error),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Other(_) | RunError::Import(_) => 1,
            RunError::Refused(_) => 3,
            RunError::Fetch(_) => 4,
            RunError::Activation(_) => 5,
            RunError::Locked(_) => 6,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            RunError::Refused(_) => Outcome::Refused,
            RunError::Fetch(_) => Outcome::FetchFailed,
            RunError::Activation(_) => Outcome::ActivationFailed,
            RunError::Import(_) => Outcome::ImportFailed,
            RunError::Locked(_) | RunError::Other(_) => Outcome::LocalError,
        }
    }
}
