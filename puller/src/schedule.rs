//! `nixcast-pull run --schedule CRON`: the agent as a long-running process,
//! for hosts without systemd timers.
//!
//! Each run starts at the schedule's next time plus a random delay of up to
//! `--jitter`, so a fleet does not poll in lockstep. SIGTERM (or Ctrl-C)
//! while waiting exits at once; during a run it lets the run finish first,
//! so a profile is never left half set.

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
        let run = run();
        tokio::pin!(run);
        let mut stopping = false;
        loop {
            tokio::select! {
                () = &mut run => break,
                _ = term.recv(), if !stopping => {
                    tracing::info!("SIGTERM: finishing the current run, then exiting");
                    stopping = true;
                }
                _ = int.recv(), if !stopping => stopping = true,
            }
        }
        if stopping {
            return Ok(());
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
