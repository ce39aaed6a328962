//! The NAR-delta index: which new paths of a generation a host may rebuild
//! from a path it holds, and where the deltas are.
//!
//! Stored beside the manifest delta, one per (new manifest, old manifest)
//! pair: `manifests/<new>.nars-from-<old>.json`, or for a sealed host
//! `sealed/<new>.nars-from-<old_plain>` (the signed envelope, sealed like the
//! manifest). `new` is the sha256 the pointer pins (of the sealed bytes for a
//! sealed manifest), `old` the sha256 of the plain manifest the host holds.
//! Agents that know nothing of deltas never ask for it, and nothing in a
//! pointer, manifest or manifest delta names it: those keep their formats.
//! A host that finds none (404) fetches full NARs.
//!
//! The index decides which bytes a decoder sees (its FileHash gates the
//! delta as a manifest's gates a NAR), so it is signed: a DSSE envelope as
//! for the pointer (`pointer::pae`), with its own payload type, verified
//! with the keys the host trusts for pointers. The payload names the pair
//! it is for, so that a signed index cannot be replayed for another:
//!
//! ```json
//! { "version": 1, "manifest": "<new hex>", "from": "<old plain hex>",
//!   "deltas": [ { "storePath": "/nix/store/…-etc", "base": "/nix/store/…-etc",
//!                 "baseNarHash": "sha256:…", "baseNarSize": 4242,
//!                 "url": "deltas/<filehash>.nar.zst-patch", "compression": "zstd-patch",
//!                 "fileHash": "sha256:…", "fileSize": 97 } ] }
//! ```
//!
//! A delta is a zstd frame of the new NAR compressed with the base NAR as
//! its reference prefix (`zstd --patch-from`), with its content size, and a
//! window of at most 2^[`WINDOW_LOG_MAX`]. For a sealed host `url` is
//! `sealed/<sha256 of the sealed bytes>`, sealed to whom the path's NAR is,
//! and FileHash and FileSize are those of the sealed bytes. The new path's
//! NarHash and NarSize come from the pinned manifest, never from here: a
//! delta that decodes to anything else is refused like a bad NAR.

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hash::Sha256Hash;
use crate::keys::{PublicKey, SecretKey};
use crate::layout::Key;
use crate::manifest::MAX_PATHS;
use crate::pointer::{self, Envelope, EnvelopeSignature, PointerError};
use crate::store_path::StorePath;

pub const PAYLOAD_TYPE: &str = "application/vnd.nixcast.nar-deltas.v1+json";
pub const VERSION: u32 = 1;
/// An envelope of more bytes is refused unread (some 400 bytes an entry).
pub const MAX_SIZE: u64 = 64 << 20;
/// Envelopes with more signatures are refused before any is checked.
pub const MAX_SIGNATURES: usize = 4;
/// The largest NAR a delta is made against, or rebuilds: the agent holds
/// the base in memory, and the decoder's window is at most the new NAR.
pub const MAX_NAR: u64 = 64 << 20;
/// The largest delta file: a delta is kept only when it is much smaller
/// than the compressed NAR, itself at most a little over `MAX_NAR`.
pub const MAX_FILE: u64 = 40 << 20;
/// The decoder's window limit: a base and a new NAR of `MAX_NAR` each.
pub const WINDOW_LOG_MAX: u32 = 27;

/// How a delta is encoded: one kind so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaCompression {
    #[serde(rename = "zstd-patch")]
    ZstdPatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NarDelta {
    pub store_path: StorePath,
    pub base: StorePath,
    pub base_nar_hash: Sha256Hash,
    pub base_nar_size: u64,
    pub url: String,
    pub compression: DeltaCompression,
    pub file_hash: Sha256Hash,
    pub file_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Index {
    pub version: u32,
    /// The sha256 the pointer pins for the new manifest.
    #[serde(with = "hex")]
    pub manifest: Sha256Hash,
    /// The sha256 of the plain manifest a host must hold to use this index.
    #[serde(with = "hex")]
    pub from: Sha256Hash,
    /// Sorted by store path, one entry per path at most.
    pub deltas: Vec<NarDelta>,
}

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("the NAR-delta index is {0} bytes, more than the limit of {MAX_SIZE}")]
    TooLarge(usize),
    #[error("malformed NAR-delta index envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("NAR-delta index payload type is {0:?}, expected {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("NAR-delta index payload is not valid base64")]
    Base64,
    #[error("NAR-delta index carries {0} signatures: none, or more than {MAX_SIGNATURES}")]
    Signatures(usize),
    #[error("NAR-delta index is not signed by any trusted key (signed by: {0})")]
    Untrusted(String),
    #[error("malformed NAR-delta index payload: {0}")]
    Payload(serde_json::Error),
    #[error("unsupported NAR-delta index version {0}")]
    Version(u32),
    #[error("the NAR-delta index is for manifest {manifest} from {from}, not the one asked for")]
    OtherPair {
        manifest: Sha256Hash,
        from: Sha256Hash,
    },
    #[error("the NAR-delta index lists {0} deltas, more than the limit of {MAX_PATHS}")]
    TooMany(usize),
    #[error("NAR-delta index entries are not sorted and unique at {0}")]
    Order(StorePath),
    #[error("NAR-delta index entry {0}: {1}")]
    Entry(StorePath, &'static str),
}

impl NarDelta {
    fn check(&self, sealed: bool) -> Result<(), IndexError> {
        let bad = |why| Err(IndexError::Entry(self.store_path.clone(), why));
        if self.base == self.store_path {
            return bad("its base is the path itself");
        }
        if self.base_nar_size == 0 || self.base_nar_size > MAX_NAR {
            return bad("its base's narSize is 0 or over the limit");
        }
        if self.file_size == 0 || self.file_size > MAX_FILE {
            return bad("its fileSize is 0 or over the limit");
        }
        let named_by_hash = match Key::parse(&self.url) {
            Some(Key::NarDelta(h)) => !sealed && h == self.file_hash,
            Some(Key::Sealed(h)) => sealed && h == self.file_hash,
            _ => false,
        };
        if !named_by_hash {
            return bad(if sealed {
                "its url is not sealed/<its fileHash>"
            } else {
                "its url is not deltas/<its fileHash>.nar.zst-patch"
            });
        }
        Ok(())
    }
}

impl Index {
    /// Checks that hold for every well-formed index; `sealed`: its deltas
    /// are sealed objects (the manifest it is for is sealed).
    pub fn check(&self, sealed: bool) -> Result<(), IndexError> {
        if self.version != VERSION {
            return Err(IndexError::Version(self.version));
        }
        if self.deltas.len() > MAX_PATHS {
            return Err(IndexError::TooMany(self.deltas.len()));
        }
        for w in self.deltas.windows(2) {
            if w[0].store_path >= w[1].store_path {
                return Err(IndexError::Order(w[1].store_path.clone()));
            }
        }
        self.deltas.iter().try_for_each(|d| d.check(sealed))
    }

    /// Signs the index into an envelope's JSON bytes.
    pub fn sign(&self, key: &SecretKey) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("an index always serialises");
        let env = Envelope::signed(PAYLOAD_TYPE, &body, |m| {
            vec![EnvelopeSignature::new(key.name(), key.sign(m).bytes())]
        });
        serde_json::to_vec(&env).expect("an envelope always serialises")
    }

    pub fn get(&self, path: &StorePath) -> Option<&NarDelta> {
        self.deltas
            .binary_search_by(|d| d.store_path.cmp(path))
            .ok()
            .map(|i| &self.deltas[i])
    }
}

/// Verifies an index envelope with the trusted keys, then parses and checks
/// its payload, which must be for the manifest pinned as `manifest` and a
/// host holding the plain manifest `from`. No payload byte is parsed before
/// a signature verified.
pub fn verify(
    bytes: &[u8],
    trusted: &[PublicKey],
    manifest: Sha256Hash,
    from: Sha256Hash,
    sealed: bool,
) -> Result<Index, IndexError> {
    let body = verified_body(bytes, trusted)?;
    let index: Index = serde_json::from_slice(&body).map_err(IndexError::Payload)?;
    if index.manifest != manifest || index.from != from {
        return Err(IndexError::OtherPair {
            manifest: index.manifest,
            from: index.from,
        });
    }
    index.check(sealed)?;
    Ok(index)
}

/// Reads an index's payload without verifying its signature: for the
/// publisher's own tools (gc, bundles) reading its own cache.
pub fn decode_unverified(bytes: &[u8]) -> Result<Index, IndexError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(IndexError::Envelope)?;
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| IndexError::Base64)?;
    serde_json::from_slice(&body).map_err(IndexError::Payload)
}

/// The payload bytes of an envelope one of whose signatures verifies with
/// a trusted key (DSSE: the keyid is a hint, every key is tried).
fn verified_body(bytes: &[u8], trusted: &[PublicKey]) -> Result<Vec<u8>, IndexError> {
    if bytes.len() as u64 > MAX_SIZE {
        return Err(IndexError::TooLarge(bytes.len()));
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(IndexError::Envelope)?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(IndexError::PayloadType(env.payload_type));
    }
    if env.signatures.is_empty() || env.signatures.len() > MAX_SIGNATURES {
        return Err(IndexError::Signatures(env.signatures.len()));
    }
    // The pointer's check: every signature against every trusted key.
    let (body, _) = pointer::verify_signature(&env, trusted).map_err(|e| match e {
        PointerError::Base64 => IndexError::Base64,
        PointerError::Untrusted(ids) => IndexError::Untrusted(ids),
        _ => IndexError::Signatures(env.signatures.len()),
    })?;
    Ok(body)
}

mod hex {
    use super::Sha256Hash;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Sha256Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&h.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Hash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        data_encoding::HEXLOWER
            .decode(s.as_bytes())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .map(Sha256Hash)
            .ok_or_else(|| serde::de::Error::custom("sha256 must be 64 lowercase hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nixbase32;

    fn sp(name: &str, n: u8) -> StorePath {
        let h = nixbase32::encode(&[n; 20]);
        StorePath::from_basename(&format!("{h}-{name}")).unwrap()
    }

    fn delta(path: &StorePath, base: &StorePath) -> NarDelta {
        let file_hash = Sha256Hash::digest(path.to_string().as_bytes());
        NarDelta {
            store_path: path.clone(),
            base: base.clone(),
            base_nar_hash: Sha256Hash::digest(b"base"),
            base_nar_size: 4242,
            url: Key::NarDelta(file_hash).to_string(),
            compression: DeltaCompression::ZstdPatch,
            file_hash,
            file_size: 97,
        }
    }

    fn sample() -> Index {
        Index {
            version: VERSION,
            manifest: Sha256Hash::digest(b"new"),
            from: Sha256Hash::digest(b"old"),
            deltas: vec![
                delta(&sp("a", 1), &sp("a", 2)),
                delta(&sp("b", 3), &sp("b", 4)),
            ],
        }
    }

    /// Signs an arbitrary payload, as a key holder could.
    fn sign_raw(key: &SecretKey, body: &[u8]) -> Vec<u8> {
        let env = Envelope::signed(PAYLOAD_TYPE, body, |m| {
            vec![EnvelopeSignature::new(key.name(), key.sign(m).bytes())]
        });
        serde_json::to_vec(&env).unwrap()
    }

    #[test]
    fn sign_and_verify_for_its_pair_only() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let i = sample();
        let env = i.sign(&k);
        let (new, old) = (i.manifest, i.from);
        assert_eq!(verify(&env, &[k.public()], new, old, false).unwrap(), i);
        assert_eq!(decode_unverified(&env).unwrap(), i);
        assert_eq!(i.get(&sp("b", 3)).unwrap().base, sp("b", 4));
        assert!(i.get(&sp("c", 5)).is_none());
        // Replayed for another pair, or read as a sealed host's: refused.
        let other = Sha256Hash::digest(b"other");
        assert!(matches!(
            verify(&env, &[k.public()], other, old, false),
            Err(IndexError::OtherPair { .. })
        ));
        assert!(matches!(
            verify(&env, &[k.public()], new, other, false),
            Err(IndexError::OtherPair { .. })
        ));
        assert!(matches!(
            verify(&env, &[k.public()], new, old, true),
            Err(IndexError::Entry(..))
        ));
        // Another key, or no signature, or too many: refused.
        let stranger = SecretKey::generate("fleet-1").unwrap();
        assert!(matches!(
            verify(&env, &[stranger.public()], new, old, false),
            Err(IndexError::Untrusted(_))
        ));
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        e.signatures = vec![e.signatures[0].clone(); MAX_SIGNATURES + 1];
        let many = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            verify(&many, &[k.public()], new, old, false),
            Err(IndexError::Signatures(5))
        ));
        e.signatures.clear();
        let none = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            verify(&none, &[k.public()], new, old, false),
            Err(IndexError::Signatures(0))
        ));
        // A tampered payload no longer verifies.
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        let mut t = i.clone();
        t.deltas[0].file_size = 98;
        e.payload = BASE64.encode(&serde_json::to_vec(&t).unwrap());
        let tampered = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            verify(&tampered, &[k.public()], new, old, false),
            Err(IndexError::Untrusted(_))
        ));
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        e.payload_type = crate::pointer::PAYLOAD_TYPE.into();
        let typed = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            verify(&typed, &[k.public()], new, old, false),
            Err(IndexError::PayloadType(_))
        ));
    }

    #[test]
    fn strict_payload_after_the_signature() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let i = sample();
        let (new, old) = (i.manifest, i.from);
        let json = String::from_utf8(serde_json::to_vec(&i).unwrap()).unwrap();
        let check = |body: String| {
            verify(
                &sign_raw(&k, body.as_bytes()),
                &[k.public()],
                new,
                old,
                false,
            )
        };
        assert!(check(json.clone()).is_ok());
        let unknown = json.replacen("\"version\":1", "\"version\":1,\"extra\":1", 1);
        assert!(matches!(check(unknown), Err(IndexError::Payload(_))));
        let twice = json.replacen("\"version\":1", "\"version\":1,\"version\":1", 1);
        assert!(matches!(check(twice), Err(IndexError::Payload(_))));
        let v2 = json.replacen("\"version\":1", "\"version\":2", 1);
        assert!(matches!(check(v2), Err(IndexError::Version(2))));
        let xz = json.replacen("zstd-patch", "xz", 1);
        assert!(matches!(check(xz), Err(IndexError::Payload(_))));
        let upper = json.replacen(&new.to_hex(), &new.to_hex().to_uppercase(), 1);
        assert!(matches!(check(upper), Err(IndexError::Payload(_))));

        let refused = |t: Index| check(String::from_utf8(serde_json::to_vec(&t).unwrap()).unwrap());
        let mut t = i.clone();
        t.deltas.swap(0, 1);
        assert!(matches!(refused(t), Err(IndexError::Order(_))));
        let mut t = i.clone();
        t.deltas[1] = t.deltas[0].clone();
        assert!(matches!(refused(t), Err(IndexError::Order(_))));
        let mut t = i.clone();
        t.deltas[0].base = t.deltas[0].store_path.clone();
        assert!(matches!(refused(t), Err(IndexError::Entry(..))));
        let mut t = i.clone();
        t.deltas[0].base_nar_size = MAX_NAR + 1;
        assert!(matches!(refused(t), Err(IndexError::Entry(..))));
        let mut t = i.clone();
        t.deltas[0].file_size = MAX_FILE + 1;
        assert!(matches!(refused(t), Err(IndexError::Entry(..))));
        // A url not named by the entry's own FileHash, or elsewhere.
        for url in [
            Key::NarDelta(Sha256Hash::digest(b"x")).to_string(),
            Key::Sealed(i.deltas[0].file_hash).to_string(),
            format!("https://elsewhere/{}", i.deltas[0].url),
            "deltas/../hosts/x.json".to_owned(),
        ] {
            let mut t = i.clone();
            t.deltas[0].url = url.clone();
            assert!(matches!(refused(t), Err(IndexError::Entry(..))), "{url}");
        }
        let big = vec![b' '; MAX_SIZE as usize + 1];
        assert!(matches!(
            verify(&big, &[k.public()], new, old, false),
            Err(IndexError::TooLarge(_))
        ));
    }

    #[test]
    fn sealed_entries_name_sealed_objects() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let mut i = sample();
        for d in &mut i.deltas {
            d.url = Key::Sealed(d.file_hash).to_string();
        }
        let env = i.sign(&k);
        assert!(verify(&env, &[k.public()], i.manifest, i.from, true).is_ok());
        assert!(verify(&env, &[k.public()], i.manifest, i.from, false).is_err());
    }
}
