//! Before anything is downloaded: is there room for it?
//!
//! The store's filesystem (`statvfs` of `/nix/store`) must have room for
//! what the missing paths unpack to (their NarSize), and the state
//! directory's for the NARs still to be staged, unpacked, which may all be
//! staged at once when the downloads outrun Nix's import (their NarSize
//! too; each batch's NARs leave staging once imported), plus the largest
//! NARs spooled there compressed at once while they download. When both are
//! one filesystem the sums add up. On top comes a margin for Nix's database,
//! its temporary files and whatever else writes there meanwhile. A run that
//! would not fit stops here, exit 1, with the figures, before its first
//! NAR request: a small machine that fills its disk half-way through an
//! import is worse off than one that never started.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
pub use nixcast_cli::fmt::human_bytes as human;
use nixcast_common::manifest::Entry;

/// Room kept free beyond what the paths need.
pub const MARGIN: u64 = 64 << 20;

/// Where the store's filesystem is measured.
pub const STORE_DIR: &str = "/nix/store";

/// Checks that `entries` (the missing paths) fit; `staged` says whether a
/// verified NAR of an entry is staged already; up to `spooled_at_once`
/// large NARs are on disk compressed while they download.
pub fn check(
    state_dir: &Path,
    entries: &[&Entry],
    staged: impl Fn(&Entry) -> bool,
    spooled_at_once: usize,
) -> Result<()> {
    let store_need: u64 = entries.iter().map(|e| e.nar_size).sum();
    let staging_need = staging_need(entries, staged, spooled_at_once);
    let store = nearest_existing(Path::new(STORE_DIR));
    let same = dev(store)? == dev(state_dir)?;
    let describe = |what: &str| format!("{} paths: {what}", entries.len());
    if same {
        let need = store_need + staging_need + MARGIN;
        fits(
            store,
            need,
            &describe(&format!(
                "{} unpacked in the store, {} staged in {}, a margin of {}",
                human(store_need),
                human(staging_need),
                state_dir.display(),
                human(MARGIN)
            )),
        )
    } else {
        fits(
            store,
            store_need + MARGIN,
            &describe(&format!(
                "{} unpacked, a margin of {}",
                human(store_need),
                human(MARGIN)
            )),
        )?;
        fits(
            state_dir,
            staging_need + MARGIN,
            &describe(&format!(
                "{} to stage, a margin of {}",
                human(staging_need),
                human(MARGIN)
            )),
        )
    }
}

/// What staging may hold at once: every NAR still to stage, unpacked, and
/// the largest of those spooled compressed while they download.
fn staging_need(
    entries: &[&Entry],
    staged: impl Fn(&Entry) -> bool,
    spooled_at_once: usize,
) -> u64 {
    let to_stage: Vec<&Entry> = entries.iter().copied().filter(|e| !staged(e)).collect();
    let mut spooled: Vec<u64> = to_stage
        .iter()
        .filter(|e| crate::staging::spools(e))
        .map(|e| e.file_size)
        .collect();
    spooled.sort_unstable_by(|a, b| b.cmp(a));
    to_stage.iter().map(|e| e.nar_size).sum::<u64>()
        + spooled.iter().take(spooled_at_once).sum::<u64>()
}

/// `p`, or its nearest ancestor that exists: a fresh store has no
/// `/nix/store` until Nix first writes it, and it will be on that filesystem.
fn nearest_existing(p: &Path) -> &Path {
    p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"))
}

fn dev(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .dev())
}

/// Bytes an unprivileged writer may still use on `p`'s filesystem (root
/// may dip into the reserved blocks, but Nix's database should not).
pub fn free(p: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(p).with_context(|| format!("cannot statvfs {}", p.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn fits(p: &Path, need: u64, what: &str) -> Result<()> {
    let free = free(p)?;
    if free < need {
        bail!(
            "not enough space: this run needs {} ({need} bytes) on the filesystem of {} ({what}), \
             which has {} ({free} bytes) free; nothing was fetched. Free some space \
             (nix-collect-garbage, --keep-generations) and run again",
            human(need),
            p.display(),
            human(free),
        );
    }
    tracing::debug!(path = %p.display(), need, free, "enough space");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(4 << 20), "4.0 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(MARGIN), "64.0 MiB");
    }

    #[test]
    fn staging_counts_the_unstaged_nars_and_the_largest_spooled_at_once() {
        let cache = crate::testing::Cache::new();
        let entry = |n: u8, file_size: u64, nar_size: u64| Entry {
            file_size,
            nar_size,
            ..cache.entry(&crate::testing::store_path("p", n), "x", vec![])
        };
        let (mib, kib) = (1 << 20, 1 << 10);
        let entries = [
            entry(1, 5 * mib, 9 * mib),
            entry(2, 3 * mib, 4 * mib),
            entry(3, 2 * mib, 2 * mib),
            entry(4, 100 * kib, 300 * kib),
        ];
        let all: Vec<&Entry> = entries.iter().collect();
        let unpacked = (9 + 4 + 2) * mib + 300 * kib;
        // Two spooled at once: the 5 and 3 MiB files; the small one never is.
        assert_eq!(staging_need(&all, |_| false, 2), unpacked + 8 * mib);
        // The 5 MiB one is staged already: neither it nor its spool counts.
        let staged = |e: &Entry| e.file_size == 5 * mib;
        assert_eq!(staging_need(&all, staged, 2), unpacked - 9 * mib + 5 * mib);
        assert_eq!(staging_need(&all, |_| false, 0), unpacked);
    }

    #[test]
    fn free_space_is_read() {
        let d = tempfile::tempdir().unwrap();
        assert!(free(d.path()).unwrap() > 0);
        assert!(free(&d.path().join("missing")).is_err());
    }

    #[test]
    fn a_store_not_made_yet_is_measured_on_its_parent() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("nix/store");
        assert_eq!(nearest_existing(&store), d.path());
        std::fs::create_dir_all(&store).unwrap();
        assert_eq!(nearest_existing(&store), store);
    }
}
