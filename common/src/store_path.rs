//! Store paths: `/nix/store/<hash>-<name>`.
//!
//! `<hash>` is 32 nixbase32 characters (a 160-bit digest); `<name>` is 1 to 211
//! characters of `[0-9a-zA-Z+-._?=]` and may not be `.` or `..` nor start with
//! `.-` or `..-`. Source of truth: Nix's `src/libstore/path.cc` (`checkName`).
//! Only the default store directory `/nix/store` is supported.

use std::fmt;

use thiserror::Error;

use crate::nixbase32;

pub const STORE_DIR: &str = "/nix/store";
pub const HASH_LEN: usize = 32;
pub const MAX_NAME_LEN: usize = 211;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    // The textual hash part is kept as-is: it is what Nix sorts and prints.
    hash: [u8; HASH_LEN],
    name: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("store path {0:?} is not under {STORE_DIR}")]
    NotInStore(String),
    #[error("store path {0:?} has a malformed hash part")]
    Hash(String),
    #[error("store path {path:?} has an invalid name: {why}")]
    Name { path: String, why: &'static str },
}

impl StorePath {
    /// Parses an absolute path, `/nix/store/<hash>-<name>`, with nothing after the name.
    pub fn from_absolute(s: &str) -> Result<Self, StorePathError> {
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(s.to_owned()))?;
        Self::from_basename(base)
    }

    /// Parses `<hash>-<name>`.
    pub fn from_basename(s: &str) -> Result<Self, StorePathError> {
        let bytes = s.as_bytes();
        if bytes.len() < HASH_LEN + 2
            || bytes[HASH_LEN] != b'-'
            || !bytes[..HASH_LEN]
                .iter()
                .all(|&c| nixbase32::is_valid_char(c))
        {
            return Err(StorePathError::Hash(s.to_owned()));
        }
        let name = &s[HASH_LEN + 1..];
        check_name(name).map_err(|why| StorePathError::Name {
            path: s.to_owned(),
            why,
        })?;
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(&bytes[..HASH_LEN]);
        Ok(Self {
            hash,
            name: name.to_owned(),
        })
    }

    /// The 32 nixbase32 characters that name the narinfo: `<hash>.narinfo`.
    pub fn hash_part(&self) -> &str {
        std::str::from_utf8(&self.hash).expect("hash part is ASCII")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn basename(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 211 characters");
    }
    if name == "." || name == ".." || name.starts_with(".-") || name.starts_with("..-") {
        return Err("starts with '.' or '..'");
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
    if !name.bytes().all(ok) {
        return Err("characters outside [0-9a-zA-Z+-._?=]");
    }
    Ok(())
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl std::str::FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::from_absolute(s)
    }
}

impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_absolute(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let s = "/nix/store/si52d1150q5y2r6361zybm110k6plxjf-dep";
        let p = StorePath::from_absolute(s).unwrap();
        assert_eq!(p.to_string(), s);
        assert_eq!(p.hash_part(), "si52d1150q5y2r6361zybm110k6plxjf");
        assert_eq!(p.name(), "dep");
        assert_eq!(StorePath::from_basename(&p.basename()).unwrap(), p);
    }

    #[test]
    fn rejects() {
        let h = "si52d1150q5y2r6361zybm110k6plxjf";
        for bad in [
            "/nix/store/".to_owned(),
            format!("/tmp/{h}-x"),
            format!("/nix/store/{h}"),
            format!("/nix/store/{h}-"),
            format!("/nix/store/{h}-a/b"),
            format!("/nix/store/{h}-.."),
            format!("/nix/store/{h}-.-x"),
            format!("/nix/store/{h}-a b"),
            format!("/nix/store/{h}-{}", "a".repeat(212)),
            "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x".to_owned(),
            "/nix/store/si52d1150q5y2r6361zybm110k6plxj-x".to_owned(),
        ] {
            assert!(StorePath::from_absolute(&bad).is_err(), "{bad}");
        }
        assert!(StorePath::from_absolute(&format!("/nix/store/{h}-{}", "a".repeat(211))).is_ok());
        assert!(StorePath::from_absolute(&format!("/nix/store/{h}-.x")).is_ok());
    }
}
