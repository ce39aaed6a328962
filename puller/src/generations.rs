//! `--keep-generations N`: after a successful switch, the system profile's
//! generations beyond the last N are deleted (never the current one, nor
//! the one the host booted), and the store paths only they held are
//! collected.
//!
//! The collection is limited to those generations' closures: of the paths
//! they reach, those Nix's garbage collector finds dead (`nix-store --gc
//! --print-dead`, which knows every root) are deleted with `nix-store
//! --delete`, which checks again under the GC lock that each is dead. Other
//! garbage on the host (build results, old user profiles) is left alone: a
//! full `nix-collect-garbage` stays the operator's choice. The bytes freed
//! are the NarSize of the deleted paths, as Nix reports them.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use nixcast_common::StorePath;

use crate::lock::LockShare;
use crate::store;

/// Deletes the profile's generations beyond the last `keep` and the paths
/// they alone held.
pub fn prune(profile: &Path, booted: &Path, keep: u32, lock: &LockShare) -> Result<()> {
    let mut gens = store::list_generations(profile)?;
    gens.sort_unstable();
    let current = store::profile_generation(profile);
    let booted = std::fs::canonicalize(booted).ok();
    let link = |g: u64| {
        let name = format!("{}-{g}-link", profile.file_name()?.to_str()?);
        std::fs::canonicalize(profile.with_file_name(name)).ok()
    };
    let newest: HashSet<u64> = gens.iter().rev().take(keep as usize).copied().collect();
    let doomed: Vec<u64> = gens
        .iter()
        .copied()
        .filter(|g| !newest.contains(g) && Some(*g) != current)
        .filter(|g| booted.is_none() || link(*g) != booted)
        .collect();
    if doomed.is_empty() {
        return Ok(());
    }
    let systems: Vec<StorePath> = doomed
        .iter()
        .filter_map(|g| StorePath::from_absolute(link(*g)?.to_str()?).ok())
        .collect();
    for g in &doomed {
        store::delete_generation(profile, *g, lock)
            .with_context(|| format!("deleting generation {g} of {}", profile.display()))?;
    }
    let valid: Vec<StorePath> = {
        let missing: HashSet<StorePath> = store::missing(&systems, lock)?.into_iter().collect();
        systems
            .into_iter()
            .filter(|s| !missing.contains(s))
            .collect()
    };
    let held: std::collections::BTreeSet<String> =
        query(&["--query", "--requisites"], &valid, lock)?
            .into_iter()
            .collect();
    let dead: HashSet<String> = store::run(
        Command::new("nix-store").args(["--gc", "--print-dead"]),
        lock,
    )
    .context("asking Nix which paths are dead")?
    .lines()
    .map(str::to_owned)
    .collect();
    let gone: Vec<StorePath> = held
        .iter()
        .filter(|p| dead.contains(p.as_str()))
        .map(|p| StorePath::from_absolute(p))
        .collect::<Result<_, _>>()?;
    let bytes: u64 = query(&["--query", "--size"], &gone, lock)?
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    if !gone.is_empty() {
        store::run(
            Command::new("nix-store")
                .arg("--delete")
                .args(gone.iter().map(|p| p.to_string())),
            lock,
        )
        .context("deleting the paths of old generations")?;
    }
    tracing::info!(
        generations = ?doomed,
        paths = gone.len(),
        bytes_freed = bytes,
        "deleted old system generations (--keep-generations {keep}) and the paths only they held ({})",
        crate::space::human(bytes)
    );
    Ok(())
}

/// One line of `nix-store ARGS PATHS…` output per line, chunked.
fn query(args: &[&str], paths: &[StorePath], lock: &LockShare) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for chunk in paths.chunks(store::CHUNK) {
        let text = store::run(
            Command::new("nix-store")
                .args(args)
                .args(chunk.iter().map(|p| p.to_string())),
            lock,
        )?;
        out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    Ok(out)
}
