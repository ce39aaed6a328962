//! `nixcast-pull run`: one run, or runs on a schedule (`--schedule`), with
//! the settings `args.rs` makes of the command line.

use std::time::Duration;

use super::args::{build_config, runtime};
use super::Failure;
use crate::config::Config;
use crate::{run, schedule};

pub use super::args::Args;

/// Runs once, or on `--schedule` until stopped.
pub fn run(args: Args) -> Result<(), Failure> {
    let (schedule, jitter) = (args.schedule.clone(), args.jitter);
    let done = match build_config(args) {
        Ok(cfg) => match schedule {
            None => run_once(&cfg),
            Some(expr) => run_scheduled(&cfg, &expr, jitter),
        },
        Err(e) => Err((1, e)),
    };
    done.map_err(|(code, e)| Failure {
        code,
        message: format!("{e:#}"),
    })
}

/// Exit code and error of a failed run.
type Failed = (u8, anyhow::Error);

fn run_once(cfg: &Config) -> Result<(), Failed> {
    let rt =
        runtime().map_err(|e| (1, anyhow::Error::new(e).context("cannot start the runtime")))?;
    let result = rt.block_on(run::run(cfg));
    // A run that failed may leave verifiers and spooling downloads on
    // blocking threads: give them a moment to stop and remove their
    // temporary files (a later run removes what is left).
    // A transfer cut by --run-timeout may hold one longer; what it would
    // still do does not matter, and the exit stays bounded.
    rt.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(outcome) => {
            tracing::info!(?outcome, "done");
            Ok(())
        }
        Err(e) => Err((e.exit_code(), e.into())),
    }
}

fn run_scheduled(cfg: &Config, expr: &str, jitter: Duration) -> Result<(), Failed> {
    schedule::parse(expr)
        .and_then(|sched| {
            runtime()?.block_on(schedule::run_forever(&sched, jitter, || async {
                match run::run(cfg).await {
                    Ok(outcome) => tracing::info!(outcome = outcome.as_str(), "run done"),
                    Err(e) => tracing::error!(exit_code = e.exit_code(), "{e}"),
                }
            }))
        })
        .map_err(|e| (1, e))
}
