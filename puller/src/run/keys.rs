//! Before the pointer: the keys that may sign for this host. Pinned ones
//! (`--trusted-key`) as they are; with `--root-key`, those of the newest key
//! list (`common::keylist`) that the host's roots, and then each accepted
//! list's own roots, signed in turn.
//!
//! The host keeps the list it accepted last in its state directory and
//! never goes below its version. A run reads `keys.json` when the pointer
//! changed, and once a day when it did not (`recheck`); when it is newer,
//! every version in between is read from `keys/<version>.json` and
//! accepted in order, so that a change of roots is never skipped. A host
//! with no list yet first tries the newest one with its configured roots
//! (a host set up after a root rotation holds the new roots), and walks
//! from version 1 when they did not sign it.

use std::time::Duration;

use anyhow::anyhow;
use nixcast_cli::fs::read_small;
use nixcast_common::keylist::{self, Accepted, KeyListError, Trust};
use nixcast_common::layout::{self, Key};
use nixcast_common::pointer::Timestamp;
use nixcast_common::PublicKey;

use super::{fetch_error, other, Config, RunError};
use crate::config::Trusted;
use crate::source::FetchError;

/// Versions one run walks at most: a list planted with a huge version
/// costs a bounded number of requests.
const MAX_WALK: u64 = 1000;

/// How long the held list goes unchecked while the pointer does not
/// change: a revocation (or an expiry) reaches a host within a day even
/// when no new generation is published, and a poll costs no extra request
/// the rest of the time.
pub const RECHECK_AFTER: Duration = Duration::from_secs(86_400);

/// On a run whose pointer did not change: `keys.json` is read again when
/// the held list was last checked (its file's time) more than
/// `RECHECK_AFTER` ago, or at a time ahead of this host's clock.
pub(super) async fn recheck(cfg: &Config) -> Result<(), RunError> {
    if !matches!(cfg.policy.trusted, Trusted::Roots { .. }) {
        return Ok(());
    }
    let checked = std::fs::metadata(cfg.ports.state.key_list()).and_then(|m| m.modified());
    let stale = checked.map_or(true, |t| t.elapsed().map_or(true, |e| e > RECHECK_AFTER));
    if stale {
        tracing::info!("the key list was last checked more than a day ago: reading it again");
        trusted(cfg).await?;
    }
    Ok(())
}

/// The keys that sign for this host now; with roots, after reading the
/// cache's key list.
pub(super) async fn trusted(cfg: &Config) -> Result<Vec<PublicKey>, RunError> {
    let Trusted::Roots { roots, current } = &cfg.policy.trusted else {
        return Ok(cfg.policy.trusted.keys());
    };
    let list = newest(cfg, roots).await?;
    let keys = list.signing_keys_for(&cfg.policy.host);
    if keys.is_empty() {
        return Err(RunError::Refused(anyhow!(
            "key list version {} names no signing key for {}",
            list.get().version,
            cfg.policy.host
        )));
    }
    tracing::info!(
        version = list.get().version,
        keys = %keys.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        "key list accepted"
    );
    *current.lock().expect("not poisoned") = keys.clone();
    Ok(keys)
}

/// The newest key list this host can accept, kept in its state.
async fn newest(cfg: &Config, roots: &Trust) -> Result<Accepted, RunError> {
    let now = Timestamp::now();
    let held = held(cfg)?;
    let held_digest = held.as_ref().map(|h| h.digest());
    let source = &cfg.ports.source;
    let refused = |url: String| move |e: KeyListError| RunError::Refused(anyhow!(e).context(url));
    let latest = match source
        .get_small(layout::KEY_LIST, keylist::MAX_ENVELOPE_SIZE as u64)
        .await
    {
        Ok(bytes) => bytes,
        // Without the file nothing new can be learned: the held list stays
        // in force while it lasts (a deleted file revokes nothing, but
        // hides no revocation the host has seen either).
        Err(FetchError::NotFound(_)) if held.is_some() => {
            let held = held.expect("checked");
            return held
                .fresh(now)
                .map_err(refused(layout::KEY_LIST.to_owned()));
        }
        Err(FetchError::NotFound(url)) => {
            return Err(RunError::Refused(anyhow!(
                "{url}: the cache has no key list; sign one with `nixcast keys sign`"
            )))
        }
        Err(e) => return Err(fetch_error(e)),
    };
    let latest_url = source.url_of(layout::KEY_LIST);
    // The version is the file's word until its signatures are checked: it
    // only says how far to walk.
    let target = keylist::decode_unverified(&latest)
        .map_err(refused(latest_url.clone()))?
        .version;
    let mut list = match held {
        Some(h) => h,
        // A host set up after a root rotation holds the new roots: the
        // newest list is all it needs. Otherwise it walks from version 1.
        None => match keylist::accept(&latest, roots, None, Some(target)) {
            Ok(first) => {
                let first = first.fresh(now).map_err(refused(latest_url))?;
                return keep(cfg, first, &latest, held_digest);
            }
            Err(KeyListError::Threshold { .. }) if target > 1 => {
                let bytes = history(cfg, 1).await?;
                keylist::accept(&bytes, roots, None, Some(1))
                    .map_err(refused(source.url_of(&Key::KeyListHistory(1).to_string())))?
            }
            Err(e) => return Err(refused(latest_url)(e)),
        },
    };
    let from = list.get().version;
    if target < from {
        return Err(refused(latest_url)(KeyListError::RolledBack {
            got: target,
            held: from,
        }));
    }
    if target == from {
        // The same version again must be the same list, and in force.
        let same = keylist::accept(&latest, &list.trust(), Some(&list), Some(target))
            .and_then(|a| a.fresh(now))
            .map_err(refused(latest_url))?;
        return keep(cfg, same, &latest, held_digest);
    }
    if target - from > MAX_WALK {
        return Err(RunError::Refused(anyhow!(
            "{latest_url}: key list version {target} is more than {MAX_WALK} versions past \
             version {from}"
        )));
    }
    // Every version in between, in order: lists that expired since are
    // passed, as long as their roots signed the next; the last must be in force.
    for v in from + 1..target {
        let bytes = history(cfg, v).await?;
        let url = source.url_of(&Key::KeyListHistory(v).to_string());
        list =
            keylist::accept(&bytes, &list.trust(), Some(&list), Some(v)).map_err(refused(url))?;
    }
    let last = keylist::accept(&latest, &list.trust(), Some(&list), Some(target))
        .and_then(|a| a.fresh(now))
        .map_err(refused(latest_url))?;
    keep(cfg, last, &latest, held_digest)
}

async fn history(cfg: &Config, version: u64) -> Result<Vec<u8>, RunError> {
    let key = Key::KeyListHistory(version).to_string();
    cfg.ports
        .source
        .get_small(&key, keylist::MAX_ENVELOPE_SIZE as u64)
        .await
        .map_err(fetch_error)
}

/// The list this host accepted last. It was verified when it was kept; it
/// is held to its own roots again, as a damaged file must stop the agent
/// rather than let it start afresh below its version.
fn held(cfg: &Config) -> Result<Option<Accepted>, RunError> {
    let path = cfg.ports.state.key_list();
    let bytes = match read_small(&path, keylist::MAX_ENVELOPE_SIZE as u64) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(other(anyhow!("cannot read {}: {e}", path.display()))),
    };
    keylist::reload_own(&bytes).map(Some).map_err(|e| {
        other(anyhow!(
            "the key list {} is damaged ({e}); refusing to run, since starting afresh would \
             forget which keys were revoked. Restore it from a backup",
            path.display()
        ))
    })
}

/// Keeps an accepted list as the host's own (not on a dry run), unless it
/// is the one held already.
fn keep(
    cfg: &Config,
    list: Accepted,
    bytes: &[u8],
    held: Option<nixcast_common::Sha256Hash>,
) -> Result<Accepted, RunError> {
    let path = cfg.ports.state.key_list();
    if cfg.apply.dry_run {
        return Ok(list);
    }
    if held != Some(list.digest()) {
        nixcast_cli::fs::write(&path, bytes, 0o644).map_err(other)?;
    } else {
        // Checked now: the file's time says when (see `recheck`).
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(|e| other(anyhow!("cannot touch {}: {e}", path.display())))?;
    }
    Ok(list)
}
