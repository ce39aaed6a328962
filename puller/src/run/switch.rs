//! Step 5: the profile set and the system switched, then the health checks;
//! on a failure the generation is marked bad and the host rolled back.

use anyhow::anyhow;
use nixcast_common::pointer::{Pointer, Verified};
use nixcast_common::StorePath;

use super::{other, Config, RunError};
use crate::activate::{self, Action};
use crate::state::Status;

/// Step 5: the profile set and the system switched, then the health checks;
/// on a failure the generation is marked bad and the host rolled back.
pub(super) fn switch(
    cfg: &Config,
    status: &mut Status,
    v: &Verified<Pointer>,
    top: &StorePath,
) -> Result<Action, RunError> {
    if !cfg.ports.activator.is_system(top) {
        return Err(RunError::Refused(anyhow!(
            "{} is not a NixOS system: it has no bin/switch-to-configuration",
            top
        )));
    }
    let previous = cfg.ports.store.profile_generation(&cfg.ports.profile);
    if cfg.apply.action.sets_profile() {
        cfg.ports
            .store
            .set_profile(&cfg.ports.profile, top)
            .map_err(other)?;
    }
    let action = crate::reboot::action_for(cfg, top);
    let st = cfg.ports.activator.activate(top, action);
    // The profile holds the system now (or, for test and dry-activate, the
    // running system does); a failed switch leaves nothing worth keeping.
    cfg.ports.state.staging().clear_roots();
    let st = st.map_err(other)?;
    let failure = if !st.success() {
        Some(format!(
            "{} {} exited with {st}",
            activate::switch_script(top),
            action.as_str()
        ))
    } else {
        // In order; the first that fails is the switch's failure.
        cfg.apply.health_checks.iter().find_map(|c| {
            cfg.ports
                .activator
                .health_check(c, cfg.apply.health_timeout)
                .err()
        })
    };
    if let Some(why) = failure {
        status.bad_generations.push(v.get().generation);
        let rolled = rollback(cfg, previous);
        return Err(RunError::Activation(anyhow!("{why}; {rolled}")));
    }
    Ok(action)
}

/// After a failed switch or health check: the profile goes back to the
/// generation it had, and that system is activated again. Returns what happened.
fn rollback(cfg: &Config, previous: Option<u64>) -> String {
    if !cfg.apply.action.sets_profile() {
        return "the profile was not changed".to_owned();
    }
    let Some(generation) = previous else {
        return "no earlier generation to roll back to".to_owned();
    };
    let failed = cfg.ports.store.profile_generation(&cfg.ports.profile);
    if let Err(e) = cfg
        .ports
        .store
        .switch_generation(&cfg.ports.profile, generation)
    {
        return format!("rolling back failed: {e:#}");
    }
    // The failed generation is dropped from the profile, so that neither a
    // later rollback nor the boot menu offers it.
    if let Some(f) = failed.filter(|f| *f != generation) {
        if let Err(e) = cfg.ports.store.delete_generation(&cfg.ports.profile, f) {
            tracing::warn!("cannot delete the failed profile generation {f}: {e:#}");
        }
    }
    let Some(top) = cfg.ports.store.profile_target(&cfg.ports.profile) else {
        return format!(
            "rolled the profile back to generation {generation}, which points to no store path"
        );
    };
    // With --allow-reboot, a generation whose kernel is not the running one
    // goes back to being the next boot's, never switched to.
    match cfg.ports.activator.activate(&top, crate::reboot::action_for(cfg, &top)) {
        Ok(st) if st.success() => format!("rolled back to profile generation {generation} ({top})"),
        Ok(st) => format!("rolled the profile back to generation {generation}, but its activation exited with {st}"),
        Err(e) => format!("rolled the profile back to generation {generation}, but cannot activate it: {e:#}"),
    }
}
