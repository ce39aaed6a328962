//! `nixcast-pull run`: one run, runs on a schedule (`--schedule`), or a run
//! each time the pointer changes (`--watch`), with the settings `args.rs`
//! makes of the command line.

use std::time::Duration;

use super::args::{build_config, runtime};
use super::Failure;
use crate::config::Config;
use crate::{run, schedule};

#[derive(clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    run: super::args::Args,
    #[command(flatten)]
    watch: WatchArgs,
}

/// `--watch` and how it paces itself.
#[derive(clap::Args)]
struct WatchArgs {
    /// Keep running and run as soon as the pointer changes: a long poll
    /// against `nixcast serve`; other caches are polled every --poll-interval.
    #[arg(long, conflicts_with_all = ["schedule", "bundle"], env = "NIXCAST_WATCH")]
    watch: bool,
    /// With --watch: at least this long from one run's start to the next.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "NIXCAST_MIN_INTERVAL")]
    min_interval: Duration,
    /// With --watch, where the cache does not hold requests: poll this often.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, env = "NIXCAST_POLL_INTERVAL")]
    poll_interval: Duration,
    /// With --watch: exit after a run that applied a generation, so that a
    /// supervisor (the NixOS module's unit) starts the new system's agent.
    #[arg(long, requires = "watch")]
    exit_after_apply: bool,
}

/// Runs once, on `--schedule`, or on `--watch`, until stopped.
pub fn run(args: Args) -> Result<(), Failure> {
    let Args { run: args, watch } = args;
    let (schedule, jitter) = (args.schedule.clone(), args.jitter);
    let pace = watch.watch.then_some(schedule::Pace {
        min_interval: watch.min_interval,
        poll_interval: watch.poll_interval,
        max_backoff: Duration::from_secs(60),
    });
    let done = match build_config(args) {
        Ok(cfg) => match (schedule, pace) {
            (_, Some(pace)) => run_watching(&cfg, pace, watch.exit_after_apply),
            (None, None) => run_once(&cfg),
            (Some(expr), None) => run_scheduled(&cfg, &expr, jitter),
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
        Ok(crate::state::Outcome::Retired) => Err((
            RETIRED_EXIT_CODE,
            anyhow::anyhow!(
                "this host is retired (its pointer is a tombstone): nothing was applied; \
                 remove nixcast-pull from it, or publish it again (`nixcast publish --force`)"
            ),
        )),
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

/// The exit code of a run that read a verified tombstone (see the README).
pub const RETIRED_EXIT_CODE: u8 = 7;

/// How long one long poll asks the server to hold it.
const WATCH_WAIT: Duration = Duration::from_secs(60);

fn run_watching(cfg: &Config, pace: schedule::Pace, exit_after_apply: bool) -> Result<(), Failed> {
    let key = nixcast_common::layout::pointer(&cfg.policy.host);
    let run = || async {
        match run::run(cfg).await {
            Ok(outcome) => {
                tracing::info!(outcome = outcome.as_str(), "run done");
                let applied = matches!(outcome, crate::state::Outcome::Applied);
                if applied && exit_after_apply {
                    tracing::info!(
                        "applied: exiting for the new system's agent (--exit-after-apply)"
                    );
                }
                applied && exit_after_apply
            }
            Err(e) => {
                tracing::error!(exit_code = e.exit_code(), "{e}");
                false
            }
        }
    };
    // The validators of the pointer last handled: a change is anything else.
    let changed = || async {
        let validators = cfg
            .ports
            .state
            .load()
            .map(|s| s.validators)
            .unwrap_or_default();
        cfg.ports
            .source
            .wait_changed(&key, &validators, WATCH_WAIT)
            .await
    };
    runtime()
        .map_err(anyhow::Error::new)
        .and_then(|rt| rt.block_on(schedule::watch_forever(pace, run, changed)))
        .map_err(|e| (1, e))
}
