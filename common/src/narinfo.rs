//! Narinfo files: what a binary cache says about one store path, served as
//! `<hash part>.narinfo`.
//!
//! ```text
//! StorePath: /nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432
//! URL: nar/1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d.nar.xz
//! Compression: xz
//! FileHash: sha256:1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d
//! FileSize: 114980
//! NarHash: sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6
//! NarSize: 464152
//! References: 7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27
//! Deriver: 10dx1q4ivjb115y3h90mipaaz533nr0d-net-tools-1.60_p20170221182432.drv
//! Sig: cache.nixos.org-1:sn5s/RrqEI+YG6/PjwdbPjcAC7rcta7sJU4mFOawGvJBLsWkyLtBrT2EuFt/LJjWkTZ+ZWOI9NTtjo/woMdvAg==
//! ```
//!
//! Grammar: every line, the last one included, is `Key: value\n`. Keys are
//! case-sensitive. `StorePath` is an absolute store path; `References` is a
//! list of store path *basenames* separated by single spaces (`References: `,
//! with its trailing space, when there are none); `Deriver` is a basename
//! (`unknown-deriver` in old files means none); `NarHash` and `FileHash` are
//! written `sha256:<nixbase32>`; `Sig` may repeat, every other key may not.
//! `StorePath`, `URL`, `NarHash` and a non-zero `NarSize` are required. A
//! missing `Compression` means bzip2.
//!
//! Nix writes the keys in this order: StorePath, URL, Compression, FileHash,
//! FileSize, NarHash, NarSize, References, Deriver, System, Sig…, CA, with
//! the signatures in string order (they are a `std::set` in Nix). Deriver,
//! System and CA only when set; System only in older Nix (current Nix neither
//! writes nor reads it, but old caches carry it).
//!
//! A signature covers only the *fingerprint*
//! `1;<StorePath>;<NarHash as sha256:nixbase32>;<NarSize>;<full reference paths, sorted, comma-separated>`,
//! so URL, Compression, FileHash, FileSize, Deriver, System and CA are
//! unsigned: whoever reads them must treat them as attacker-controlled.
//!
//! Source of truth: Nix's `src/libstore/nar-info.cc` (`NarInfo::NarInfo`,
//! `NarInfo::to_string`) and `src/libstore/path-info.cc`
//! (`ValidPathInfo::fingerprint`, `checkSignatures`).
//!
//! Where we differ from Nix, we are stricter, on purpose (two readers that
//! disagree about one file are a way to show each a different one):
//! - A repeated singleton field is an error. Nix keeps the last value, so a
//!   reader keeping the first would see another file than Nix does.
//! - A line must be `Key: value` exactly. Nix splits at the first `:`, skips
//!   two bytes and reads to the *next* newline, so `References:\n` or an empty
//!   line would make it swallow the following line; we refuse such files.
//! - Numbers must be canonical decimals, values may not hold control
//!   characters, a reference may not repeat, and a malformed `Sig` is an error.
//! - A `CA` field is never a reason to skip signatures (Nix's
//!   `checkSignatures` accepts any content-addressed path unsigned).
//!
//! Tolerated deviations from what current Nix writes are kept in
//! [`NarInfo::quirks`], so callers can see them instead of having them hidden.

use std::fmt;

use thiserror::Error;

use crate::hash::{HashEncoding, HashError, Sha256Hash};
use crate::keys::{KeyError, PublicKey, SecretKey, Signature};
use crate::store_path::{StorePath, StorePathError};

/// The compression Nix assumes when a narinfo has no `Compression` line.
pub const DEFAULT_COMPRESSION: &str = "bzip2";

/// Error messages quote at most this many characters of untrusted input.
const EXCERPT_CHARS: usize = 80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache. Unsigned.
    pub url: String,
    /// `None` when the line is absent; see [`NarInfo::compression_or_default`].
    pub compression: Option<String>,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    /// Never 0 in a parsed narinfo: Nix cannot fingerprint such a path.
    pub nar_size: u64,
    /// In file order; the fingerprint sorts them.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub sigs: Vec<Signature>,
    pub ca: Option<String>,
    pub system: Option<String>,
    /// What the parser tolerated; empty for a narinfo built in memory.
    pub quirks: Vec<Quirk>,
}

/// A deviation from what Nix writes today that the parser accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quirk {
    /// A hash not written as `sha256:<nixbase32>`; old caches wrote base16
    /// (vector 05). The fingerprint uses nixbase32 whatever the file says.
    HashEncoding {
        field: &'static str,
        encoding: HashEncoding,
    },
    /// References not in ascending order. Nix signs the sorted set, so a
    /// signature made over the file's order does not verify (vector 03).
    ReferencesNotSorted,
    /// `Deriver: unknown-deriver`, which old Nix wrote and Nix reads as none.
    UnknownDeriver,
    /// A key this parser does not know (newer Nix writes `Provenance`, for
    /// one). Nix ignores unknown keys as well; its value is dropped.
    UnknownField { line: usize, key: String },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("narinfo line {line} does not end with a newline")]
    Unterminated { line: usize },
    #[error("narinfo line {line} contains a control character: {text:?}")]
    ControlCharacter { line: usize, text: String },
    #[error("narinfo line {line} is not `Key: value`: {text:?}")]
    MalformedLine { line: usize, text: String },
    #[error("narinfo line {line}: {field} appears a second time")]
    Duplicate { field: &'static str, line: usize },
    #[error("narinfo line {line}: {field} is empty")]
    Empty { field: &'static str, line: usize },
    #[error("narinfo line {line}: invalid {field}")]
    StorePath {
        field: &'static str,
        line: usize,
        #[source]
        source: StorePathError,
    },
    #[error("narinfo line {line}: invalid {field}")]
    Hash {
        field: &'static str,
        line: usize,
        #[source]
        source: HashError,
    },
    #[error("narinfo line {line}: {field} {value:?} is not a canonical decimal number")]
    Number {
        field: &'static str,
        line: usize,
        value: String,
    },
    #[error("narinfo line {line}: NarSize is 0")]
    ZeroNarSize { line: usize },
    #[error(
        "narinfo line {line}: References must be basenames separated by single spaces: {value:?}"
    )]
    ReferencesSpacing { line: usize, value: String },
    #[error("narinfo line {line}: reference {reference:?} is listed twice")]
    DuplicateReference { line: usize, reference: String },
    #[error("narinfo line {line}: invalid Sig")]
    Signature {
        line: usize,
        #[source]
        source: KeyError,
    },
    #[error("narinfo has no {0} field")]
    Missing(&'static str),
}

/// The start of `s`, for error messages about untrusted input.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Fails if a singleton field was already seen.
fn first<T>(slot: &Option<T>, field: &'static str, line: usize) -> Result<(), NarInfoError> {
    match slot {
        Some(_) => Err(NarInfoError::Duplicate { field, line }),
        None => Ok(()),
    }
}

/// Digits only, no sign, no leading zero: the only form Nix writes, so the
/// value renders back to the same bytes.
fn parse_u64(field: &'static str, line: usize, value: &str) -> Result<u64, NarInfoError> {
    let canonical = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    canonical
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| NarInfoError::Number {
            field,
            line,
            value: excerpt(value),
        })
}

fn parse_hash(
    field: &'static str,
    line: usize,
    value: &str,
    quirks: &mut Vec<Quirk>,
) -> Result<Sha256Hash, NarInfoError> {
    let (hash, encoding) =
        Sha256Hash::parse_with_encoding(value).map_err(|source| NarInfoError::Hash {
            field,
            line,
            source,
        })?;
    if encoding != HashEncoding::NixBase32 {
        quirks.push(Quirk::HashEncoding { field, encoding });
    }
    Ok(hash)
}

fn parse_basename(
    field: &'static str,
    line: usize,
    value: &str,
) -> Result<StorePath, NarInfoError> {
    StorePath::from_basename(value).map_err(|source| NarInfoError::StorePath {
        field,
        line,
        source,
    })
}

fn parse_references(
    line: usize,
    value: &str,
    quirks: &mut Vec<Quirk>,
) -> Result<Vec<StorePath>, NarInfoError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let tokens: Vec<&str> = value.split(' ').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(NarInfoError::ReferencesSpacing {
            line,
            value: excerpt(value),
        });
    }
    // Basenames share no prefix, so their string order is the order of the
    // full paths, which is the order Nix's fingerprint uses.
    if tokens.windows(2).any(|w| w[0] > w[1]) {
        quirks.push(Quirk::ReferencesNotSorted);
    }
    let mut seen = std::collections::BTreeSet::new();
    tokens
        .into_iter()
        .map(|t| {
            if !seen.insert(t) {
                return Err(NarInfoError::DuplicateReference {
                    line,
                    reference: excerpt(t),
                });
            }
            parse_basename("References", line, t)
        })
        .collect()
}

impl NarInfo {
    /// Parses a narinfo; see the module documentation for what is refused.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        // `Some(None)` records an `unknown-deriver` line, so it still counts
        // as the one Deriver line.
        let mut deriver: Option<Option<StorePath>> = None;
        let mut sigs = Vec::new();
        let mut ca = None;
        let mut system = None;
        let mut quirks = Vec::new();

        for (i, raw) in text.split_inclusive('\n').enumerate() {
            let line = i + 1;
            let content = raw
                .strip_suffix('\n')
                .ok_or(NarInfoError::Unterminated { line })?;
            if content.chars().any(char::is_control) {
                return Err(NarInfoError::ControlCharacter {
                    line,
                    text: excerpt(content),
                });
            }
            let malformed = || NarInfoError::MalformedLine {
                line,
                text: excerpt(content),
            };
            // Split where Nix does, at the first ':', and insist on the space
            // Nix skips without looking: `URL:x: y` is `URL` to Nix.
            let (key, value) = content.split_once(':').ok_or_else(malformed)?;
            let value = value.strip_prefix(' ').ok_or_else(malformed)?;
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !key_ok {
                return Err(malformed());
            }
            // Only References may be empty: Nix writes `References: ` for none.
            if value.is_empty() && key != "References" {
                if let Some(field) = known_field(key) {
                    return Err(NarInfoError::Empty { field, line });
                }
            }

            match key {
                "StorePath" => {
                    first(&store_path, "StorePath", line)?;
                    store_path = Some(StorePath::from_absolute(value).map_err(|source| {
                        NarInfoError::StorePath {
                            field: "StorePath",
                            line,
                            source,
                        }
                    })?);
                }
                "URL" => {
                    first(&url, "URL", line)?;
                    url = Some(value.to_owned());
                }
                "Compression" => {
                    first(&compression, "Compression", line)?;
                    compression = Some(value.to_owned());
                }
                "FileHash" => {
                    first(&file_hash, "FileHash", line)?;
                    file_hash = Some(parse_hash("FileHash", line, value, &mut quirks)?);
                }
                "FileSize" => {
                    first(&file_size, "FileSize", line)?;
                    file_size = Some(parse_u64("FileSize", line, value)?);
                }
                "NarHash" => {
                    first(&nar_hash, "NarHash", line)?;
                    nar_hash = Some(parse_hash("NarHash", line, value, &mut quirks)?);
                }
                "NarSize" => {
                    first(&nar_size, "NarSize", line)?;
                    let n = parse_u64("NarSize", line, value)?;
                    if n == 0 {
                        return Err(NarInfoError::ZeroNarSize { line });
                    }
                    nar_size = Some(n);
                }
                "References" => {
                    first(&references, "References", line)?;
                    references = Some(parse_references(line, value, &mut quirks)?);
                }
                "Deriver" => {
                    first(&deriver, "Deriver", line)?;
                    deriver = Some(if value == "unknown-deriver" {
                        quirks.push(Quirk::UnknownDeriver);
                        None
                    } else {
                        Some(parse_basename("Deriver", line, value)?)
                    });
                }
                "Sig" => sigs.push(
                    Signature::parse(value)
                        .map_err(|source| NarInfoError::Signature { line, source })?,
                ),
                "CA" => {
                    first(&ca, "CA", line)?;
                    ca = Some(value.to_owned());
                }
                "System" => {
                    first(&system, "System", line)?;
                    system = Some(value.to_owned());
                }
                other => quirks.push(Quirk::UnknownField {
                    line,
                    key: excerpt(other),
                }),
            }
        }

        Ok(Self {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression,
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            // Nix reads a narinfo without References as having none.
            references: references.unwrap_or_default(),
            deriver: deriver.flatten(),
            sigs,
            ca,
            system,
            quirks,
        })
    }

    /// The compression to decompress `url` with: Nix assumes bzip2 when the
    /// line is absent. The value is unsigned; callers choose what they allow.
    pub fn compression_or_default(&self) -> &str {
        self.compression.as_deref().unwrap_or(DEFAULT_COMPRESSION)
    }

    /// The text, laid out as Nix's `NarInfo::to_string` writes it. Optional
    /// fields are written only when present, and the rest in memory order,
    /// so a file Nix wrote renders back to the same bytes.
    pub fn render(&self) -> String {
        self.to_string()
    }

    /// The string the signatures are over; see [`fingerprint`].
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Signs the fingerprint with `key`. A signature by a key of the same
    /// name is replaced, since it is either stale or identical, and the new
    /// one goes where Nix's sorted set would put it, so that `render` stays
    /// what Nix would write.
    ///
    /// # Panics
    /// If `nar_size` is 0: Nix refuses to fingerprint such a path, so no Nix
    /// would accept the signature, and no NAR is empty.
    pub fn sign(&mut self, key: &SecretKey) {
        assert!(
            self.nar_size != 0,
            "cannot sign {}: its NarSize is 0",
            self.store_path
        );
        let sig = key.sign(self.fingerprint().as_bytes());
        self.sigs.retain(|s| s.key_name() != key.name());
        let text = sig.to_string();
        let at = self
            .sigs
            .iter()
            .position(|s| s.to_string() > text)
            .unwrap_or(self.sigs.len());
        self.sigs.insert(at, sig);
    }

    /// The trusted keys with a valid signature on this narinfo, in `keys`
    /// order. A signature whose key name matches no trusted key is ignored.
    /// A `CA` field changes nothing here, unlike in Nix.
    pub fn verified_by<'k>(&self, keys: &'k [PublicKey]) -> Vec<&'k PublicKey> {
        // Nix throws rather than fingerprint a zero-size path; nothing verifies.
        if self.nar_size == 0 {
            return Vec::new();
        }
        let fp = self.fingerprint();
        keys.iter()
            .filter(|k| self.sigs.iter().any(|s| k.verifies(fp.as_bytes(), s)))
            .collect()
    }

    /// True when at least one trusted key signed this narinfo.
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        !self.verified_by(keys).is_empty()
    }
}

/// The fields this parser knows.
const FIELDS: [&str; 12] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
];

/// The field name as a `'static` string, for the fields this parser knows.
fn known_field(key: &str) -> Option<&'static str> {
    FIELDS.into_iter().find(|&k| k == key)
}

/// Writes the narinfo text; [`NarInfo::render`] returns it as a `String`.
impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        if let Some(c) = &self.compression {
            writeln!(f, "Compression: {c}")?;
        }
        if let Some(h) = &self.file_hash {
            writeln!(f, "FileHash: {h}")?;
        }
        if let Some(n) = self.file_size {
            writeln!(f, "FileSize: {n}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        // Always written, with its trailing space when empty, as Nix does.
        f.write_str("References: ")?;
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(&r.basename())?;
        }
        f.write_str("\n")?;
        if let Some(d) = &self.deriver {
            writeln!(f, "Deriver: {}", d.basename())?;
        }
        if let Some(s) = &self.system {
            writeln!(f, "System: {s}")?;
        }
        for sig in &self.sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for NarInfo {
    type Err = NarInfoError;
    fn from_str(s: &str) -> Result<Self, NarInfoError> {
        Self::parse(s)
    }
}

/// `1;<store path>;<sha256:nixbase32 NarHash>;<NarSize>;<references>`, the
/// references as full paths, sorted and comma-separated.
///
/// Nix keeps references in a `std::set<StorePath>`, ordered by basename, so
/// its fingerprint lists them sorted and once each whatever order a file
/// gives; a signature over any other order does not verify in Nix, and must
/// not here. `StorePath`'s `Ord` (hash part, then name) is that same order,
/// since the hash part has a fixed length.
pub fn fingerprint<'a>(
    store_path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    let refs: std::collections::BTreeSet<&StorePath> = references.into_iter().collect();
    let mut out = format!("1;{store_path};{nar_hash};{nar_size};");
    for (i, r) in refs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&r.to_string());
    }
    out
}

#[cfg(test)]
mod tests;
