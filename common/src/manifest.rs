//! The manifest: a host's whole closure in one content-addressed file.
//!
//! Stored at `manifests/<sha256-hex>.json` and pinned (sha256 and size) by the
//! signed pointer, so one signature decides every NAR of the closure. One
//! entry per store path, sorted by path:
//!
//! ```json
//! { "version": 1, "storePath": "/nix/store/…-nixos-system-foobar",
//!   "paths": [ { "storePath": "/nix/store/…-base-lib", "narHash": "sha256:…", "narSize": 66184,
//!                "references": ["/nix/store/…-base-lib"], "deriver": "/nix/store/…-base-lib.drv",
//!                "sigs": ["fleet-1:…"], "url": "nar/<filehash>.nar.xz", "compression": "xz",
//!                "fileHash": "sha256:…", "fileSize": 12345 } ] }
//! ```
//!
//! An entry may name the cache that serves its NAR (`"cache": URL`, an upstream);
//! without it the NAR is in the same cache as the manifest. `url` is always
//! relative: `nar/<52 nixbase32 chars>.nar[.xz|.zst]`, matching `compression`.
//!
//! A sealed host's manifest is itself sealed, and each of its own entries
//! has `"sealedTo": <sha256>` (a name for the recipient set that only the
//! publisher can compute) and `"url": "sealed/<sha256 of the sealed bytes>"`:
//! `fileHash` and `fileSize` are then those of the sealed bytes, and
//! `compression` is what the sealed stream holds.
//!
//! A [`Delta`] at `manifests/<new-sha256>.from-<old-sha256>.json` lists what
//! changed between two manifests, so that an agent holding the old one need
//! not download the whole new one. It carries no trust of its own: the agent
//! rebuilds the new manifest from it and compares the result with the sha256
//! and size the signed pointer pins.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hash::Sha256Hash;
use crate::keys::Signature;
use crate::layout::{self, Key};
use crate::store_path::StorePath;

pub const VERSION: u32 = 1;
/// Far above any real NixOS closure (a few thousand paths), low enough to bound memory.
pub const MAX_PATHS: usize = 200_000;
/// The largest manifest read, sealed or plain: some hundred thousand paths.
pub const MAX_SIZE: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Xz,
    Zstd,
    None,
}

impl Compression {
    /// The file-name suffix after `.nar`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
            Compression::None => "",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    /// Reads a narinfo `Compression:` value; anything outside the allowlist is refused.
    pub fn from_narinfo(s: &str) -> Option<Self> {
        match s {
            "xz" => Some(Compression::Xz),
            "zstd" => Some(Compression::Zstd),
            "none" => Some(Compression::None),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_narinfo(s)
            .ok_or_else(|| format!("unknown compression {s:?}: use xz, zstd or none"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    pub store_path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deriver: Option<StorePath>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sigs: Vec<Signature>,
    pub url: String,
    pub compression: Compression,
    pub file_hash: Sha256Hash,
    pub file_size: u64,
    /// The base URL of an upstream cache that serves this NAR; `None`: this cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Sealed: which recipient set (see the module's text). `None`: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_to: Option<Sha256Hash>,
}

impl Entry {
    pub fn is_sealed(&self) -> bool {
        self.sealed_to.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub store_path: StorePath,
    pub paths: Vec<Entry>,
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("malformed manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported manifest version {0}")]
    Version(u32),
    #[error("manifest lists {0} paths, more than the limit of {MAX_PATHS}")]
    TooManyPaths(usize),
    #[error("manifest entries are not sorted and unique at {0}")]
    Order(StorePath),
    #[error("manifest entry {0}: narSize is 0")]
    EmptyNar(StorePath),
    #[error("manifest entry {path}: url {url:?} is not nar/<filehash>.nar{ext} (or sealed/<sha256> in this cache)")]
    Url {
        path: StorePath,
        url: String,
        ext: &'static str,
    },
    #[error("manifest is not closed: {path} references {missing}, which it does not list")]
    NotClosed { path: StorePath, missing: StorePath },
    #[error("manifest does not contain its own store path {0}")]
    MissingTop(StorePath),
    #[error("manifest entry {0}: references are not sorted and unique")]
    References(StorePath),
    #[error("manifest sizes add up to more than 2^64 bytes")]
    SizeOverflow,
}

impl Manifest {
    /// Builds a manifest, sorting entries and references, and checks it.
    pub fn new(store_path: StorePath, mut paths: Vec<Entry>) -> Result<Self, ManifestError> {
        paths.sort_by(|a, b| a.store_path.cmp(&b.store_path));
        for e in &mut paths {
            e.references.sort();
            e.references.dedup();
        }
        let m = Self {
            version: VERSION,
            store_path,
            paths,
        };
        m.check()?;
        Ok(m)
    }

    /// Parses and checks; serde rejects duplicate keys and trailing data.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Self = serde_json::from_slice(bytes)?;
        m.check()?;
        Ok(m)
    }

    /// Deterministic bytes, so the same closure always gets the same name.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }

    pub fn check(&self) -> Result<(), ManifestError> {
        if self.version != VERSION {
            return Err(ManifestError::Version(self.version));
        }
        if self.paths.len() > MAX_PATHS {
            return Err(ManifestError::TooManyPaths(self.paths.len()));
        }
        for w in self.paths.windows(2) {
            if w[0].store_path >= w[1].store_path {
                return Err(ManifestError::Order(w[1].store_path.clone()));
            }
        }
        for e in &self.paths {
            if e.nar_size == 0 {
                return Err(ManifestError::EmptyNar(e.store_path.clone()));
            }
            let url_ok = match e.sealed_to {
                Some(_) => layout::is_sealed(&e.url) && e.cache.is_none(),
                None => is_nar_url(&e.url, e.compression),
            };
            if !url_ok {
                return Err(ManifestError::Url {
                    path: e.store_path.clone(),
                    url: e.url.clone(),
                    ext: e.compression.extension(),
                });
            }
            if e.references.windows(2).any(|w| w[0] >= w[1]) {
                return Err(ManifestError::References(e.store_path.clone()));
            }
            for r in &e.references {
                if self.get(r).is_none() {
                    return Err(ManifestError::NotClosed {
                        path: e.store_path.clone(),
                        missing: r.clone(),
                    });
                }
            }
        }
        if self.get(&self.store_path).is_none() {
            return Err(ManifestError::MissingTop(self.store_path.clone()));
        }
        // Totals are taken over these sizes; none may overflow.
        self.paths
            .iter()
            .try_fold(0u64, |t, e| {
                t.checked_add(e.nar_size)?.checked_add(e.file_size)
            })
            .ok_or(ManifestError::SizeOverflow)?;
        Ok(())
    }

    pub fn get(&self, path: &StorePath) -> Option<&Entry> {
        self.paths
            .binary_search_by(|e| e.store_path.cmp(path))
            .ok()
            .map(|i| &self.paths[i])
    }

    /// Cannot overflow for a checked manifest; saturates for an unchecked one.
    pub fn total_nar_size(&self) -> u64 {
        self.paths
            .iter()
            .fold(0u64, |t, e| t.saturating_add(e.nar_size))
    }

    /// Entries with every dependency before its dependents (self-references ignored).
    pub fn topological(&self) -> Vec<&Entry> {
        let mut pending: BTreeMap<&StorePath, usize> = BTreeMap::new();
        let mut dependents: BTreeMap<&StorePath, Vec<&StorePath>> = BTreeMap::new();
        for e in &self.paths {
            let deps: BTreeSet<&StorePath> = e
                .references
                .iter()
                .filter(|r| **r != e.store_path)
                .collect();
            pending.insert(&e.store_path, deps.len());
            for d in deps {
                dependents.entry(d).or_default().push(&e.store_path);
            }
        }
        let mut ready: Vec<&StorePath> = pending
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(p, _)| *p)
            .collect();
        let mut out = Vec::with_capacity(self.paths.len());
        while let Some(p) = ready.pop() {
            out.push(self.get(p).expect("listed"));
            for d in dependents.get(p).into_iter().flatten() {
                let n = pending.get_mut(d).expect("listed");
                *n -= 1;
                if *n == 0 {
                    ready.push(d);
                }
            }
        }
        // A reference cycle between distinct paths cannot come from Nix; if a
        // hostile manifest has one, its members are left out and never imported.
        out
    }
}

/// `nar/<52 nixbase32>.nar<ext>`: no absolute URLs, no `..`, nothing else.
pub fn is_nar_url(url: &str, compression: Compression) -> bool {
    matches!(Key::parse(url), Some(Key::Nar { compression: c, .. }) if c == compression)
}

/// The URL at which a compressed NAR is stored: named by its file hash, as Nix does.
pub fn nar_url(file_hash: &Sha256Hash, compression: Compression) -> String {
    Key::Nar {
        file_hash: *file_hash,
        compression,
    }
    .to_string()
}

/// Where the delta from the manifest with sha256 `old` to the one with `new` is stored.
pub fn delta_path(new: &Sha256Hash, old: &Sha256Hash) -> String {
    Key::ManifestDelta {
        new: *new,
        old: *old,
    }
    .to_string()
}

/// What changed from one manifest to the next (see the module's text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delta {
    pub version: u32,
    pub store_path: StorePath,
    /// Paths of the old manifest whose entries are gone or changed.
    pub removed: Vec<StorePath>,
    /// Entries of the new manifest that the old one lacks as they are.
    pub added: Vec<Entry>,
}

impl Delta {
    pub fn between(old: &Manifest, new: &Manifest) -> Self {
        Self {
            version: VERSION,
            store_path: new.store_path.clone(),
            removed: old
                .paths
                .iter()
                .filter(|e| new.get(&e.store_path) != Some(*e))
                .map(|e| e.store_path.clone())
                .collect(),
            added: new
                .paths
                .iter()
                .filter(|e| old.get(&e.store_path) != Some(*e))
                .cloned()
                .collect(),
        }
    }

    /// The manifest this delta makes of `old`, checked like any manifest.
    /// Whether it is the one wanted is for the caller to check (its sha256).
    pub fn apply(&self, old: &Manifest) -> Result<Manifest, ManifestError> {
        if self.version != VERSION {
            return Err(ManifestError::Version(self.version));
        }
        if self.added.len() > MAX_PATHS {
            return Err(ManifestError::TooManyPaths(self.added.len()));
        }
        let removed: HashSet<&StorePath> = self.removed.iter().collect();
        let paths = old
            .paths
            .iter()
            .filter(|e| !removed.contains(&e.store_path))
            .chain(&self.added)
            .cloned()
            .collect();
        Manifest::new(self.store_path.clone(), paths)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a delta always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str, n: u8) -> StorePath {
        let h = crate::nixbase32::encode(&[n; 20]);
        StorePath::from_basename(&format!("{h}-{name}")).unwrap()
    }

    fn entry(p: &StorePath, refs: &[&StorePath]) -> Entry {
        let fh = Sha256Hash::digest(p.to_string().as_bytes());
        Entry {
            store_path: p.clone(),
            nar_hash: Sha256Hash::digest(b"x"),
            nar_size: 120,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            sigs: vec![],
            url: nar_url(&fh, Compression::Xz),
            compression: Compression::Xz,
            file_hash: fh,
            file_size: 100,
            cache: None,
            sealed_to: None,
        }
    }

    fn sample() -> Manifest {
        let (a, b, top) = (sp("a", 1), sp("b", 2), sp("top", 3));
        Manifest::new(
            top.clone(),
            vec![
                entry(&top, &[&a, &b, &top]),
                entry(&b, &[&a]),
                entry(&a, &[]),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_order() {
        let m = sample();
        let json = m.to_json();
        assert_eq!(Manifest::parse(&json).unwrap(), m);
        let names: Vec<_> = m
            .topological()
            .iter()
            .map(|e| e.store_path.name())
            .collect();
        assert_eq!(names, ["a", "b", "top"]);
    }

    #[test]
    fn sealed_entries_live_under_sealed_and_nowhere_else() {
        let mut m = sample();
        let e = &mut m.paths[0];
        e.sealed_to = Some(Sha256Hash::digest(b"set"));
        assert!(matches!(m.check(), Err(ManifestError::Url { .. })));
        let e = &mut m.paths[0];
        e.url = crate::layout::sealed(&e.file_hash);
        m.check().unwrap();
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        m.paths[0].cache = Some("https://cache.nixos.org".into());
        assert!(matches!(m.check(), Err(ManifestError::Url { .. })));
        m.paths[0].cache = None;
        m.paths[0].sealed_to = None;
        assert!(matches!(m.check(), Err(ManifestError::Url { .. })));
    }

    #[test]
    fn rejects_open_closure_and_missing_top() {
        let (a, top) = (sp("a", 1), sp("top", 3));
        let err = Manifest::new(top.clone(), vec![entry(&top, &[&a])]).unwrap_err();
        assert!(matches!(err, ManifestError::NotClosed { .. }), "{err}");
        let err = Manifest::new(top, vec![entry(&a, &[])]).unwrap_err();
        assert!(matches!(err, ManifestError::MissingTop(_)), "{err}");
    }

    #[test]
    fn rejects_bad_urls() {
        let m = sample();
        for bad in [
            "https://evil.example/nar/x.nar.xz".to_owned(),
            "nar/../hosts/x.json".to_owned(),
            format!("/{}", m.paths[0].url),
            m.paths[0].url.replace(".nar.xz", ".nar.zst"),
            m.paths[0].url.replace(".nar.xz", ".nar.bz2"),
        ] {
            let mut m2 = m.clone();
            m2.paths[0].url = bad.clone();
            assert!(
                matches!(m2.check(), Err(ManifestError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_duplicates_unknown_and_malformed_json() {
        let m = sample();
        let mut dup = m.clone();
        dup.paths.insert(1, dup.paths[0].clone());
        assert!(matches!(dup.check(), Err(ManifestError::Order(_))));

        let json = String::from_utf8(m.to_json()).unwrap();
        let twice = json.replacen("\"version\": 1,", "\"version\": 1, \"version\": 1,", 1);
        assert!(matches!(
            Manifest::parse(twice.as_bytes()),
            Err(ManifestError::Json(_))
        ));
        let unknown = json.replacen("\"version\": 1,", "\"version\": 1, \"extra\": 1,", 1);
        assert!(Manifest::parse(unknown.as_bytes()).is_err());
        assert!(Manifest::parse(format!("{json} {{}}").as_bytes()).is_err());
        let bzip = json.replacen("\"compression\": \"xz\"", "\"compression\": \"bzip2\"", 1);
        assert!(Manifest::parse(bzip.as_bytes()).is_err());
        let huge = json.replacen("\"narSize\": 120", "\"narSize\": 18446744073709551615", 1);
        assert!(matches!(
            Manifest::parse(huge.as_bytes()),
            Err(ManifestError::SizeOverflow)
        ));
        let zero = json.replacen("\"narSize\": 120", "\"narSize\": 0", 1);
        assert!(matches!(
            Manifest::parse(zero.as_bytes()),
            Err(ManifestError::EmptyNar(_))
        ));
    }

    #[test]
    fn a_delta_rebuilds_the_new_manifest_byte_for_byte() {
        let old = sample();
        let (a, b, top) = (sp("a", 1), sp("b", 2), sp("top", 3));
        let (c, top2) = (sp("c", 4), sp("top", 5));
        let mut changed = entry(&b, &[&a, &c]);
        changed.nar_size = 999;
        let new = Manifest::new(
            top2.clone(),
            vec![
                entry(&top2, &[&a, &b, &top2]),
                changed,
                entry(&a, &[]),
                entry(&c, &[]),
            ],
        )
        .unwrap();
        let d = Delta::between(&old, &new);
        assert_eq!(d.removed, [b.clone(), top]);
        assert_eq!(d.added.len(), 3, "b changed, c and top2 are new");
        let d = Delta::parse(&d.to_json()).unwrap();
        assert_eq!(d.apply(&old).unwrap().to_json(), new.to_json());
        // Applied to another base it makes another manifest, or none.
        let mut other_a = entry(&a, &[]);
        other_a.nar_size = 7;
        let other = Manifest::new(a.clone(), vec![other_a]).unwrap();
        assert!(d
            .apply(&other)
            .map_or(true, |m| m.to_json() != new.to_json()));
        // An entry added twice is refused like a duplicate in a manifest.
        let mut twice = d.clone();
        twice.added.push(twice.added[0].clone());
        assert!(twice.apply(&old).is_err());
        assert_ne!(
            delta_path(&Sha256Hash::digest(b"1"), &Sha256Hash::digest(b"2")),
            ""
        );
    }
}
