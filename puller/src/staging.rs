//! The staging directory: the uncompressed `file://` binary cache in the
//! state directory that Nix imports from, and the GC roots beside it that
//! hold what was imported until the profile does. Only this module spells
//! their layout; the other modules ask a [`Staging`] for its paths.
//!
//! ```text
//! STATE_DIR/staging/nix-cache-info       written by `write_cache`
//! STATE_DIR/staging/<hash>.narinfo       one per missing path, by `write_cache`
//! STATE_DIR/staging/nar/<narhash>.nar    a verified NAR (fetch.rs renames it there)
//! STATE_DIR/staging/nar/.tmp…            a NAR being decoded, or a large one
//!                                        spooled while it downloads
//! STATE_DIR/gcroots/<hash>[-N]           indirect roots on a run's imports
//! ```
//!
//! Nix meets no narinfo this run did not write, nor a NAR it did not
//! verify: `clear_leftovers` removes what an earlier run left before
//! `write_cache` writes this run's narinfos.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nixcast_common::layout::{self, Key};
use nixcast_common::manifest::{Compression, Entry};
use nixcast_common::narinfo::NarInfo;
use nixcast_common::StorePath;

/// Compressed size from which a NAR is spooled to a temporary file in
/// `nar/` while it downloads; a smaller one is read into memory.
pub const SPOOL_FROM: u64 = 1 << 20;

/// Whether a NAR is spooled to staging before it is decoded (else it is
/// read into memory).
pub fn spools(e: &Entry) -> bool {
    e.file_size >= SPOOL_FROM
}

/// A state directory's staging cache and GC roots.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
    roots: PathBuf,
}

impl Staging {
    /// The staging cache of the state directory `state`.
    pub fn in_state(state: &Path) -> Self {
        Staging {
            dir: state.join("staging"),
            // In the state directory, which the agent may write even in its
            // sandbox (Nix registers them as indirect roots).
            roots: state.join("gcroots"),
        }
    }

    /// The cache's directory, as Nix reads it (the tests' fake store does).
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The substituter URL Nix imports from.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// Where NARs are staged, and spooled and decoded first.
    pub fn nar_dir(&self) -> PathBuf {
        self.dir.join(layout::NAR_DIR)
    }

    /// Where the verified NAR of `e` is staged.
    pub fn nar(&self, e: &Entry) -> PathBuf {
        self.dir.join(nar_key(e).to_string())
    }

    /// The narinfo of `p` in the staging cache.
    pub fn narinfo(&self, p: &StorePath) -> PathBuf {
        self.dir.join(layout::narinfo(p))
    }

    /// The directory of the run's GC roots.
    pub fn roots(&self) -> &Path {
        &self.roots
    }

    /// Makes the staging directory and its `nar/`; anything else in their
    /// place (a file left by hand or by a damaged disk) goes first.
    pub fn create(&self) -> Result<()> {
        for dir in [self.dir.clone(), self.nar_dir()] {
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => std::fs::remove_file(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?,
                Err(_) => {}
            }
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(())
    }

    /// Removes the staging directory and makes it again, empty.
    pub fn empty(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| self.create())
    }

    /// Removes whatever an earlier run left in staging (it may have been
    /// killed at any point, or the directory damaged by hand): every narinfo
    /// and any other file, and every file in `nar/` but the NARs of
    /// `entries`, which `fetch::fetch_one` checks again before using them.
    /// Run before the free-space check too, so that a killed run's spooled
    /// NARs count as free.
    pub fn clear_leftovers(&self, entries: &[&Entry]) -> Result<()> {
        let keep: std::collections::HashSet<_> = entries.iter().map(|e| self.nar(e)).collect();
        let nar_dir = self.nar_dir();
        for (dir, keep) in [(self.dir.as_path(), None), (nar_dir.as_path(), Some(&keep))] {
            let listing =
                std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
            for e in listing {
                let e = e?;
                if e.path() == nar_dir || keep.is_some_and(|k| k.contains(&e.path())) {
                    continue;
                }
                let p = e.path();
                let removed = if e.file_type()?.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                removed.with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// Writes `nix-cache-info` and a narinfo for each of `entries` (their
    /// NARs are staged as they arrive), into a staging directory
    /// `clear_leftovers` cleared or that was emptied. `import` asks for these
    /// paths only. So Nix never meets a narinfo this run did not write, nor a
    /// NAR it did not verify.
    pub fn write_cache(&self, entries: &[&Entry]) -> Result<()> {
        write_new(
            &self.dir.join(layout::NIX_CACHE_INFO),
            "StoreDir: /nix/store\n",
        )?;
        for e in entries {
            let ni = NarInfo {
                store_path: e.store_path.clone(),
                url: nar_key(e).to_string(),
                compression: Some("none".to_owned()),
                file_hash: None,
                file_size: None,
                nar_hash: e.nar_hash,
                nar_size: e.nar_size,
                references: e.references.clone(),
                deriver: e.deriver.clone(),
                sigs: e.sigs.clone(),
                ca: None,
                system: None,
                quirks: Default::default(),
            };
            write_new(&self.narinfo(&e.store_path), &ni.render())?;
        }
        Ok(())
    }

    /// Drops every narinfo, after a failed run: verified NARs stay for the
    /// next run, and the narinfos naming every missing path (many, for a
    /// large manifest) are written again then.
    pub fn clear_narinfos(&self) {
        for e in self.narinfo_files() {
            let _ = std::fs::remove_file(e.path());
        }
    }

    /// Drops staged NARs (and temporary files a killed run left) and their
    /// narinfos, once they are in the store.
    pub fn clear_staged(&self) {
        let nars = std::fs::read_dir(self.nar_dir()).into_iter().flatten();
        for e in nars.flatten().chain(self.narinfo_files()) {
            let _ = std::fs::remove_file(e.path());
        }
    }

    fn narinfo_files(&self) -> impl Iterator<Item = std::fs::DirEntry> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".narinfo"))
    }

    /// Drops a run's GC roots, once the profile holds what they protected
    /// (Nix forgets an indirect root whose link is gone).
    pub fn clear_roots(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.roots) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot remove the GC roots in {}: {e}",
                    self.roots.display()
                );
            }
        }
    }
}

/// A staged NAR's file name: its NarHash, so two paths with the same NAR
/// share it.
/// A staged NAR is uncompressed, so its file hash is its NarHash: the key
/// Nix itself would give it.
fn nar_key(e: &Entry) -> Key {
    Key::Nar {
        file_hash: e.nar_hash,
        compression: Compression::None,
    }
}

/// Writes a staging file afresh. `create_new` (O_EXCL) follows no symlink:
/// a link planted under this name is removed, never written through.
fn write_new(p: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot replace {}", p.display()))
        }
        _ => {}
    }
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", p.display()))
}
