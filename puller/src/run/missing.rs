//! Step 3: what the store lacks of the closure, each path signed by a
//! trusted key (`policy::check_signatures`); what a dry run would do; and
//! whether a bundle holds every NAR needed.

use anyhow::anyhow;
use nixcast_common::manifest;
use nixcast_common::pinned::Pinned;
use nixcast_common::StorePath;

use super::{other, policy, Config, RunError};
use crate::delta::Deltas;

/// The manifest's paths the store lacks, and what they weigh.
pub(super) struct Missing<'a> {
    pub entries: Vec<&'a manifest::Entry>,
    /// Compressed bytes to download.
    pub download: u64,
    pub unpacked: u64,
}

/// Step 3: what the store lacks of the closure, each path signed by a
/// trusted key.
pub(super) fn what_is_missing<'a>(
    cfg: &Config,
    manifest: &'a Pinned,
) -> Result<Missing<'a>, RunError> {
    let paths: Vec<&StorePath> = manifest.paths.iter().map(|e| &e.store_path).collect();
    let missing = cfg.ports.store.missing(&paths).map_err(other)?;
    let entries: Vec<_> = missing
        .iter()
        .map(|m| manifest.get(m).expect("asked about manifest paths"))
        .collect();
    policy::check_signatures(cfg, &entries)?;
    // Checked manifests cannot overflow these sums.
    let download: u64 = entries.iter().map(|e| e.file_size).sum();
    let unpacked: u64 = entries.iter().map(|e| e.nar_size).sum();
    tracing::info!(
        paths = manifest.paths.len(),
        missing = entries.len(),
        download,
        unpacked,
        "closure checked"
    );
    Ok(Missing {
        entries,
        download,
        unpacked,
    })
}

/// `--dry-run`: what a run would fetch and do.
pub(super) fn print_plan(cfg: &Config, manifest: &Pinned, todo: &Missing) {
    for e in &todo.entries {
        println!("would fetch {} ({} bytes)", e.store_path, e.file_size);
    }
    println!(
        "would fetch {} of {} paths, {} bytes ({} unpacked), then {} {}",
        todo.entries.len(),
        manifest.paths.len(),
        todo.download,
        todo.unpacked,
        cfg.apply.action.as_str(),
        manifest.top()
    );
}

/// A bundle must hold every NAR this host lacks, or its delta; say which
/// before touching anything.
pub(super) fn check_source_holds(
    cfg: &Config,
    todo: &Missing,
    deltas: &Deltas,
) -> Result<(), RunError> {
    let holds = |url: &str| cfg.ports.source.holds(url) != Some(false);
    let absent: Vec<String> = todo
        .entries
        .iter()
        .filter(|e| !holds(&e.url) && !deltas.get(e).is_some_and(|d| holds(&d.url)))
        .map(|e| e.store_path.to_string())
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    Err(RunError::Fetch(anyhow!(
        "{} lacks the NARs of {} paths this host does not have (was it made for another base?):\n  {}",
        cfg.ports.source.url_of(""),
        absent.len(),
        absent.join("\n  ")
    )))
}
