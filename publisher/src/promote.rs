//! `nixcast promote`: makes a staged generation current.
//!
//! `publish --stage` writes a generation's history entry
//! `hosts/HOST/N.json` but not the host's pointer. Promoting signs a fresh
//! pointer for it (issued now, with a new expiry) and writes it as
//! `hosts/HOST.json`; the history entry, written before, stays as it was
//! staged. A host's generation is never lowered.
//!
//! With `--after`, nothing is promoted unless every canary named is healthy
//! on its newest published generation, by its latest verified report (see
//! [`crate::fleet::canary_refusal`]), has no newer generation staged (it
//! would not have tried that one yet), and that generation is of the same
//! *release* as each generation promoted.
//!
//! **A release** is one `publish` command: every host it publishes gets the
//! same issue time, which its history entry `hosts/HOST/N.json` keeps (a
//! promoted pointer is issued anew, its history entry is not). Two hosts'
//! generations are of the same release when their history entries were
//! issued at the same second. A canary whose build failed in `publish --all
//! --stage`, or that the release left unchanged, runs an older release and
//! does not let it through.
//!
//! **Clocks.** Like `publish`, `promote` refuses to sign when this
//! machine's clock is behind the issue time of any pointer it read (the
//! hosts', the staged entries', the canaries'): it would sign a pointer that
//! agents refuse as older. A clock ahead is caught by the agents (they
//! refuse a pointer issued more than five minutes ahead of theirs) and by
//! the canaries' reports (a report applied before its pointer was issued is
//! not believed); it cannot shorten `--healthy-for`, which is read from the
//! canary's own report.

use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use nixcast_common::pointer::{Pointer, Timestamp};
use nixcast_common::seal::{Identity, Recipients};
use nixcast_common::{layout, SecretKey};

use crate::fleet::{self, Seen};
use crate::target::Target;

pub struct Options {
    pub key: SecretKey,
    /// The generation to promote; default the highest staged one.
    pub generation: Option<u64>,
    pub expires_in: Option<Duration>,
    /// Canaries that must be healthy first.
    pub after: Vec<String>,
    pub healthy_for: Duration,
    /// Lists each canary's ssh-ed25519 keys, which verify its reports.
    pub fleet: Recipients,
    /// Open sealed reports.
    pub ids: Vec<Identity>,
}

/// What promoting one host did.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    Promoted {
        from: Option<u64>,
        to: u64,
    },
    /// The pointer is already at the generation asked for (or no higher one is staged).
    AlreadyAt(u64),
}

/// Checks the canaries, then promotes each host; prints what it did for each.
pub fn promote(target: &Target, hosts: &[String], opts: &Options) -> Result<()> {
    if !opts.after.is_empty() {
        // The release of each generation to promote; a host that cannot be
        // read fails below, on its own, and one with nothing to promote
        // needs no canary.
        let keys = [opts.key.public()];
        let releases: Vec<Release> = hosts
            .iter()
            .filter_map(|h| {
                let p = staged_pointer(target, h, opts).ok()?;
                let at = fleet::current(target, h, &keys).ok()?.map(|c| c.generation);
                if at >= Some(p.generation) {
                    return None;
                }
                Some(Release {
                    host: h.clone(),
                    generation: p.generation,
                    issued_at: p.issued_at,
                })
            })
            .collect();
        check_canaries(target, opts, &releases)?;
    }
    let mut failed = Vec::new();
    for host in hosts {
        match promote_host(target, host, opts) {
            Ok(Done::Promoted { from, to }) => {
                let from = from.map_or_else(|| "none".to_owned(), |g| g.to_string());
                println!("promoted {host} to generation {to} (was {from})");
            }
            Ok(Done::AlreadyAt(g)) => {
                println!("{host} is at generation {g}, no higher one is staged: nothing to promote")
            }
            Err(e) => {
                nixcast_cli::logging::report_error(&e.context(host.clone()));
                failed.push(host.as_str());
            }
        }
    }
    ensure!(
        failed.is_empty(),
        "{} of {} hosts failed: {}",
        failed.len(),
        hosts.len(),
        failed.join(", ")
    );
    Ok(())
}

/// A generation to promote, and the release it belongs to (its history
/// entry's issue time).
struct Release {
    host: String,
    generation: u64,
    issued_at: Timestamp,
}

/// Refuses like `publish` when this machine's clock is behind `issued`, the
/// issue time of a pointer read (`what`).
fn check_clock(now: Timestamp, issued: Timestamp, what: &str) -> Result<()> {
    ensure!(
        issued <= now,
        "this machine's clock ({now}) is behind the time {what} was issued ({issued}); fix the clock"
    );
    Ok(())
}

/// Refuses, naming each canary and why, unless all of them are healthy on
/// the release of every generation to promote.
fn check_canaries(target: &Target, opts: &Options, releases: &[Release]) -> Result<()> {
    let keys = [opts.key.public()];
    let now = SystemTime::now();
    let mut refusals = Vec::new();
    for canary in &opts.after {
        crate::cache::check_host(canary)?;
        let current =
            fleet::current(target, canary, &keys).with_context(|| format!("canary {canary}"))?;
        let generation = current.as_ref().map(|p| p.generation);
        if let Some(p) = &current {
            let what = format!("the pointer of canary {canary}");
            check_clock(Timestamp::from_system_time(now), p.issued_at, &what)?;
        }
        // A canary with a newer generation staged has not tried it yet.
        let newest = fleet::history(target, canary, &keys, 1)?.pop();
        if let Some(staged) = newest
            .as_ref()
            .map(|p| p.generation)
            .filter(|n| Some(*n) > generation)
        {
            refusals.push(format!(
                "canary {canary}: its generation {staged} is staged, not promoted"
            ));
            continue;
        }
        let seen = fleet::read_report(
            target,
            canary,
            &opts.fleet,
            &opts.ids,
            current.as_ref(),
            now,
        );
        if let Some(why) = fleet::canary_refusal(generation, &seen, opts.healthy_for, now) {
            refusals.push(format!("canary {canary}: {why}"));
            continue;
        }
        // Healthy: on the release promoted?
        let release = newest
            .filter(|p| Some(p.generation) == generation)
            .map(|p| p.issued_at);
        let mut same = true;
        for r in releases {
            if release != Some(r.issued_at) {
                same = false;
                refusals.push(format!(
                    "canary {canary}: it runs generation {}{}, not the release of {} generation {} \
                     (published at {})",
                    generation.unwrap_or(0),
                    release.map_or_else(
                        || " (its history entry is missing)".to_owned(),
                        |t| format!(" of the release published at {t}")
                    ),
                    r.host,
                    r.generation,
                    r.issued_at
                ));
            }
        }
        if same {
            if let Seen::Verified(r) = &seen {
                tracing::info!(canary, generation, at = %r.at, "canary is healthy");
            }
        }
    }
    if !refusals.is_empty() {
        bail!("refusing to promote: {}", refusals.join("; "));
    }
    Ok(())
}

/// The history entry of the generation to promote: `--generation`, or the
/// highest.
fn staged_pointer(target: &Target, host: &str, opts: &Options) -> Result<Pointer> {
    crate::cache::check_host(host)?;
    let keys = [opts.key.public()];
    Ok(match opts.generation {
        Some(n) => {
            let key = layout::history(host, n);
            let p = crate::cache::read_pointer(target, &key, &keys).map_err(fleet::untrusted)?;
            ensure!(
                p.host == host && p.generation == n,
                "{}/{key} names another host or generation",
                target.describe()
            );
            p
        }
        None => match fleet::history(target, host, &keys, 1)?.pop() {
            Some(p) => p,
            None => bail!(
                "{host} has no generation published with key {}",
                opts.key.name()
            ),
        },
    })
}

fn promote_host(target: &Target, host: &str, opts: &Options) -> Result<Done> {
    crate::cache::check_host(host)?;
    let keys = [opts.key.public()];
    let current = fleet::current(target, host, &keys).with_context(|| {
        format!(
            "the current pointer of {host} does not verify with key {}",
            opts.key.name()
        )
    })?;
    let at = current.as_ref().map(|p| p.generation);
    let staged = staged_pointer(target, host, opts)?;
    if let Some(at) = at {
        if staged.generation == at {
            return Ok(Done::AlreadyAt(at));
        }
        if staged.generation < at {
            ensure!(
                opts.generation.is_none(),
                "{host} is at generation {at}: promoting generation {} would lower it",
                staged.generation
            );
            return Ok(Done::AlreadyAt(at));
        }
    }
    let issued_at = Timestamp::now();
    if let Some(last) = current.as_ref().map(|p| p.issued_at) {
        check_clock(issued_at, last, &format!("the current pointer of {host}"))?;
    }
    let what = format!("generation {} of {host}", staged.generation);
    check_clock(issued_at, staged.issued_at, &what)?;
    let pointer = Pointer {
        issued_at,
        expires_at: opts.expires_in.map(|d| issued_at.plus(d)),
        ..staged
    };
    let envelope = pointer.sign(&opts.key);
    // The history entry (read above) is in place: only the pointer is new.
    target.sync()?;
    target.put(&layout::pointer(host), &envelope)?;
    target.sync()?;
    Ok(Done::Promoted {
        from: at,
        to: pointer.generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Cache, FakeStore, HOST};

    fn options(cache: &Cache, generation: Option<u64>) -> Options {
        Options {
            key: cache.key.clone(),
            generation,
            expires_in: Some(Duration::from_secs(3600)),
            after: Vec::new(),
            healthy_for: Duration::ZERO,
            fleet: Recipients::default(),
            ids: Vec::new(),
        }
    }

    fn current(cache: &Cache) -> u64 {
        cache.pointer(&layout::pointer(HOST)).generation
    }

    #[test]
    fn a_hosts_generation_is_never_lowered() {
        let cache = Cache::new();
        let mut store = FakeStore::new();
        let base = store.add("base", "base", &[]);
        for (n, stage) in [(1, false), (2, false), (3, true)] {
            let top = store.add(&format!("system-{n}"), &n.to_string(), &[&base]);
            assert_eq!(cache.publish(&store, &top, stage), n);
        }
        let hosts = [HOST.to_owned()];
        assert_eq!(current(&cache), 2);
        // The highest staged generation by default.
        assert_eq!(
            promote_host(&cache.target, HOST, &options(&cache, None)).unwrap(),
            Done::Promoted {
                from: Some(2),
                to: 3
            }
        );
        assert_eq!(current(&cache), 3);
        // Asked for a lower one: refused, the pointer stays.
        for lower in [1, 2] {
            let err = promote(&cache.target, &hosts, &options(&cache, Some(lower))).unwrap_err();
            assert!(err.to_string().contains("1 of 1 hosts failed"), "{err:#}");
            let err = promote_host(&cache.target, HOST, &options(&cache, Some(lower))).unwrap_err();
            assert!(err.to_string().contains("would lower it"), "{err:#}");
            assert_eq!(current(&cache), 3);
        }
        // Nothing higher staged: nothing to do.
        assert_eq!(
            promote_host(&cache.target, HOST, &options(&cache, None)).unwrap(),
            Done::AlreadyAt(3)
        );
        assert_eq!(current(&cache), 3);
    }
}
