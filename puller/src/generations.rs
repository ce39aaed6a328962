//! `--keep-generations N`: after a successful switch, the system profile's
//! generations beyond the last N are deleted (never the current one, nor
//! the one the host booted), and the store paths only they held are
//! collected.
//!
//! The collection is limited to those generations' closures: of the paths
//! they reach, those Nix's garbage collector finds dead (`nix-store --gc
//! --print-dead`, which knows every root) are deleted with `nix-store
//! --delete`, which checks again under the GC lock that each is dead
//! (`Store::collect_garbage`). Other garbage on the host (build results, old
//! user profiles) is left alone: a full `nix-collect-garbage` stays the
//! operator's choice. The bytes freed are the NarSize of the deleted paths,
//! as Nix reports them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nixcast_common::StorePath;

use crate::host::Store;

/// Deletes the profile's generations beyond the last `keep` and the paths
/// they alone held; `booted` is the booted system, resolved (its generation
/// is kept).
pub fn prune(store: &dyn Store, profile: &Path, booted: Option<&Path>, keep: u32) -> Result<()> {
    let doomed = doomed(store, profile, booted, keep)?;
    if doomed.is_empty() {
        return Ok(());
    }
    let systems: Vec<StorePath> = doomed
        .iter()
        .filter_map(|(_, target)| StorePath::from_absolute(target.as_ref()?.to_str()?).ok())
        .collect();
    for (g, _) in &doomed {
        store
            .delete_generation(profile, *g)
            .with_context(|| format!("deleting generation {g} of {}", profile.display()))?;
    }
    let valid: Vec<StorePath> = {
        let asked: Vec<&StorePath> = systems.iter().collect();
        let missing: HashSet<StorePath> = store.missing(&asked)?.into_iter().collect();
        systems
            .into_iter()
            .filter(|s| !missing.contains(s))
            .collect()
    };
    let freed = store.collect_garbage(&valid)?;
    let generations: Vec<u64> = doomed.iter().map(|(g, _)| *g).collect();
    tracing::info!(
        generations = ?generations,
        paths = freed.paths,
        bytes_freed = freed.bytes,
        "deleted old system generations (--keep-generations {keep}) and the paths only they held ({})",
        crate::space::human(freed.bytes)
    );
    Ok(())
}

/// The generations to delete, oldest first, with where each points: all
/// but the newest `keep`, the current one and the booted one.
fn doomed(
    store: &dyn Store,
    profile: &Path,
    booted: Option<&Path>,
    keep: u32,
) -> Result<Vec<(u64, Option<PathBuf>)>> {
    let mut gens = store.list_generations(profile)?;
    gens.sort_unstable();
    let current = store.profile_generation(profile);
    let newest: HashSet<u64> = gens.iter().rev().take(keep as usize).copied().collect();
    Ok(gens
        .iter()
        .copied()
        .filter(|g| !newest.contains(g) && Some(*g) != current)
        .map(|g| (g, store.generation_target(profile, g)))
        .filter(|(_, target)| booted.is_none() || target.as_deref() != booted)
        .collect())
}
