//! The one read path from a host's pointer to the manifest it pins.
//!
//! A pointer is read under a fixed cap and verified before any byte of its
//! payload is parsed (`pointer::verify`). Its manifest is read under the
//! size the pointer pins; the stored bytes must be the pinned ones before
//! anything else happens to them: a sealed manifest is opened only then,
//! and its plain bytes are held to the plain pin. A verified pointer gives
//! a `Pinned` manifest (`Pinned::check`); a pointer the publisher only
//! decodes, to look at its own cache, gives a plain `Manifest` checked the
//! same way.

use anyhow::anyhow;
use nixcast_common::manifest::{Manifest, MAX_SIZE};
use nixcast_common::pinned::{self, Pinned};
use nixcast_common::pointer::{self, Pointer, Verified};
use nixcast_common::seal::{self, Identity};
use nixcast_common::PublicKey;

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

/// The manifest `p` pins, as stored (sealed ones stay sealed: a bundle
/// carries them as they are) and in the clear.
pub async fn manifest_bytes(
    cache: &Cache,
    p: &Pointer,
    ids: &[Identity],
) -> Result<(Vec<u8>, Vec<u8>), ReadError> {
    let m = &p.manifest;
    let url = cache.url_of(&m.path);
    let plain_pin = pinned::plain_pin(m);
    if m.size > MAX_SIZE || plain_pin.size > MAX_SIZE {
        return Err(ReadError::refused(
            &url,
            anyhow!("the manifest is {} bytes, over the limit", m.size),
        ));
    }
    // The pointer says how large it is: nothing beyond that is read.
    let stored = cache.get_small(&m.path, m.size).await?;
    // Nothing is decrypted before the stored bytes are the pinned ones.
    pinned::check_bytes(&stored, m.sha256, m.size).map_err(|e| ReadError::refused(&url, e))?;
    if m.sealed.is_none() {
        return Ok((stored.clone(), stored));
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
    Ok((stored, plain))
}

/// The manifest a verified pointer pins, and its stored bytes.
pub async fn pinned(
    cache: &Cache,
    v: &Verified<Pointer>,
    ids: &[Identity],
) -> Result<(Vec<u8>, Pinned), ReadError> {
    let (stored, plain) = manifest_bytes(cache, v.get(), ids).await?;
    let url = cache.url_of(&v.get().manifest.path);
    let m = Pinned::check(v, &plain).map_err(|e| ReadError::refused(&url, e))?;
    Ok((stored, m))
}

/// The manifest a decoded pointer names, held to its pin in the same way
/// (`Pinned::check` without the proof that the pointer was signed).
pub async fn unpinned(
    cache: &Cache,
    p: &Pointer,
    ids: &[Identity],
) -> Result<(Vec<u8>, Manifest), ReadError> {
    let (stored, plain) = manifest_bytes(cache, p, ids).await?;
    let url = cache.url_of(&p.manifest.path);
    let m = Manifest::parse(&plain).map_err(|e| ReadError::refused(&url, e))?;
    if p.store_path.as_ref().is_some_and(|t| *t != m.store_path) {
        return Err(ReadError::refused(
            &url,
            anyhow!("it is for {}, the pointer names another path", m.store_path),
        ));
    }
    Ok((stored, m))
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
