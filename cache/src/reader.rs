//! The one read path from a host's pointer to the manifest it pins.
//!
//! A pointer (or the tombstone of a retired host, `head`) is read under a fixed cap and verified before any byte of its
//! payload is parsed (`pointer::verify`). Its manifest is read under the
//! size the pointer pins; the stored bytes must be the pinned ones before
//! anything else happens to them: a sealed manifest is opened only then,
//! and its plain bytes are held to the plain pin. A verified pointer gives
//! a `Pinned` manifest (`Pinned::check`); a pointer the publisher only
//! decodes, to look at its own cache, gives a plain `Manifest` checked the
//! same way. An agent that holds the manifest it verified last may rebuild
//! the new one from it and the publisher's delta (`pinned_from`); only
//! bytes that are exactly the pinned ones count, or it is fetched whole.

use anyhow::anyhow;
use nixcast_common::manifest::{self, Delta, Manifest, MAX_SIZE};
use nixcast_common::pinned::{self, Pinned};
use nixcast_common::pointer::{self, Head, ManifestRef, PlainRef, Pointer, Verified, VerifiedHead};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{layout, PublicKey, Sha256Hash};

use crate::{Cache, Error};

/// Why a read failed: the way there (try again later), or what arrived
/// (an attack or a broken publish: refuse it).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Fetch(#[from] Error),
    #[error("{0:#}")]
    Refused(anyhow::Error),
}

impl ReadError {
    fn refused(url: &str, e: impl Into<anyhow::Error>) -> Self {
        ReadError::Refused(e.into().context(url.to_owned()))
    }
}

/// The pointer at `key`, verified with `keys`.
pub async fn pointer(
    cache: &Cache,
    key: &str,
    keys: &[PublicKey],
) -> Result<Verified<Pointer>, ReadError> {
    let bytes = cache
        .get_small(key, pointer::MAX_ENVELOPE_SIZE as u64)
        .await?;
    pointer::verify(&bytes, keys).map_err(|e| ReadError::refused(&cache.url_of(key), e))
}

/// The pointer at `key`, only decoded: for a look at one's own cache.
pub async fn pointer_unverified(cache: &Cache, key: &str) -> Result<Pointer, ReadError> {
    let bytes = cache
        .get_small(key, pointer::MAX_ENVELOPE_SIZE as u64)
        .await?;
    pointer::decode_unverified(&bytes).map_err(|e| ReadError::refused(&cache.url_of(key), e))
}

/// What `key` (a host's `hosts/<host>.json`) holds, a pointer or a
/// tombstone, verified with `keys`.
pub async fn head(cache: &Cache, key: &str, keys: &[PublicKey]) -> Result<VerifiedHead, ReadError> {
    let bytes = cache
        .get_small(key, pointer::MAX_ENVELOPE_SIZE as u64)
        .await?;
    pointer::verify_head(&bytes, keys).map_err(|e| ReadError::refused(&cache.url_of(key), e))
}

/// What `key` holds, only decoded: for a look at one's own cache.
pub async fn head_unverified(cache: &Cache, key: &str) -> Result<Head, ReadError> {
    let bytes = cache
        .get_small(key, pointer::MAX_ENVELOPE_SIZE as u64)
        .await?;
    pointer::decode_head_unverified(&bytes).map_err(|e| ReadError::refused(&cache.url_of(key), e))
}

/// A manifest as stored (sealed ones stay sealed: a bundle carries them as
/// they are) and, for a sealed one, its plain bytes; a plain one is held
/// once.
pub struct ManifestBytes {
    pub stored: Vec<u8>,
    opened: Option<Vec<u8>>,
}

impl ManifestBytes {
    pub fn plain(&self) -> &[u8] {
        self.opened.as_deref().unwrap_or(&self.stored)
    }

    pub fn into_plain(self) -> Vec<u8> {
        self.opened.unwrap_or(self.stored)
    }
}

/// The manifest `p` pins, checked against the pin before anything else.
pub async fn manifest_bytes(
    cache: &Cache,
    p: &Pointer,
    ids: &[Identity],
) -> Result<ManifestBytes, ReadError> {
    let m = &p.manifest;
    let url = format!("manifest {}", cache.url_of(&m.path));
    let plain_pin = pinned::plain_pin(m);
    check_size(m)?;
    // The pointer says how large it is: nothing beyond that is read.
    let stored = cache.get_small(&m.path, m.size).await?;
    // Nothing is decrypted before the stored bytes are the pinned ones.
    pinned::check_bytes(&stored, m.sha256, m.size).map_err(|e| ReadError::refused(&url, e))?;
    if m.sealed.is_none() {
        return Ok(ManifestBytes {
            stored,
            opened: None,
        });
    }
    if ids.is_empty() {
        return Err(ReadError::refused(
            &url,
            anyhow!(
                "the manifest of {} generation {} is sealed: give --identity to open it",
                p.host,
                p.generation
            ),
        ));
    }
    let plain =
        open_sealed(ids, &stored, plain_pin.size).map_err(|e| ReadError::refused(&url, e))?;
    pinned::check_bytes(&plain, plain_pin.sha256, plain_pin.size)
        .map_err(|e| ReadError::refused(&url, e))?;
    Ok(ManifestBytes {
        stored,
        opened: Some(plain),
    })
}

fn check_size(m: &ManifestRef) -> Result<(), ReadError> {
    if m.size > MAX_SIZE || m.sealed.is_some_and(|s| s.size > MAX_SIZE) {
        return Err(ReadError::Refused(anyhow!(
            "the manifest is {} bytes, over the limit",
            m.size
        )));
    }
    Ok(())
}

fn check_pin(cache: &Cache, v: &Verified<Pointer>, plain: &[u8]) -> Result<Pinned, ReadError> {
    let url = format!("manifest {}", cache.url_of(&v.get().manifest.path));
    Pinned::check(v, plain).map_err(|e| ReadError::refused(&url, e))
}

/// The manifest a verified pointer pins, in the clear: rebuilt from `base`
/// (the plain manifest this host verified last) and the publisher's delta
/// when that gives exactly the pinned bytes, else fetched whole.
pub async fn pinned_from(
    cache: &Cache,
    v: &Verified<Pointer>,
    ids: &[Identity],
    base: Option<Vec<u8>>,
) -> Result<(Vec<u8>, Pinned), ReadError> {
    let m = &v.get().manifest;
    check_size(m)?;
    let rebuilt = match base {
        Some(base) => from_delta(cache, m, &pinned::plain_pin(m), ids, base).await,
        None => None,
    };
    let plain = match rebuilt {
        Some(plain) => plain,
        None => manifest_bytes(cache, v.get(), ids).await?.into_plain(),
    };
    let pinned = check_pin(cache, v, &plain)?;
    Ok((plain, pinned))
}

/// The pinned manifest, rebuilt from `base` and the publisher's delta, if
/// that gives exactly the pinned bytes; `None` sends the caller to fetch it
/// whole (no delta, or a wrong one).
async fn from_delta(
    cache: &Cache,
    m: &ManifestRef,
    plain: &PlainRef,
    ids: &[Identity],
    base: Vec<u8>,
) -> Option<Vec<u8>> {
    let base_sha = Sha256Hash::digest(&base);
    if base_sha == plain.sha256 {
        return Some(base);
    }
    let key = match m.sealed {
        None => manifest::delta_path(&m.sha256, &base_sha),
        Some(_) => layout::sealed_delta(&m.sha256, &base_sha),
    };
    let url = cache.url_of(&key);
    // A delta larger than the manifest would be no saving.
    let delta = match cache.get_small(&key, m.size).await {
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
                tracing::warn!(delta = %url, "unusable delta ({e:#}); fetching the manifest whole");
                return None;
            }
        },
    };
    // A sealed manifest is padded (`common::pad`): the rebuilt one is, too.
    let rebuilt = Manifest::parse(&base)
        .and_then(|old| Delta::parse(&delta)?.apply(&old))
        .map(|new| match m.sealed {
            Some(_) => nixcast_common::pad::pad_json(new.to_json()),
            None => new.to_json(),
        });
    match rebuilt {
        Ok(bytes) if pinned::check_bytes(&bytes, plain.sha256, plain.size).is_ok() => {
            tracing::info!(delta = %url, bytes = delta.len(), "manifest rebuilt from a delta");
            Some(bytes)
        }
        Ok(_) => {
            tracing::warn!(delta = %url, "the delta does not make the pinned manifest; fetching it whole");
            None
        }
        Err(e) => {
            tracing::warn!(delta = %url, "unusable delta ({e}); fetching the manifest whole");
            None
        }
    }
}

/// The manifest a decoded pointer names, held to its pin in the same way
/// (`Pinned::check` without the proof that the pointer was signed).
pub async fn unpinned(
    cache: &Cache,
    p: &Pointer,
    ids: &[Identity],
) -> Result<(Vec<u8>, Manifest), ReadError> {
    let bytes = manifest_bytes(cache, p, ids).await?;
    let url = cache.url_of(&p.manifest.path);
    let m = Manifest::parse(bytes.plain()).map_err(|e| ReadError::refused(&url, e))?;
    if p.store_path.as_ref().is_some_and(|t| *t != m.store_path) {
        return Err(ReadError::refused(
            &url,
            anyhow!("it is for {}, the pointer names another path", m.store_path),
        ));
    }
    Ok((bytes.stored, m))
}

/// Opens a small sealed object; being sealed to none of `ids` is an error
/// that names the identities tried.
pub fn open_sealed(ids: &[Identity], sealed: &[u8], limit: u64) -> anyhow::Result<Vec<u8>> {
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
