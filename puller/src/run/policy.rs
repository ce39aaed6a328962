//! What this host accepts: a verified pointer's fields against this host
//! and what it accepted before, and every path to fetch signed by a
//! trusted key.

use std::time::SystemTime;

use anyhow::anyhow;
use nixcast_common::manifest;
use nixcast_common::pointer::{Pointer, Timestamp, Tombstone, Verified};

use super::{Config, RunError};
use crate::state::Status;

/// How far a pointer's `issuedAt` may be ahead of this host's clock. Hosts
/// kept by NTP differ by well under a second, and a pointer is read seconds
/// after it is signed; five minutes (Kerberos's default skew) allows a host
/// whose clock drifts between syncs, while a publisher whose clock is wrong
/// by hours cannot pin the freeze floor far in the future.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// The checks of a verified pointer against this host and what it has seen.
pub(super) fn check_policy(
    cfg: &Config,
    status: &Status,
    v: &Verified<Pointer>,
    t0: SystemTime,
) -> anyhow::Result<()> {
    check_for_now_and_here(cfg, v.get(), t0)?;
    check_generation(cfg, status, v)
}

/// The pointer names this host and platform, has not expired, and was not
/// issued in the future.
fn check_for_now_and_here(cfg: &Config, p: &Pointer, t0: SystemTime) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.host == cfg.policy.host,
        "the pointer is for host {:?}, not {:?}",
        p.host,
        cfg.policy.host
    );
    anyhow::ensure!(
        p.system == cfg.policy.system,
        "the pointer is for system {:?}, not {:?}",
        p.system,
        cfg.policy.system
    );
    if let Some(exp) = p.expires_at {
        anyhow::ensure!(
            exp.system_time() > t0,
            "the pointer (generation {}) expired at {exp}",
            p.generation
        );
    }
    check_issued(p.generation, p.issued_at, t0)
}

/// Not issued in the future (beyond the clock skew allowed).
fn check_issued(generation: u64, issued_at: Timestamp, t0: SystemTime) -> anyhow::Result<()> {
    anyhow::ensure!(
        issued_at.system_time() <= t0 + MAX_CLOCK_SKEW,
        "the pointer (generation {generation}) was issued at {issued_at}, in the future (this \
         host's clock says {}): a publisher with a wrong clock? It would keep this host from \
         accepting any pointer issued before then",
        Timestamp::from_system_time(t0)
    );
    Ok(())
}

/// The checks of a verified tombstone: those of a pointer that apply to
/// it (for this host, not issued in the future, not below the floor).
pub(super) fn check_tombstone(
    cfg: &Config,
    status: &Status,
    v: &Verified<Tombstone>,
    t0: SystemTime,
) -> anyhow::Result<()> {
    let t = v.get();
    anyhow::ensure!(
        t.host == cfg.policy.host,
        "the tombstone is for host {:?}, not {:?}",
        t.host,
        cfg.policy.host
    );
    check_issued(t.generation, t.issued_at, t0)?;
    let floor = Floor {
        generation: t.generation,
        issued_at: t.issued_at,
        digest: v.digest(),
    };
    check_floor(cfg, status, &floor)
}

/// The pointer's generation against the highest accepted: not lower, not
/// a jump past `--max-generation-jump`, the same one only with the same
/// content, and not issued before the last accepted one.
fn check_generation(cfg: &Config, status: &Status, v: &Verified<Pointer>) -> anyhow::Result<()> {
    let p = v.get();
    let floor = Floor {
        generation: p.generation,
        issued_at: p.issued_at,
        digest: v.digest(),
    };
    check_floor(cfg, status, &floor)
}

/// What a pointer or a tombstone is held to the floor by.
struct Floor {
    generation: u64,
    issued_at: Timestamp,
    digest: nixcast_common::Sha256Hash,
}

fn check_floor(cfg: &Config, status: &Status, p: &Floor) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.generation >= status.highest_generation,
        "the pointer has generation {}, lower than the highest accepted ({}): a rollback attack, or a restored cache",
        p.generation,
        status.highest_generation
    );
    // Checked above: not below the floor. A host that accepted nothing yet
    // has no floor to measure a jump from.
    let jump = p.generation.saturating_sub(status.highest_generation);
    anyhow::ensure!(
        p.generation < u64::MAX,
        "the pointer has generation {}, which leaves no room for a next one",
        p.generation
    );
    if status.highest_digest.is_some() && jump > cfg.policy.max_generation_jump {
        anyhow::bail!(
            "the pointer jumps from generation {} to {} (more than --max-generation-jump {}): \
             a history file planted in the bucket, or a publish gone wrong? Once accepted, no \
             lower generation is ever applied again. If the jump is intended, run once with \
             --max-generation-jump {jump}",
            status.highest_generation,
            p.generation,
            cfg.policy.max_generation_jump
        );
    }
    if p.generation == status.highest_generation {
        anyhow::ensure!(
            status.highest_digest.is_none() || status.highest_digest == Some(p.digest),
            "the pointer has generation {} with other content than the one accepted before",
            p.generation
        );
    }
    if let Some(last) = status.last_issued_at {
        anyhow::ensure!(
            p.issued_at >= last,
            "the pointer was issued at {}, before the last accepted one ({last})",
            p.issued_at
        );
    }
    Ok(())
}

/// The entries none of `trusted` signed (over NarHash, NarSize and references).
fn unsigned_among<'a>(
    trusted: &[nixcast_common::PublicKey],
    entries: &[&'a manifest::Entry],
) -> Vec<&'a manifest::Entry> {
    entries
        .iter()
        .filter(|e| {
            let fp = nixcast_common::narinfo::fingerprint(
                &e.store_path,
                &e.nar_hash,
                e.nar_size,
                &e.references,
            );
            e.nar_size == 0
                || !trusted
                    .iter()
                    .any(|k| e.sigs.iter().any(|s| k.verifies(fp.as_bytes(), s)))
        })
        .copied()
        .collect()
}

/// Each path to fetch must carry a trusted signature over its NarHash,
/// NarSize and references: Nix would refuse to import it otherwise, after
/// the download. A manifest that contradicts its own signatures is refused
/// before anything is fetched, and a NAR staged for such an entry is dropped.
pub(super) fn check_signatures(cfg: &Config, entries: &[&manifest::Entry]) -> Result<(), RunError> {
    // ~50 µs a signature: a cold pull of 1000 paths checks them on every
    // core, as the first download waits for the last check. A chunk that
    // gets no thread (a tasks limit) is checked here.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = entries.len().div_ceil(cpus).max(128);
    let trusted = cfg.policy.trusted.keys();
    let trusted = &trusted;
    let unsigned: Vec<&manifest::Entry> = std::thread::scope(|s| {
        let mut chunks = entries.chunks(chunk);
        let here = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|c| {
                let check = move || unsigned_among(trusted, c);
                std::thread::Builder::new()
                    .spawn_scoped(s, check)
                    .map_err(|_| c)
            })
            .collect();
        let mut out = unsigned_among(trusted, here);
        for c in others {
            out.extend(match c {
                Ok(thread) => thread.join().expect("a signature check does not panic"),
                Err(c) => unsigned_among(trusted, c),
            });
        }
        out
    });
    let Some(first) = unsigned.first() else {
        return Ok(());
    };
    if !cfg.apply.dry_run {
        let staging = cfg.ports.state.staging();
        for e in &unsigned {
            let _ = std::fs::remove_file(staging.nar(e));
        }
    }
    Err(RunError::Refused(anyhow!(
        "the manifest's entry for {} (and {} more) has no trusted signature over its NarHash, \
         NarSize and references: the manifest contradicts its own signatures",
        first.store_path,
        unsigned.len() - 1
    )))
}
