//! One agent run, in order: lock; fetch the pointer (conditionally) and verify
//! it; fetch the manifest it pins (opening it if sealed); ask Nix what is
//! missing; fetch, verify and import that; set the profile; switch; check
//! health, and roll back on failure; record the status.
//!
//! `run` holds the lock; `apply::apply` calls the steps in order, one module
//! each (`pointer`, `policy`, `manifest`, `missing`, `import`, `switch`),
//! and `after::after_run` records the status and does what follows a run
//! (reboot, report, metrics). A step after verification takes the
//! `Verified<Pointer>` or the `Pinned` manifest, never the plain value; the
//! store and the switch come from `Config` (`host::Store`,
//! `host::Activator`), so the unit tests in `run/tests.rs` drive these same
//! steps without root or Nix. `rollback` is `nixcast-pull rollback`.

mod after;
mod apply;
mod import;
mod keys;
mod manifest;
mod missing;
mod pointer;
mod policy;
mod rollback;
mod switch;

use anyhow::anyhow;

pub use crate::config::{Config, RunError};
use crate::source::FetchError;
use crate::state::Outcome;
pub use rollback::rollback_by_hand;

/// More bytes than a signed or fixed size allows is an attack, not an outage.
fn fetch_error(e: FetchError) -> RunError {
    match e {
        FetchError::TooLarge { .. } => RunError::Refused(e.into()),
        e => RunError::Fetch(e.into()),
    }
}

fn other(e: impl Into<anyhow::Error>) -> RunError {
    RunError::Other(e.into())
}

/// Takes the lock, runs the steps within `--run-timeout`, and records the
/// outcome (a dry run writes nothing, so it takes no lock and keeps no state).
pub async fn run(cfg: &Config) -> Result<Outcome, RunError> {
    if cfg.apply.dry_run {
        let mut status = cfg.ports.state.load().map_err(other)?;
        return bounded(cfg, apply::apply(cfg, &mut status)).await;
    }
    cfg.ports.state.create().map_err(other)?;
    let _lock = cfg
        .ports
        .state
        .lock(cfg.apply.wait)
        .map_err(other)?
        .ok_or_else(|| RunError::Locked(cfg.ports.state.path().display().to_string()))?;
    let mut status = cfg.ports.state.load().map_err(other)?;
    let started = std::time::Instant::now();
    status.last_run_fetched_bytes = 0;
    status.last_run_delta_paths = 0;
    status.last_run_delta_fallbacks = 0;
    let result = bounded(cfg, apply::apply(cfg, &mut status)).await;
    after::after_run(cfg, &mut status, &result, started).await?;
    result
}

/// A run stops at `--run-timeout`. The switch cannot be cut: once the
/// import is done, `apply` has nothing left to wait for, so the deadline can
/// only strike before the profile is touched.
async fn bounded(
    cfg: &Config,
    run: impl std::future::Future<Output = Result<Outcome, RunError>>,
) -> Result<Outcome, RunError> {
    match tokio::time::timeout(cfg.apply.run_timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(RunError::Fetch(anyhow!(
            "the run did not finish within --run-timeout {}; what was verified is kept for \
             the next run",
            humantime::format_duration(cfg.apply.run_timeout)
        ))),
    }
}

#[cfg(test)]
mod tests;
