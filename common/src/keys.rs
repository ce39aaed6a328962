//! Nix signing keys and detached signatures.
//!
//! Files as written by `nix-store --generate-binary-cache-key NAME SK PK`:
//! `NAME:base64(64 bytes)` for a secret key (ed25519 seed ‖ public key, the
//! libsodium layout) and `NAME:base64(32 bytes)` for a public key, no trailing
//! newline (one is tolerated on read). A signature is `NAME:base64(64 bytes)`.
//! The name is everything before the first `:`, so it may not contain one.

use std::fmt;

use data_encoding::BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key has no name: expected NAME:BASE64")]
    NoName,
    #[error("invalid key name {0:?}: it must be non-empty, without ':' or whitespace")]
    BadName(String),
    #[error("key {0:?} is not valid base64")]
    Base64(String),
    #[error("key {name:?} has {got} bytes, expected {expected}")]
    Length {
        name: String,
        got: usize,
        expected: usize,
    },
    #[error("secret key {0:?}: its public half does not match its seed")]
    PublicHalf(String),
    #[error("public key {0:?} is a weak (small-order) point")]
    Weak(String),
    #[error("malformed signature {0:?}: expected NAME:BASE64 of 64 bytes")]
    Signature(String),
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(KeyError::BadName(name.to_owned()));
    }
    Ok(())
}

fn split(s: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let s = s.trim_end_matches(['\n', '\r']);
    let (name, b64) = s.split_once(':').ok_or(KeyError::NoName)?;
    check_name(name)?;
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|_| KeyError::Base64(name.to_owned()))?;
    Ok((name, bytes))
}

fn exact<const N: usize>(name: &str, bytes: &[u8]) -> Result<[u8; N], KeyError> {
    bytes.try_into().map_err(|_| KeyError::Length {
        name: name.to_owned(),
        got: bytes.len(),
        expected: N,
    })
}

/// A secret signing key. Its `Debug` shows the name only, and the key material
/// is zeroed when dropped (ed25519-dalek's `zeroize` feature).
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).expect("the OS random number generator failed");
        Ok(Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(s)?;
        let bytes = zeroize::Zeroizing::new(bytes);
        let full: [u8; 64] = exact(name, &bytes)?;
        let full = zeroize::Zeroizing::new(full);
        let key = SigningKey::from_keypair_bytes(&full)
            .map_err(|_| KeyError::PublicHalf(name.to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The file contents, `NAME:base64(seed ‖ public)`, in a buffer zeroed on drop.
    pub fn to_file_string(&self) -> zeroize::Zeroizing<String> {
        let bytes = zeroize::Zeroizing::new(self.key.to_keypair_bytes());
        zeroize::Zeroizing::new(format!("{}:{}", self.name, BASE64.encode(bytes.as_ref())))
    }

    /// Key material derived from this key for another purpose, named by
    /// `label`: SHA-256(label ‖ seed). Used for the publisher's own sealing
    /// identity, so that one secret key file is all a publisher keeps.
    pub fn derive(&self, label: &str) -> zeroize::Zeroizing<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(self.key.to_bytes());
        zeroize::Zeroizing::new(h.finalize().into())
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(msg).to_bytes(),
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(s.trim())?;
        let raw: [u8; 32] = exact(name, &bytes)?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::Weak(name.to_owned()))?;
        if key.is_weak() {
            return Err(KeyError::Weak(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's 32 bytes, without its name: two keys are the same key
    /// when these are equal, whatever they are called.
    pub fn bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// True when `sig` was made by this key (same name, valid strict ed25519) over `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &Signature) -> bool {
        sig.key_name == self.name
            && self
                .key
                .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig.bytes))
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A detached signature, `NAME:base64(64 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    key_name: String,
    bytes: [u8; 64],
}

impl Signature {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Signature(s.to_owned());
        let (name, b64) = s.split_once(':').ok_or_else(bad)?;
        check_name(name).map_err(|_| bad())?;
        let bytes = BASE64.decode(b64.as_bytes()).map_err(|_| bad())?;
        Ok(Self {
            key_name: name.to_owned(),
            bytes: bytes.try_into().map_err(|_| bad())?,
        })
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }

    pub fn from_parts(key_name: &str, bytes: [u8; 64]) -> Self {
        Self {
            key_name: key_name.to_owned(),
            bytes,
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A pair made by `nix-store --generate-binary-cache-key impkey-1 sk pk` (Nix 2.8).
    const SK: &str = "impkey-1:21FkgpHFImmNodDxV+sxT+r6B9v6nHevE1Wu+mqHoOUmzMEG9jUKoWtoehVEw/2BpCIosaCvZyjhVZrcsLpzRA==";
    const PK: &str = "impkey-1:JszBBvY1CqFraHoVRMP9gaQiKLGgr2co4VWa3LC6c0Q=";

    #[test]
    fn nix_key_pair_loads_and_matches() {
        let sk = SecretKey::parse(SK).unwrap();
        assert_eq!(sk.public().to_string(), PK);
        assert_eq!(PublicKey::parse(&format!("{PK}\n")).unwrap(), sk.public());
        assert_eq!(sk.to_file_string().as_str(), SK);
        let sig = sk.sign(b"hello");
        assert!(sk.public().verifies(b"hello", &sig));
        assert!(!sk.public().verifies(b"hellO", &sig));
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
    }

    #[test]
    fn debug_hides_secret() {
        let sk = SecretKey::parse(SK).unwrap();
        let dbg = format!("{sk:?}");
        assert!(dbg.contains("impkey-1") && !dbg.contains("21Fk"), "{dbg}");
    }

    #[test]
    fn mismatched_public_half_rejected() {
        let a = SecretKey::generate("a").unwrap();
        let b = SecretKey::generate("a").unwrap();
        let mut bytes = a.key.to_keypair_bytes();
        bytes[32..].copy_from_slice(b.key.verifying_key().as_bytes());
        let s = format!("a:{}", BASE64.encode(&bytes));
        assert_eq!(
            SecretKey::parse(&s).unwrap_err(),
            KeyError::PublicHalf("a".into())
        );
    }

    #[test]
    fn other_name_or_key_does_not_verify() {
        let a = SecretKey::generate("k").unwrap();
        let b = SecretKey::generate("k").unwrap();
        let sig = a.sign(b"m");
        assert!(!b.public().verifies(b"m", &sig));
        let renamed = Signature::from_parts("other", *sig.bytes());
        assert!(!a.public().verifies(b"m", &renamed));
    }

    #[test]
    fn weak_key_and_bad_inputs_rejected() {
        // The identity point: a signature by it verifies for many messages.
        let mut id = [0u8; 32];
        id[0] = 1;
        let s = format!("w:{}", BASE64.encode(&id));
        assert_eq!(
            PublicKey::parse(&s).unwrap_err(),
            KeyError::Weak("w".into())
        );
        assert_eq!(PublicKey::parse("nocolon").unwrap_err(), KeyError::NoName);
        assert!(matches!(
            PublicKey::parse(":AAAA"),
            Err(KeyError::BadName(_))
        ));
        assert!(matches!(
            PublicKey::parse("k:AAAA"),
            Err(KeyError::Length { .. })
        ));
        assert!(matches!(
            SecretKey::generate("a:b"),
            Err(KeyError::BadName(_))
        ));
    }
}
