//! `nixcast-pull rollback`: back to the profile's previous generation by
//! hand, the applied pointer generation marked bad.

use anyhow::anyhow;
use nixcast_common::pointer::Timestamp;

use super::{other, RunError};
use crate::activate::Action;
use crate::host::{Activator, Store};
use crate::state::{Outcome, StateDir};

/// `nixcast-pull rollback`: the profile's previous generation, activated, and
/// the pointer generation that was applied marked bad.
pub fn rollback_by_hand(
    store: &dyn Store,
    activator: &dyn Activator,
    profile: &std::path::Path,
    state: &StateDir,
    action: Action,
) -> Result<String, RunError> {
    state.create().map_err(other)?;
    let _lock = state
        .lock(false)
        .map_err(other)?
        .ok_or_else(|| RunError::Locked(state.path().display().to_string()))?;
    let mut status = state.load().map_err(other)?;
    let previous = previous_generation(store, profile)?;
    store.switch_generation(profile, previous).map_err(other)?;
    let top = store
        .profile_target(profile)
        .ok_or_else(|| other(anyhow!("{} points to no store path", profile.display())))?;
    let st = activator.activate(&top, action).map_err(other)?;
    if let Some(g) = status.applied_generation.take() {
        if !status.bad_generations.contains(&g) {
            status.bad_generations.push(g);
        }
    }
    status.applied_store_path = Some(top.clone());
    status.last_check = Some(Timestamp::now());
    let result = if st.success() {
        status.last_result = Some(Outcome::RolledBack);
        status.last_error = None;
        Ok(format!(
            "rolled back to profile generation {previous} ({top})"
        ))
    } else {
        let e = RunError::Activation(anyhow!(
            "rolled back to generation {previous}, but its activation exited with {st}"
        ));
        status.last_result = Some(Outcome::ActivationFailed);
        status.last_error = Some(e.to_string());
        Err(e)
    };
    state.save(&status).map_err(other)?;
    result
}

/// The newest generation of `profile` older than the one it points to.
fn previous_generation(store: &dyn Store, profile: &std::path::Path) -> Result<u64, RunError> {
    let current = store.profile_generation(profile).ok_or_else(|| {
        other(anyhow!(
            "{} is not a profile generation link",
            profile.display()
        ))
    })?;
    store
        .list_generations(profile)
        .map_err(other)?
        .into_iter()
        .filter(|g| *g < current)
        .max()
        .ok_or_else(|| {
            other(anyhow!(
                "no generation of {} older than {current}",
                profile.display()
            ))
        })
}
