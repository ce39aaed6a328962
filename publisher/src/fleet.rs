//! What each host's agent last reported, as the trusted side sees it.
//!
//! A report is read from `reports/<host>.json` and believed only when it
//! verifies with an ssh-ed25519 key the recipients file lists for that host
//! (a sealed one is then opened with `--identity`). Anyone who can write to
//! the cache can put bytes there, so a report that does not verify is shown
//! as such and never counts: not for `hosts`' flags, not for `promote --after`.
//! Nor does one whose times are not believed ([`Report::check_times`]: made
//! ahead of this machine's clock, an absurd interval, applied before its
//! pointer was issued): it is shown with the reason.
//!
//! Everything a report says is the host's word, and everything read from
//! the cache (errors quoting it included) is escaped by `nixcast_cli::text`
//! before it reaches a terminal, a log or the page.

use std::time::{Duration, SystemTime};

use anyhow::Result;
use nixcast_common::pointer::{self, Pointer, Timestamp};
use nixcast_common::report::{self, Outcome, Report};
use nixcast_common::seal::{Identity, Recipients};
use nixcast_common::{layout, PublicKey};
use serde::Serialize;

use crate::cache::read_pointer;
use crate::target::Target;

pub mod html;

/// A host's report as read from the cache.
#[derive(Debug)]
pub enum Seen {
    /// No `reports/<host>.json`.
    Missing,
    Verified(Box<Report>),
    /// There is one, but it is not to be trusted; why.
    Unverifiable(String),
}

/// Reads and checks `host`'s report: its signature, then its times against
/// `now` and, when it says it applied the generation of `current` (the
/// host's verified pointer), against that pointer's issue time. The reason
/// a report is not trusted is escaped text.
pub fn read_report(
    target: &Target,
    host: &str,
    fleet: &Recipients,
    ids: &[Identity],
    current: Option<&Pointer>,
    now: SystemTime,
) -> Seen {
    let untrusted = |why: String| Seen::Unverifiable(nixcast_cli::text::clean(&why));
    let key = layout::report(host);
    let bytes = match target.get_at_most(&key, report::MAX_REPORT_SIZE as u64) {
        Ok(Some(b)) => b,
        Ok(None) => return Seen::Missing,
        Err(e) => return untrusted(format!("{e:#}")),
    };
    let keys = fleet.signers_of(host);
    if keys.is_empty() {
        return untrusted(format!(
            "the recipients file lists no ssh-ed25519 key for {host}"
        ));
    }
    let opened = report::verify(&bytes, host, &keys).and_then(|s| s.open(host, ids));
    let r = match opened {
        Ok(r) => r,
        Err(e) => return untrusted(e.to_string()),
    };
    let issued = current
        .filter(|p| r.applied_generation == Some(p.generation))
        .map(|p| p.issued_at);
    match r.check_times(now, issued) {
        Ok(()) => Seen::Verified(Box::new(r)),
        Err(e) => untrusted(format!("its times are not believed: {e}")),
    }
}

/// How many intervals without a report make a host stale.
pub const STALE_INTERVALS: u32 = 3;

/// Whether a report is older than [`STALE_INTERVALS`] of its own interval.
pub fn is_stale(r: &Report, now: SystemTime) -> bool {
    let limit = Duration::from_secs(r.interval.max(1)).saturating_mul(STALE_INTERVALS);
    age(r.at, now) > limit
}

/// How long ago `t` was (zero for a time in the future).
pub fn age(t: Timestamp, now: SystemTime) -> Duration {
    now.duration_since(t.system_time()).unwrap_or_default()
}

/// An error whose text may quote what anyone wrote into the cache (a
/// pointer's key ids, serde naming a field of a planted file), escaped for
/// the terminal: the error printer writes chains as they are.
pub fn untrusted(e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(nixcast_cli::text::clean(&format!("{e:#}")))
}

/// Characters shown of one field a host wrote (its error's kind or message).
pub const MAX_FIELD: usize = 200;

/// Text a host wrote, made safe to print (`nixcast_cli::text`: control and
/// direction-changing characters escaped) and cut short for a table.
fn clean(text: &str) -> String {
    nixcast_cli::text::bounded(text, MAX_FIELD)
}

/// A duration in whole seconds, as humantime writes it ("1h 5m 3s").
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Why a canary does not let a rollout go on, or `None` when it does: its
/// latest verified report shows its newest published generation (`current`)
/// applied with outcome ok, running (no reboot into it pending), healthy for
/// at least `healthy_for` *by the report itself* (from `appliedAt` to the
/// report's `at`, both the canary's own clock: a report made a minute after
/// the switch says nothing of the ten minutes after it, and a wrong clock on
/// this machine cannot shorten the time), with no failure since, and the
/// report itself is not stale. Whether the canary runs the release being
/// promoted is the caller's check.
pub fn canary_refusal(
    current: Option<u64>,
    seen: &Seen,
    healthy_for: Duration,
    now: SystemTime,
) -> Option<String> {
    let Some(current) = current else {
        return Some("it has no published pointer".into());
    };
    let r = match seen {
        Seen::Missing => return Some("it has not reported".into()),
        Seen::Unverifiable(why) => return Some(format!("its report is not trusted: {why}")),
        Seen::Verified(r) => r,
    };
    match r.outcome {
        Outcome::Ok => {}
        Outcome::Failed => {
            let why = r.error.as_ref().map_or_else(
                || "no reason given".to_owned(),
                |e| format!("{}: {}", clean(&e.kind), clean(&e.message)),
            );
            return Some(format!("its last run failed ({why})"));
        }
        Outcome::Retired => return Some("it reports that it is retired".into()),
        Outcome::Other => {
            return Some("its last run ended with an outcome this publisher does not know".into())
        }
    }
    if r.applied_generation != Some(current) {
        return Some(match r.applied_generation {
            Some(g) => format!("it runs generation {g}, not its newest generation {current}"),
            None => format!("it has applied no generation (its newest is {current})"),
        });
    }
    if let Some(pending) = &r.reboot_pending {
        return Some(format!(
            "it has installed generation {current} for its next boot and waits to reboot into \
             it ({}): it does not run it yet",
            clean(pending)
        ));
    }
    let Some(applied_at) = r.applied_at else {
        return Some("its report does not say when it applied its generation".into());
    };
    if let Some(f) = r.last_failure.as_ref().filter(|f| f.at >= applied_at) {
        return Some(format!(
            "it failed at {} after applying generation {current} ({}: {})",
            f.at,
            clean(&f.kind),
            clean(&f.message)
        ));
    }
    let healthy = age(applied_at, r.at.system_time());
    if healthy < healthy_for {
        return Some(format!(
            "generation {current} was applied at {applied_at}, and its latest report ({}) shows \
             it running for {}, less than --healthy-for {} (wait for a later report)",
            r.at,
            human(healthy),
            human(healthy_for)
        ));
    }
    if is_stale(r, now) {
        return Some(format!(
            "its last report is from {}, more than {STALE_INTERVALS} intervals of {} ago",
            r.at,
            human(Duration::from_secs(r.interval))
        ));
    }
    None
}

/// The generations in `host`'s history, highest first, with the pointer
/// each holds: read with `keys` (verified, and must name this host and
/// generation), or only decoded without keys. Ones that do not read are
/// skipped with a warning; at most `limit` are read.
pub fn history(
    target: &Target,
    host: &str,
    keys: &[PublicKey],
    limit: usize,
) -> Result<Vec<Pointer>> {
    let mut numbered: Vec<(u64, String)> = target
        .list(&layout::history_dir(host))?
        .into_iter()
        .filter_map(|k| Some((layout::history_generation(&k)?, k)))
        .collect();
    numbered.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::new();
    for (n, k) in numbered {
        if out.len() >= limit {
            break;
        }
        match read_pointer(target, &k, keys) {
            Ok(p) if p.host == host && p.generation == n => out.push(p),
            Ok(_) => tracing::warn!("ignoring {k}: it names another host or generation"),
            Err(e) => tracing::warn!("ignoring {k}: {e:#}"),
        }
    }
    Ok(out)
}

/// A host's current pointer, verified with `keys`; `None` when there is none.
pub fn current(target: &Target, host: &str, keys: &[PublicKey]) -> Result<Option<Pointer>> {
    let key = layout::pointer(host);
    if target
        .get_at_most(&key, pointer::MAX_ENVELOPE_SIZE as u64)?
        .is_none()
    {
        return Ok(None);
    }
    let p = read_pointer(target, &key, keys).map_err(untrusted)?;
    anyhow::ensure!(
        p.host == host,
        "{}/{key} names host {:?}",
        target.describe(),
        clean(&p.host)
    );
    Ok(Some(p))
}

/// What `hosts --recipients-file` adds to a host's row.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Columns {
    /// The highest generation in the history above the current pointer's.
    pub staged_generation: Option<u64>,
    /// The latest verified report; `None` when there is none or it did not verify.
    pub report: Option<Summary>,
    /// Why the stored report is not trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_problem: Option<String>,
    /// Seconds since the report was made.
    pub report_age: Option<u64>,
    /// The host runs an older generation than its pointer names.
    pub behind: bool,
    /// Its last run failed.
    pub failed: bool,
    /// No report for [`STALE_INTERVALS`] of its interval.
    pub stale: bool,
    /// It has no report at all: its agent never reported (or reports elsewhere).
    pub never_reported: bool,
}

/// The parts of a report `hosts` shows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub applied_generation: Option<u64>,
    pub outcome: Outcome,
    pub at: Timestamp,
    pub error: Option<report::Failure>,
    pub applied_at: Option<Timestamp>,
    pub last_failure: Option<report::LastFailure>,
    pub interval: u64,
    /// The key list version the host holds, when it trusts roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_list_version: Option<u64>,
}

/// A host's row additions and its history (highest generation first, at
/// most `timeline` of them, at least the highest), for a host whose pointer
/// is at `generation`.
#[allow(clippy::too_many_arguments)]
pub fn columns(
    target: &Target,
    pointer: &Pointer,
    keys: &[PublicKey],
    fleet: &Recipients,
    ids: &[Identity],
    now: SystemTime,
    timeline: usize,
) -> Result<(Columns, Vec<Pointer>)> {
    let (host, generation) = (pointer.host.as_str(), pointer.generation);
    let history = history(target, host, keys, timeline.max(1))?;
    let staged_generation = history
        .first()
        .map(|p| p.generation)
        .filter(|g| *g > generation);
    let mut c = Columns {
        staged_generation,
        ..Columns::default()
    };
    match read_report(target, host, fleet, ids, Some(pointer), now) {
        Seen::Missing => c.never_reported = true,
        Seen::Unverifiable(why) => c.report_problem = Some(why),
        Seen::Verified(r) => {
            c.behind = r.applied_generation.is_none_or(|g| g < generation);
            c.failed = r.outcome == Outcome::Failed;
            c.stale = is_stale(&r, now);
            c.report_age = Some(age(r.at, now).as_secs());
            c.report = Some(Summary {
                applied_generation: r.applied_generation,
                outcome: r.outcome,
                at: r.at,
                error: r.error.map(|e| report::Failure {
                    kind: clean(&e.kind),
                    message: clean(&e.message),
                }),
                applied_at: r.applied_at,
                last_failure: r.last_failure.map(|f| report::LastFailure {
                    kind: clean(&f.kind),
                    message: clean(&f.message),
                    ..f
                }),
                interval: r.interval,
                key_list_version: r.key_list_version,
            });
        }
    }
    Ok((c, history))
}

/// Generations shown per host in the HTML timeline.
pub const TIMELINE: usize = 30;

#[cfg(test)]
mod tests {
    use super::*;
    use nixcast_common::report::{Failure, LastFailure};

    fn report(applied: Option<u64>, applied_ago: u64, outcome: Outcome) -> Report {
        let now = Timestamp::now();
        Report {
            host: "canary".into(),
            pointer_generation: applied,
            applied_generation: applied,
            applied_store_path: None,
            applied_at: Some(Timestamp::from_system_time(
                now.system_time() - Duration::from_secs(applied_ago),
            )),
            outcome,
            error: (outcome == Outcome::Failed).then(|| Failure {
                kind: "switch-failed".into(),
                message: "exit 1\x1b[2J".into(),
            }),
            last_failure: None,
            at: now,
            seq: Some(1),
            interval: 60,
            booted_system: None,
            current_system: None,
            agent_version: "0.1.0".into(),
            key_list_version: None,
            reboot_pending: None,
        }
    }

    fn refusal(current: Option<u64>, r: Report, healthy_for: u64) -> Option<String> {
        canary_refusal(
            current,
            &Seen::Verified(Box::new(r)),
            Duration::from_secs(healthy_for),
            SystemTime::now(),
        )
    }

    #[test]
    fn a_canary_gates_until_it_is_healthy_on_its_newest_generation() {
        assert_eq!(
            refusal(Some(3), report(Some(3), 600, Outcome::Ok), 600),
            None
        );
        let young = refusal(Some(3), report(Some(3), 60, Outcome::Ok), 600).unwrap();
        assert!(young.contains("less than --healthy-for 10m"), "{young}");
        let behind = refusal(Some(4), report(Some(3), 600, Outcome::Ok), 0).unwrap();
        assert!(behind.contains("runs generation 3, not its newest generation 4"));
        let failed = refusal(Some(3), report(Some(3), 600, Outcome::Failed), 0).unwrap();
        assert!(failed.contains("switch-failed"), "{failed}");
        assert!(!failed.contains('\x1b'), "escaped: {failed}");
        let mut since = report(Some(3), 600, Outcome::Ok);
        since.last_failure = Some(LastFailure {
            at: Timestamp::now(),
            generation: Some(3),
            kind: "health-check".into(),
            message: "down".into(),
        });
        assert!(refusal(Some(3), since.clone(), 0)
            .unwrap()
            .contains("failed at"));
        // A failure before the generation was applied is history.
        since.last_failure.as_mut().unwrap().at =
            Timestamp::from_system_time(SystemTime::now() - Duration::from_secs(3600));
        assert_eq!(refusal(Some(3), since, 0), None);
        let mut old = report(Some(3), 7200, Outcome::Ok);
        old.at = Timestamp::from_system_time(SystemTime::now() - Duration::from_secs(3600));
        assert!(refusal(Some(3), old, 0).unwrap().contains("last report"));
        let none = canary_refusal(Some(3), &Seen::Missing, Duration::ZERO, SystemTime::now());
        assert!(none.unwrap().contains("not reported"));
        let bad = Seen::Unverifiable("not signed".into());
        let r = canary_refusal(Some(3), &bad, Duration::ZERO, SystemTime::now()).unwrap();
        assert!(r.contains("not trusted"), "{r}");
        assert!(canary_refusal(None, &bad, Duration::ZERO, SystemTime::now()).is_some());
    }

    #[test]
    fn a_canary_is_healthy_only_running_its_generation_for_long_enough_by_its_own_report() {
        // Installed for the next boot, the reboot pending: not running it.
        let mut pending = report(Some(3), 3600, Outcome::Ok);
        pending.reboot_pending = Some("a new kernel (in the window 02:00-05:00)".into());
        let why = refusal(Some(3), pending, 0).unwrap();
        assert!(why.contains("waits to reboot"), "{why}");
        // Applied an hour ago, but its last word came a minute after the
        // switch: that says nothing of the ten minutes asked for, whatever
        // this machine's clock says.
        let mut early = report(Some(3), 3600, Outcome::Ok);
        early.at = Timestamp::from_system_time(
            early.applied_at.unwrap().system_time() + Duration::from_secs(60),
        );
        early.interval = 86_400;
        let why = refusal(Some(3), early.clone(), 600).unwrap();
        assert!(why.contains("shows it running for 1m"), "{why}");
        let far_ahead = SystemTime::now() + Duration::from_secs(7 * 86_400);
        let why = canary_refusal(
            Some(3),
            &Seen::Verified(Box::new(early)),
            Duration::from_secs(600),
            far_ahead,
        )
        .unwrap();
        assert!(why.contains("less than --healthy-for"), "{why}");
    }

    #[test]
    fn staleness_counts_three_intervals() {
        let mut r = report(Some(1), 0, Outcome::Ok);
        let now = SystemTime::now();
        r.at = Timestamp::from_system_time(now - Duration::from_secs(179));
        assert!(!is_stale(&r, now));
        r.at = Timestamp::from_system_time(now - Duration::from_secs(181));
        assert!(is_stale(&r, now));
    }
}
