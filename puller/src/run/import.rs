//! Step 4: the missing paths fetched, verified and imported, overlapped
//! (`pipeline.rs`), after the staging directory is cleared of what an
//! earlier run left and the free space checked; then the system checked
//! valid and staging emptied.

use std::sync::Arc;

use anyhow::anyhow;
use nixcast_common::pinned::Pinned;
use nixcast_common::seal::Identity;

use super::missing::Missing;
use super::{other, Config, RunError};
use crate::delta::Deltas;
use crate::pipeline;

/// Step 4: the missing paths fetched, verified and imported, overlapped
/// (`pipeline.rs`). Returns the bytes downloaded.
pub(super) async fn fetch_and_import(
    cfg: &Config,
    manifest: &Pinned,
    todo: &Missing<'_>,
    ids: &Arc<[Identity]>,
    deltas: &Deltas,
) -> Result<u64, RunError> {
    let staging = cfg.ports.state.staging();
    staging.create().map_err(other)?;
    staging.clear_leftovers(&todo.entries).map_err(other)?;
    crate::space::check(
        cfg.ports.state.path(),
        &todo.entries,
        |e| staging.nar(e).exists(),
        crate::pipeline::spooled_at_once(),
    )
    .map_err(other)?;
    let fetched = pipeline::fetch_and_import(
        cfg,
        &staging,
        manifest,
        &todo.entries,
        todo.download,
        ids,
        deltas,
    )
    .await?;
    tracing::info!(
        paths = todo.entries.len(),
        bytes = fetched,
        "fetched, verified and imported"
    );
    Ok(fetched)
}

/// The system is valid in the store; what was staged for it is not needed
/// any more. A path is valid only with its whole closure, so when anything
/// was missing the system was too, and the successful import of every
/// missing path made it valid: Nix is asked only when the system was not
/// among them (a Nix process saved, ~20 ms of every update).
pub(super) fn check_imported(
    cfg: &Config,
    manifest: &Pinned,
    todo: &Missing<'_>,
) -> Result<(), RunError> {
    let top = manifest.top();
    let imported = todo.entries.iter().any(|e| &e.store_path == top);
    if !imported && !cfg.ports.store.missing(&[top]).map_err(other)?.is_empty() {
        return Err(other(anyhow!("{} is not valid after the import", top)));
    }
    cfg.ports.state.staging().clear_staged();
    Ok(())
}
