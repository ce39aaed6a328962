//! The agent as a long-running process: `nixcast-pull run --schedule CRON`
//! for hosts without systemd timers, and `run --watch`, which runs as soon
//! as the host's pointer changes.
//!
//! On a schedule, each run starts at the schedule's next time plus a random
//! delay of up to `--jitter`, so a fleet does not poll in lockstep. Watching,
//! a run follows each change that a long poll of the pointer reports
//! (`Backend::wait_changed`), never two within `--min-interval`; a server
//! that does not hold the request is polled every `--poll-interval` (with
//! jitter), and a failing one retried after a backoff that doubles to a
//! minute, with jitter. SIGTERM (or Ctrl-C) while waiting exits at once;
//! during a run it lets the run finish first, so a profile is never left
//! half set.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

/// A cron expression: five fields (minute first) or six with seconds.
pub fn parse(expr: &str) -> Result<cron::Schedule> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_owned()
    };
    cron::Schedule::from_str(&full).with_context(|| format!("invalid --schedule {expr:?}"))
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    if max.is_zero() || getrandom::fill(&mut b).is_err() {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::from_le_bytes(b) % max.as_millis().max(1) as u64)
}

/// Calls `run` on `schedule` until SIGTERM or SIGINT; `run` is one whole
/// run, its outcome logged (the caller's, so this module knows no run).
pub async fn run_forever<F, Fut>(
    schedule: &cron::Schedule,
    max_jitter: Duration,
    mut run: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let next = schedule
            .upcoming(chrono::Utc)
            .next()
            .context("the schedule has no next time")?;
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default() + jitter(max_jitter);
        tracing::info!(next = %next, "waiting {:.0?}", wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        if finish(run(), &mut term, &mut int).await {
            return Ok(());
        }
    }
}

/// What a watching agent learned from one long poll.
pub use nixcast_cache::Waited;

/// How a watching agent paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// At least this long from one run's start to the next.
    pub min_interval: Duration,
    /// Between polls where the server does not hold requests.
    pub poll_interval: Duration,
    /// The longest backoff after a failed long poll.
    pub max_backoff: Duration,
}

/// Runs `run`, then again each time `changed` reports a change, until
/// SIGTERM or SIGINT, or until `run` says to stop (true). `changed` is one
/// long poll.
pub async fn watch_forever<F, Fut, C, CFut>(pace: Pace, mut run: F, mut changed: C) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
    C: FnMut() -> CFut,
    CFut: std::future::Future<Output = Result<Waited, nixcast_cache::Error>>,
{
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let started = tokio::time::Instant::now();
        let mut stop = false;
        let run = async { stop = run().await };
        if finish(run, &mut term, &mut int).await || stop {
            return Ok(());
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = tokio::select! {
                w = changed() => w,
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            };
            // How long to pause, and whether to run after it (a poll).
            let (pause, then_run) = match wait {
                Ok(Waited::Changed) => break,
                Ok(Waited::Unchanged) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Ok(Waited::Unsupported) => {
                    tracing::info!("the cache does not hold requests: polling");
                    (pace.poll_interval + jitter(pace.poll_interval / 10), true)
                }
                Err(e) => {
                    tracing::warn!(
                        "waiting for the pointer failed: {e}; retrying in {backoff:.0?}"
                    );
                    let b = backoff + jitter(backoff);
                    backoff = (backoff * 2).min(pace.max_backoff);
                    (b, false)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
            if then_run {
                break;
            }
        }
        // A burst of changes makes one run per --min-interval at most.
        tokio::select! {
            _ = tokio::time::sleep_until(started + pace.min_interval) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// Awaits `run` to its end; a signal meanwhile lets it finish. True when
/// a signal came: stop.
async fn finish<Fut: std::future::Future<Output = ()>>(
    run: Fut,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> bool {
    tokio::pin!(run);
    let mut stopping = false;
    loop {
        tokio::select! {
            () = &mut run => return stopping,
            _ = term.recv(), if !stopping => {
                tracing::info!("SIGTERM: finishing the current run, then exiting");
                stopping = true;
            }
            _ = int.recv(), if !stopping => stopping = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions() {
        let every5 = parse("*/5 * * * *").unwrap();
        let times: Vec<_> = every5.upcoming(chrono::Utc).take(2).collect();
        assert_eq!((times[1] - times[0]).num_seconds(), 300);
        let secs = parse("*/10 * * * * *").unwrap();
        let t: Vec<_> = secs.upcoming(chrono::Utc).take(2).collect();
        assert_eq!((t[1] - t[0]).num_seconds(), 10);
        assert!(parse("not a schedule").is_err());
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(2)) < Duration::from_secs(2));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
