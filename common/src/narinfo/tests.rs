use proptest::prelude::*;

use super::*;

const CACHE_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

const V01: &str = include_str!("../../testdata/vectors/01-curl-7.82.0-bin.narinfo");
const V02: &str = include_str!("../../testdata/vectors/02-net-tools.narinfo");
const V03: &str = include_str!("../../testdata/vectors/03-gcc-3.4.6-refs-out-of-order.narinfo");
const V04: &str = include_str!("../../testdata/vectors/04-texlive-hyphenex-ca-sha1.narinfo");
const V05: &str = include_str!("../../testdata/vectors/05-perl-HTTP-Cookies-narhash-hex.narinfo");
const V06: &str =
    include_str!("../../testdata/vectors/06-digikam-system-field-no-compression.narinfo");
const V01_FINGERPRINT: &str = include_str!("../../testdata/vectors/01-curl-7.82.0-bin.fingerprint");

const VECTORS: [(&str, &str); 6] = [
    ("01", V01),
    ("02", V02),
    ("03", V03),
    ("04", V04),
    ("05", V05),
    ("06", V06),
];

/// Every vector whose cache.nixos.org signature Nix accepts: all but 03.
fn verifying() -> impl Iterator<Item = (&'static str, &'static str)> {
    VECTORS.into_iter().filter(|(id, _)| *id != "03")
}

// Written by Nix 2.8.0's `nix copy --to file://…?secret-key=…` and
// `nix store sign`; see testdata/nix-written/narinfo-test.README.md.
const NIX_TOP2: &str = include_str!("../../testdata/nix-written/narinfo-test-top2.narinfo");
const NIX_LEAF: &str = include_str!("../../testdata/nix-written/narinfo-test-leaf.narinfo");
const NIX_KEY_1: &str = include_str!("../../testdata/nix-written/narinfo-test-1.pub");
const NIX_KEY_2: &str = include_str!("../../testdata/nix-written/another-key-1.pub");

fn cache_key() -> PublicKey {
    PublicKey::parse(CACHE_KEY).unwrap()
}

fn parse(text: &str) -> NarInfo {
    NarInfo::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `text` with the value of its (single) `key` line replaced.
fn with_value(text: &str, key: &str, value: &str) -> String {
    let mut hit = false;
    let out = text
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((k, _)) if k == key => {
                hit = true;
                format!("{key}: {value}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(hit, "no {key} line");
    out
}

fn value_of<'t>(text: &'t str, key: &str) -> &'t str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} line"))
}

#[test]
fn every_vector_parses() {
    for (id, text) in VECTORS {
        let ni = NarInfo::parse(text).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            ni.store_path.to_string(),
            value_of(text, "StorePath"),
            "{id}"
        );
        assert!(
            ni.sigs.iter().any(|s| s.key_name() == "cache.nixos.org-1"),
            "{id}"
        );
    }
}

#[test]
fn cache_key_verifies_every_vector_but_03() {
    let keys = [cache_key()];
    for (id, text) in VECTORS {
        // 03's signature was made over the file's reference order; Nix
        // fingerprints the sorted set and rejects it, and so do we.
        assert_eq!(parse(text).verify(&keys), id != "03", "{id}");
    }
}

#[test]
fn fingerprint_of_01_is_the_expected_string() {
    let expected = V01_FINGERPRINT
        .strip_suffix('\n')
        .unwrap_or(V01_FINGERPRINT);
    let ni = parse(V01);
    assert_eq!(ni.fingerprint(), expected);
    assert_eq!(
        fingerprint(&ni.store_path, &ni.nar_hash, ni.nar_size, &ni.references),
        expected
    );
    // Reference order in memory does not matter: the fingerprint sorts.
    let reversed: Vec<StorePath> = ni.references.iter().rev().cloned().collect();
    assert_eq!(
        fingerprint(&ni.store_path, &ni.nar_hash, ni.nar_size, &reversed),
        expected
    );
}

#[test]
fn vector_03_records_unsorted_references_and_still_renders_its_bytes() {
    let ni = parse(V03);
    assert_eq!(ni.quirks, [Quirk::ReferencesNotSorted]);
    assert_eq!(ni.references[0].name(), "glibc-2.7", "file order is kept");
    assert_eq!(ni.render(), V03);
}

#[test]
fn vector_05_hex_nar_hash_is_a_quirk_and_fingerprints_as_nixbase32() {
    let ni = parse(V05);
    assert_eq!(
        ni.quirks,
        [Quirk::HashEncoding {
            field: "NarHash",
            encoding: HashEncoding::Base16
        }]
    );
    let hex = "60adfd293a4d81ad7cd7e47263cbb3fc846309ef91b154a08ba672b558f94ff3";
    assert_eq!(ni.nar_hash.to_hex(), hex);
    let fp = ni.fingerprint();
    assert!(!fp.contains(hex), "{fp}");
    assert!(
        fp.contains(&format!(";sha256:{};45840;", ni.nar_hash.to_nixbase32())),
        "{fp}"
    );
    // Rendering normalises to what Nix writes today.
    assert_eq!(
        value_of(&ni.render(), "NarHash"),
        ni.nar_hash.to_string().as_str()
    );
    assert!(parse(&ni.render()).quirks.is_empty());
}

#[test]
fn vector_06_has_system_and_defaults_to_bzip2() {
    let ni = parse(V06);
    assert_eq!(ni.system.as_deref(), Some("i686-linux"));
    assert_eq!(ni.compression, None);
    assert_eq!(ni.compression_or_default(), "bzip2");
    assert_eq!(ni.references.len(), 38);
    assert!(ni.quirks.is_empty());
    assert_eq!(ni.render(), V06);
}

#[test]
fn vector_04_ca_and_empty_references() {
    let ni = parse(V04);
    assert_eq!(
        ni.ca.as_deref(),
        Some("fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw")
    );
    assert!(ni.references.is_empty());
    assert_eq!(ni.deriver, None);
    assert!(ni.fingerprint().ends_with(";22552;"));
    assert_eq!(ni.render(), V04);
}

#[test]
fn vectors_render_back_to_their_bytes() {
    for (id, text) in VECTORS.into_iter().filter(|(id, _)| *id != "05") {
        assert_eq!(parse(text).render(), text, "{id}");
    }
}

// Each signed field, changed in the text, breaks the signature.

#[test]
fn changed_store_path_is_rejected() {
    for (id, text) in verifying() {
        let old = value_of(text, "StorePath");
        let renamed = format!("{old}x");
        // Same name, another hash part (first character swapped).
        let (dir, base) = old.rsplit_once('/').unwrap();
        let swapped = if base.starts_with('0') { '1' } else { '0' };
        let rehashed = format!("{dir}/{swapped}{}", &base[1..]);
        for new in [renamed, rehashed] {
            let ni = parse(&with_value(text, "StorePath", &new));
            assert!(!ni.verify(&[cache_key()]), "{id}: {new}");
        }
    }
}

#[test]
fn changed_nar_hash_is_rejected() {
    for (id, text) in verifying() {
        let mut h = parse(text).nar_hash;
        h.0[0] ^= 1;
        let ni = parse(&with_value(text, "NarHash", &h.to_string()));
        assert!(!ni.verify(&[cache_key()]), "{id}");
    }
}

#[test]
fn changed_nar_size_is_rejected() {
    for (id, text) in verifying() {
        let n = parse(text).nar_size;
        for new in [n + 1, n - 1] {
            let ni = parse(&with_value(text, "NarSize", &new.to_string()));
            assert!(!ni.verify(&[cache_key()]), "{id}: {new}");
        }
    }
}

#[test]
fn changed_references_are_rejected() {
    let extra = "0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0";
    for (id, text) in verifying() {
        let refs: Vec<&str> = value_of(text, "References")
            .split(' ')
            .filter(|r| !r.is_empty())
            .collect();
        let mut variants = Vec::new();
        if !refs.is_empty() {
            variants.push(refs[1..].join(" "));
        }
        if !refs.contains(&extra) {
            let mut more = refs.clone();
            more.push(extra);
            more.sort();
            variants.push(more.join(" "));
        }
        for new in variants {
            let ni = parse(&with_value(text, "References", &new));
            assert!(!ni.verify(&[cache_key()]), "{id}: {new}");
        }
        // Reordering is no change: the signed set is the same.
        let reversed: Vec<&str> = refs.iter().rev().copied().collect();
        let ni = parse(&with_value(text, "References", &reversed.join(" ")));
        assert!(ni.verify(&[cache_key()]), "{id}: reordered");
    }
}

#[test]
fn unsigned_fields_do_not_affect_the_signature() {
    for (id, text) in verifying() {
        let mut ni = parse(text);
        ni.url = "https://elsewhere.example/x.nar".into();
        ni.compression = Some("none".into());
        ni.file_hash = None;
        ni.file_size = Some(1);
        ni.deriver = None;
        ni.system = Some("x86_64-linux".into());
        ni.ca = Some("fixed:r:sha256:0".into());
        assert!(ni.verify(&[cache_key()]), "{id}");
    }
}

#[test]
fn signatures_by_unknown_key_names_are_ignored() {
    // 01 carries a second Sig by `test1`, 02 one by `hydra.other.net-1`;
    // neither is trusted and neither stops the trusted one verifying.
    for text in [V01, V02] {
        let ni = parse(text);
        assert_eq!(ni.sigs.len(), 2);
        let keys = [cache_key()];
        assert_eq!(ni.verified_by(&keys), [&keys[0]]);
    }
    // A trusted key that signed nothing here verifies nothing.
    let stranger = SecretKey::generate("stranger-1").unwrap().public();
    assert!(!parse(V01).verify(&[stranger]));
    assert!(!parse(V01).verify(&[]));
}

#[test]
fn a_key_with_the_trusted_name_but_other_bytes_does_not_verify() {
    let impostor = SecretKey::generate("cache.nixos.org-1").unwrap();
    let mut ni = parse(V02);
    ni.sigs.clear();
    ni.sign(&impostor);
    assert!(!ni.verify(&[cache_key()]));
    assert!(ni.verify(&[impostor.public()]));
}

#[test]
fn sign_render_parse_verify() {
    let key = SecretKey::generate("fleet-1").unwrap();
    let mut ni = parse(V01);
    assert!(!ni.verify(&[key.public()]));
    ni.sign(&key);
    let back = parse(&ni.render());
    assert_eq!(back, ni);
    assert!(back.verify(&[key.public()]));
    // The cache's signature is untouched, and the new one sits in
    // Nix's (string) order: cache.nixos.org-1 < fleet-1 < test1.
    assert!(back.verify(&[cache_key()]));
    let names: Vec<&str> = back.sigs.iter().map(Signature::key_name).collect();
    assert_eq!(names, ["cache.nixos.org-1", "fleet-1", "test1"]);
    // Signing again with the same key replaces, not adds.
    let mut again = back.clone();
    again.sign(&key);
    assert_eq!(
        again.sigs, back.sigs,
        "ed25519 signatures are deterministic"
    );
}

#[test]
fn signing_replaces_a_stale_signature_by_the_same_key_name() {
    let key = SecretKey::generate("fleet-1").unwrap();
    let mut ni = parse(V02);
    ni.sign(&key);
    ni.nar_size += 1;
    assert!(!ni.verify(&[key.public()]));
    ni.sign(&key);
    assert!(ni.verify(&[key.public()]));
    assert_eq!(
        ni.sigs.iter().filter(|s| s.key_name() == "fleet-1").count(),
        1
    );
}

#[test]
#[should_panic(expected = "NarSize is 0")]
fn signing_a_zero_size_narinfo_panics() {
    let mut ni = parse(V02);
    ni.nar_size = 0;
    assert!(!ni.verify(&[cache_key()]));
    ni.sign(&SecretKey::generate("k").unwrap());
}

#[test]
fn narinfos_written_by_nix_parse_verify_and_render_to_the_same_bytes() {
    let k1 = PublicKey::parse(NIX_KEY_1).unwrap();
    let k2 = PublicKey::parse(NIX_KEY_2).unwrap();

    let top = parse(NIX_TOP2);
    assert!(top.quirks.is_empty());
    assert_eq!(top.references.len(), 3);
    assert!(top.references.contains(&top.store_path), "a self-reference");
    assert_eq!(
        top.deriver.as_ref().map(StorePath::name),
        Some("nixcast-narinfo-top2.drv")
    );
    assert!(top.verify(std::slice::from_ref(&k1)));
    assert!(!top.verify(&[k2.clone(), cache_key()]));
    assert_eq!(top.render(), NIX_TOP2);

    // Two signatures in Nix's order, no references, no Deriver, a CA line.
    let leaf = parse(NIX_LEAF);
    assert!(leaf.references.is_empty());
    assert_eq!(leaf.deriver, None);
    assert!(leaf.ca.as_deref().unwrap().starts_with("fixed:r:sha256:"));
    let keys = [k1.clone(), k2.clone()];
    assert_eq!(leaf.verified_by(&keys), [&keys[0], &keys[1]]);
    assert_eq!(leaf.render(), NIX_LEAF);

    // A signature our code adds goes where Nix's sorted set put it.
    let mut resigned = parse(NIX_LEAF);
    resigned.sigs.retain(|s| s.key_name() == "narinfo-test-1");
    let other = SecretKey::generate("another-key-1").unwrap();
    resigned.sign(&other);
    let names: Vec<&str> = resigned.sigs.iter().map(Signature::key_name).collect();
    assert_eq!(names, ["another-key-1", "narinfo-test-1"]);
}

#[test]
fn the_nix_written_toplevel_narinfo_verifies_and_round_trips() {
    // Committed earlier beside key.pub: a NixOS toplevel copied by Nix.
    let text = include_str!("../../testdata/nix-written/toplevel.narinfo");
    let key = PublicKey::parse(include_str!("../../testdata/nix-written/key.pub")).unwrap();
    let ni = parse(text);
    assert!(ni.verify(&[key]));
    assert!(!ni.verify(&[cache_key()]));
    assert_eq!(ni.render(), text);
}

#[test]
fn duplicate_store_path_is_rejected() {
    assert_duplicate_rejected("StorePath");
}

#[test]
fn duplicate_nar_hash_is_rejected() {
    assert_duplicate_rejected("NarHash");
}

#[test]
fn duplicate_url_is_rejected() {
    assert_duplicate_rejected("URL");
}

#[test]
fn duplicate_references_are_rejected() {
    assert_duplicate_rejected("References");
    // Even when the first is empty, which a last-wins reader would miss.
    let doubled = format!("{V04}References: {}\n", "a".repeat(32) + "-x");
    assert_eq!(
        NarInfo::parse(&doubled),
        Err(NarInfoError::Duplicate {
            field: "References",
            line: 11
        })
    );
}

#[test]
fn every_other_singleton_field_is_rejected_twice() {
    for field in [
        "Compression",
        "FileHash",
        "FileSize",
        "NarSize",
        "Deriver",
        "System",
        "CA",
    ] {
        let text = match field {
            "System" => V06,
            "CA" => V04,
            _ => V01,
        };
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{field}: ")))
            .unwrap();
        let doubled = format!("{text}{line}\n");
        assert!(
            matches!(
                NarInfo::parse(&doubled),
                Err(NarInfoError::Duplicate { field: f, .. }) if f == field
            ),
            "{field}"
        );
    }
    // `unknown-deriver` still counts as the one Deriver line.
    let text = with_value(V02, "Deriver", "unknown-deriver");
    assert_eq!(parse(&text).quirks, [Quirk::UnknownDeriver]);
    assert!(matches!(
        NarInfo::parse(&format!("{text}Deriver: unknown-deriver\n")),
        Err(NarInfoError::Duplicate {
            field: "Deriver",
            ..
        })
    ));
}

/// Doubling `field`'s line, after or before the original, is an error
/// naming the field and the second line.
fn assert_duplicate_rejected(field: &str) {
    for (id, text) in VECTORS {
        let (index, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with(&format!("{field}: ")))
            .unwrap();
        let appended = format!("{text}{line}\n");
        let expected_line = text.lines().count() + 1;
        assert_eq!(
            NarInfo::parse(&appended).unwrap_err(),
            NarInfoError::Duplicate {
                field: known_field(field).unwrap(),
                line: expected_line
            },
            "{id}"
        );
        let prepended = format!("{line}\n{text}");
        assert_eq!(
            NarInfo::parse(&prepended).unwrap_err(),
            NarInfoError::Duplicate {
                field: known_field(field).unwrap(),
                line: index + 2
            },
            "{id}"
        );
    }
}

#[test]
fn missing_required_fields_are_rejected() {
    for field in ["StorePath", "URL", "NarHash", "NarSize"] {
        let without: String = V02
            .lines()
            .filter(|l| !l.starts_with(&format!("{field}: ")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(NarInfo::parse(&without), Err(NarInfoError::Missing(field)));
    }
    assert_eq!(NarInfo::parse(""), Err(NarInfoError::Missing("StorePath")));
    // Without References, Nix reads none; so do we.
    let without: String = V02
        .lines()
        .filter(|l| !l.starts_with("References: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(parse(&without).references.is_empty());
}

#[test]
fn nar_size_zero_is_rejected() {
    assert_eq!(
        NarInfo::parse(&with_value(V02, "NarSize", "0")),
        Err(NarInfoError::ZeroNarSize { line: 7 })
    );
}

#[test]
fn malformed_lines_are_rejected_with_their_line_number() {
    let bad = |text: &str| NarInfo::parse(text).unwrap_err();
    let mut lines: Vec<&str> = V02.lines().collect();
    lines.insert(2, "no separator here");
    let text = lines.join("\n") + "\n";
    assert_eq!(
        bad(&text),
        NarInfoError::MalformedLine {
            line: 3,
            text: "no separator here".into()
        }
    );
    for (text, line) in [
        // No space after the colon: Nix would read the next line into it.
        (format!("{V02}References:\n"), 12),
        // `URL:x: y` is a URL line to Nix, not an unknown key.
        (format!("{V02}URL:x: y\n"), 12),
        (format!("{V02}\n"), 12),
        (format!("{V02}: value\n"), 12),
        (format!("{V02}Bad key: value\n"), 12),
        (format!("\n{V02}"), 1),
    ] {
        assert!(
            matches!(bad(&text), NarInfoError::MalformedLine { line: l, .. } if l == line),
            "{text:?}"
        );
    }
    assert_eq!(
        bad(V02.strip_suffix('\n').unwrap()),
        NarInfoError::Unterminated { line: 11 }
    );
    assert!(matches!(
        bad(&V02.replace('\n', "\r\n")),
        NarInfoError::ControlCharacter { line: 1, .. }
    ));
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        ("StorePath", "/nix/store/eeee", "StorePath"),
        ("StorePath", "/tmp/x", "StorePath"),
        (
            "Deriver",
            "/nix/store/10dx1q4ivjb115y3h90mipaaz533nr0d-x.drv",
            "Deriver",
        ),
        ("References", "nope", "References"),
    ];
    for (key, value, field) in cases {
        let err = NarInfo::parse(&with_value(V02, key, value)).unwrap_err();
        assert!(
            matches!(err, NarInfoError::StorePath { field: f, .. } if f == field),
            "{key}: {err}"
        );
    }
    for (key, value) in [
        ("NarHash", "sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw"),
        ("NarHash", "sha256:short"),
        ("FileHash", "md5:x"),
    ] {
        let err = NarInfo::parse(&with_value(V02, key, value)).unwrap_err();
        assert!(
            matches!(err, NarInfoError::Hash { field, .. } if field == key),
            "{err}"
        );
    }
    for (key, value) in [
        ("NarSize", "-1"),
        ("NarSize", "+5"),
        ("NarSize", "05"),
        ("NarSize", "18446744073709551616"),
        ("FileSize", "1e3"),
        ("FileSize", " 1"),
    ] {
        assert_eq!(
            NarInfo::parse(&with_value(V02, key, value)).unwrap_err(),
            NarInfoError::Number {
                field: known_field(key).unwrap(),
                line: if key == "NarSize" { 7 } else { 5 },
                value: value.into()
            }
        );
    }
    for key in ["URL", "Compression", "Deriver", "Sig", "NarHash"] {
        assert!(
            matches!(
                NarInfo::parse(&with_value(V02, key, "")).unwrap_err(),
                NarInfoError::Empty { field, .. } if field == key
            ),
            "{key}"
        );
    }
    assert!(matches!(
        NarInfo::parse(&format!("{V02}Sig: nocolon\n")).unwrap_err(),
        NarInfoError::Signature { line: 12, .. }
    ));
    let r = "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27";
    assert_eq!(
        NarInfo::parse(&with_value(V02, "References", &format!("{r} {r}"))).unwrap_err(),
        NarInfoError::DuplicateReference {
            line: 8,
            reference: r.into()
        }
    );
    for spaced in [format!("{r}  {r}"), format!(" {r}"), format!("{r} ")] {
        assert!(matches!(
            NarInfo::parse(&with_value(V02, "References", &spaced)).unwrap_err(),
            NarInfoError::ReferencesSpacing { line: 8, .. }
        ));
    }
}

#[test]
fn unknown_fields_are_tolerated_and_recorded() {
    let text = format!("{V01}Provenance: {{\"type\":\"x\"}}\nFuture-Thing: 1\n");
    let ni = parse(&text);
    assert_eq!(
        ni.quirks,
        [
            Quirk::UnknownField {
                line: 12,
                key: "Provenance".into()
            },
            Quirk::UnknownField {
                line: 13,
                key: "Future-Thing".into()
            },
        ]
    );
    assert!(ni.verify(&[cache_key()]));
    assert_eq!(ni.render(), V01, "unknown fields are not written back");
    // Keys are case-sensitive, as in Nix: this is not a second StorePath.
    let lower = format!("{V01}storepath: /nix/store/x\n");
    assert!(matches!(
        parse(&lower).quirks[..],
        [Quirk::UnknownField { line: 12, .. }]
    ));
}

#[test]
fn error_messages_are_lowercase_and_quote_little() {
    let long = "x".repeat(10_000);
    let err = NarInfo::parse(&format!("{long}\n")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("narinfo line 1 "), "{msg}");
    assert!(msg.len() < 200, "{msg}");
    let err = NarInfo::parse(&with_value(V02, "NarHash", "sha256:short")).unwrap_err();
    assert_eq!(err.to_string(), "narinfo line 6: invalid NarHash");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("sha256:short"), "{source}");
}

// Strategies for the property tests.

fn store_path() -> impl Strategy<Value = StorePath> {
    // The nixbase32 alphabet has no e, o, t, u.
    (
        "[0-9a-df-np-sv-z]{32}",
        "[0-9a-zA-Z+_?=][0-9a-zA-Z+._?=-]{0,40}",
    )
        .prop_map(|(h, n)| StorePath::from_basename(&format!("{h}-{n}")).unwrap())
}

fn sha256() -> impl Strategy<Value = Sha256Hash> {
    any::<[u8; 32]>().prop_map(Sha256Hash)
}

/// Any non-empty value without control characters.
fn text() -> impl Strategy<Value = String> {
    "\\PC{1,30}"
}

fn signature() -> impl Strategy<Value = Signature> {
    ("[a-z0-9.-]{1,16}", prop::collection::vec(any::<u8>(), 64))
        .prop_map(|(name, b)| Signature::from_parts(&name, b.try_into().unwrap()))
}

/// A narinfo as Nix would hold it: references a sorted set, signatures
/// in any order, every optional field present or not.
fn narinfo() -> impl Strategy<Value = NarInfo> {
    let path_part = (
        store_path(),
        text(),
        prop::option::of(text()),
        prop::option::of(sha256()),
        prop::option::of(any::<u64>()),
        sha256(),
        1..=u64::MAX,
    );
    let rest = (
        prop::collection::btree_set(store_path(), 0..6),
        prop::option::of(store_path()),
        prop::collection::vec(signature(), 0..4),
        prop::option::of(text()),
        prop::option::of(text()),
    );
    (path_part, rest).prop_map(
        |(
            (store_path, url, compression, file_hash, file_size, nar_hash, nar_size),
            (references, deriver, sigs, ca, system),
        )| NarInfo {
            store_path,
            url,
            compression,
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references: references.into_iter().collect(),
            deriver,
            sigs,
            ca,
            system,
            quirks: Vec::new(),
        },
    )
}

/// Lines that look like a narinfo's: known keys, plausible and broken values.
fn narinfo_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select([&FIELDS[..], &["X", ""]].concat());
    let value = prop_oneof![
        Just(String::new()),
        Just("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x".to_owned()),
        Just("00bgd045z0d4icpbc2yyz4gx48ak44la-x".to_owned()),
        Just("sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6".to_owned()),
        Just("unknown-deriver".to_owned()),
        "[0-9]{1,21}",
        "\\PC{0,20}",
        ".{0,20}",
    ];
    let sep = prop::sample::select(vec![": ", ":", " : ", ": \r", ""]);
    prop::collection::vec((key, sep, value), 0..16).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(k, s, v)| format!("{k}{s}{v}\n"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_of_render_is_identity(ni in narinfo()) {
        let text = ni.render();
        let back = NarInfo::parse(&text);
        prop_assert_eq!(back.as_ref(), Ok(&ni), "{}", text);
        prop_assert_eq!(back.unwrap().render(), text);
    }

    #[test]
    fn signed_then_rendered_verifies(ni in narinfo()) {
        let key = SecretKey::generate("prop-1").unwrap();
        let mut ni = ni;
        ni.sign(&key);
        let back = NarInfo::parse(&ni.render()).unwrap();
        prop_assert!(back.verify(&[key.public()]));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(s in any::<String>()) {
        let _ = NarInfo::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_narinfo_like_text(s in narinfo_like()) {
        let _ = NarInfo::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_damaged_vectors(
        which in 0..VECTORS.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..4),
    ) {
        let mut chars: Vec<char> = VECTORS[which].1.chars().collect();
        for (at, c) in edits {
            let i = at.index(chars.len());
            chars[i] = c;
        }
        let s: String = chars.into_iter().collect();
        if let Ok(ni) = NarInfo::parse(&s) {
            // Whatever parses, renders to something that parses the same.
            let again = NarInfo::parse(&ni.render()).unwrap();
            prop_assert_eq!(
                (&again.store_path, &again.nar_hash, again.nar_size, &again.references),
                (&ni.store_path, &ni.nar_hash, ni.nar_size, &ni.references)
            );
        }
    }
}
