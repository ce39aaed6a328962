//! Narinfo files: what a binary cache says about one store path.
//!
//! ```text
//! StorePath: /nix/store/si52d1150q5y2r6361zybm110k6plxjf-dep
//! URL: nar/0w25jdlc0qnv8mizc64h30pzk9x3qyan3ahjgqq5yp0p1804mw26.nar.xz
//! Compression: xz
//! FileHash: sha256:0w25jdlc0qnv8mizc64h30pzk9x3qyan3ahjgqq5yp0p1804mw26
//! FileSize: 168
//! NarHash: sha256:1jpg5v8rcf4d08rlpq51vnd1w800l64h34r0bw4vkb6z3qlk089k
//! NarSize: 288
//! References:
//! Deriver: 6x22g11pyfqb3ylschdlkqmcj3cxigy5-dep.drv
//! Sig: impkey-1:qqA+/7z6opxEicjglAoFfpOyWdX0xZaXn/XgXrz6m1OgIOsjUf/ku+3XO8dssexe+pwNrAV2tFqNJv2+j+Y6Cw==
//! ```
//!
//! One `Key: value` per line; References and Deriver are basenames. A
//! signature covers only the fingerprint
//! `1;<StorePath>;<NarHash as sha256:nixbase32>;<NarSize>;<sorted full reference paths, comma-separated>`.
//! Source of truth: Nix's `src/libstore/nar-info.cc` and `path-info.cc`.
//! Stricter than Nix on purpose: a repeated singleton field is an error (Nix
//! keeps the last), so that we never read a file differently from Nix.

use std::fmt::Write as _;

use thiserror::Error;

use crate::hash::{HashEncoding, Sha256Hash};
use crate::keys::{PublicKey, SecretKey, Signature};
use crate::store_path::StorePath;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quirks {
    /// NarHash was written in base16, as some old narinfos are.
    pub nar_hash_base16: bool,
    /// References were not sorted in the file (the fingerprint sorts them).
    pub references_unsorted: bool,
    /// Fields this parser does not know, ignored.
    pub unknown_fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    pub url: String,
    pub compression: Option<String>,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub sigs: Vec<Signature>,
    pub ca: Option<String>,
    pub system: Option<String>,
    pub quirks: Quirks,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("narinfo line {line}: expected \"Key: value\"")]
    Line { line: usize },
    #[error("narinfo line {line}: field {field} appears twice")]
    Duplicate { line: usize, field: &'static str },
    #[error("narinfo line {line}: bad {field} {value:?}: {why}")]
    Value {
        line: usize,
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("narinfo has no {0} field")]
    Missing(&'static str),
    #[error("narinfo NarSize is 0")]
    EmptyNar,
}

fn set<T>(
    slot: &mut Option<T>,
    v: T,
    line: usize,
    field: &'static str,
) -> Result<(), NarInfoError> {
    if slot.is_some() {
        return Err(NarInfoError::Duplicate { line, field });
    }
    *slot = Some(v);
    Ok(())
}

impl NarInfo {
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let (mut store_path, mut url, mut compression, mut file_hash, mut file_size) =
            (None, None, None, None, None);
        let (mut nar_hash, mut nar_size, mut references, mut deriver) = (None, None, None, None);
        let (mut ca, mut system) = (None, None);
        let mut sigs = Vec::new();
        let mut quirks = Quirks::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.is_empty() {
                continue;
            }
            let (key, value) = raw
                .split_once(": ")
                .or_else(|| raw.strip_suffix(':').map(|k| (k, "")))
                .ok_or(NarInfoError::Line { line })?;
            let bad = |field: &'static str, why: String| NarInfoError::Value {
                line,
                field,
                value: value.to_owned(),
                why,
            };
            match key {
                "StorePath" => set(
                    &mut store_path,
                    StorePath::from_absolute(value).map_err(|e| bad("StorePath", e.to_string()))?,
                    line,
                    "StorePath",
                )?,
                "URL" => set(&mut url, value.to_owned(), line, "URL")?,
                "Compression" => set(&mut compression, value.to_owned(), line, "Compression")?,
                "FileHash" => set(
                    &mut file_hash,
                    Sha256Hash::parse(value).map_err(|e| bad("FileHash", e.to_string()))?,
                    line,
                    "FileHash",
                )?,
                "FileSize" => set(
                    &mut file_size,
                    value
                        .parse::<u64>()
                        .map_err(|e| bad("FileSize", e.to_string()))?,
                    line,
                    "FileSize",
                )?,
                "NarHash" => {
                    let (h, enc) = Sha256Hash::parse_with_encoding(value)
                        .map_err(|e| bad("NarHash", e.to_string()))?;
                    quirks.nar_hash_base16 = enc == HashEncoding::Base16;
                    set(&mut nar_hash, h, line, "NarHash")?
                }
                "NarSize" => set(
                    &mut nar_size,
                    value
                        .parse::<u64>()
                        .map_err(|e| bad("NarSize", e.to_string()))?,
                    line,
                    "NarSize",
                )?,
                "References" => {
                    let refs = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(StorePath::from_basename)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad("References", e.to_string()))?;
                    quirks.references_unsorted = refs.windows(2).any(|w| w[0] > w[1]);
                    set(&mut references, refs, line, "References")?
                }
                "Deriver" => {
                    let d = match value {
                        "" | "unknown-deriver" => None,
                        v => Some(
                            StorePath::from_basename(v)
                                .map_err(|e| bad("Deriver", e.to_string()))?,
                        ),
                    };
                    set(&mut deriver, d, line, "Deriver")?
                }
                "Sig" => sigs.push(Signature::parse(value).map_err(|e| bad("Sig", e.to_string()))?),
                "CA" => set(&mut ca, value.to_owned(), line, "CA")?,
                "System" => set(&mut system, value.to_owned(), line, "System")?,
                other => quirks.unknown_fields.push(other.to_owned()),
            }
        }
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::EmptyNar);
        }
        Ok(Self {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression,
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references: references.unwrap_or_default(),
            deriver: deriver.flatten(),
            sigs,
            ca,
            system,
            quirks,
        })
    }

    /// Nix's default when a narinfo has no Compression line.
    pub fn compression_or_default(&self) -> &str {
        self.compression.as_deref().unwrap_or("bzip2")
    }

    /// The text, in the field order Nix writes.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "StorePath: {}", self.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        if let Some(c) = &self.compression {
            let _ = writeln!(s, "Compression: {c}");
        }
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash);
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<String> = self.references.iter().map(StorePath::basename).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.basename());
        }
        if let Some(sys) = &self.system {
            let _ = writeln!(s, "System: {sys}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(self.fingerprint().as_bytes());
        self.sigs.retain(|s| s.key_name() != key.name());
        self.sigs.push(sig);
    }

    /// True when a signature verifies with one of `keys`. Unlike Nix, a CA
    /// field is no reason to skip the check.
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        let fp = self.fingerprint();
        self.sigs
            .iter()
            .any(|s| keys.iter().any(|k| k.verifies(fp.as_bytes(), s)))
    }
}

/// `1;<path>;<sha256:nixbase32>;<size>;<sorted full reference paths, comma-separated>`.
pub fn fingerprint(
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<String> = references.iter().map(|r| r.to_string()).collect();
    refs.sort();
    format!("1;{path};{nar_hash};{nar_size};{}", refs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CACHE_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    const VECTORS: [(&str, &str); 6] = [
        (
            "01",
            include_str!("../testdata/vectors/01-curl-7.82.0-bin.narinfo"),
        ),
        (
            "02",
            include_str!("../testdata/vectors/02-net-tools.narinfo"),
        ),
        (
            "03",
            include_str!("../testdata/vectors/03-gcc-3.4.6-refs-out-of-order.narinfo"),
        ),
        (
            "04",
            include_str!("../testdata/vectors/04-texlive-hyphenex-ca-sha1.narinfo"),
        ),
        (
            "05",
            include_str!("../testdata/vectors/05-perl-HTTP-Cookies-narhash-hex.narinfo"),
        ),
        (
            "06",
            include_str!("../testdata/vectors/06-digikam-system-field-no-compression.narinfo"),
        ),
    ];

    fn cache_key() -> PublicKey {
        PublicKey::parse(CACHE_KEY).unwrap()
    }

    #[test]
    fn vectors_parse_and_verify_as_nix_does() {
        for (id, text) in VECTORS {
            let ni = NarInfo::parse(text).unwrap_or_else(|e| panic!("{id}: {e}"));
            // 03's signature was made over the file's reference order; Nix sorts, and rejects it.
            assert_eq!(ni.verify(&[cache_key()]), id != "03", "{id}");
        }
    }

    #[test]
    fn fingerprint_matches_the_vector() {
        let ni = NarInfo::parse(VECTORS[0].1).unwrap();
        let expected = include_str!("../testdata/vectors/01-curl-7.82.0-bin.fingerprint");
        assert_eq!(ni.fingerprint(), expected.trim_end());
    }

    #[test]
    fn quirks_are_recorded() {
        let hex = NarInfo::parse(VECTORS[4].1).unwrap();
        assert!(hex.quirks.nar_hash_base16);
        assert!(hex.fingerprint().contains(";sha256:"));
        assert!(
            !hex.fingerprint().contains("60adfd29"),
            "the fingerprint uses nixbase32"
        );
        assert!(
            NarInfo::parse(VECTORS[2].1)
                .unwrap()
                .quirks
                .references_unsorted
        );
        let sys = NarInfo::parse(VECTORS[5].1).unwrap();
        assert_eq!(sys.system.as_deref(), Some("i686-linux"));
        assert_eq!(sys.compression, None);
        assert_eq!(sys.compression_or_default(), "bzip2");
        let ca = NarInfo::parse(VECTORS[3].1).unwrap();
        assert_eq!(
            ca.ca.as_deref(),
            Some("fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw")
        );
        assert!(ca.references.is_empty());
        let unknown = NarInfo::parse(&format!("{}Future: 1\n", VECTORS[0].1)).unwrap();
        assert_eq!(unknown.quirks.unknown_fields, ["Future"]);
    }

    #[test]
    fn any_change_to_a_signed_field_breaks_the_signature() {
        let other = "/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0";
        for (id, text) in VECTORS.iter().filter(|(id, _)| *id != "03") {
            let ni = NarInfo::parse(text).unwrap();
            let mut a = ni.clone();
            a.store_path = other.parse().unwrap();
            let mut b = ni.clone();
            b.nar_hash = Sha256Hash::digest(b"other");
            let mut c = ni.clone();
            c.nar_size += 1;
            let mut d = ni.clone();
            d.references.push(other.parse().unwrap());
            for (what, changed) in [
                ("StorePath", a),
                ("NarHash", b),
                ("NarSize", c),
                ("References", d),
            ] {
                assert!(!changed.verify(&[cache_key()]), "{id}: {what}");
            }
            // Unsigned fields do not matter to the signature.
            let mut e = ni.clone();
            e.url = "nar/x.nar".into();
            e.file_size = Some(1);
            assert!(e.verify(&[cache_key()]), "{id}");
        }
    }

    #[test]
    fn a_narinfo_written_by_nix_round_trips_and_verifies() {
        let text = include_str!("../testdata/nix-written/toplevel.narinfo");
        let key = PublicKey::parse(include_str!("../testdata/nix-written/key.pub")).unwrap();
        let ni = NarInfo::parse(text).unwrap();
        assert!(ni.verify(&[key]));
        assert!(!ni.verify(&[cache_key()]));
        assert_eq!(ni.render(), text);
        for (_, v) in VECTORS.iter().filter(|(id, _)| *id != "05") {
            assert_eq!(NarInfo::parse(v).unwrap().render(), *v);
        }
    }

    #[test]
    fn sign_render_parse_verify() {
        let key = SecretKey::generate("fleet-1").unwrap();
        let mut ni = NarInfo::parse(VECTORS[0].1).unwrap();
        ni.sigs.clear();
        assert!(!ni.verify(&[key.public()]));
        ni.sign(&key);
        ni.sign(&key);
        assert_eq!(
            ni.sigs.len(),
            1,
            "signing twice keeps one signature per key"
        );
        let back = NarInfo::parse(&ni.render()).unwrap();
        assert!(back.verify(&[key.public()]));
    }

    #[test]
    fn strict_parsing() {
        let base = VECTORS[1].1;
        for field in [
            "StorePath",
            "NarHash",
            "URL",
            "References",
            "NarSize",
            "Compression",
        ] {
            let line = base
                .lines()
                .find(|l| l.starts_with(&format!("{field}:")))
                .unwrap();
            let doubled = format!("{base}{line}\n");
            assert!(
                matches!(
                    NarInfo::parse(&doubled),
                    Err(NarInfoError::Duplicate { .. })
                ),
                "{field}"
            );
        }
        for field in ["StorePath", "URL", "NarHash", "NarSize"] {
            let without: String = base
                .lines()
                .filter(|l| !l.starts_with(&format!("{field}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(NarInfo::parse(&without), Err(NarInfoError::Missing(field)));
        }
        let size_line = base.lines().find(|l| l.starts_with("NarSize:")).unwrap();
        let zero = base.replace(size_line, "NarSize: 0");
        assert_eq!(NarInfo::parse(&zero), Err(NarInfoError::EmptyNar));
        assert!(matches!(
            NarInfo::parse("no colon here\n"),
            Err(NarInfoError::Line { line: 1 })
        ));
        let bad_path = base.replace("/nix/store/", "/nix/store/e");
        assert!(matches!(
            NarInfo::parse(&bad_path),
            Err(NarInfoError::Value {
                field: "StorePath",
                ..
            })
        ));
        for junk in ["", "\n\n", ":", "StorePath:", "NarSize: -1", "\u{0}"] {
            assert!(NarInfo::parse(junk).is_err(), "{junk:?}");
        }
    }
}
