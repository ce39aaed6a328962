//! Step 1: the pointer, fetched (conditionally) and verified, held to this
//! host's policy (`policy.rs`); the rollback floor raised to it before
//! anything is downloaded, and the pointer accepted once handled.

use std::time::SystemTime;

use nixcast_common::layout;
use nixcast_common::pointer::{self, Head, Pointer, Tombstone, Verified};

use super::{fetch_error, policy, Config, RunError};
use crate::source::{Fetched, Validators};
use crate::state::Status;

/// What step 1 found at the host's `hosts/<host>.json`.
pub(super) enum Read {
    /// The server says it has not changed.
    NotModified,
    Pointer(Box<(Verified<Pointer>, Validators)>),
    /// The host is retired: a tombstone that verified and holds to this
    /// host's floor like a pointer.
    Retired(Verified<Tombstone>),
}

/// Step 1: the pointer (or a tombstone), fetched (conditionally) and
/// verified, and held to this host's policy.
pub(super) async fn read_pointer(
    cfg: &Config,
    status: &Status,
    t0: SystemTime,
) -> Result<Read, RunError> {
    let key = layout::pointer(&cfg.policy.host);
    let validators = if cfg.apply.dry_run {
        Default::default()
    } else {
        status.validators.clone()
    };
    let (bytes, new_validators) = match cfg
        .ports
        .source
        .get_pointer(&key, pointer::MAX_ENVELOPE_SIZE as u64, &validators)
        .await
        .map_err(fetch_error)?
    {
        Fetched::NotModified => {
            not_modified(status, t0).map_err(RunError::Refused)?;
            super::keys::recheck(cfg).await?;
            tracing::info!(url = %cfg.ports.source.url_of(&key), "pointer not modified");
            return Ok(Read::NotModified);
        }
        Fetched::Body(b, v) => (b, v),
    };
    let trusted = super::keys::trusted(cfg).await?;
    let refused = |e: anyhow::Error| {
        RunError::Refused(e.context(format!("pointer {}", cfg.ports.source.url_of(&key))))
    };
    let verified = match pointer::verify_head(&bytes, &trusted) {
        Ok(Head::Pointer(v)) => v,
        Ok(Head::Retired(t)) => {
            policy::check_tombstone(cfg, status, &t, t0).map_err(refused)?;
            return Ok(Read::Retired(t));
        }
        Err(e) => return Err(refused(e.into())),
    };
    policy::check_policy(cfg, status, &verified, t0).map_err(RunError::Refused)?;
    let p = verified.get();
    tracing::info!(
        generation = p.generation,
        sealed = p.manifest.sealed.is_some(),
        key = verified.key_name(),
        "pointer verified"
    );
    Ok(Read::Pointer(Box::new((verified, new_validators))))
}

/// A `304 Not Modified` stands for the pointer whose validators were sent, so
/// that pointer's time limits still apply: a path or a CDN that answers 304
/// for ever must not keep a host on an expired pointer while it looks healthy.
fn not_modified(status: &Status, t0: SystemTime) -> anyhow::Result<()> {
    if let Some(exp) = status.pointer_expires_at {
        anyhow::ensure!(
            exp.system_time() > t0,
            "the server answers 304 Not Modified, but the pointer it stands for (generation {}) \
             expired at {exp}",
            status.highest_generation
        );
    }
    Ok(())
}

/// Raises the rollback floor to this pointer before anything is downloaded,
/// as TUF does.
pub(super) fn raise_floor(status: &mut Status, v: &Verified<Pointer>) {
    let p = v.get();
    status.highest_generation = p.generation;
    status.highest_digest = Some(v.digest());
    status.last_issued_at = Some(p.issued_at);
    status.pointer_sealed = Some(p.manifest.sealed.is_some());
}

/// Records the tombstone as the pointer's floor: no pointer below it, nor
/// issued before it, is ever applied again (a host added back gets a higher
/// generation). Its validators are not kept: every run reads it again, a
/// few hundred bytes, and says so again.
pub(super) fn raise_floor_to_tombstone(status: &mut Status, t: &Verified<Tombstone>) {
    status.highest_generation = t.get().generation;
    status.highest_digest = Some(t.digest());
    status.last_issued_at = Some(t.get().issued_at);
    // Nor those of the pointer before it: a 304 for them stands for no
    // tombstone.
    status.validators = Default::default();
    status.pointer_expires_at = None;
}

/// Records the pointer as handled to the end: its validators (for the next
/// conditional request) and its expiry.
pub(super) fn accept(status: &mut Status, v: &Verified<Pointer>, validators: Validators) {
    let p = v.get();
    status.applied_generation = Some(p.generation);
    status.validators = validators;
    status.pointer_expires_at = p.expires_at;
}
