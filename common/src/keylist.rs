//! The key list: which signing keys a fleet trusts, signed by offline roots.
//!
//! The keys that sign pointers and narinfos live where publishing happens,
//! the least protected place of a fleet. A host that pins one of them must
//! be touched by hand when it leaks or ages out. With a key list a host
//! pins only *root* keys, kept offline, which sign nothing but the list
//! (TUF's root role, with the targets role folded in): the list names the
//! signing keys, optionally limited to some hosts, and the roots themselves
//! with a threshold. A new list replaces signing keys (rotation, or
//! revocation when a key is left out) and, signed by a threshold of the old
//! roots *and* of the new ones, the roots. Hosts walk every version from the
//! one they hold, so a root change is never skipped.
//!
//! A DSSE envelope like the pointer's (`pointer::Envelope`), with one
//! signature per root:
//!
//! ```json
//! { "payloadType": "application/vnd.nixcast.keys.v1+json",
//!   "payload": "<base64 of the payload JSON>",
//!   "signatures": [ { "keyid": "root-1", "sig": "…" }, { "keyid": "root-2", "sig": "…" } ] }
//! ```
//!
//! ```json
//! { "version": 4, "issuedAt": "2026-12-06T10:00:00Z", "expiresAt": "2027-12-06T10:00:00Z",
//!   "roots": { "threshold": 2, "keys": ["root-1:…", "root-2:…", "root-3:…"] },
//!   "signing": [ { "key": "fleet-2:…" }, { "key": "ci-1:…", "hosts": ["web1", "web2"] } ] }
//! ```
//!
//! The payload is parsed only after a threshold of trusted roots signed it.
//! Keys are Nix's `name:base64` public keys (`nixcast keygen` makes them).

use std::collections::BTreeSet;
use std::time::Duration;

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hash::Sha256Hash;
use crate::keys::{PublicKey, SecretKey, Signature};
use crate::layout;
use crate::pointer::{pae, Envelope, EnvelopeSignature, Timestamp};

pub const PAYLOAD_TYPE: &str = "application/vnd.nixcast.keys.v1+json";
/// A list of a few dozen keys is a few KiB.
pub const MAX_ENVELOPE_SIZE: usize = 256 * 1024;
/// Signatures looked at, at most: one per root, and roots are few. More is
/// refused before any is verified, so that a list cannot make a host spend
/// its time on signatures.
pub const MAX_SIGNATURES: usize = 16;
/// Keys in one list, at most.
pub const MAX_KEYS: usize = 256;
/// How far a list's `issuedAt` may be ahead of the host's clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyList {
    /// Grows by at least one with every list; a host never goes back.
    pub version: u64,
    pub issued_at: Timestamp,
    /// After this, no host accepts the list: a lost or forgotten fleet
    /// stops trusting its keys instead of trusting them forever.
    pub expires_at: Timestamp,
    pub roots: Roots,
    pub signing: Vec<SigningKey>,
}

/// The keys that sign the list, and how many of them must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roots {
    pub threshold: u32,
    #[serde(with = "public_keys")]
    pub keys: Vec<PublicKey>,
}

/// A key that may sign pointers and narinfos: for every host, or for the
/// hosts it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    #[serde(with = "public_key")]
    pub key: PublicKey,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

#[derive(Debug, Error)]
pub enum KeyListError {
    #[error("key list is {0} bytes, more than the limit of {MAX_ENVELOPE_SIZE}")]
    TooLarge(usize),
    #[error("malformed key list envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("key list payload type is {0:?}, expected {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("key list payload is not valid base64")]
    Base64,
    #[error("key list carries {0} signatures, more than {MAX_SIGNATURES}")]
    TooManySignatures(usize),
    #[error(
        "key list is signed by {got} of the roots it must be signed by, not {need} \
         (signed by: {names})"
    )]
    Threshold {
        got: usize,
        need: u32,
        names: String,
    },
    #[error("malformed key list payload: {0}")]
    Payload(serde_json::Error),
    #[error("key list: {0}")]
    Invalid(String),
    #[error(
        "key list version {got} is older than version {held}, which this host holds already \
         (a replayed or planted file)"
    )]
    RolledBack { got: u64, held: u64 },
    #[error("key list version {got} is not the version {want} asked for")]
    WrongVersion { got: u64, want: u64 },
    #[error(
        "key list version {version} differs from the one this host accepted under that version"
    )]
    Forked { version: u64 },
    #[error(
        "key list version {version} expired at {expires}; renew it with `nixcast keys sign` \
         on the machine that holds the root keys"
    )]
    Expired { version: u64, expires: Timestamp },
    #[error(
        "key list version {version} is issued at {issued}, ahead of this host's clock; \
         is the clock here or on the signing machine wrong?"
    )]
    FromTheFuture { version: u64, issued: Timestamp },
}

/// The roots a host trusts: those it was given, or those of the last list
/// it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub threshold: u32,
    pub keys: Vec<PublicKey>,
}

impl From<&Roots> for Trust {
    fn from(r: &Roots) -> Self {
        Trust {
            threshold: r.threshold,
            keys: r.keys.clone(),
        }
    }
}

/// A key list that a threshold of trusted roots signed (and, when it
/// changes the roots, a threshold of the new ones), that is not expired,
/// not from the future, and newer than the one it follows. Only
/// [`accept`] makes one.
#[derive(Debug, Clone)]
pub struct Accepted {
    list: KeyList,
    digest: Sha256Hash,
}

impl Accepted {
    pub fn get(&self) -> &KeyList {
        &self.list
    }

    /// sha256 of the signed payload: two lists of one version are the same
    /// list only if their digests are equal.
    pub fn digest(&self) -> Sha256Hash {
        self.digest
    }

    /// The roots that must sign the next list.
    pub fn trust(&self) -> Trust {
        Trust::from(&self.list.roots)
    }

    /// The list, if it is in force at `now`: not expired, and not issued
    /// ahead of `now` by more than `CLOCK_SKEW`.
    pub fn fresh(self, now: Timestamp) -> Result<Accepted, KeyListError> {
        let l = &self.list;
        if now >= l.expires_at {
            return Err(KeyListError::Expired {
                version: l.version,
                expires: l.expires_at,
            });
        }
        if l.issued_at > now.plus(CLOCK_SKEW) {
            return Err(KeyListError::FromTheFuture {
                version: l.version,
                issued: l.issued_at,
            });
        }
        Ok(self)
    }

    /// The keys that may sign `host`'s pointers and narinfos.
    pub fn signing_keys_for(&self, host: &str) -> Vec<PublicKey> {
        self.list
            .signing
            .iter()
            .filter(|s| s.hosts.is_empty() || s.hosts.iter().any(|h| h == host))
            .map(|s| s.key.clone())
            .collect()
    }
}

impl KeyList {
    /// Checks that hold for every well-formed list, whoever reads it.
    pub fn check(&self) -> Result<(), KeyListError> {
        let invalid = |s: &str| Err(KeyListError::Invalid(s.to_owned()));
        if self.version == 0 {
            return invalid("version 0; versions start at 1");
        }
        if self.expires_at <= self.issued_at {
            return invalid("it expires before it is issued");
        }
        let roots = &self.roots;
        if roots.threshold == 0 || roots.threshold as usize > roots.keys.len() {
            return invalid("its root threshold is not between 1 and the number of roots");
        }
        if roots.keys.len() + self.signing.len() > MAX_KEYS {
            return invalid("it names too many keys");
        }
        if !distinct(&roots.keys) {
            return invalid("a root key is named twice");
        }
        let signing: Vec<PublicKey> = self.signing.iter().map(|s| s.key.clone()).collect();
        if !distinct(&signing) {
            return invalid("a signing key is named twice");
        }
        if signing.iter().any(|k| roots.keys.contains(k)) {
            return invalid("a root key is also a signing key: roots stay offline");
        }
        for h in self.signing.iter().flat_map(|s| &s.hosts) {
            layout::check_host(h).map_err(KeyListError::Invalid)?;
        }
        Ok(())
    }

    /// Signs the list with each of `roots` into an envelope's JSON bytes.
    pub fn sign(&self, roots: &[&SecretKey]) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a key list always serialises");
        Envelope::signed(PAYLOAD_TYPE, &body, |m| {
            roots
                .iter()
                .map(|k| EnvelopeSignature::new(k.name(), k.sign(m).bytes()))
                .collect()
        })
        .file_bytes()
    }
}

fn distinct(keys: &[PublicKey]) -> bool {
    let bytes: BTreeSet<&[u8; 32]> = keys.iter().map(|k| k.bytes()).collect();
    bytes.len() == keys.len()
}

/// Accepts the key list in `bytes` as the next one after `held` (the list
/// the host accepted last; `None` on a host that trusts only the roots it
/// was given, `trust`):
///
/// - a threshold of the trusted roots signed it (each root counted once);
/// - if it names other roots, a threshold of those signed it as well;
/// - it is well formed (`KeyList::check`);
/// - its version is `want` when one is asked for (a host walking the chain
///   asks for each version in turn), and not below the held one; the held
///   version again must be the held list itself.
///
/// Time is not looked at: a host walking versions it missed passes lists
/// that have long expired, as TUF's clients do. The list it ends on must be
/// [`Accepted::fresh`].
pub fn accept(
    bytes: &[u8],
    trust: &Trust,
    held: Option<&Accepted>,
    want: Option<u64>,
) -> Result<Accepted, KeyListError> {
    if bytes.len() > MAX_ENVELOPE_SIZE {
        return Err(KeyListError::TooLarge(bytes.len()));
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(KeyListError::Envelope)?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(KeyListError::PayloadType(env.payload_type));
    }
    if env.signatures.len() > MAX_SIGNATURES {
        return Err(KeyListError::TooManySignatures(env.signatures.len()));
    }
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| KeyListError::Base64)?;
    let message = pae(PAYLOAD_TYPE, &body);
    check_threshold(&signers(&env, &message, &trust.keys), trust.threshold, &env)?;
    let list: KeyList = serde_json::from_slice(&body).map_err(KeyListError::Payload)?;
    list.check()?;
    // A change of roots is the new roots' word too: a threshold of the old
    // roots alone cannot hand the fleet to keys nobody holds.
    let new = Trust::from(&list.roots);
    if !same_keys(&new.keys, &trust.keys) || new.threshold != trust.threshold {
        check_threshold(&signers(&env, &message, &new.keys), new.threshold, &env)?;
    }
    let digest = Sha256Hash::digest(&body);
    if let Some(want) = want.filter(|w| *w != list.version) {
        return Err(KeyListError::WrongVersion {
            got: list.version,
            want,
        });
    }
    if let Some(held) = held {
        let held_version = held.list.version;
        if list.version < held_version {
            return Err(KeyListError::RolledBack {
                got: list.version,
                held: held_version,
            });
        }
        if list.version == held_version && digest != held.digest {
            return Err(KeyListError::Forked {
                version: list.version,
            });
        }
    }
    Ok(Accepted { list, digest })
}

/// The held list again, from the host's own state (or the publisher's own
/// cache): held to the roots it names itself, which is all a file that was
/// accepted when it was kept can be held to. Never for a list from the
/// network.
pub fn reload_own(bytes: &[u8]) -> Result<Accepted, KeyListError> {
    let list = decode_unverified(bytes)?;
    accept(bytes, &Trust::from(&list.roots), None, None)
}

/// The distinct keys among `keys` whose signature on `message` is in `env`:
/// a key named twice (under two names, or given twice) counts once.
fn signers<'a>(env: &Envelope, message: &[u8], keys: &'a [PublicKey]) -> Vec<&'a [u8; 32]> {
    let sigs: Vec<[u8; 64]> = env
        .signatures
        .iter()
        .filter_map(|s| BASE64.decode(s.sig.as_bytes()).ok()?.try_into().ok())
        .collect();
    // keyid is unauthenticated (DSSE): every signature is tried with every
    // key; both are few (MAX_SIGNATURES, and a host's roots).
    let verified: BTreeSet<&[u8; 32]> = keys
        .iter()
        .filter(|k| {
            sigs.iter()
                .any(|raw| k.verifies(message, &Signature::from_parts(k.name(), *raw)))
        })
        .map(|k| k.bytes())
        .collect();
    verified.into_iter().collect()
}

fn check_threshold(
    signers: &[&[u8; 32]],
    threshold: u32,
    env: &Envelope,
) -> Result<(), KeyListError> {
    if signers.len() >= threshold as usize {
        return Ok(());
    }
    let names: Vec<&str> = env.signatures.iter().map(|s| s.keyid.as_str()).collect();
    Err(KeyListError::Threshold {
        got: signers.len(),
        need: threshold,
        names: names.join(", "),
    })
}

fn same_keys(a: &[PublicKey], b: &[PublicKey]) -> bool {
    let a: BTreeSet<&[u8; 32]> = a.iter().map(|k| k.bytes()).collect();
    let b: BTreeSet<&[u8; 32]> = b.iter().map(|k| k.bytes()).collect();
    a == b
}

/// Reads an envelope's payload without verifying it: for the publisher's
/// look at its own cache (`nixcast keys show`), never for a host's decision.
pub fn decode_unverified(bytes: &[u8]) -> Result<KeyList, KeyListError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(KeyListError::Envelope)?;
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| KeyListError::Base64)?;
    serde_json::from_slice(&body).map_err(KeyListError::Payload)
}

mod public_key {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::keys::PublicKey;

    pub fn serialize<S: Serializer>(k: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

mod public_keys {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::keys::PublicKey;

    pub fn serialize<S: Serializer>(keys: &[PublicKey], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(keys.iter().map(|k| k.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PublicKey>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| PublicKey::parse(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests;
