//! The steps of a run after the lock, in order, each in its module: the
//! pointer (`pointer.rs`, `policy.rs`), the manifest (`manifest.rs`), what
//! is missing (`missing.rs`), its import (`import.rs`), the switch
//! (`switch.rs`), and what follows a switch (`after.rs`).

use std::time::SystemTime;

use nixcast_common::pinned;
use nixcast_common::pointer::{Timestamp, Tombstone, Verified};
use nixcast_common::StorePath;

use super::{after, import, manifest, missing, pointer, switch, Config, RunError};
use crate::delta::Deltas;
use crate::state::{Outcome, Status};

/// Every `return` here is an outcome; a step that fails ends the run with
/// its error.
pub(super) async fn apply(cfg: &Config, status: &mut Status) -> Result<Outcome, RunError> {
    let t0 = SystemTime::now();
    let (verified, validators) = match pointer::read_pointer(cfg, status, t0).await? {
        pointer::Read::NotModified => return Ok(Outcome::Unchanged),
        pointer::Read::Retired(t) => return Ok(retired(cfg, status, &t)),
        pointer::Read::Pointer(read) => *read,
    };
    let p = verified.get();
    if status.bad_generations.contains(&p.generation) {
        tracing::warn!(
            generation = p.generation,
            "this generation failed before; waiting for a newer one"
        );
        return Ok(Outcome::Unchanged);
    }
    if !cfg.apply.dry_run {
        pointer::raise_floor(status, &verified);
    }
    let ids = manifest::identities_for(cfg, &verified)?;
    // A sealed pointer names no store path: its manifest does.
    let mut pinned = None;
    let top = match &p.store_path {
        Some(t) => t.clone(),
        None => pinned
            .insert(manifest::fetch_manifest(cfg, &verified, &ids).await?)
            .0
            .top()
            .clone(),
    };
    if already_running(cfg, status, &top) {
        tracing::info!(store_path = %top, "already running this system");
        if !cfg.apply.dry_run {
            pointer::accept(status, &verified, validators);
        }
        return Ok(Outcome::Unchanged);
    }
    let (manifest, held) = match pinned {
        Some(m) => m,
        None => manifest::fetch_manifest(cfg, &verified, &ids).await?,
    };
    tracing::info!(generation = p.generation, store_path = %top, "manifest verified");
    let todo = missing::what_is_missing(cfg, &manifest)?;
    if cfg.apply.dry_run {
        missing::print_plan(cfg, &manifest, &todo);
        return Ok(Outcome::Unchanged);
    }
    let held = [held, status.applied_manifest];
    let deltas = Deltas::read(cfg, &verified, &held, &ids, &todo.entries).await;
    missing::check_source_holds(cfg, &todo, &deltas)?;
    let fetched = import::fetch_and_import(cfg, &manifest, &todo, &ids, &deltas).await;
    status.last_run_delta_paths = deltas.used();
    status.last_run_delta_fallbacks = deltas.fallbacks();
    status.last_run_fetched_bytes = fetched?;
    import::check_imported(cfg, &manifest, &todo)?;
    let action = switch::switch(cfg, status, &verified, &top)?;
    tracing::info!(generation = p.generation, store_path = %top, action = action.as_str(), "applied");
    crate::reboot::applied(cfg, status, &top, action);
    after::keep_generations(cfg);
    pointer::accept(status, &verified, validators);
    status.applied_store_path = Some(top);
    status.applied_manifest = Some(pinned::plain_pin(&p.manifest).sha256);
    status.applied_at = Some(Timestamp::now());
    Ok(Outcome::Applied)
}

/// A verified tombstone for this host: nothing is applied or changed but
/// the floor (`raise_floor_to_tombstone`); the outcome is `retired`.
fn retired(cfg: &Config, status: &mut Status, t: &Verified<Tombstone>) -> Outcome {
    tracing::warn!(
        generation = t.get().generation,
        issued_at = %t.get().issued_at,
        key = t.key_name(),
        "this host is retired: nothing is applied; it keeps the system it runs"
    );
    if !cfg.apply.dry_run {
        pointer::raise_floor_to_tombstone(status, t);
    }
    Outcome::Retired
}

/// Whether this host runs `top` already (and its profile holds it, for an
/// action that sets the profile).
fn already_running(cfg: &Config, status: &Status, top: &StorePath) -> bool {
    status.applied_store_path.as_ref() == Some(top)
        && (!cfg.apply.action.sets_profile()
            || cfg.ports.store.profile_target(&cfg.ports.profile).as_ref() == Some(top))
}
