//! Step 2: the manifest the verified pointer pins, rebuilt from a delta or
//! fetched whole, opened if sealed (with this host's identities), and held
//! to the pin (`Pinned::check`).

use std::path::PathBuf;
use std::sync::Arc;

use nixcast_cache::reader::{self, ReadError};
use nixcast_common::manifest::MAX_SIZE;
use nixcast_common::pinned::Pinned;
use nixcast_common::pointer::{Pointer, Verified};
use nixcast_common::seal::Identity;
use nixcast_common::Sha256Hash;

use super::{fetch_error, other, Config, RunError};
use crate::config::DEFAULT_IDENTITY;

/// Only objects sealed to this host's identities are opened, and only after
/// the pointer that pins them verified.
pub(super) fn identities_for(
    cfg: &Config,
    v: &Verified<Pointer>,
) -> Result<Arc<[Identity]>, RunError> {
    Ok(match &v.get().manifest.sealed {
        Some(_) => load_identities(cfg)?.into(),
        None => Arc::new([]),
    })
}

/// Step 2: the manifest the verified pointer pins, rebuilt from a delta or
/// fetched whole, opened if sealed, and held to the pin (`Pinned::check`):
/// the shared read path, given the manifest this agent verified last.
/// Returns it with the sha256 of the manifest held before (which names the
/// NAR deltas to ask for).
pub(super) async fn fetch_manifest(
    cfg: &Config,
    v: &Verified<Pointer>,
    ids: &[Identity],
) -> Result<(Pinned, Option<Sha256Hash>), RunError> {
    // The base is the agent's own file, bounded all the same.
    let base = nixcast_cli::fs::read_small(&cfg.ports.state.manifest(), MAX_SIZE).ok();
    let held = base.as_deref().map(Sha256Hash::digest);
    let (bytes, manifest) = reader::pinned_from(&cfg.ports.source, v, ids, base)
        .await
        .map_err(|e| match e {
            ReadError::Fetch(e) => fetch_error(e),
            ReadError::Refused(e) => RunError::Refused(e),
        })?;
    if !cfg.apply.dry_run {
        if let Err(e) = nixcast_cli::fs::write(&cfg.ports.state.manifest(), &bytes, 0o644) {
            tracing::warn!("cannot keep the manifest for the next run's delta: {e:#}");
        }
    }
    Ok((manifest, held))
}

/// The identities given, or the SSH host key.
fn load_identities(cfg: &Config) -> Result<Vec<Identity>, RunError> {
    let default = [PathBuf::from(DEFAULT_IDENTITY)];
    let files = if cfg.policy.identity_files.is_empty() {
        &default[..]
    } else {
        &cfg.policy.identity_files[..]
    };
    nixcast_cli::keys::read_identities(files)
        .map_err(|e| other(e.context("the pointer is sealed (give --identity to open it)")))
}
