//! Where each object lives in a cache: the one place that spells out keys.
//!
//! ```text
//! nix-cache-info                          Nix's cache description
//! <hash32>.narinfo, nar/<filehash>.nar.xz a plain path, as Nix writes it
//! manifests/<sha256>.json                 a plain host's manifest
//! manifests/<new>.from-<old>.json         a delta between two manifests
//! sealed/<sha256>                         a sealed NAR, manifest or delta,
//!                                         named by the sha256 of its bytes
//! sealed/<new>.from-<old>                 a sealed manifest delta
//! manifests/<new>.nars-from-<old>.json    the NAR-delta index between two manifests
//! sealed/<new>.nars-from-<old>            a sealed host's NAR-delta index, sealed
//! deltas/<filehash>.nar.zst-patch         a NAR as a zstd patch against another NAR
//! hosts/<host>.json                       a host's current pointer (a retired
//!                                         host's tombstone)
//! hosts/<host>/<generation>.json          every pointer ever published
//! reports/<host>.json                     a host's latest signed report
//! keys.json                               the key list (signed by the roots)
//! keys/<version>.json                     every key list ever signed
//! enroll/<host>.json                      a host's pending enrollment request
//! enrolled/<token id>.json                the request that used a token
//! agents/<host>.json                      the agent an invited host installs
//! ```
//!
//! [`Key`] is that table as a type: every key is built by `Display` and read
//! back by [`Key::parse`], which accepts exactly the form `Display` writes
//! (lowercase hex, nixbase32 of the right length, no leading zeros, a valid
//! host name), so that `parse(k.to_string()) == k` and a name that merely
//! resembles a key (`sealed/../x`, `hosts/a/017.json`) is no key. Whoever
//! scans a cache (gc, serve's cache headers, a backend's sync) matches on
//! `Key`, never on the string.

use std::fmt;

use crate::enroll::TokenId;
use crate::hash::Sha256Hash;
use crate::manifest::Compression;
use crate::nixbase32;
use crate::store_path::StorePath;

pub const NIX_CACHE_INFO: &str = "nix-cache-info";
pub const NIX_CACHE_INFO_TEXT: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
pub const NAR_DIR: &str = "nar";
pub const MANIFESTS_DIR: &str = "manifests";
pub const SEALED_DIR: &str = "sealed";
pub const DELTAS_DIR: &str = "deltas";
/// The suffix of a NAR delta's name (`deltas/<filehash>.nar.zst-patch`).
pub const DELTA_EXT: &str = ".nar.zst-patch";
pub const HOSTS_DIR: &str = "hosts";
pub const REPORTS_DIR: &str = "reports";
pub const KEY_LIST: &str = "keys.json";
pub const KEY_LISTS_DIR: &str = "keys";
pub const ENROLL_DIR: &str = "enroll";
pub const ENROLLED_DIR: &str = "enrolled";
pub const AGENTS_DIR: &str = "agents";

/// An object of a cache, by what it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `nix-cache-info`.
    CacheInfo,
    /// `<hash32>.narinfo`: the 32 nixbase32 characters of a store path's hash.
    Narinfo(String),
    /// `nar/<filehash>.nar<ext>`: named by the sha256 of its compressed bytes.
    Nar {
        file_hash: Sha256Hash,
        compression: Compression,
    },
    /// `manifests/<sha256>.json`.
    Manifest(Sha256Hash),
    /// `manifests/<new>.from-<old>.json`.
    ManifestDelta { new: Sha256Hash, old: Sha256Hash },
    /// `sealed/<sha256>`: a sealed NAR, manifest or delta.
    Sealed(Sha256Hash),
    /// `sealed/<new>.from-<old_plain>`.
    SealedDelta {
        new: Sha256Hash,
        old_plain: Sha256Hash,
    },
    /// `manifests/<new>.nars-from-<old>.json`: the signed NAR-delta index
    /// (see `nardelta`) for hosts that hold the manifest `old`.
    NarDeltas { new: Sha256Hash, old: Sha256Hash },
    /// `sealed/<new>.nars-from-<old_plain>`: a sealed host's index, sealed.
    SealedNarDeltas {
        new: Sha256Hash,
        old_plain: Sha256Hash,
    },
    /// `deltas/<filehash>.nar.zst-patch`: a NAR as a zstd patch against
    /// another NAR, named by the sha256 of its bytes.
    NarDelta(Sha256Hash),
    /// `hosts/<host>.json`: the host's pointer, or its tombstone.
    Pointer(String),
    /// `hosts/<host>/<generation>.json`.
    History { host: String, generation: u64 },
    /// `reports/<host>.json`.
    Report(String),
    /// `keys.json`: the current key list.
    KeyList,
    /// `keys/<version>.json`: a key list as it was signed, for hosts that
    /// walk the versions they missed.
    KeyListHistory(u64),
    /// `enroll/<host>.json`: a host's pending enrollment request.
    EnrollRequest(String),
    /// `enrolled/<token id>.json`: the accepted request that used a token,
    /// which no other request may use again.
    EnrollUsed(TokenId),
    /// `agents/<host>.json`: a signed pointer to the agent's closure that
    /// `nixcast invite` published for an invited host (kept by gc).
    Agent(String),
}

/// How long a copy of an object stays right, from what its name promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Named by a hash of its own bytes: a name never gets other bytes.
    Immutable,
    /// Named by a counter that is never reused on purpose (history).
    History,
    /// Named by a store path, rewritable by a later publish (narinfos).
    Narinfo,
    /// Replaced in place (pointers, reports, `nix-cache-info`).
    Mutable,
}

impl Key {
    /// Reads a key back; `None` for anything `Display` would not write.
    pub fn parse(key: &str) -> Option<Key> {
        let segments: Vec<&str> = key.split('/').collect();
        match segments.as_slice() {
            [NIX_CACHE_INFO] => Some(Key::CacheInfo),
            [KEY_LIST] => Some(Key::KeyList),
            [KEY_LISTS_DIR, name] => {
                Some(Key::KeyListHistory(counter(name.strip_suffix(".json")?)?))
            }
            [name] => {
                let hash = name.strip_suffix(".narinfo")?;
                (hash.len() == 32 && hash.bytes().all(nixbase32::is_valid_char))
                    .then(|| Key::Narinfo(hash.to_owned()))
            }
            [NAR_DIR, name] => {
                let (hash, ext) = name.split_once(".nar")?;
                let compression = [Compression::Xz, Compression::Zstd, Compression::None]
                    .into_iter()
                    .find(|c| c.extension() == ext)?;
                let file_hash = Sha256Hash(nixbase32::decode::<32>(hash.as_bytes()).ok()?);
                Some(Key::Nar {
                    file_hash,
                    compression,
                })
            }
            [MANIFESTS_DIR, name] => {
                let name = name.strip_suffix(".json")?;
                if let Some((new, old)) = name.split_once(".nars-from-") {
                    return Some(Key::NarDeltas {
                        new: hex(new)?,
                        old: hex(old)?,
                    });
                }
                match name.split_once(".from-") {
                    None => Some(Key::Manifest(hex(name)?)),
                    Some((new, old)) => Some(Key::ManifestDelta {
                        new: hex(new)?,
                        old: hex(old)?,
                    }),
                }
            }
            [SEALED_DIR, name] => {
                if let Some((new, old)) = name.split_once(".nars-from-") {
                    return Some(Key::SealedNarDeltas {
                        new: hex(new)?,
                        old_plain: hex(old)?,
                    });
                }
                match name.split_once(".from-") {
                    None => Some(Key::Sealed(hex(name)?)),
                    Some((new, old)) => Some(Key::SealedDelta {
                        new: hex(new)?,
                        old_plain: hex(old)?,
                    }),
                }
            }
            [DELTAS_DIR, name] => {
                let hash = name.strip_suffix(DELTA_EXT)?;
                Some(Key::NarDelta(Sha256Hash(
                    nixbase32::decode::<32>(hash.as_bytes()).ok()?,
                )))
            }
            [HOSTS_DIR, name] => Some(Key::Pointer(host_json(name)?)),
            [HOSTS_DIR, host, name] => {
                check_host(host).ok()?;
                Some(Key::History {
                    host: (*host).to_owned(),
                    generation: counter(name.strip_suffix(".json")?)?,
                })
            }
            [REPORTS_DIR, name] => Some(Key::Report(host_json(name)?)),
            [ENROLL_DIR, name] => Some(Key::EnrollRequest(host_json(name)?)),
            [ENROLLED_DIR, name] => Some(Key::EnrollUsed(TokenId::parse(
                name.strip_suffix(".json")?,
            )?)),
            [AGENTS_DIR, name] => Some(Key::Agent(host_json(name)?)),
            _ => None,
        }
    }

    /// The directory a key lives in (`""` for the top level).
    pub fn dir(&self) -> String {
        match self {
            Key::CacheInfo | Key::Narinfo(_) => String::new(),
            Key::Nar { .. } => NAR_DIR.to_owned(),
            Key::Manifest(_) | Key::ManifestDelta { .. } | Key::NarDeltas { .. } => {
                MANIFESTS_DIR.to_owned()
            }
            Key::Sealed(_) | Key::SealedDelta { .. } | Key::SealedNarDeltas { .. } => {
                SEALED_DIR.to_owned()
            }
            Key::NarDelta(_) => DELTAS_DIR.to_owned(),
            Key::Pointer(_) => HOSTS_DIR.to_owned(),
            Key::History { host, .. } => history_dir(host),
            Key::Report(_) => REPORTS_DIR.to_owned(),
            Key::KeyList => String::new(),
            Key::KeyListHistory(_) => KEY_LISTS_DIR.to_owned(),
            Key::EnrollRequest(_) => ENROLL_DIR.to_owned(),
            Key::EnrollUsed(_) => ENROLLED_DIR.to_owned(),
            Key::Agent(_) => AGENTS_DIR.to_owned(),
        }
    }

    pub fn lifetime(&self) -> Lifetime {
        match self {
            Key::Nar { .. }
            | Key::Manifest(_)
            | Key::ManifestDelta { .. }
            | Key::Sealed(_)
            | Key::SealedDelta { .. }
            | Key::NarDeltas { .. }
            | Key::SealedNarDeltas { .. }
            | Key::NarDelta(_) => Lifetime::Immutable,
            Key::History { .. } | Key::KeyListHistory(_) => Lifetime::History,
            Key::Narinfo(_) => Lifetime::Narinfo,
            Key::CacheInfo
            | Key::Pointer(_)
            | Key::Report(_)
            | Key::KeyList
            | Key::EnrollRequest(_)
            | Key::EnrollUsed(_)
            | Key::Agent(_) => Lifetime::Mutable,
        }
    }

    /// What must stay for this object to be of use: a delta, or a NAR-delta
    /// index, lives as long as the manifest it is for.
    pub fn owner(&self) -> Key {
        match self {
            Key::ManifestDelta { new, .. } | Key::NarDeltas { new, .. } => Key::Manifest(*new),
            Key::SealedDelta { new, .. } | Key::SealedNarDeltas { new, .. } => Key::Sealed(*new),
            k => k.clone(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::CacheInfo => f.write_str(NIX_CACHE_INFO),
            Key::Narinfo(hash) => write!(f, "{hash}.narinfo"),
            Key::Nar {
                file_hash,
                compression,
            } => write!(
                f,
                "{NAR_DIR}/{}.nar{}",
                file_hash.to_nixbase32(),
                compression.extension()
            ),
            Key::Manifest(h) => write!(f, "{MANIFESTS_DIR}/{}.json", h.to_hex()),
            Key::ManifestDelta { new, old } => write!(
                f,
                "{MANIFESTS_DIR}/{}.from-{}.json",
                new.to_hex(),
                old.to_hex()
            ),
            Key::Sealed(h) => write!(f, "{SEALED_DIR}/{}", h.to_hex()),
            Key::SealedDelta { new, old_plain } => write!(
                f,
                "{SEALED_DIR}/{}.from-{}",
                new.to_hex(),
                old_plain.to_hex()
            ),
            Key::NarDeltas { new, old } => write!(
                f,
                "{MANIFESTS_DIR}/{}.nars-from-{}.json",
                new.to_hex(),
                old.to_hex()
            ),
            Key::SealedNarDeltas { new, old_plain } => write!(
                f,
                "{SEALED_DIR}/{}.nars-from-{}",
                new.to_hex(),
                old_plain.to_hex()
            ),
            Key::NarDelta(h) => write!(f, "{DELTAS_DIR}/{}{DELTA_EXT}", h.to_nixbase32()),
            Key::Pointer(host) => write!(f, "{HOSTS_DIR}/{host}.json"),
            Key::History { host, generation } => {
                write!(f, "{HOSTS_DIR}/{host}/{generation}.json")
            }
            Key::Report(host) => write!(f, "{REPORTS_DIR}/{host}.json"),
            Key::KeyList => f.write_str(KEY_LIST),
            Key::KeyListHistory(v) => write!(f, "{KEY_LISTS_DIR}/{v}.json"),
            Key::EnrollRequest(host) => write!(f, "{ENROLL_DIR}/{host}.json"),
            Key::EnrollUsed(id) => write!(f, "{ENROLLED_DIR}/{id}.json"),
            Key::Agent(host) => write!(f, "{AGENTS_DIR}/{host}.json"),
        }
    }
}

/// 64 lowercase hex digits, exactly as `Sha256Hash::to_hex` writes them.
fn hex(s: &str) -> Option<Sha256Hash> {
    if s.len() != 64 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).expect("checked hex") as u8;
        out[i] = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Some(Sha256Hash(out))
}

/// A number in the only form we write: no sign, no leading zero.
fn counter(s: &str) -> Option<u64> {
    let canonical = s == "0" || !s.starts_with('0');
    if !canonical || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn host_json(name: &str) -> Option<String> {
    let host = name.strip_suffix(".json")?;
    check_host(host).ok()?;
    Some(host.to_owned())
}

pub fn narinfo(p: &StorePath) -> String {
    Key::Narinfo(p.hash_part().to_owned()).to_string()
}

pub fn pointer(host: &str) -> String {
    Key::Pointer(host.to_owned()).to_string()
}

pub fn report(host: &str) -> String {
    Key::Report(host.to_owned()).to_string()
}

pub fn history_dir(host: &str) -> String {
    format!("{HOSTS_DIR}/{host}")
}

pub fn history(host: &str, generation: u64) -> String {
    Key::History {
        host: host.to_owned(),
        generation,
    }
    .to_string()
}

/// The generation a history key names, if it is one.
pub fn history_generation(key: &str) -> Option<u64> {
    match Key::parse(key)? {
        Key::History { generation, .. } => Some(generation),
        _ => None,
    }
}

pub fn manifest(sha256: &Sha256Hash) -> String {
    Key::Manifest(*sha256).to_string()
}

/// A sealed object, named by the sha256 of its (sealed) bytes.
pub fn sealed(sha256: &Sha256Hash) -> String {
    Key::Sealed(*sha256).to_string()
}

/// Whether `key` is `sealed/<64 lowercase hex>`.
pub fn is_sealed(key: &str) -> bool {
    matches!(Key::parse(key), Some(Key::Sealed(_)))
}

/// The sealed delta that rebuilds the sealed manifest `new` (sha256 of its
/// sealed bytes) from the plain manifest with sha256 `old_plain`, which only
/// a host holding that manifest knows.
pub fn sealed_delta(new: &Sha256Hash, old_plain: &Sha256Hash) -> String {
    Key::SealedDelta {
        new: *new,
        old_plain: *old_plain,
    }
    .to_string()
}
/// Where a NAR-delta index for hosts holding the (plain) manifest `old` is
/// stored: beside the manifest delta, sealed for a sealed manifest `new`.
pub fn nar_deltas(new: &Sha256Hash, old: &Sha256Hash, sealed: bool) -> String {
    let (new, old) = (*new, *old);
    match sealed {
        false => Key::NarDeltas { new, old },
        true => Key::SealedNarDeltas {
            new,
            old_plain: old,
        },
    }
    .to_string()
}

/// A host name becomes part of object keys, so it is held to DNS-like
/// characters and length; `None` says what is wrong.
pub fn check_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host name {:?}: use at most 253 letters, digits, '-', '_' and '.'",
            host.chars().take(64).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let h = Sha256Hash::digest(b"x");
        assert!(is_sealed(&sealed(&h)));
        assert!(!is_sealed(&sealed_delta(&h, &h)));
        assert!(!is_sealed("sealed/../x"));
        assert_eq!(history_generation(&history("a", 17)), Some(17));
        for bad in [
            "hosts/a/017.json",
            "hosts/a/+1.json",
            "hosts/a/x.json",
            "hosts/a.json",
        ] {
            assert_eq!(history_generation(bad), None, "{bad}");
        }
        assert!(check_host("web-1.example").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(254)] {
            assert!(check_host(bad).is_err());
        }
    }

    #[test]
    fn only_the_written_form_is_a_key() {
        let h = Sha256Hash::digest(b"x");
        let nar = format!("nar/{}.nar.xz", h.to_nixbase32());
        assert!(matches!(Key::parse(&nar), Some(Key::Nar { .. })));
        for bad in [
            "sealed/../x".to_owned(),
            format!("sealed/{}", h.to_hex().to_uppercase()),
            format!("sealed/{}x", h.to_hex()),
            format!("manifests/{}", h.to_hex()),
            format!("manifests/{}.json/x", h.to_hex()),
            format!("nar/{}.nar.gz", h.to_nixbase32()),
            format!("nar/{}.nar.xz", &h.to_hex()[..52]),
            // 52 nixbase32 characters carry 260 bits: the top 4 must be zero.
            format!("nar/z{}.nar", &h.to_nixbase32()[1..]),
            "hosts/.x.json".to_owned(),
            "hosts/a/017.json".to_owned(),
            "hosts/a/b/1.json".to_owned(),
            "keys/01.json".to_owned(),
            "keys/x.json".to_owned(),
            "keys.json/1".to_owned(),
            "reports/a".to_owned(),
            "enroll/a".to_owned(),
            "enroll/a/b.json".to_owned(),
            format!("enrolled/{}.json", "A".repeat(32)),
            "enrolled/00.json".to_owned(),
            "agents/.x.json".to_owned(),
            "/nix-cache-info".to_owned(),
            "nix-cache-info/".to_owned(),
            "0123456789abcdfghijklmnpqrsvwxye.narinfo".to_owned(),
            "0123456789abcdfghijklmnpqrsvwxy.narinfo".to_owned(),
            ".tmp-abc".to_owned(),
            "nar/.tmp-abc".to_owned(),
            format!("deltas/{}.nar.zst", h.to_nixbase32()),
            format!("deltas/{}.nar.zst-patch", h.to_hex()),
            format!("manifests/{}.nars-from-{}", h.to_hex(), h.to_hex()),
            format!(
                "manifests/{}.nars-from-{}.nars-from-{}.json",
                h.to_hex(),
                h.to_hex(),
                h.to_hex()
            ),
            format!("sealed/{}.nars-from-{}.json", h.to_hex(), h.to_hex()),
        ] {
            assert_eq!(Key::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn what_a_name_promises() {
        let h = Sha256Hash::digest(b"x");
        let delta = Key::SealedDelta {
            new: h,
            old_plain: Sha256Hash::digest(b"y"),
        };
        assert_eq!(delta.lifetime(), Lifetime::Immutable);
        assert_eq!(delta.owner(), Key::Sealed(h));
        assert_eq!(delta.dir(), SEALED_DIR);
        assert_eq!(Key::Pointer("a".into()).lifetime(), Lifetime::Mutable);
        let history = Key::History {
            host: "a".into(),
            generation: 3,
        };
        assert_eq!(history.dir(), "hosts/a");
        assert_eq!(history.lifetime(), Lifetime::History);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn sha() -> impl Strategy<Value = Sha256Hash> {
            any::<[u8; 32]>().prop_map(Sha256Hash)
        }

        fn host() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,40}"
        }

        fn key() -> impl Strategy<Value = Key> {
            let compression = prop_oneof![
                Just(Compression::Xz),
                Just(Compression::Zstd),
                Just(Compression::None)
            ];
            prop_oneof![
                Just(Key::CacheInfo),
                "[0-9a-df-np-sv-z]{32}".prop_map(Key::Narinfo),
                (sha(), compression).prop_map(|(file_hash, compression)| Key::Nar {
                    file_hash,
                    compression
                }),
                sha().prop_map(Key::Manifest),
                (sha(), sha()).prop_map(|(new, old)| Key::ManifestDelta { new, old }),
                sha().prop_map(Key::Sealed),
                (sha(), sha()).prop_map(|(new, old_plain)| Key::SealedDelta { new, old_plain }),
                (sha(), sha()).prop_map(|(new, old)| Key::NarDeltas { new, old }),
                (sha(), sha()).prop_map(|(new, old_plain)| Key::SealedNarDeltas { new, old_plain }),
                sha().prop_map(Key::NarDelta),
                host().prop_map(Key::Pointer),
                (host(), any::<u64>())
                    .prop_map(|(host, generation)| Key::History { host, generation }),
                host().prop_map(Key::Report),
                Just(Key::KeyList),
                any::<u64>().prop_map(Key::KeyListHistory),
                host().prop_map(Key::EnrollRequest),
                any::<[u8; 16]>().prop_map(|id| Key::EnrollUsed(TokenId(id))),
                host().prop_map(Key::Agent),
            ]
        }

        proptest! {
            #[test]
            fn every_key_round_trips(k in key()) {
                let s = k.to_string();
                prop_assert_eq!(Key::parse(&s), Some(k.clone()));
                prop_assert!(s.starts_with(&k.dir()));
            }

            #[test]
            fn whatever_parses_is_written_back_as_it_was(s in "[a-z0-9./_-]{0,80}") {
                if let Some(k) = Key::parse(&s) {
                    prop_assert_eq!(k.to_string(), s);
                }
            }
        }
    }
}
