//! `nixcast-pull enroll`: the run's flags (`args.rs`) plus the token; sends
//! the request and waits (`crate::enroll`), then applies the host's
//! pointer with the same run as `run`.

use std::time::Duration;

use anyhow::{anyhow, Context};

use super::args::{build_config, runtime, Args as RunArgs};
use super::Failure;
use crate::enroll::{self, Enroll, Stop};
use crate::{run, source};

/// The exit code when no pointer came within `--enroll-timeout`.
pub const TIMED_OUT: u8 = 8;

#[derive(clap::Args)]
#[group(id = "enroll_args")]
pub struct Args {
    /// The token `nixcast invite` printed for this host.
    #[arg(long, env = "NIXCAST_ENROLL_TOKEN")]
    token: String,
    /// How long to wait for the request to be accepted and the host published (exit 8 after).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    enroll_timeout: Duration,
    #[command(flatten)]
    run: RunArgs,
}

pub fn enroll(a: Args) -> Result<(), Failure> {
    let fail = |code, e: anyhow::Error| Failure {
        code,
        message: format!("{e:#}"),
    };
    let (cfg, e) = prepare(a).map_err(|e| fail(1, e))?;
    let rt = runtime()
        .context("cannot start the runtime")
        .map_err(|e| fail(1, e))?;
    let waited = rt.block_on(enroll::request_and_wait(&cfg, &e));
    let result = match waited {
        Ok(()) => rt
            .block_on(run::run(&cfg))
            .map_err(|e| (e.exit_code(), e.into())),
        Err(Stop::Refused(e)) => Err((3, e.context("refused"))),
        Err(Stop::TimedOut(e)) => Err((TIMED_OUT, e)),
        Err(Stop::Other(e)) => Err((1, e)),
    };
    rt.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(outcome) => {
            tracing::info!(?outcome, "enrolled");
            Ok(())
        }
        Err((code, e)) => Err(fail(code, e)),
    }
}

/// The run's settings, and where the request goes: `--report-to`, else the cache.
fn prepare(a: Args) -> anyhow::Result<(crate::config::Config, Enroll)> {
    if a.run.schedule.is_some() {
        return Err(anyhow!(
            "enroll applies the host once; its own configuration (or `nixcast-pull run \
             --schedule`) pulls from then on"
        ));
    }
    let cache = a
        .run
        .cache
        .clone()
        .context("enroll reads a cache: give --cache (a bundle cannot accept a request)")?;
    let spec = a.run.report_to.clone().unwrap_or(cache);
    let cfg = build_config(a.run)?;
    let send_to = source::Source::new_for_writes(&spec, &cfg.ports.http, &cfg.ports.secrets)
        .with_context(|| format!("where the request goes ({spec})"))?;
    Ok((
        cfg,
        Enroll {
            token: a.token,
            timeout: a.enroll_timeout,
            send_to,
        },
    ))
}
