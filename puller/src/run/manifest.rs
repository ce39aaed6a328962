//! Step 2: the manifest the verified pointer pins, rebuilt from a delta or
//! fetched whole, opened if sealed (with this host's identities), and held
//! to the pin (`Pinned::check`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use nixcast_common::manifest::{self, Delta, Manifest};
use nixcast_common::pinned::{self, PinError, Pinned};
use nixcast_common::pointer::{ManifestRef, PlainRef, Pointer, Verified};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{layout, Sha256Hash};

use super::{fetch_error, other, Config, RunError};
use crate::config::DEFAULT_IDENTITY;

/// A manifest this large would describe some hundred thousand paths.
const MAX_MANIFEST: u64 = 256 << 20;

/// Only objects sealed to this host's identities are opened, and only after
/// the pointer that pins them verified.
pub(super) fn identities_for(
    cfg: &Config,
    v: &Verified<Pointer>,
) -> Result<Arc<[Identity]>, RunError> {
    Ok(match &v.get().manifest.sealed {
        Some(_) => load_identities(cfg)?.into(),
        None => Arc::new([]),
    })
}

/// Step 2: the manifest the verified pointer pins, rebuilt from a delta or
/// fetched whole, opened if sealed, and held to the pin (`Pinned::check`).
pub(super) async fn fetch_manifest(
    cfg: &Config,
    v: &Verified<Pointer>,
    ids: &[Identity],
) -> Result<Pinned, RunError> {
    let m = &v.get().manifest;
    if m.size > MAX_MANIFEST || m.sealed.is_some_and(|s| s.size > MAX_MANIFEST) {
        return Err(RunError::Refused(anyhow!(
            "the manifest is {} bytes, over the limit",
            m.size
        )));
    }
    let url = cfg.ports.source.url_of(&m.path);
    let refused =
        |e: PinError| RunError::Refused(anyhow::Error::new(e).context(format!("manifest {url}")));
    let plain = pinned::plain_pin(m);
    let bytes = match from_delta(cfg, m, &plain, ids).await {
        Some(bytes) => bytes,
        None => {
            let got = cfg
                .ports
                .source
                .get_small(&m.path, m.size)
                .await
                .map_err(fetch_error)?;
            if m.sealed.is_none() {
                got
            } else {
                // Nothing is decrypted before the sealed bytes are the pinned ones.
                pinned::check_bytes(&got, m.sha256, m.size).map_err(refused)?;
                open_sealed(ids, &got, plain.size)
                    .with_context(|| format!("manifest {url}"))
                    .map_err(RunError::Refused)?
            }
        }
    };
    let manifest = Pinned::check(v, &bytes).map_err(refused)?;
    if !cfg.apply.dry_run {
        if let Err(e) = nixcast_cli::fs::write(&cfg.ports.state.manifest(), &bytes, 0o644) {
            tracing::warn!("cannot keep the manifest for the next run's delta: {e:#}");
        }
    }
    Ok(manifest)
}

/// Opens a small sealed object; being sealed to none of our identities is
/// a refusal that names the identities tried.
fn open_sealed(ids: &[Identity], sealed: &[u8], limit: u64) -> anyhow::Result<Vec<u8>> {
    seal::open_bytes(ids, sealed, limit).map_err(|e| match e {
        seal::SealError::NoMatchingIdentity => anyhow!(
            "sealed to none of this host's identities (tried {})",
            ids.iter()
                .map(|i| i.source())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        e => anyhow!("cannot open it: {e}"),
    })
}

/// The identities given, or the SSH host key.
fn load_identities(cfg: &Config) -> Result<Vec<Identity>, RunError> {
    let default = [PathBuf::from(DEFAULT_IDENTITY)];
    let files = if cfg.policy.identity_files.is_empty() {
        &default[..]
    } else {
        &cfg.policy.identity_files[..]
    };
    nixcast_cli::keys::read_identities(files)
        .map_err(|e| other(e.context("the pointer is sealed (give --identity to open it)")))
}

/// The pinned manifest, rebuilt from the last one this agent verified and
/// the publisher's delta, if that gives exactly the pinned bytes; `None`
/// sends the caller to fetch it whole (no base, no delta, or a wrong one).
async fn from_delta(
    cfg: &Config,
    m: &ManifestRef,
    plain: &PlainRef,
    ids: &[Identity],
) -> Option<Vec<u8>> {
    let base = std::fs::read(cfg.ports.state.manifest()).ok()?;
    let base_sha = Sha256Hash::digest(&base);
    if base_sha == plain.sha256 {
        return Some(base);
    }
    let key = match m.sealed {
        None => manifest::delta_path(&m.sha256, &base_sha),
        Some(_) => layout::sealed_delta(&m.sha256, &base_sha),
    };
    // A delta larger than the manifest would be no saving.
    let delta = match cfg.ports.source.get_small(&key, m.size).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!("no manifest delta: {e}");
            return None;
        }
    };
    let delta = match m.sealed {
        None => delta,
        Some(_) => match open_sealed(ids, &delta, plain.size) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(delta = %cfg.ports.source.url_of(&key), "unusable delta ({e:#}); fetching the manifest whole");
                return None;
            }
        },
    };
    let rebuilt = Manifest::parse(&base)
        .and_then(|old| Delta::parse(&delta)?.apply(&old))
        .map(|new| new.to_json());
    match rebuilt {
        Ok(bytes)
            if bytes.len() as u64 == plain.size && Sha256Hash::digest(&bytes) == plain.sha256 =>
        {
            tracing::info!(delta = %cfg.ports.source.url_of(&key), bytes = delta.len(), "manifest rebuilt from a delta");
            Some(bytes)
        }
        Ok(_) => {
            tracing::warn!(delta = %cfg.ports.source.url_of(&key), "the delta does not make the pinned manifest; fetching it whole");
            None
        }
        Err(e) => {
            tracing::warn!(delta = %cfg.ports.source.url_of(&key), "unusable delta ({e}); fetching the manifest whole");
            None
        }
    }
}
