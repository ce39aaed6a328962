use super::super::test_support::NarBuilder;
use super::*;

fn check(n: &NarBuilder) -> Result<NarStats, NarError> {
    validate(n.bytes(), &Limits::default())
}

/// A root directory holding a one-byte file under each name, in the given order.
fn dir_with(names: &[&[u8]]) -> NarBuilder {
    let mut n = NarBuilder::start().dir();
    for name in names {
        n = n.entry(name).file(b"x").s(b")");
    }
    n.s(b")")
}

/// `levels` directories named `d`, one inside the other, around a file.
fn nested(levels: usize) -> NarBuilder {
    let mut n = NarBuilder::start();
    for _ in 0..levels {
        n = n.dir().entry(b"d");
    }
    n = n.file(b"");
    for _ in 0..levels {
        n = n.s(b")").s(b")");
    }
    n
}

/// Offset of the `nth` occurrence (from 0) of the string `s` as encoded.
fn offset_of(n: &NarBuilder, s: &[u8], nth: usize) -> u64 {
    let enc = NarBuilder::default().s(s).0;
    let hits: Vec<usize> = n
        .bytes()
        .windows(enc.len())
        .enumerate()
        .filter(|(_, w)| *w == enc.as_slice())
        .map(|(i, _)| i)
        .collect();
    hits[nth] as u64
}

#[test]
fn accepts_and_counts() {
    let n = NarBuilder::start()
        .dir()
        .entry(b"bin")
        .dir()
        .entry(b"sh")
        .s(b"(")
        .s(b"type")
        .s(b"regular")
        .s(b"executable")
        .s(b"")
        .s(b"contents")
        .s(b"#!")
        .s(b")")
        .s(b")")
        .s(b")")
        .s(b")")
        .entry(b"lib")
        .symlink(b"/etc/static/lib")
        .s(b")")
        .s(b")");
    let st = check(&n).unwrap();
    assert_eq!(
        st,
        NarStats {
            files: 1,
            executables: 1,
            directories: 2,
            symlinks: 1,
            content_bytes: 2,
            nar_size: n.bytes().len() as u64,
        }
    );
}

#[test]
fn rejects_bad_magic() {
    for magic in [
        &b"nix-archive-2"[..],
        b"nix-archive-",
        b"nix-archive-11",
        b"",
    ] {
        let n = NarBuilder::default().s(magic).file(b"");
        assert!(matches!(check(&n), Err(NarError::BadMagic)), "{magic:?}");
    }
    let huge = NarBuilder::default().u64(u64::MAX);
    assert!(matches!(check(&huge), Err(NarError::BadMagic)));
}

#[test]
fn rejects_unknown_and_misplaced_tokens() {
    let cases = [
        // A file type NAR does not have.
        NarBuilder::start().s(b"(").s(b"type").s(b"fifo").s(b")"),
        // "contents" in a symlink.
        NarBuilder::start()
            .s(b"(")
            .s(b"type")
            .s(b"symlink")
            .s(b"contents")
            .s(b"x")
            .s(b")"),
        // "target" in a regular file.
        NarBuilder::start()
            .s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"target")
            .s(b"x")
            .s(b")"),
        // Two "executable" markers.
        NarBuilder::start()
            .s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"executable")
            .s(b"")
            .s(b"executable")
            .s(b"")
            .s(b"contents")
            .s(b"")
            .s(b")"),
        // An entry without its "name".
        NarBuilder::start()
            .dir()
            .s(b"entry")
            .s(b"(")
            .s(b"node")
            .file(b"")
            .s(b")")
            .s(b")"),
        // No "(" at the start of the root.
        NarBuilder::start().s(b"type").s(b"regular"),
        // A file node that does not close.
        NarBuilder::start()
            .s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"contents")
            .s(b"")
            .s(b"entry"),
        // A token that is a prefix of a real one.
        NarBuilder::start().s(b"(").s(b"typ"),
    ];
    for (i, n) in cases.iter().enumerate() {
        let err = check(n).unwrap_err();
        assert!(
            matches!(err, NarError::UnexpectedToken { .. }),
            "case {i}: {err}"
        );
    }
}

#[test]
fn unexpected_token_says_where_and_what() {
    let n = NarBuilder::start()
        .dir()
        .entry(b"\xffx")
        .s(b"(")
        .s(b"type")
        .s(b"fifo\n");
    let err = check(&n).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "NAR byte {} in /\\xffx: expected \"regular\", \"symlink\" or \"directory\", found \"fifo\\n\"",
            offset_of(&n, b"fifo\n", 0)
        )
    );
}

#[test]
fn rejects_long_tokens_before_reading_them() {
    let n = NarBuilder::start().s(b"(").u64(u64::MAX);
    let err = check(&n).unwrap_err();
    assert!(
        matches!(
            err,
            NarError::TokenTooLong {
                offset: 40,
                len: u64::MAX,
                ..
            }
        ),
        "{err}"
    );
    let long = [b'('; MAX_TOKEN_LEN + 1];
    let n = NarBuilder::start().s(&long).s(b"type");
    assert!(matches!(check(&n), Err(NarError::TokenTooLong { .. })));
    // At the cap the token is read, and is merely unknown.
    let n = NarBuilder::start().s(&long[1..]).s(b"type");
    assert!(matches!(check(&n), Err(NarError::UnexpectedToken { .. })));
}

#[test]
fn rejects_non_zero_padding() {
    let good = NarBuilder::start()
        .dir()
        .entry(b"abc")
        .file(b"hello")
        .s(b")")
        .s(b")");
    assert!(check(&good).is_ok());
    // After the magic (13 bytes), a token, a name and file contents.
    let pads = [
        (8 + 13, "/"),
        (offset_of(&good, b"(", 0) + 8 + 1, "/"),
        (offset_of(&good, b"abc", 0) + 8 + 3, "/"),
        (offset_of(&good, b"hello", 0) + 8 + 5, "/abc"),
    ];
    for (at, path) in pads {
        for byte in [1u8, 0x80] {
            let mut bad = good.clone();
            bad.0[at as usize + 1] = byte;
            let err = check(&bad).unwrap_err();
            assert!(
                matches!(&err, NarError::Padding { offset, path: p } if *offset == at && p == path),
                "{at}: {err}"
            );
        }
    }
}

#[test]
fn rejects_invalid_names() {
    for name in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b", b"\0"] {
        let err = check(&dir_with(&[name])).unwrap_err();
        assert!(
            matches!(&err, NarError::InvalidName { offset: 128, path, .. } if path == "/"),
            "{name:?}: {err}"
        );
    }
    for name in [&b"..."[..], b".a", b"a.", b" ", b"\xff"] {
        assert!(check(&dir_with(&[name])).is_ok(), "{name:?}");
    }
}

#[test]
fn rejects_long_names_before_reading_them() {
    assert!(check(&dir_with(&[&[b'n'; MAX_NAME_LEN]])).is_ok());
    let err = check(&dir_with(&[&[b'n'; MAX_NAME_LEN + 1]])).unwrap_err();
    assert!(
        matches!(err, NarError::NameTooLong { len: 256, .. }),
        "{err}"
    );
    let huge = NarBuilder::start()
        .dir()
        .s(b"entry")
        .s(b"(")
        .s(b"name")
        .u64(u64::MAX);
    assert!(matches!(check(&huge), Err(NarError::NameTooLong { .. })));
}

#[test]
fn rejects_unsorted_and_duplicate_names() {
    let not_sorted = |names: &[&[u8]]| {
        let err = check(&dir_with(names)).unwrap_err();
        assert!(
            matches!(err, NarError::NotSorted { .. }),
            "{names:?}: {err}"
        );
    };
    not_sorted(&[b"b", b"a"]);
    not_sorted(&[b"a", b"a"]);
    not_sorted(&[b"a", b"b", b"c", b"b"]);
    not_sorted(&[b"a.b", b"a"]);
    // Bytes, not characters or case: "é" is c3 a9, above "f".
    not_sorted(&[b"\xc3\xa9", b"f"]);
    not_sorted(&[b"a", b"B"]);
    for names in [
        &[&b"B"[..], b"a"][..],
        &[b"a", b"a.b", b"ab"],
        &[b"f", b"\xc3\xa9", b"\xff"],
    ] {
        assert!(check(&dir_with(names)).is_ok(), "{names:?}");
    }
}

/// CVE-2024-45593: `foo` as a symlink out of the tree, then `foo` as a
/// directory whose file an unpacker would write through the link.
#[test]
fn rejects_symlink_then_directory_of_the_same_name() {
    let n = NarBuilder::start()
        .dir()
        .entry(b"foo")
        .symlink(b"/tmp/canary")
        .s(b")")
        .entry(b"foo")
        .dir()
        .entry(b"x")
        .file(b"pwned")
        .s(b")")
        .s(b")")
        .s(b")")
        .s(b")");
    let err = check(&n).unwrap_err();
    assert!(
        matches!(&err, NarError::NotSorted { name, prev, .. } if name == "foo" && prev == "foo"),
        "{err}"
    );
}

#[test]
fn order_is_per_directory() {
    // "b" in a subdirectory may follow "z" elsewhere in the archive.
    let n = NarBuilder::start()
        .dir()
        .entry(b"a")
        .dir()
        .entry(b"z")
        .file(b"")
        .s(b")")
        .s(b")")
        .s(b")")
        .entry(b"b")
        .dir()
        .entry(b"b")
        .file(b"")
        .s(b")")
        .s(b")")
        .s(b")")
        .s(b")");
    assert_eq!(check(&n).unwrap().directories, 3);
}

#[test]
fn rejects_bad_symlink_targets() {
    let link = |t: &[u8]| NarBuilder::start().symlink(t);
    assert!(check(&link(b"/etc/static")).is_ok());
    assert!(check(&link(&[b'a'; MAX_TARGET_LEN])).is_ok());
    assert!(matches!(
        check(&link(b"")),
        Err(NarError::EmptyTarget { offset: 88, .. })
    ));
    assert!(matches!(
        check(&link(b"/etc\0/passwd")),
        Err(NarError::NulInTarget { offset: 88, .. })
    ));
    assert!(matches!(
        check(&link(&[b'a'; MAX_TARGET_LEN + 1])),
        Err(NarError::TargetTooLong { len: 4096, .. })
    ));
    let huge = NarBuilder::start()
        .s(b"(")
        .s(b"type")
        .s(b"symlink")
        .s(b"target")
        .u64(u64::MAX);
    assert!(matches!(check(&huge), Err(NarError::TargetTooLong { .. })));
}

#[test]
fn rejects_depth_at_the_limit() {
    assert!(check(&nested(MAX_DEPTH - 1)).is_ok());
    let err = check(&nested(MAX_DEPTH)).unwrap_err();
    let deepest = "/d".repeat(MAX_DEPTH);
    assert!(
        matches!(&err, NarError::TooDeep { path, max: MAX_DEPTH, .. } if *path == deepest),
        "{err}"
    );
    let shallow = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    assert!(validate(nested(2).bytes(), &shallow).is_ok());
    assert!(matches!(
        validate(nested(3).bytes(), &shallow),
        Err(NarError::TooDeep { max: 3, .. })
    ));
}

/// A very deep archive (a stack-exhaustion attack) must fail cleanly, and even with
/// the depth limit lifted the parser must not use the thread's stack.
#[test]
fn very_deep_archives_do_not_overflow_the_stack() {
    let n = nested(10_000);
    assert!(matches!(check(&n), Err(NarError::TooDeep { .. })));
    let unlimited = Limits {
        max_depth: usize::MAX,
        ..Limits::default()
    };
    let st = validate(n.bytes(), &unlimited).unwrap();
    assert_eq!(st.directories, 10_000);
}

#[test]
fn rejects_a_non_empty_executable_marker() {
    let marker = |m: &[u8]| {
        NarBuilder::start()
            .s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"executable")
            .s(m)
            .s(b"contents")
            .s(b"")
            .s(b")")
    };
    assert_eq!(check(&marker(b"")).unwrap().executables, 1);
    for m in [&b"x"[..], b"contents", b"\0"] {
        let err = check(&marker(m)).unwrap_err();
        assert!(
            matches!(err, NarError::ExecutableMarker { offset: 96, .. }),
            "{m:?}: {err}"
        );
    }
}

#[test]
fn rejects_truncation_anywhere() {
    let good = NarBuilder::start()
        .dir()
        .entry(b"f")
        .file(b"some contents")
        .s(b")")
        .entry(b"l")
        .symlink(b"f")
        .s(b")")
        .s(b")");
    assert!(check(&good).is_ok());
    for cut in 0..good.bytes().len() {
        let err = validate(&good.bytes()[..cut], &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, NarError::Truncated { offset, .. } if *offset == cut as u64),
            "{cut}: {err}"
        );
    }
    // A file announcing a terabyte is read in chunks, not allocated.
    let n = NarBuilder::start()
        .s(b"(")
        .s(b"type")
        .s(b"regular")
        .s(b"contents")
        .u64(1 << 40)
        .raw(b"short");
    assert!(matches!(check(&n), Err(NarError::Truncated { .. })));
}

#[test]
fn rejects_too_many_entries() {
    let names: Vec<Vec<u8>> = (0..4).map(|i| vec![b'a' + i]).collect();
    let names: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
    let three = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    assert!(validate(dir_with(&names[..3]).bytes(), &three).is_ok());
    assert!(matches!(
        validate(dir_with(&names).bytes(), &three),
        Err(NarError::TooManyEntries { max: 3, .. })
    ));
    // Entries count across directories, not per directory.
    let n = NarBuilder::start()
        .dir()
        .entry(b"a")
        .dir()
        .entry(b"b")
        .file(b"")
        .s(b")")
        .entry(b"c")
        .file(b"")
        .s(b")")
        .s(b")")
        .s(b")")
        .entry(b"d")
        .file(b"")
        .s(b")")
        .s(b")");
    assert!(matches!(
        validate(n.bytes(), &three),
        Err(NarError::TooManyEntries { .. })
    ));
}

#[test]
fn rejects_trailing_data() {
    let good = NarBuilder::start().file(b"abc");
    let end = good.bytes().len() as u64;
    for extra in [
        &[0u8][..],
        &[0; 8],
        b"garbage",
        NarBuilder::start().file(b"").bytes(),
    ] {
        let n = good.clone().raw(extra);
        assert!(
            matches!(check(&n), Err(NarError::TrailingData { offset }) if offset == end),
            "{extra:?}"
        );
    }
}

/// A reader that hands out one byte at a time and records what it gave,
/// like a tee that hashes what passes.
struct Trickle<'a> {
    data: &'a [u8],
    given: Vec<u8>,
    fail_at: Option<usize>,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail_at == Some(self.given.len()) {
            return Err(io::Error::other("connection reset"));
        }
        let Some((&first, rest)) = self.data.split_first() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        buf[0] = first;
        self.data = rest;
        self.given.push(first);
        Ok(1)
    }
}

#[test]
fn consumes_exactly_the_archive_from_short_reads() {
    let n = NarBuilder::start()
        .dir()
        .entry(b"f")
        .file(&[7; 100_000])
        .s(b")")
        .s(b")");
    let mut t = Trickle {
        data: n.bytes(),
        given: Vec::new(),
        fail_at: None,
    };
    let st = validate(&mut t, &Limits::default()).unwrap();
    assert_eq!(t.given, n.bytes());
    assert_eq!(st.nar_size, n.bytes().len() as u64);
    assert_eq!(st.content_bytes, 100_000);

    let mut t = Trickle {
        data: n.bytes(),
        given: Vec::new(),
        fail_at: Some(50_000),
    };
    let err = validate(&mut t, &Limits::default()).unwrap_err();
    assert!(matches!(err, NarError::Io { offset: 50_000, .. }), "{err}");
}

#[test]
fn errors_escape_hostile_bytes() {
    let err = check(&dir_with(&[b"a\x1b[2J/b"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "NAR byte 128 in directory /: invalid entry name \"a\\x1b[2J/b\""
    );
}
