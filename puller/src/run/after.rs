//! After the steps: the run's outcome recorded in the status and saved,
//! then what never fails a run: the pending reboot's decision, the report,
//! the metrics and the reboot itself; and, after a switch, the old
//! generations deleted (`--keep-generations`).

use std::time::Instant;

use nixcast_common::pointer::Timestamp;

use super::{other, Config, RunError};
use crate::state::{Outcome, Status};

/// Records `result` and does what follows a run. An error here is the
/// state directory's (the status cannot be saved), and ends the run with it.
pub(super) async fn after_run(
    cfg: &Config,
    status: &mut Status,
    result: &Result<Outcome, RunError>,
    started: Instant,
) -> Result<(), RunError> {
    if result.is_err() {
        // Verified NARs stay for the next run; the narinfos naming every
        // missing path (many, for a large manifest) are written again then.
        cfg.ports.state.staging().clear_narinfos();
    }
    record(status, result, started);
    cfg.ports.state.save(status).map_err(other)?;
    // The run's outcome is saved; what follows never fails it.
    let reboot_now = crate::reboot::due(cfg, status);
    crate::report::after_run(cfg, status, result).await;
    cfg.ports.state.save(status).map_err(other)?;
    if let Some(path) = &cfg.after.metrics_file {
        // Read by node_exporter, which runs as another user.
        nixcast_cli::fs::write(path, crate::state::metrics(status).as_bytes(), 0o644)
            .map_err(other)?;
    }
    if reboot_now {
        if let Err(e) = crate::reboot::reboot(cfg, status) {
            tracing::warn!("{e:#}; the reboot stays pending");
            cfg.ports.state.save(status).map_err(other)?;
        }
    }
    Ok(())
}

/// The run's end, outcome and error in the status.
fn record(status: &mut Status, result: &Result<Outcome, RunError>, started: Instant) {
    status.last_check = Some(Timestamp::now());
    status.last_run_seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(outcome) => {
            status.last_result = Some(*outcome);
            status.last_error = None;
            status.last_success = status.last_check;
        }
        Err(e) => {
            status.last_result = Some(e.outcome());
            status.last_error = Some(nixcast_cli::text::clean(&e.to_string()));
            *status
                .failures
                .entry(e.outcome().as_str().to_owned())
                .or_default() += 1;
        }
    }
}

/// `--keep-generations`: old profile generations and what only they held,
/// deleted after a switch. A failure here is logged, never the run's.
pub(super) fn keep_generations(cfg: &Config) {
    if let (Some(keep), true) = (cfg.after.keep_generations, cfg.apply.action.sets_profile()) {
        let booted = std::fs::canonicalize(&cfg.ports.booted_system).ok();
        let pruned = crate::generations::prune(
            &*cfg.ports.store,
            &cfg.ports.profile,
            booted.as_deref(),
            keep,
        );
        if let Err(e) = pruned {
            tracing::warn!("cannot delete old generations (--keep-generations {keep}): {e:#}");
        }
    }
}
