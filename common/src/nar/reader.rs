//! Reads a NAR from an untrusted stream and checks it strictly, in one pass.
//!
//! The parser is iterative, with an explicit stack of open directories, so
//! a hostile nesting depth costs heap, bounded by [`Limits::max_depth`],
//! never the thread's stack. Nothing is allocated from a length field before
//! the length is checked against its cap, and file contents pass through a
//! fixed 64 KiB buffer.

use std::io::{self, Read};

use thiserror::Error;

use super::{escaped, padding_len, MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN, MAX_TOKEN_LEN};

/// File contents are read in pieces of at most this many bytes.
const CHUNK: usize = 64 * 1024;

/// Bounds on what [`validate`] accepts, beyond the format's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A node at this depth is refused; the root is at depth 0. Nix's
    /// `narMaxDepth` ([`MAX_DEPTH`]) by default.
    pub max_depth: usize,
    /// The most directory entries in the whole archive, to bound the inodes
    /// an archive can make us create.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            max_entries: 1_000_000,
        }
    }
}

/// What a valid archive holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NarStats {
    /// Regular files, executable or not.
    pub files: u64,
    /// Regular files marked executable.
    pub executables: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// The sum of the file sizes.
    pub content_bytes: u64,
    /// The length of the whole archive in bytes, which is what Nix calls `NarSize`.
    pub nar_size: u64,
}

/// Why [`validate`] refused an archive. `offset` is where the offending
/// string (its length field) starts, counted from the first byte of the
/// archive; `path` is the node it belongs to inside the archive, `/` for
/// the root, with bytes outside printable ASCII escaped.
#[derive(Debug, Error)]
pub enum NarError {
    #[error("cannot read the NAR at byte {offset}: {error}")]
    Io { offset: u64, error: io::Error },
    #[error("NAR ends early at byte {offset}, inside {path}")]
    Truncated { offset: u64, path: String },
    #[error("not a NAR: it does not start with \"nix-archive-1\"")]
    BadMagic,
    #[error(
        "NAR byte {offset} in {path}: expected {}, found \"{found}\"",
        alternatives(expected)
    )]
    UnexpectedToken {
        offset: u64,
        path: String,
        expected: &'static [&'static str],
        found: String,
    },
    /// A string where a token belongs, too long to be any token. It is
    /// refused before it is read, so its length cannot make us allocate.
    #[error("NAR byte {offset} in {path}: expected a token, found a string of {len} bytes")]
    TokenTooLong { offset: u64, path: String, len: u64 },
    #[error("NAR byte {offset} in {path}: non-zero padding")]
    Padding { offset: u64, path: String },
    /// Nix writes `executable` followed by an empty string; anything else
    /// would be a second encoding of the same file.
    #[error("NAR byte {offset} in {path}: the executable marker is {len} bytes, not empty")]
    ExecutableMarker { offset: u64, path: String, len: u64 },
    /// An entry name that is empty, `.`, `..`, or contains `/` or NUL: one
    /// that would escape or confuse the directory it is unpacked in.
    #[error("NAR byte {offset} in directory {path}: invalid entry name \"{name}\"")]
    InvalidName {
        offset: u64,
        path: String,
        name: String,
    },
    #[error(
        "NAR byte {offset} in directory {path}: an entry name of {len} bytes, over {MAX_NAME_LEN}"
    )]
    NameTooLong { offset: u64, path: String, len: u64 },
    /// Entries must be strictly increasing by bytes. A duplicate name is the
    /// shape of CVE-2024-45593 (a symlink, then a directory of that name).
    #[error("NAR byte {offset} in directory {path}: entry \"{name}\" does not sort after \"{prev}\" (unsorted or duplicate)")]
    NotSorted {
        offset: u64,
        path: String,
        name: String,
        prev: String,
    },
    #[error("NAR byte {offset} in {path}: empty symlink target")]
    EmptyTarget { offset: u64, path: String },
    #[error("NAR byte {offset} in {path}: symlink target contains NUL")]
    NulInTarget { offset: u64, path: String },
    #[error("NAR byte {offset} in {path}: a symlink target of {len} bytes, over {MAX_TARGET_LEN}")]
    TargetTooLong { offset: u64, path: String, len: u64 },
    #[error("NAR byte {offset} in {path}: nested {max} or more directories deep")]
    TooDeep {
        offset: u64,
        path: String,
        max: usize,
    },
    #[error("NAR byte {offset} in directory {path}: more than {max} entries in the archive")]
    TooManyEntries { offset: u64, path: String, max: u64 },
    /// The archive ended at `offset`, and more bytes followed.
    #[error("NAR has trailing data after its end at byte {offset}")]
    TrailingData { offset: u64 },
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn alternatives(tokens: &[&str]) -> String {
    let quoted: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// Reads one whole NAR from `r`, checks it strictly, and requires `r` to
/// end right after it.
///
/// `r` is read in exactly the pieces the grammar calls for, never beyond
/// the archive's last byte except for one byte to check for the end, so it
/// may be a tee that hashes or stores what passes. The pieces are small:
/// wrap a file or socket in a `BufReader`. Memory use does not depend on
/// the input beyond [`Limits::max_depth`] times the longest name.
pub fn validate<R: Read>(r: R, limits: &Limits) -> Result<NarStats, NarError> {
    let mut p = Parser {
        input: Input { r, offset: 0 },
        limits,
        path: Vec::new(),
        dirs: Vec::new(),
        entries: 0,
        stats: NarStats::default(),
        buf: Vec::new(),
    };
    p.archive()?;
    Ok(p.stats)
}

/// The stream, and how far into it we are.
struct Input<R> {
    r: R,
    offset: u64,
}

/// Why a read came up short, before the parser adds where.
enum Short {
    Eof,
    Io(io::Error),
}

impl<R: Read> Input<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), Short> {
        let mut done = 0;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) => return Err(Short::Eof),
                Ok(n) => {
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Short::Io(e)),
            }
        }
        Ok(())
    }
}

/// A string read where the grammar expects a token; short enough to live
/// on the stack.
struct Token {
    offset: u64,
    len: usize,
    bytes: [u8; MAX_TOKEN_LEN],
}

impl Token {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A directory whose entries are being read.
struct Dir {
    /// The name of the previous entry, which the next must sort after.
    prev: Option<Vec<u8>>,
    /// The length of `Parser::path` while inside this directory.
    path_len: usize,
}

struct Parser<'a, R> {
    input: Input<R>,
    limits: &'a Limits,
    /// The node being read, as `/a/b`; empty for the root.
    path: Vec<u8>,
    /// The open directories, the innermost last; its length is the depth.
    dirs: Vec<Dir>,
    entries: u64,
    stats: NarStats,
    /// The buffer file contents pass through, allocated at the first
    /// non-empty file.
    buf: Vec<u8>,
}

impl<R: Read> Parser<'_, R> {
    fn archive(&mut self) -> Result<(), NarError> {
        self.magic()?;
        self.node()?;
        // Each turn reads what follows inside the innermost open directory.
        while !self.dirs.is_empty() {
            let (which, at) = self.one_of(&["entry", ")"])?;
            if which == 0 {
                self.entry(at)?;
            } else {
                self.dirs.pop();
                // Unless it was the root, the directory was the node of an
                // entry, which closes next.
                if !self.dirs.is_empty() {
                    self.expect(&[")"])?;
                    self.leave_entry();
                }
            }
        }
        self.end()
    }

    fn magic(&mut self) -> Result<(), NarError> {
        let len = self.u64()?;
        if len != MAGIC.len() as u64 {
            return Err(NarError::BadMagic);
        }
        let mut magic = [0u8; MAGIC.len()];
        self.read(&mut magic)?;
        if magic != MAGIC {
            return Err(NarError::BadMagic);
        }
        self.padding(len)
    }

    /// Reads a node. A file or symlink is read up to its closing `)`; a
    /// directory is only opened, and `true` returned: its entries are read
    /// by the loop in [`Self::archive`].
    fn node(&mut self) -> Result<bool, NarError> {
        if self.dirs.len() >= self.limits.max_depth {
            return Err(NarError::TooDeep {
                offset: self.input.offset,
                path: self.here(),
                max: self.limits.max_depth,
            });
        }
        self.expect(&["("])?;
        self.expect(&["type"])?;
        match self.one_of(&["regular", "symlink", "directory"])?.0 {
            0 => self.regular()?,
            1 => self.symlink()?,
            _ => {
                self.stats.directories += 1;
                self.dirs.push(Dir {
                    prev: None,
                    path_len: self.path.len(),
                });
                return Ok(true);
            }
        }
        self.expect(&[")"])?;
        Ok(false)
    }

    fn regular(&mut self) -> Result<(), NarError> {
        self.stats.files += 1;
        if self.one_of(&["executable", "contents"])?.0 == 0 {
            self.stats.executables += 1;
            // The marker's value must be empty, so its length is all we read.
            let at = self.input.offset;
            let len = self.u64()?;
            if len != 0 {
                return Err(NarError::ExecutableMarker {
                    offset: at,
                    path: self.here(),
                    len,
                });
            }
            self.expect(&["contents"])?;
        }
        let len = self.u64()?;
        if len > 0 && self.buf.is_empty() {
            self.buf = vec![0; CHUNK];
        }
        let mut left = len;
        while left > 0 {
            // The minimum is at most CHUNK, so it fits a usize.
            let n = left.min(CHUNK as u64) as usize;
            self.input
                .fill(&mut self.buf[..n])
                .map_err(|short| self.short(short))?;
            left -= n as u64;
        }
        self.stats.content_bytes += len;
        self.padding(len)
    }

    fn symlink(&mut self) -> Result<(), NarError> {
        self.stats.symlinks += 1;
        self.expect(&["target"])?;
        let at = self.input.offset;
        let len = self.u64()?;
        if len == 0 {
            return Err(NarError::EmptyTarget {
                offset: at,
                path: self.here(),
            });
        }
        if len > MAX_TARGET_LEN as u64 {
            return Err(NarError::TargetTooLong {
                offset: at,
                path: self.here(),
                len,
            });
        }
        let target = self.string_body(len)?;
        if target.contains(&0) {
            return Err(NarError::NulInTarget {
                offset: at,
                path: self.here(),
            });
        }
        Ok(())
    }

    /// Reads an entry of the innermost directory, after its `entry` token at `at`.
    fn entry(&mut self, at: u64) -> Result<(), NarError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(NarError::TooManyEntries {
                offset: at,
                path: self.here(),
                max: self.limits.max_entries,
            });
        }
        self.expect(&["("])?;
        self.expect(&["name"])?;
        let name_at = self.input.offset;
        let len = self.u64()?;
        if len > MAX_NAME_LEN as u64 {
            return Err(NarError::NameTooLong {
                offset: name_at,
                path: self.here(),
                len,
            });
        }
        let name = self.string_body(len)?;
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(NarError::InvalidName {
                offset: name_at,
                path: self.here(),
                name: escaped(&name),
            });
        }
        // Byte order, as `std::string`'s `<=` in Nix's parser: a name equal
        // to or below the previous one is refused.
        if let Some(prev) = self.dirs.last().and_then(|d| d.prev.as_deref()) {
            if name.as_slice() <= prev {
                return Err(NarError::NotSorted {
                    offset: name_at,
                    path: self.here(),
                    name: escaped(&name),
                    prev: escaped(prev),
                });
            }
        }
        self.path.push(b'/');
        self.path.extend_from_slice(&name);
        if let Some(dir) = self.dirs.last_mut() {
            dir.prev = Some(name);
        }
        self.expect(&["node"])?;
        if !self.node()? {
            self.expect(&[")"])?;
            self.leave_entry();
        }
        Ok(())
    }

    /// Back from an entry to the directory that holds it.
    fn leave_entry(&mut self) {
        let len = self.dirs.last().map_or(0, |d| d.path_len);
        self.path.truncate(len);
    }

    /// After the root's closing `)`: the stream must end here.
    fn end(&mut self) -> Result<(), NarError> {
        let end = self.input.offset;
        let mut probe = [0u8; 1];
        loop {
            match self.input.r.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => return Err(NarError::TrailingData { offset: end }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(NarError::Io { offset: end, error }),
            }
        }
        self.stats.nar_size = end;
        Ok(())
    }

    fn here(&self) -> String {
        if self.path.is_empty() {
            "/".to_owned()
        } else {
            escaped(&self.path)
        }
    }

    fn short(&self, short: Short) -> NarError {
        match short {
            Short::Eof => NarError::Truncated {
                offset: self.input.offset,
                path: self.here(),
            },
            Short::Io(error) => NarError::Io {
                offset: self.input.offset,
                error,
            },
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        self.input.fill(buf).map_err(|short| self.short(short))
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads the zero bytes after a string of `len` bytes.
    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let at = self.input.offset;
        let mut pad = [0u8; 8];
        self.read(&mut pad[..padding_len(len)])?;
        if pad != [0; 8] {
            return Err(NarError::Padding {
                offset: at,
                path: self.here(),
            });
        }
        Ok(())
    }

    /// Reads the bytes and padding of a string whose length `len` was read
    /// and checked against its cap by the caller.
    fn string_body(&mut self, len: u64) -> Result<Vec<u8>, NarError> {
        // Callers cap `len` at a few KiB, so it fits a usize.
        let mut bytes = vec![0; len as usize];
        self.read(&mut bytes)?;
        self.padding(len)?;
        Ok(bytes)
    }

    fn token(&mut self) -> Result<Token, NarError> {
        let offset = self.input.offset;
        let len = self.u64()?;
        if len > MAX_TOKEN_LEN as u64 {
            return Err(NarError::TokenTooLong {
                offset,
                path: self.here(),
                len,
            });
        }
        let mut t = Token {
            offset,
            len: len as usize,
            bytes: [0; MAX_TOKEN_LEN],
        };
        self.read(&mut t.bytes[..t.len])?;
        self.padding(len)?;
        Ok(t)
    }

    /// Reads a token that must be one of `wanted`; returns which, and where
    /// the token started.
    fn one_of(&mut self, wanted: &'static [&'static str]) -> Result<(usize, u64), NarError> {
        let t = self.token()?;
        match wanted.iter().position(|w| w.as_bytes() == t.as_bytes()) {
            Some(i) => Ok((i, t.offset)),
            None => Err(NarError::UnexpectedToken {
                offset: t.offset,
                path: self.here(),
                expected: wanted,
                found: escaped(t.as_bytes()),
            }),
        }
    }

    fn expect(&mut self, wanted: &'static [&'static str]) -> Result<(), NarError> {
        self.one_of(wanted).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
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

    /// THREATS.md C5: a very deep archive must fail cleanly, and even with
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
}
