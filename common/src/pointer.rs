//! The pointer: a signed statement of what one host should run.
//!
//! A DSSE envelope (<https://github.com/secure-systems-lab/dsse>):
//!
//! ```json
//! { "payloadType": "application/vnd.nixcast.pointer.v1+json",
//!   "payload": "<base64 of the payload JSON>",
//!   "signatures": [ { "keyid": "fleet-1", "sig": "<base64 ed25519>" } ] }
//! ```
//!
//! Each signature is ed25519 over `PAE(payloadType, payload)` =
//! `"DSSEv1" SP len(type) SP type SP len(body) SP body` (lengths in ASCII
//! decimal), made with the same Nix key pair that signs narinfos; the payload
//! type separates the two uses. `keyid` is the Nix key name, a hint only:
//! every trusted key is tried. The payload is parsed only after a signature
//! verified:
//!
//! ```json
//! { "host": "foobar", "system": "x86_64-linux", "generation": 7,
//!   "storePath": "/nix/store/…-nixos-system-foobar",
//!   "manifest": { "path": "manifests/<sha256-hex>.json", "sha256": "<hex>", "size": 51234 },
//!   "issuedAt": "2026-11-25T10:00:00Z", "expiresAt": "2026-12-25T10:00:00Z" }
//! ```
//!
//! A sealed host's pointer names no store path: its manifest is sealed
//! (`"path": "sealed/<sha256 of the sealed bytes>"`), and `"sealed":
//! {"sha256": …, "size": …}` pins the manifest's plain bytes too, so that an
//! agent can rebuild it from a delta, or keep the one it holds. The store
//! path is the sealed manifest's `storePath`.
//!
//! A retired host's `hosts/<host>.json` holds a tombstone instead
//! (`tombstone.rs`, its own payload type); [`verify_head`] reads either.

use std::time::{Duration, SystemTime};

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hash::Sha256Hash;
use crate::keys::{PublicKey, SecretKey, Signature};
use crate::layout;
use crate::store_path::StorePath;

mod tombstone;
pub use tombstone::{Tombstone, TOMBSTONE_PAYLOAD_TYPE};

pub const PAYLOAD_TYPE: &str = "application/vnd.nixcast.pointer.v1+json";
/// A pointer is a few hundred bytes; anything beyond this is refused unread.
pub const MAX_ENVELOPE_SIZE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pointer {
    pub host: String,
    pub system: String,
    pub generation: u64,
    /// `None` for a sealed host: the sealed manifest names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_path: Option<StorePath>,
    pub manifest: ManifestRef,
    pub issued_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRef {
    pub path: String,
    #[serde(with = "hex_sha256")]
    pub sha256: Sha256Hash,
    pub size: u64,
    /// For a sealed manifest: its plain bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<PlainRef>,
}

/// The sha256 and size of a sealed manifest's plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlainRef {
    #[serde(with = "hex_sha256")]
    pub sha256: Sha256Hash,
    pub size: u64,
}

impl ManifestRef {
    pub fn for_bytes(bytes: &[u8]) -> Self {
        let sha256 = Sha256Hash::digest(bytes);
        Self {
            path: layout::manifest(&sha256),
            sha256,
            size: bytes.len() as u64,
            sealed: None,
        }
    }

    /// A sealed manifest: `sealed` are the bytes stored, `plain` what they hold.
    pub fn for_sealed(sealed: &[u8], plain: &[u8]) -> Self {
        let sha256 = Sha256Hash::digest(sealed);
        Self {
            path: layout::sealed(&sha256),
            sha256,
            size: sealed.len() as u64,
            sealed: Some(PlainRef {
                sha256: Sha256Hash::digest(plain),
                size: plain.len() as u64,
            }),
        }
    }
}

/// A point in time written as RFC 3339 UTC with seconds: `2026-11-25T10:00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// Now, truncated to whole seconds so that it round-trips through its text.
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        Self(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    pub fn system_time(self) -> SystemTime {
        self.0
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(self.0 + Duration::from_secs(d.as_secs()))
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let t = humantime::parse_rfc3339(&s)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("bad timestamp {s:?}: {e}")))?;
        // Only the one form we write (UTC, whole seconds, "Z"): signed text
        // then has a single reading.
        if t.to_string() != s {
            return Err(serde::de::Error::custom(format!(
                "bad timestamp {s:?}: write it as {t}"
            )));
        }
        Ok(t)
    }
}

mod hex_sha256 {
    use super::Sha256Hash;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Sha256Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&h.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Hash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = data_encoding::HEXLOWER
            .decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("sha256 must be 64 lowercase hex digits"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("sha256 must be 64 lowercase hex digits"))?;
        Ok(Sha256Hash(arr))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: String,
}

impl EnvelopeSignature {
    pub fn new(keyid: &str, sig: &[u8; 64]) -> Self {
        Self {
            keyid: keyid.to_owned(),
            sig: BASE64.encode(sig),
        }
    }
}

impl Envelope {
    /// `body` of `payload_type`, with the signatures `sign` makes of its
    /// PAE (every signed object of nixcast is made here).
    pub fn signed(
        payload_type: &str,
        body: &[u8],
        sign: impl FnOnce(&[u8]) -> Vec<EnvelopeSignature>,
    ) -> Self {
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: BASE64.encode(body),
            signatures: sign(&pae(payload_type, body)),
        }
    }

    /// The bytes of a file holding it: pretty JSON and a final newline.
    pub fn file_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("an envelope always serialises");
        v.push(b'\n');
        v
    }
}

#[derive(Debug, Error)]
pub enum PointerError {
    #[error("pointer is {0} bytes, more than the limit of {MAX_ENVELOPE_SIZE}")]
    TooLarge(usize),
    #[error("malformed pointer envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("pointer payload type is {0:?}, expected {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("pointer payload is not valid base64")]
    Base64,
    #[error("pointer carries no signatures")]
    Unsigned,
    #[error("pointer is not signed by any trusted key (signed by: {0})")]
    Untrusted(String),
    #[error("malformed pointer payload: {0}")]
    Payload(serde_json::Error),
    #[error("pointer generation is 0; generations start at 1")]
    GenerationZero,
    #[error("a sealed pointer names no store path, and a plain one names one")]
    Sealing,
    #[error("pointer names manifest {0:?}, not manifests/<sha256>.json (or sealed/<sha256>) of its own hash")]
    ManifestPath(String),
    #[error("pointer expires ({expires}) before it was issued ({issued})")]
    ExpiresBeforeIssued {
        issued: Timestamp,
        expires: Timestamp,
    },
}

/// A value whose signature was checked by a trusted key. Only this module builds one.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    value: T,
    key_name: String,
    digest: Sha256Hash,
}

impl<T> Verified<T> {
    pub fn get(&self) -> &T {
        &self.value
    }

    /// The name of the trusted key whose signature verified.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// sha256 of the signed payload bytes: equal digests mean identical pointers.
    pub fn digest(&self) -> Sha256Hash {
        self.digest
    }

    pub fn into_inner(self) -> T {
        self.value
    }
}

/// Reads an envelope's payload without verifying any signature: for the
/// publisher's own tools (listing, gc, bundles) reading its own cache, never
/// for a decision an attacker could steer.
pub fn decode_unverified(bytes: &[u8]) -> Result<Pointer, PointerError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(PointerError::Envelope)?;
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| PointerError::Base64)?;
    serde_json::from_slice(&body).map_err(PointerError::Payload)
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Pointer {
    /// Checks that hold for every well-formed pointer, whoever reads it.
    pub fn check(&self) -> Result<(), PointerError> {
        if self.generation == 0 {
            return Err(PointerError::GenerationZero);
        }
        let (path, sealed) = match &self.manifest.sealed {
            None => (layout::manifest(&self.manifest.sha256), false),
            Some(_) => (layout::sealed(&self.manifest.sha256), true),
        };
        if self.manifest.path != path {
            return Err(PointerError::ManifestPath(self.manifest.path.clone()));
        }
        if sealed == self.store_path.is_some() {
            return Err(PointerError::Sealing);
        }
        if let Some(expires) = self.expires_at {
            if expires <= self.issued_at {
                return Err(PointerError::ExpiresBeforeIssued {
                    issued: self.issued_at,
                    expires,
                });
            }
        }
        Ok(())
    }

    /// Signs the pointer into an envelope's JSON bytes.
    pub fn sign(&self, key: &SecretKey) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a pointer always serialises");
        sign_envelope(PAYLOAD_TYPE, &body, key)
    }
}

/// Verifies an envelope's signature with the trusted keys, then parses the
/// payload. Nothing of the payload is read before a signature verified.
pub fn verify(bytes: &[u8], trusted: &[PublicKey]) -> Result<Verified<Pointer>, PointerError> {
    let env = envelope(bytes)?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(PointerError::PayloadType(env.payload_type));
    }
    verify_pointer(&env, trusted)
}

/// What `hosts/<host>.json` holds: the host's pointer, or the tombstone
/// `nixcast retire` wrote in its place. `Head` is the decoded form (for a
/// look at one's own cache); [`VerifiedHead`] the form an agent acts on.
#[derive(Debug, Clone)]
pub enum Head<P = Pointer, T = Tombstone> {
    Pointer(P),
    Retired(T),
}

pub type VerifiedHead = Head<Verified<Pointer>, Verified<Tombstone>>;

/// Verifies what a host's `hosts/<host>.json` holds, a pointer or a
/// tombstone, by its payload type; the signature covers the type (PAE), so
/// one cannot pass for the other. Nothing of the payload is read before a
/// signature verified.
pub fn verify_head(bytes: &[u8], trusted: &[PublicKey]) -> Result<VerifiedHead, PointerError> {
    let env = envelope(bytes)?;
    match env.payload_type.as_str() {
        PAYLOAD_TYPE => verify_pointer(&env, trusted).map(Head::Pointer),
        TOMBSTONE_PAYLOAD_TYPE => tombstone::verify(&env, trusted).map(Head::Retired),
        _ => Err(PointerError::PayloadType(env.payload_type)),
    }
}

/// `hosts/<host>.json` decoded without any signature verified: for the
/// publisher's own tools, like [`decode_unverified`].
pub fn decode_head_unverified(bytes: &[u8]) -> Result<Head, PointerError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(PointerError::Envelope)?;
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| PointerError::Base64)?;
    match env.payload_type.as_str() {
        TOMBSTONE_PAYLOAD_TYPE => serde_json::from_slice(&body)
            .map(Head::Retired)
            .map_err(PointerError::Payload),
        _ => serde_json::from_slice(&body)
            .map(Head::Pointer)
            .map_err(PointerError::Payload),
    }
}

/// The envelope, under the size limit.
fn envelope(bytes: &[u8]) -> Result<Envelope, PointerError> {
    if bytes.len() > MAX_ENVELOPE_SIZE {
        return Err(PointerError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(PointerError::Envelope)
}

fn verify_pointer(
    env: &Envelope,
    trusted: &[PublicKey],
) -> Result<Verified<Pointer>, PointerError> {
    let (body, key_name) = verify_signature(env, trusted)?;
    let value: Pointer = serde_json::from_slice(&body).map_err(PointerError::Payload)?;
    value.check()?;
    Ok(Verified {
        value,
        key_name,
        digest: Sha256Hash::digest(&body),
    })
}

/// The payload bytes of an envelope one of `trusted` signed (over its
/// payload type and payload), and that key's name.
pub(crate) fn verify_signature(
    env: &Envelope,
    trusted: &[PublicKey],
) -> Result<(Vec<u8>, String), PointerError> {
    if env.signatures.is_empty() {
        return Err(PointerError::Unsigned);
    }
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| PointerError::Base64)?;
    let message = pae(&env.payload_type, &body);
    // keyid is unauthenticated (DSSE): try every signature against every key.
    let key_name = env.signatures.iter().find_map(|s| {
        let raw: [u8; 64] = BASE64.decode(s.sig.as_bytes()).ok()?.try_into().ok()?;
        trusted.iter().find_map(|k| {
            let sig = Signature::from_parts(k.name(), raw);
            k.verifies(&message, &sig).then(|| k.name().to_owned())
        })
    });
    let Some(key_name) = key_name else {
        let ids: Vec<&str> = env.signatures.iter().map(|s| s.keyid.as_str()).collect();
        return Err(PointerError::Untrusted(ids.join(", ")));
    };
    Ok((body, key_name))
}

/// Signs `body` under `payload_type` into an envelope's JSON bytes.
fn sign_envelope(payload_type: &str, body: &[u8], key: &SecretKey) -> Vec<u8> {
    Envelope::signed(payload_type, body, |m| {
        vec![EnvelopeSignature::new(key.name(), key.sign(m).bytes())]
    })
    .file_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Pointer {
        let issued = Timestamp::now();
        Pointer {
            host: "foobar".into(),
            system: "x86_64-linux".into(),
            generation: 3,
            store_path: Some(
                "/nix/store/si52d1150q5y2r6361zybm110k6plxjf-nixos-system-foobar"
                    .parse()
                    .unwrap(),
            ),
            manifest: ManifestRef::for_bytes(b"{}"),
            issued_at: issued,
            expires_at: Some(issued.plus(Duration::from_secs(3600))),
        }
    }

    #[test]
    fn sign_and_verify() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let p = sample();
        let env = p.sign(&k);
        let v = verify(&env, &[k.public()]).unwrap();
        assert_eq!(v.get(), &p);
        assert_eq!(v.key_name(), "fleet-1");
        // Another key, even under the same name, does not verify.
        let other = SecretKey::generate("fleet-1").unwrap();
        assert!(matches!(
            verify(&env, &[other.public()]),
            Err(PointerError::Untrusted(_))
        ));
        // Several trusted keys: the right one is found whatever the keyid says.
        let v = verify(&env, &[other.public(), k.public()]).unwrap();
        assert_eq!(v.get().generation, 3);
    }

    #[test]
    fn pae_matches_dsse_spec() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn tampered_payload_and_type_rejected() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let env: Envelope = serde_json::from_slice(&sample().sign(&k)).unwrap();
        let mut p = sample();
        p.generation = 99;
        let mut forged = env.clone();
        forged.payload = BASE64.encode(&serde_json::to_vec(&p).unwrap());
        let bytes = serde_json::to_vec(&forged).unwrap();
        assert!(matches!(
            verify(&bytes, &[k.public()]),
            Err(PointerError::Untrusted(_))
        ));

        let mut typed = env.clone();
        typed.payload_type = "application/vnd.in-toto+json".into();
        let bytes = serde_json::to_vec(&typed).unwrap();
        assert!(matches!(
            verify(&bytes, &[k.public()]),
            Err(PointerError::PayloadType(_))
        ));

        let mut unsigned = env;
        unsigned.signatures.clear();
        let bytes = serde_json::to_vec(&unsigned).unwrap();
        assert!(matches!(
            verify(&bytes, &[k.public()]),
            Err(PointerError::Unsigned)
        ));

        let big = vec![b' '; MAX_ENVELOPE_SIZE + 1];
        assert!(matches!(
            verify(&big, &[k.public()]),
            Err(PointerError::TooLarge(_))
        ));
    }

    #[test]
    fn strict_payload_parsing_after_signature() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let p = sample();
        let json = String::from_utf8(serde_json::to_vec(&p).unwrap()).unwrap();
        let sign_raw = |body: &str| {
            let sig = k.sign(&pae(PAYLOAD_TYPE, body.as_bytes()));
            serde_json::to_vec(&Envelope {
                payload_type: PAYLOAD_TYPE.into(),
                payload: BASE64.encode(body.as_bytes()),
                signatures: vec![EnvelopeSignature {
                    keyid: "fleet-1".into(),
                    sig: BASE64.encode(sig.bytes()),
                }],
            })
            .unwrap()
        };
        let dup = json.replacen(
            "\"host\":\"foobar\"",
            "\"host\":\"foobar\",\"host\":\"other\"",
            1,
        );
        assert!(matches!(
            verify(&sign_raw(&dup), &[k.public()]),
            Err(PointerError::Payload(_))
        ));
        let bad_path = json.replacen("/nix/store/si52", "/nix/store/ee52", 1);
        assert!(matches!(
            verify(&sign_raw(&bad_path), &[k.public()]),
            Err(PointerError::Payload(_))
        ));
        let at = p.issued_at.to_string();
        let fraction = json.replacen(&at, &at.replace('Z', ".5Z"), 1);
        assert!(matches!(
            verify(&sign_raw(&fraction), &[k.public()]),
            Err(PointerError::Payload(_))
        ));
        let gen0 = json.replacen("\"generation\":3", "\"generation\":0", 1);
        assert!(matches!(
            verify(&sign_raw(&gen0), &[k.public()]),
            Err(PointerError::GenerationZero)
        ));
        assert!(verify(&sign_raw(&json), &[k.public()]).is_ok());
    }

    #[test]
    fn sealed_pointers_name_no_store_path() {
        let key = SecretKey::generate("fleet-1").unwrap();
        let mut p = sample();
        p.manifest = ManifestRef::for_sealed(b"sealed bytes", b"plain bytes");
        assert!(matches!(p.check(), Err(PointerError::Sealing)));
        p.store_path = None;
        p.check().unwrap();
        let env = p.sign(&key);
        assert!(!String::from_utf8_lossy(&env).contains("/nix/store"));
        let v = verify(&env, &[key.public()]).unwrap();
        assert_eq!(v.get(), &p);
        // A plain manifest path with a sealed pin, or the reverse, is refused.
        let mut q = p.clone();
        q.manifest.path = layout::manifest(&q.manifest.sha256);
        assert!(matches!(q.check(), Err(PointerError::ManifestPath(_))));
        let mut q = sample();
        q.store_path = None;
        assert!(matches!(q.check(), Err(PointerError::Sealing)));
    }
}
