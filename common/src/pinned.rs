//! A manifest held to the pin of a verified pointer.
//!
//! A pointer pins its manifest by sha256 and size: of the manifest's bytes,
//! or, for a sealed host, of the plain bytes the sealed ones hold
//! (`ManifestRef::sealed`). [`Pinned::check`] takes the plain bytes and the
//! [`Verified`] pointer, and gives a [`Pinned`] manifest only when the bytes
//! are the pinned ones, parse and pass the manifest's checks, and name the
//! pointer's store path (when the pointer names one; a sealed pointer names
//! none, and its manifest then says what the host runs). There is no other
//! way to make one, so a function that takes `&Pinned` needs no other proof
//! that what it reads was signed for.

use std::ops::Deref;

use thiserror::Error;

use crate::hash::Sha256Hash;
use crate::manifest::{Manifest, ManifestError};
use crate::pointer::{ManifestRef, PlainRef, Pointer, Verified};
use crate::store_path::StorePath;

#[derive(Debug, Error)]
pub enum PinError {
    #[error("expected {size} bytes with sha256 {}, got {got_size} bytes with {}", .sha256.to_hex(), .got.to_hex())]
    Mismatch {
        size: u64,
        sha256: Sha256Hash,
        got_size: u64,
        got: Sha256Hash,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("it is for {manifest}, the pointer names {pointer}")]
    OtherPath {
        manifest: StorePath,
        pointer: StorePath,
    },
}

/// What a pointer's manifest holds in the clear: its own bytes, or those
/// the sealed ones hold.
pub fn plain_pin(m: &ManifestRef) -> PlainRef {
    m.sealed.unwrap_or(PlainRef {
        sha256: m.sha256,
        size: m.size,
    })
}

/// `bytes` are exactly `size` bytes with `sha256`.
pub fn check_bytes(bytes: &[u8], sha256: Sha256Hash, size: u64) -> Result<(), PinError> {
    let got = Sha256Hash::digest(bytes);
    if bytes.len() as u64 != size || got != sha256 {
        return Err(PinError::Mismatch {
            size,
            sha256,
            got_size: bytes.len() as u64,
            got,
        });
    }
    Ok(())
}

/// A manifest whose plain bytes a verified pointer pins; read it through `Deref`.
#[derive(Debug)]
pub struct Pinned {
    manifest: Manifest,
    generation: u64,
}

impl Pinned {
    /// Checks the plain bytes of `v`'s manifest against its pin, parses
    /// them, and checks the store path.
    pub fn check(v: &Verified<Pointer>, plain: &[u8]) -> Result<Self, PinError> {
        let p = v.get();
        let pin = plain_pin(&p.manifest);
        check_bytes(plain, pin.sha256, pin.size)?;
        let manifest = Manifest::parse(plain)?;
        if let Some(top) = p.store_path.as_ref().filter(|t| **t != manifest.store_path) {
            return Err(PinError::OtherPath {
                manifest: manifest.store_path,
                pointer: top.clone(),
            });
        }
        Ok(Pinned {
            manifest,
            generation: p.generation,
        })
    }

    /// The system the host is to run: the pointer's store path, or the
    /// sealed manifest's (they are the same when both name one).
    pub fn top(&self) -> &StorePath {
        &self.manifest.store_path
    }

    /// The generation of the pointer that pins this manifest.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Deref for Pinned {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{nar_url, Compression, Entry};
    use crate::pointer::{self, Timestamp};
    use crate::SecretKey;

    fn manifest(top: &str) -> Vec<u8> {
        let top = StorePath::from_basename(top).unwrap();
        let fh = Sha256Hash::digest(b"nar");
        let e = Entry {
            store_path: top.clone(),
            nar_hash: Sha256Hash::digest(b"nar"),
            nar_size: 3,
            references: vec![],
            deriver: None,
            sigs: vec![],
            url: nar_url(&fh, Compression::None),
            compression: Compression::None,
            file_hash: fh,
            file_size: 3,
            cache: None,
            sealed_to: None,
        };
        Manifest::new(top, vec![e]).unwrap().to_json()
    }

    fn verified(bytes: &[u8], store_path: Option<&str>) -> Verified<Pointer> {
        let key = SecretKey::generate("test-1").unwrap();
        let p = Pointer {
            host: "h".into(),
            system: "x86_64-linux".into(),
            generation: 7,
            store_path: store_path.map(|s| StorePath::from_basename(s).unwrap()),
            // A sealed pointer names no path; the sealed bytes are not looked at here.
            manifest: match store_path {
                Some(_) => ManifestRef::for_bytes(bytes),
                None => ManifestRef::for_sealed(b"sealed bytes", bytes),
            },
            issued_at: Timestamp::now(),
            expires_at: None,
        };
        pointer::verify(&p.sign(&key), &[key.public()]).unwrap()
    }

    const TOP: &str = "7lvcvyx8vkgwf8im6wmm2vlngh1wvdka-top";
    const OTHER: &str = "28m3cfvkwlg7bj6rdwmmm5jzqmbbjiq9-other";

    #[test]
    fn only_the_pinned_bytes_for_the_pointers_path_make_a_pinned_manifest() {
        let bytes = manifest(TOP);
        let v = verified(&bytes, Some(TOP));
        let m = Pinned::check(&v, &bytes).unwrap();
        assert_eq!(
            (m.top().name(), m.generation(), m.paths.len()),
            ("top", 7, 1)
        );
        // A sealed pointer names no path: the manifest's is taken.
        assert!(Pinned::check(&verified(&bytes, None), &bytes).is_ok());

        let mut tampered = bytes.clone();
        *tampered.last_mut().unwrap() = b' ';
        let err = Pinned::check(&v, &tampered).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("expected {} bytes with sha256", bytes.len())),
            "{err}"
        );
        assert!(matches!(
            Pinned::check(&v, &bytes[..bytes.len() - 1]),
            Err(PinError::Mismatch { .. })
        ));

        let other = manifest(OTHER);
        let err = Pinned::check(&verified(&other, Some(TOP)), &other).unwrap_err();
        assert!(err.to_string().contains("the pointer names"), "{err}");
        let junk = b"{}".to_vec();
        let err = Pinned::check(&verified(&junk, Some(TOP)), &junk).unwrap_err();
        assert!(matches!(err, PinError::Manifest(_)), "{err}");
    }
}
