//! `--report-to`: after a run, a report of what this host did, signed with
//! its SSH host key (`nixcast_common::report` has the format), written as
//! `reports/HOST.json` to a directory, an HTTP server (`PUT`) or a bucket.
//!
//! A report goes out when the run's outcome (`ok`, `failed` or `retired`), the applied
//! generation or a pending reboot changed since the last one delivered, and
//! otherwise once `--report-interval` has passed: a quiet poll stays one
//! request. A report that cannot be delivered never fails the run: it is
//! logged, counted (`reportFailures`, `nixcast_report_failures_total`), and
//! the next run tries again, since nothing was recorded as sent.
//!
//! With `--report-recipient` the report is sealed to those keys. Without,
//! a host whose pointer is sealed (or not known to be plain) sends a report
//! without store paths and messages, so that a report store reveals no more
//! of a sealed host than its pointer does.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use nixcast_common::layout;
use nixcast_common::pointer::Timestamp;
use nixcast_common::report::{self, Failure, HostKey, LastFailure, Report};

use crate::config::{Config, ReportTo, RunError, DEFAULT_IDENTITY};
use crate::state::{Outcome, ReportSent, Status};

/// A report is a few hundred bytes: a server that takes longer than this
/// is not worth holding the run's lock for.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Notes a failed run in `status` (for later reports), then reports if one
/// is due. Never fails: what goes wrong is logged and counted.
pub async fn after_run(cfg: &Config, status: &mut Status, result: &Result<Outcome, RunError>) {
    if let Err(e) = result {
        let kind = e.outcome();
        // The floor was raised to the pointer that a fetch, import or
        // switch failed for; a refusal or local error may have none.
        let tried = matches!(
            kind,
            Outcome::FetchFailed | Outcome::ImportFailed | Outcome::ActivationFailed
        );
        status.last_failure = Some(LastFailure {
            at: Timestamp::now(),
            generation: tried.then_some(status.highest_generation),
            kind: kind.as_str().to_owned(),
            message: Report::cut(&nixcast_cli::text::clean(&e.to_string())),
        });
    }
    let Some(to) = &cfg.after.report else {
        return;
    };
    let mut report = make(cfg, to, status, result);
    let sent = ReportSent {
        at: report.at,
        outcome: report.outcome,
        applied_generation: report.applied_generation,
        reboot_pending: report.reboot_pending.is_some(),
    };
    if !due(
        status.last_report.as_ref(),
        &sent,
        to.interval,
        SystemTime::now(),
    ) {
        tracing::debug!("nothing new to report");
        return;
    }
    report.seq = Some(next_seq(status));
    let key = layout::report(&cfg.policy.host);
    let url = to.target.url_of(&key);
    match deliver(cfg, to, &report, &key).await {
        Ok(()) => {
            tracing::info!(%url, outcome = ?report.outcome, "report sent");
            status.last_report = Some(sent);
        }
        Err(e) => {
            status.report_failures += 1;
            tracing::warn!(%url, "cannot send the report (the next run tries again): {e:#}");
        }
    }
}

/// Where the count of reports made is kept in `status.json`: a field the
/// status type does not know, which it writes back as it is.
const SEQ_FIELD: &str = "reportSeq";

/// The next number of the counter that orders this host's reports (a report
/// store keeps the one with the highest `(at, seq)`), raised for every
/// report made, delivered or not, and kept with the status saved after the run.
fn next_seq(status: &mut Status) -> u64 {
    let last = status.unknown.get(SEQ_FIELD).and_then(|v| v.as_u64());
    let next = last.unwrap_or(0).saturating_add(1);
    status.unknown.insert(SEQ_FIELD.to_owned(), next.into());
    next
}

/// Whether `now` needs a report, the last delivered one being `last`.
fn due(last: Option<&ReportSent>, now: &ReportSent, interval: Duration, t: SystemTime) -> bool {
    let Some(last) = last else {
        return true;
    };
    let changed = (last.outcome, last.applied_generation, last.reboot_pending)
        != (now.outcome, now.applied_generation, now.reboot_pending);
    // A clock set back makes the last report look new: send one then too.
    let age = t.duration_since(last.at.system_time());
    changed || age.map_or(true, |age| age >= interval)
}

async fn deliver(cfg: &Config, to: &ReportTo, report: &Report, key: &str) -> anyhow::Result<()> {
    let host_key = host_key(&cfg.policy.identity_files)?;
    let body = report
        .sign(&host_key, &to.recipients)
        .context("cannot seal the report")?;
    match tokio::time::timeout(TIMEOUT, to.target.put(key, body)).await {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow!("no answer within {TIMEOUT:?}")),
    }
}

/// The first identity file that is an OpenSSH ed25519 key (age identities
/// cannot sign), or the SSH host key: what signs reports and enrollment
/// requests.
pub fn host_key(files: &[std::path::PathBuf]) -> anyhow::Result<HostKey> {
    let default = [std::path::PathBuf::from(DEFAULT_IDENTITY)];
    let files = if files.is_empty() {
        &default[..]
    } else {
        files
    };
    let mut tried = Vec::new();
    for f in files {
        let shown = f.display().to_string();
        match std::fs::read(f).map(zeroize::Zeroizing::new) {
            Ok(bytes) => match HostKey::from_openssh(&bytes, &shown) {
                Ok(k) => return Ok(k),
                Err(e) => tried.push(e.to_string()),
            },
            Err(e) => tried.push(format!("{shown}: {e}")),
        }
    }
    Err(anyhow!(
        "no SSH ed25519 key to sign with ({}); give one with --identity",
        tried.join("; ")
    ))
}

fn make(
    cfg: &Config,
    to: &ReportTo,
    status: &Status,
    result: &Result<Outcome, RunError>,
) -> Report {
    let link = |p: &Path| {
        std::fs::canonicalize(p)
            .ok()
            .map(|p| p.display().to_string())
    };
    // Without recipients to seal to, a sealed host's report says what a
    // reader of its pointer knows already: generations, times, outcome.
    let open = !to.recipients.is_empty() || status.pointer_sealed == Some(false);
    let paths = |p: Option<String>| p.filter(|_| open);
    let message = |m: String| if open { m } else { String::new() };
    let error = result.as_ref().err().map(|e| Failure {
        kind: e.outcome().as_str().to_owned(),
        message: message(Report::cut(&nixcast_cli::text::clean(&e.to_string()))),
    });
    let last_failure = status.last_failure.clone().map(|f| LastFailure {
        message: message(f.message),
        ..f
    });
    let reboot_pending = status.reboot_pending.as_ref().map(|r| {
        let when = match (&r.requested_at, &r.window) {
            (Some(t), _) => format!("requested at {t}"),
            (None, Some(w)) => format!("in the window {w}"),
            (None, None) => "now".to_owned(),
        };
        match open {
            true => format!("{} ({when})", r.system),
            false => format!("a new kernel ({when})"),
        }
    });
    Report {
        host: cfg.policy.host.clone(),
        pointer_generation: status.highest_digest.map(|_| status.highest_generation),
        applied_generation: status.applied_generation,
        applied_store_path: paths(status.applied_store_path.as_ref().map(|p| p.to_string())),
        applied_at: status.applied_at,
        outcome: match result {
            Ok(Outcome::Retired) => report::Outcome::Retired,
            Ok(_) => report::Outcome::Ok,
            Err(_) => report::Outcome::Failed,
        },
        error,
        last_failure,
        at: Timestamp::now(),
        seq: None,
        interval: to.interval.as_secs(),
        booted_system: paths(link(&cfg.ports.booted_system)),
        current_system: paths(link(Path::new("/run/current-system"))),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        key_list_version: key_list_version(cfg),
        reboot_pending,
    }
}

/// The version of the key list this host holds, when it trusts roots.
fn key_list_version(cfg: &Config) -> Option<u64> {
    if !matches!(cfg.policy.trusted, crate::config::Trusted::Roots { .. }) {
        return None;
    }
    let cap = nixcast_common::keylist::MAX_ENVELOPE_SIZE as u64;
    let bytes = nixcast_cli::fs::read_small(&cfg.ports.state.key_list(), cap).ok()?;
    let held = nixcast_common::keylist::reload_own(&bytes).ok()?;
    Some(held.get().version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(outcome: report::Outcome, generation: u64, at: SystemTime) -> ReportSent {
        ReportSent {
            at: Timestamp::from_system_time(at),
            outcome,
            applied_generation: Some(generation),
            reboot_pending: false,
        }
    }

    #[test]
    fn a_report_is_due_on_a_change_or_after_the_interval() {
        let hour = Duration::from_secs(3600);
        let t0 = SystemTime::now();
        let ok = report::Outcome::Ok;
        let last = sent(ok, 3, t0);
        assert!(due(None, &last, hour, t0));
        let later = t0 + Duration::from_secs(60);
        assert!(!due(Some(&last), &sent(ok, 3, later), hour, later));
        assert!(due(Some(&last), &sent(ok, 4, later), hour, later));
        let failed = report::Outcome::Failed;
        assert!(due(Some(&last), &sent(failed, 3, later), hour, later));
        let pending = ReportSent {
            reboot_pending: true,
            ..sent(ok, 3, later)
        };
        assert!(due(Some(&last), &pending, hour, later));
        let much_later = t0 + hour;
        assert!(due(Some(&last), &sent(ok, 3, much_later), hour, much_later));
        // A clock set back: the last report is "in the future".
        let earlier = t0 - Duration::from_secs(60);
        assert!(due(Some(&last), &sent(ok, 3, earlier), hour, earlier));
    }

    #[test]
    fn the_report_counter_rises_and_survives_a_save() {
        let mut status = Status::default();
        assert_eq!(next_seq(&mut status), 1);
        assert_eq!(next_seq(&mut status), 2);
        let saved = serde_json::to_string(&status).unwrap();
        let mut read: Status = serde_json::from_str(&saved).unwrap();
        assert_eq!(next_seq(&mut read), 3);
    }
}
