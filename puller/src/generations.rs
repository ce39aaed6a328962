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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{store_path, FakeStore};

    /// A profile of five generations, each its own system, the newest current.
    fn five() -> (std::sync::Arc<FakeStore>, Vec<StorePath>) {
        let systems: Vec<StorePath> = (1..=5).map(|n| store_path("system", n)).collect();
        let store = FakeStore::with_valid(&systems.iter().collect::<Vec<_>>());
        {
            let mut s = store.lock();
            s.generations = (1..=5).zip(systems.iter().cloned()).collect();
            s.current = Some(5);
        }
        (store, systems)
    }

    fn kept(store: &FakeStore) -> Vec<u64> {
        store.lock().generations.iter().map(|(g, _)| *g).collect()
    }

    #[test]
    fn the_newest_the_current_and_the_booted_are_kept_the_rest_deleted_and_collected() {
        let (store, sys) = five();
        let profile = Path::new("/nix/var/nix/profiles/system");
        // The host booted generation 2; generation 4 is current (rolled back).
        store.lock().current = Some(4);
        let booted = PathBuf::from(sys[1].to_string());
        prune(&*store, profile, Some(&booted), 1).unwrap();
        assert_eq!(kept(&store), [2, 4, 5]);
        // Nix is asked to collect what the deleted generations held.
        assert_eq!(
            store.lock().collected,
            [vec![sys[0].clone(), sys[2].clone()]]
        );
    }

    #[test]
    fn nothing_is_deleted_or_collected_within_the_limit() {
        let (store, _) = five();
        let profile = Path::new("/nix/var/nix/profiles/system");
        prune(&*store, profile, None, 5).unwrap();
        assert_eq!(kept(&store), [1, 2, 3, 4, 5]);
        assert!(store.lock().collected.is_empty());
        // Without a booted system to keep, only the newest are.
        prune(&*store, profile, None, 2).unwrap();
        assert_eq!(kept(&store), [4, 5]);
        assert_eq!(store.lock().collected.len(), 1);
    }

    #[test]
    fn a_system_no_longer_valid_is_not_handed_to_the_collection() {
        let (store, sys) = five();
        store.lock().valid.remove(&sys[0]);
        prune(&*store, Path::new("/p/system"), None, 3).unwrap();
        assert_eq!(kept(&store), [3, 4, 5]);
        assert_eq!(store.lock().collected, [vec![sys[1].clone()]]);
    }
}
