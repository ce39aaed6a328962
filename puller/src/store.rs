//! The local Nix store, through Nix's own commands.
//!
//! - which paths are missing: `nix-store --check-validity --print-invalid`,
//!   one call per few thousand paths (its output has not changed across versions);
//! - import: verified NARs are laid out as an uncompressed `file://` binary
//!   cache in the staging directory, and `nix-store --realise` substitutes
//!   from it, several paths at once. Nix streams each NAR (unlike
//!   `nix-store --import`, which holds a whole NAR in memory: 548 MB for a
//!   300 MiB path), checks the publisher's signature against the trusted keys
//!   and the NarHash a second time, and keeps the signatures in its database.
//!   Nothing we did not verify is in that cache. Through a nix-daemon
//!   (`NIX_REMOTE=daemon`, as the NixOS module runs the agent) it is the
//!   daemon that reads the staging cache, so it must see the same path: the
//!   state directory is the host's (systemd's `StateDirectory=`);
//! - the profile: `nix-env -p PROFILE --set PATH`, only for a valid PATH (for
//!   an invalid one nix-env would try to substitute it), substituters off.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nixcast_cli::command::without_secrets;
use nixcast_common::{PublicKey, StorePath};

use crate::lock::LockShare;
use crate::staging::Staging;

/// Store paths per command line.
pub const CHUNK: usize = 4000;
/// Paths Nix imports at once from the staging cache.
pub const IMPORT_JOBS: usize = 16;

/// A Nix command, holding the run lock until it exits (`LockShare::stdin`).
pub fn run(cmd: &mut Command, lock: &LockShare) -> Result<String> {
    nixcast_cli::command::run(without_secrets(cmd), lock.stdin())
}

/// The paths among `paths` that are not valid in the local store, in the
/// order asked. A path with nothing at its place on disk cannot be valid:
/// only the others are asked of Nix (none at all on a fresh store, which
/// saves a Nix process there).
pub fn missing<'a>(
    paths: impl IntoIterator<Item = &'a StorePath>,
    lock: &LockShare,
) -> Result<Vec<StorePath>> {
    let paths: Vec<&StorePath> = paths.into_iter().collect();
    // Stat each path once: what Nix is asked and what counts as absent agree.
    let on_disk: Vec<bool> = paths
        .iter()
        .map(|p| std::fs::symlink_metadata(p.to_string()).is_ok())
        .collect();
    let asked: Vec<String> = paths
        .iter()
        .zip(&on_disk)
        .filter(|(_, there)| **there)
        .map(|(p, _)| p.to_string())
        .collect();
    let mut invalid = std::collections::HashSet::new();
    for chunk in asked.chunks(CHUNK) {
        let text = run(
            Command::new("nix-store")
                .args(["--check-validity", "--print-invalid"])
                .args(chunk),
            lock,
        )?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            invalid.insert(StorePath::from_absolute(line)?);
        }
    }
    Ok(paths
        .into_iter()
        .zip(on_disk)
        .filter(|(p, there)| !there || invalid.contains(*p))
        .map(|(p, _)| p.clone())
        .collect())
}

/// Imports `paths` from the staging cache and roots them (`ROOTS/HASH`,
/// `ROOTS/HASH-2`, … named after the first path, which no other batch
/// imports) until `Staging::clear_roots`. Their references must be valid already or
/// among `paths`.
///
/// `nix-store --realise` with the staging cache as the only substituter:
/// Nix substitutes up to `jobs` paths at once (`nix copy` imports one after
/// another), checks each narinfo's signature against `trusted` and each
/// NarHash, and holds its temporary roots on the paths until the permanent
/// ones are in place, so no garbage collection can take a path between the
/// import and its root.
pub fn import(
    staging: &Staging,
    paths: &[StorePath],
    trusted: &[PublicKey],
    jobs: usize,
    lock: &LockShare,
) -> Result<()> {
    let Some(first) = paths.first() else {
        return Ok(());
    };
    let roots = staging.roots();
    std::fs::create_dir_all(roots).with_context(|| format!("cannot create {}", roots.display()))?;
    let keys: Vec<String> = trusted.iter().map(|k| k.to_string()).collect();
    let from = staging.url();
    let mut cmd = Command::new("nix-store");
    cmd.arg("--realise")
        .arg("--add-root")
        .arg(roots.join(first.hash_part()))
        .arg("--indirect")
        .args(["--option", "substituters", &from])
        .args(["--option", "require-sigs", "true"])
        .args(["--option", "trusted-public-keys", &keys.join(" ")])
        // Nix's narinfo cache (~/.cache/nix) is keyed by the cache URL, and
        // the staging URL is the same every run: never answer from it.
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"])
        // Substitutions count as jobs in Nix 2.8; nothing is built.
        .args(["--max-jobs", &jobs.max(1).to_string()])
        .args(paths.iter().map(|p| p.to_string()));
    run(&mut cmd, lock).context("importing into the Nix store")?;
    Ok(())
}

pub fn set_profile(profile: &Path, path: &StorePath, lock: &LockShare) -> Result<()> {
    run(
        Command::new("nix-env")
            .arg("-p")
            .arg(profile)
            .args(["--option", "substituters", ""])
            .arg("--set")
            .arg(path.to_string()),
        lock,
    )
    .with_context(|| format!("setting the profile {} to {path}", profile.display()))?;
    Ok(())
}

/// The store path a profile points to now, if it exists.
pub fn profile_target(profile: &Path) -> Option<StorePath> {
    let real = std::fs::canonicalize(profile).ok()?;
    StorePath::from_absolute(real.to_str()?).ok()
}

/// The generation number a profile points to now (`system` → `system-N-link`).
pub fn profile_generation(profile: &Path) -> Option<u64> {
    let link = std::fs::read_link(profile).ok()?;
    let name = link.file_name()?.to_str()?;
    let prefix = format!("{}-", profile.file_name()?.to_str()?);
    name.strip_prefix(&prefix)?
        .strip_suffix("-link")?
        .parse()
        .ok()
}

/// Points the profile back at an earlier generation (as `nix-env --switch-generation`).
pub fn switch_generation(profile: &Path, generation: u64, lock: &LockShare) -> Result<()> {
    run(
        Command::new("nix-env")
            .arg("-p")
            .arg(profile)
            .args(["--switch-generation", &generation.to_string()]),
        lock,
    )
    .with_context(|| {
        format!(
            "switching {} back to generation {generation}",
            profile.display()
        )
    })?;
    Ok(())
}

/// Where generation `generation` of `profile` points (`PROFILE-N-link`),
/// followed to the end.
pub fn generation_target(profile: &Path, generation: u64) -> Option<PathBuf> {
    let name = format!("{}-{generation}-link", profile.file_name()?.to_str()?);
    std::fs::canonicalize(profile.with_file_name(name)).ok()
}

/// The generation numbers of a profile, from its `NAME-N-link` siblings.
pub fn list_generations(profile: &Path) -> Result<Vec<u64>> {
    let dir = profile.parent().context("a profile has a directory")?;
    let prefix = format!(
        "{}-",
        profile
            .file_name()
            .context("a profile has a name")?
            .to_string_lossy()
    );
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix("-link"))
        {
            if let Ok(n) = n.parse() {
                out.push(n);
            }
        }
    }
    Ok(out)
}

pub fn delete_generation(profile: &Path, generation: u64, lock: &LockShare) -> Result<()> {
    run(
        Command::new("nix-env")
            .arg("-p")
            .arg(profile)
            .args(["--delete-generations", &generation.to_string()]),
        lock,
    )?;
    Ok(())
}

/// What a garbage collection deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub paths: usize,
    /// Their NarSize, as Nix reports it.
    pub bytes: u64,
}

/// Of the closures of `systems` (valid paths), deletes what Nix's garbage
/// collector finds dead (`nix-store --gc --print-dead`, which knows every
/// root) with `nix-store --delete`, which checks again under the GC lock
/// that each is dead; returns how many paths and their NarSize.
pub fn collect_garbage(systems: &[StorePath], lock: &LockShare) -> Result<Collected> {
    let held: std::collections::BTreeSet<String> =
        query(&["--query", "--requisites"], systems, lock)?
            .into_iter()
            .collect();
    let dead: std::collections::HashSet<String> = run(
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
        run(
            Command::new("nix-store")
                .arg("--delete")
                .args(gone.iter().map(|p| p.to_string())),
            lock,
        )
        .context("deleting the paths of old generations")?;
    }
    Ok(Collected {
        paths: gone.len(),
        bytes,
    })
}

/// One line of `nix-store ARGS PATHS…` output per line, chunked.
fn query(args: &[&str], paths: &[StorePath], lock: &LockShare) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for chunk in paths.chunks(CHUNK) {
        let text = run(
            Command::new("nix-store")
                .args(args)
                .args(chunk.iter().map(|p| p.to_string())),
            lock,
        )?;
        out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    Ok(out)
}
