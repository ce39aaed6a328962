//! Reading a cache, for every command that does: pointers (verified, or
//! only decoded for a look at one's own cache), the manifest a pointer pins
//! (sealed ones opened with an identity), and how sizes are shown.

use anyhow::{bail, Context, Result};
use nixcast_common::manifest::Manifest;
use nixcast_common::pointer::{self, Pointer};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{layout, PublicKey, Sha256Hash};

use crate::target::Target;

/// Reads a pointer; with keys it must verify, without them its payload is
/// only decoded (for a look at one's own cache).
pub fn read_pointer(target: &Target, key: &str, keys: &[PublicKey]) -> Result<Pointer> {
    let bytes = target
        .get_at_most(key, pointer::MAX_ENVELOPE_SIZE as u64)?
        .with_context(|| format!("{}/{key} does not exist", target.describe()))?;
    if !keys.is_empty() {
        return Ok(pointer::verify(&bytes, keys)
            .with_context(|| format!("{}/{key}", target.describe()))?
            .into_inner());
    }
    pointer::decode_unverified(&bytes).with_context(|| format!("{}/{key}", target.describe()))
}

/// A manifest this large would describe some hundred thousand paths.
const MAX_MANIFEST: u64 = 256 << 20;

/// The manifest a pointer pins, checked against the pinned sha256, with the
/// bytes stored (sealed ones stay sealed: a bundle carries them as they are).
/// A sealed one is opened with `ids`.
pub fn read_manifest(
    target: &Target,
    p: &Pointer,
    ids: &[Identity],
) -> Result<(Vec<u8>, Manifest)> {
    let path = &p.manifest.path;
    // The pointer says how large it is: nothing beyond that is read.
    let bytes = target
        .get_at_most(path, p.manifest.size)?
        .with_context(|| format!("{path} is missing"))?;
    if Sha256Hash::digest(&bytes) != p.manifest.sha256 {
        bail!("{path} does not match the sha256 its pointer pins");
    }
    let plain = match &p.manifest.sealed {
        None => None,
        Some(plain) => {
            if ids.is_empty() {
                bail!(
                    "the manifest of {} generation {} is sealed: give --identity with the \
                     publisher's secret key file or the identity of a `*` recipient",
                    p.host,
                    p.generation
                );
            }
            let opened = seal::open_bytes(ids, &bytes, MAX_MANIFEST).with_context(|| {
                let tried: Vec<&str> = ids.iter().map(|i| i.source()).collect();
                format!("opening {path} (tried {})", tried.join(", "))
            })?;
            if opened.len() as u64 != plain.size || Sha256Hash::digest(&opened) != plain.sha256 {
                bail!("{path} does not hold the manifest its pointer pins");
            }
            Some(opened)
        }
    };
    let m = Manifest::parse(plain.as_deref().unwrap_or(&bytes)).with_context(|| path.clone())?;
    if p.store_path.as_ref().is_some_and(|t| *t != m.store_path) {
        bail!("{path} is not for the store path its pointer names");
    }
    Ok((bytes, m))
}

/// A pointer read only to find what it names (gc, bundle): decoded, not verified.
pub fn decode_pointer(target: &Target, key: &str) -> Result<Pointer> {
    read_pointer(target, key, &[])
}

/// A host name becomes part of object keys: `layout::check_host`'s rule.
pub fn check_host(host: &str) -> Result<()> {
    layout::check_host(host).map_err(anyhow::Error::msg)
}
