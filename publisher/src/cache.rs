//! Reading a cache, for every command that does: pointers (verified, or
//! only decoded for a look at one's own cache), the manifest a pointer pins
//! (sealed ones opened with an identity), and how sizes are shown.

use anyhow::{Context, Result};
use nixcast_cache::reader::{self, ReadError};
use nixcast_common::layout::Key;
use nixcast_common::manifest::Manifest;
use nixcast_common::nardelta::{self, Index};
use nixcast_common::pointer::{Head, Pointer, Tombstone};
use nixcast_common::seal::Identity;
use nixcast_common::{layout, PublicKey};

use crate::target::Target;

/// Reads a pointer; with keys it must verify, without them its payload is
/// only decoded (for a look at one's own cache). A retired host's tombstone
/// is an error that says so.
pub fn read_pointer(target: &Target, key: &str, keys: &[PublicKey]) -> Result<Pointer> {
    match read_head(target, key, keys)? {
        Head::Pointer(p) => Ok(p),
        Head::Retired(t) => Err(retired(&t)),
    }
}

/// What a host's `hosts/<host>.json` holds: its pointer, or the tombstone
/// `nixcast retire` left; verified with keys, else only decoded.
pub fn read_head(target: &Target, key: &str, keys: &[PublicKey]) -> Result<Head> {
    let cache = target.cache();
    let head = match keys.is_empty() {
        false => target
            .block_on(reader::head(cache, key, keys))
            .map(|h| match h {
                Head::Pointer(v) => Head::Pointer(v.into_inner()),
                Head::Retired(v) => Head::Retired(v.into_inner()),
            }),
        true => target.block_on(reader::head_unverified(cache, key)),
    };
    head.map_err(|e| match e {
        ReadError::Fetch(nixcast_cache::Error::NotFound(_)) => {
            anyhow::anyhow!("{}/{key} does not exist", target.describe())
        }
        e => e.into(),
    })
}

/// The error of a command that needs a pointer and finds a tombstone.
pub fn retired(t: &Tombstone) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is retired (generation {}, since {}): `nixcast retire` replaced its pointer; \
         `nixcast publish --force` adds it again",
        nixcast_cli::text::clean(&t.host),
        t.generation,
        t.issued_at
    )
}

/// The manifest a pointer pins, checked against the pin, with the bytes
/// stored (sealed ones stay sealed: a bundle carries them as they are).
/// A sealed one is opened with `ids`.
pub fn read_manifest(
    target: &Target,
    p: &Pointer,
    ids: &[Identity],
) -> Result<(Vec<u8>, Manifest)> {
    Ok(target.block_on(reader::unpinned(target.cache(), p, ids))?)
}

/// A NAR-delta index as stored, and what it holds, decoded (not verified:
/// for gc and bundles looking at their own cache); a sealed one is opened
/// with `ids`. `None`: there is none.
pub fn read_nar_deltas(
    target: &Target,
    key: &Key,
    ids: &[Identity],
) -> Result<Option<(Vec<u8>, Index)>> {
    let name = key.to_string();
    let Some(stored) = target.get_at_most(&name, nardelta::MAX_SIZE)? else {
        return Ok(None);
    };
    let envelope = match key {
        Key::SealedNarDeltas { .. } => {
            reader::open_sealed(ids, &stored, nardelta::MAX_SIZE).with_context(|| name.clone())?
        }
        _ => stored.clone(),
    };
    let index =
        nardelta::decode_unverified(&envelope).with_context(|| format!("cannot read {name}"))?;
    Ok(Some((stored, index)))
}

/// A pointer read only to find what it names (gc, bundle): decoded, not verified.
pub fn decode_pointer(target: &Target, key: &str) -> Result<Pointer> {
    read_pointer(target, key, &[])
}

/// A host name becomes part of object keys: `layout::check_host`'s rule.
pub fn check_host(host: &str) -> Result<()> {
    layout::check_host(host).map_err(anyhow::Error::msg)
}
