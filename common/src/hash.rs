//! SHA-256 digests in the forms Nix writes and reads.
//!
//! Nix prints `sha256:<nixbase32, 52 chars>` in narinfos and `nix-store -q --hash`;
//! old narinfos carry `sha256:<base16, 64 chars>`; `nix path-info --json` prints
//! SRI (`sha256-<base64>`). All three are read; nixbase32 is written.

use std::fmt;
use std::io::{self, Read, Write};

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::nixbase32;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HashError {
    #[error("unsupported hash {0:?}: only sha256 is accepted")]
    Algorithm(String),
    #[error("malformed sha256 hash {0:?}")]
    Malformed(String),
}

/// How a hash was written, so callers can note tolerated quirks (base16 in a narinfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashEncoding {
    NixBase32,
    Base16,
    Sri,
}

impl Sha256Hash {
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses `sha256:<nixbase32|base16>` or `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        Self::parse_with_encoding(s).map(|(h, _)| h)
    }

    pub fn parse_with_encoding(s: &str) -> Result<(Self, HashEncoding), HashError> {
        let malformed = || HashError::Malformed(s.to_owned());
        if let Some(rest) = s.strip_prefix("sha256:") {
            return Self::parse_bare(rest).ok_or_else(malformed);
        }
        if let Some(rest) = s.strip_prefix("sha256-") {
            let bytes = BASE64.decode(rest.as_bytes()).map_err(|_| malformed())?;
            let arr: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
            return Ok((Self(arr), HashEncoding::Sri));
        }
        match s.split_once([':', '-']) {
            Some((algo, _)) => Err(HashError::Algorithm(algo.to_owned())),
            None => Err(malformed()),
        }
    }

    /// The part after `sha256:`: 52 nixbase32 characters or 64 hex digits.
    fn parse_bare(s: &str) -> Option<(Self, HashEncoding)> {
        match s.len() {
            52 => nixbase32::decode::<32>(s.as_bytes())
                .ok()
                .map(|h| (Self(h), HashEncoding::NixBase32)),
            64 => {
                let bytes = HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok()?;
                Some((Self(bytes.try_into().ok()?), HashEncoding::Base16))
            }
            _ => None,
        }
    }

    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }

    pub fn to_nixbase32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(&self.0))
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nixbase32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Sha256Hash {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::parse(s)
    }
}

impl serde::Serialize for Sha256Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Counts and hashes every byte that passes through, in either direction.
pub struct HashingCounter<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> HashingCounter<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Returns the inner value, the digest and the byte count.
    pub fn finish(self) -> (T, Sha256Hash, u64) {
        (
            self.inner,
            Sha256Hash(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<W: Write> Write for HashingCounter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for HashingCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_forms_agree() {
        // The same NarHash as Nix writes it: nixbase32, base16 and SRI.
        let b32 = Sha256Hash::parse("sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k")
            .unwrap();
        let sri = Sha256Hash::parse("sha256-MyEwKR7frLkJXyCTAYmhACAemt2h4EszAo04ltEu78o=").unwrap();
        assert_eq!(b32, sri);
        let hex = Sha256Hash::parse(&format!("sha256:{}", b32.to_hex())).unwrap();
        assert_eq!(hex, b32);
        assert_eq!(
            b32.to_string(),
            "sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k"
        );
        assert_eq!(
            b32.to_sri(),
            "sha256-MyEwKR7frLkJXyCTAYmhACAemt2h4EszAo04ltEu78o="
        );
    }

    #[test]
    fn rejects() {
        assert!(matches!(
            Sha256Hash::parse("md5:abc"),
            Err(HashError::Algorithm(_))
        ));
        assert!(matches!(
            Sha256Hash::parse("sha1:abc"),
            Err(HashError::Algorithm(_))
        ));
        assert!(Sha256Hash::parse("sha256:short").is_err());
        assert!(Sha256Hash::parse("sha256-AAAA").is_err());
        assert!(Sha256Hash::parse("").is_err());
    }

    #[test]
    fn hashing_counter() {
        let mut w = HashingCounter::new(Vec::new());
        w.write_all(b"hello").unwrap();
        let (v, h, n) = w.finish();
        assert_eq!((v.as_slice(), n), (&b"hello"[..], 5));
        assert_eq!(h, Sha256Hash::digest(b"hello"));
    }
}
