//! NAR, the Nix ARchive: a canonical serialisation of a file system tree.
//!
//! Every value is a u64 (8 bytes, little-endian) or a string: its length as
//! a u64, its bytes, then zeros up to a multiple of 8. Grammar:
//!
//! ```text
//! nar       = str("nix-archive-1") node
//! node      = str("(") str("type") body str(")")
//! body      = str("regular") [str("executable") str("")] str("contents") str(CONTENTS)
//!           | str("symlink") str("target") str(TARGET)
//!           | str("directory") { str("entry") str("(") str("name") str(NAME) str("node") node str(")") }
//! ```
//!
//! Entries are sorted by name (bytes), names are unique. Source of truth:
//! Nix's `src/libutil/archive.cc` and the manual's `protocols/nix-archive.md`.
//!
//! [`dump_path`] writes the NAR of a tree (symlinks are written, never
//! followed). [`validate`] reads one strictly and in one pass, as an
//! untrusted input: it rejects bad or unsorted names, non-zero padding,
//! excessive depth or length, unknown tokens and trailing data, in release
//! builds too, and says where (THREATS.md §7.4).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use thiserror::Error;

pub const MAGIC: &[u8] = b"nix-archive-1";
/// Nix's `narMaxDepth`.
pub const MAX_DEPTH: usize = 64;
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_TARGET_LEN: usize = 4095;
/// Longest token of the grammar is "nix-archive-1" (13 bytes); others are shorter.
const MAX_TOKEN_LEN: usize = 16;

fn pad_len(n: u64) -> usize {
    ((8 - n % 8) % 8) as usize
}

#[derive(Debug, Error)]
pub enum NarWriteError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}: not a regular file, directory or symlink")]
    FileType(String),
    #[error("{0} changed while it was being archived")]
    Changed(String),
}

fn write_str<W: Write>(out: &mut W, s: &[u8]) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s)?;
    out.write_all(&[0u8; 8][..pad_len(s.len() as u64)])
}

/// Writes the NAR of `path` (a file, directory or symlink) to `out`.
pub fn dump_path<W: Write>(path: &Path, mut out: W) -> Result<W, NarWriteError> {
    let io = |e| NarWriteError::Io {
        path: path.display().to_string(),
        source: e,
    };
    write_str(&mut out, MAGIC).map_err(io)?;
    dump_node(path, &mut out)?;
    Ok(out)
}

fn dump_node<W: Write>(path: &Path, out: &mut W) -> Result<(), NarWriteError> {
    let shown = || path.display().to_string();
    let io = |e| NarWriteError::Io {
        path: shown(),
        source: e,
    };
    let md = fs::symlink_metadata(path).map_err(io)?;
    let ft = md.file_type();
    write_str(out, b"(").map_err(io)?;
    write_str(out, b"type").map_err(io)?;
    if ft.is_file() {
        write_str(out, b"regular").map_err(io)?;
        if md.permissions().mode() & 0o100 != 0 {
            write_str(out, b"executable").map_err(io)?;
            write_str(out, b"").map_err(io)?;
        }
        write_str(out, b"contents").map_err(io)?;
        let len = md.len();
        out.write_all(&len.to_le_bytes()).map_err(io)?;
        let mut f = fs::File::open(path).map_err(io)?;
        let copied = io::copy(&mut (&mut f).take(len), out).map_err(io)?;
        let mut probe = [0u8; 1];
        if copied != len || f.read(&mut probe).map_err(io)? != 0 {
            return Err(NarWriteError::Changed(shown()));
        }
        out.write_all(&[0u8; 8][..pad_len(len)]).map_err(io)?;
    } else if ft.is_symlink() {
        write_str(out, b"symlink").map_err(io)?;
        write_str(out, b"target").map_err(io)?;
        let target = fs::read_link(path).map_err(io)?;
        write_str(out, target.as_os_str().as_bytes()).map_err(io)?;
    } else if ft.is_dir() {
        write_str(out, b"directory").map_err(io)?;
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            write_str(out, b"entry").map_err(io)?;
            write_str(out, b"(").map_err(io)?;
            write_str(out, b"name").map_err(io)?;
            write_str(out, name.as_bytes()).map_err(io)?;
            write_str(out, b"node").map_err(io)?;
            dump_node(&path.join(&name), out)?;
            write_str(out, b")").map_err(io)?;
        }
    } else {
        return Err(NarWriteError::FileType(shown()));
    }
    write_str(out, b")").map_err(io)?;
    Ok(())
}

/// Bounds on what [`validate`] accepts.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_depth: usize,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            max_entries: 10_000_000,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NarStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file contents.
    pub content_bytes: u64,
    /// Bytes of the whole archive.
    pub size: u64,
}

#[derive(Debug, Error)]
pub enum NarError {
    #[error("NAR read error at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("NAR ends early at byte {0}")]
    Truncated(u64),
    #[error("NAR is not an archive: bad magic")]
    Magic,
    #[error("NAR at byte {offset} ({path}): expected {expected}, found {found:?}")]
    Token {
        offset: u64,
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("NAR at byte {offset} ({path}): a {what} of {len} bytes is longer than {max}")]
    TooLong {
        offset: u64,
        path: String,
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("NAR at byte {0}: non-zero padding")]
    Padding(u64),
    #[error("NAR entry {path}: invalid name {name:?}")]
    Name { path: String, name: String },
    #[error("NAR entry {path}: names not sorted or not unique ({name:?} after {prev:?})")]
    Order {
        path: String,
        name: String,
        prev: String,
    },
    #[error("NAR entry {0}: nested deeper than the limit")]
    Depth(String),
    #[error("NAR entry {0}: more entries than the limit")]
    Entries(String),
    #[error("NAR symlink {path}: invalid target ({why})")]
    Target { path: String, why: &'static str },
    #[error("NAR has trailing data after byte {0}")]
    Trailing(u64),
}

struct Parser<'a, R> {
    r: R,
    offset: u64,
    path: Vec<u8>,
    limits: &'a Limits,
    stats: NarStats,
    entries: u64,
}

impl<R: Read> Parser<'_, R> {
    fn here(&self) -> String {
        if self.path.is_empty() {
            "/".to_owned()
        } else {
            String::from_utf8_lossy(&self.path).into_owned()
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        let mut done = 0;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) => return Err(NarError::Truncated(self.offset)),
                Ok(n) => {
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(NarError::Io {
                        offset: self.offset,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let n = pad_len(len);
        let mut b = [0u8; 8];
        let at = self.offset;
        self.read_exact(&mut b[..n])?;
        if b[..n].iter().any(|&x| x != 0) {
            return Err(NarError::Padding(at));
        }
        Ok(())
    }

    /// A string of at most `max` bytes; the length is checked before allocating.
    fn string(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, NarError> {
        let at = self.offset;
        let len = self.u64()?;
        if len > max as u64 {
            return Err(NarError::TooLong {
                offset: at,
                path: self.here(),
                what,
                len,
                max,
            });
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact(&mut v)?;
        self.padding(len)?;
        Ok(v)
    }

    fn token(&mut self) -> Result<(u64, Vec<u8>), NarError> {
        let at = self.offset;
        Ok((at, self.string(MAX_TOKEN_LEN, "token")?))
    }

    fn expect(&mut self, want: &'static str) -> Result<(), NarError> {
        let (at, t) = self.token()?;
        if t != want.as_bytes() {
            return Err(self.unexpected(at, want, &t));
        }
        Ok(())
    }

    fn unexpected(&self, offset: u64, expected: &'static str, found: &[u8]) -> NarError {
        NarError::Token {
            offset,
            path: self.here(),
            expected,
            found: String::from_utf8_lossy(found).into_owned(),
        }
    }

    fn node(&mut self, depth: usize) -> Result<(), NarError> {
        self.expect("(")?;
        self.expect("type")?;
        let (at, kind) = self.token()?;
        match kind.as_slice() {
            b"regular" => self.regular()?,
            b"symlink" => self.symlink()?,
            // A directory's entries run until the node's own closing ")".
            b"directory" => return self.directory(depth),
            other => return Err(self.unexpected(at, "regular, symlink or directory", other)),
        }
        self.expect(")")
    }

    fn regular(&mut self) -> Result<(), NarError> {
        self.stats.files += 1;
        let (mut at, mut t) = self.token()?;
        if t == b"executable" {
            let (mat, marker) = self.token()?;
            if !marker.is_empty() {
                return Err(self.unexpected(mat, "an empty string after executable", &marker));
            }
            (at, t) = self.token()?;
        }
        if t != b"contents" {
            return Err(self.unexpected(at, "contents", &t));
        }
        let len = self.u64()?;
        let mut left = len;
        let mut buf = [0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..n])?;
            left -= n as u64;
        }
        self.stats.content_bytes += len;
        self.padding(len)
    }

    fn symlink(&mut self) -> Result<(), NarError> {
        self.stats.symlinks += 1;
        self.expect("target")?;
        let target = self.string(MAX_TARGET_LEN, "symlink target")?;
        let why = if target.is_empty() {
            Some("empty")
        } else if target.contains(&0) {
            Some("contains NUL")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(NarError::Target {
                path: self.here(),
                why,
            });
        }
        Ok(())
    }

    fn directory(&mut self, depth: usize) -> Result<(), NarError> {
        self.stats.directories += 1;
        let mut prev: Option<Vec<u8>> = None;
        loop {
            let (at, t) = self.token()?;
            match t.as_slice() {
                b")" => return Ok(()),
                b"entry" => {}
                other => return Err(self.unexpected(at, "entry or )", other)),
            }
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(NarError::Entries(self.here()));
            }
            self.expect("(")?;
            self.expect("name")?;
            let name = self.string(MAX_NAME_LEN, "name")?;
            let parent_len = self.path.len();
            let shown = String::from_utf8_lossy(&name).into_owned();
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(NarError::Name {
                    path: self.here(),
                    name: shown,
                });
            }
            if let Some(p) = &prev {
                if name.as_slice() <= p.as_slice() {
                    return Err(NarError::Order {
                        path: self.here(),
                        name: shown,
                        prev: String::from_utf8_lossy(p).into_owned(),
                    });
                }
            }
            self.path.push(b'/');
            self.path.extend_from_slice(&name);
            if depth + 1 >= self.limits.max_depth {
                return Err(NarError::Depth(self.here()));
            }
            self.expect("node")?;
            self.node(depth + 1)?;
            self.expect(")")?;
            self.path.truncate(parent_len);
            prev = Some(name);
        }
    }
}

/// Reads one whole NAR from `r` and checks it strictly; `r` must end right
/// after it. File contents stream through in bounded chunks, so `r` can be
/// a tee that hashes or stores what passes.
pub fn validate<R: Read>(r: R, limits: &Limits) -> Result<NarStats, NarError> {
    let mut p = Parser {
        r,
        offset: 0,
        path: Vec::new(),
        limits,
        stats: NarStats::default(),
        entries: 0,
    };
    let magic = p.string(MAX_TOKEN_LEN, "magic").map_err(|e| match e {
        NarError::TooLong { .. } => NarError::Magic,
        e => e,
    })?;
    if magic != MAGIC {
        return Err(NarError::Magic);
    }
    p.node(0)?;
    let end = p.offset;
    let mut probe = [0u8; 1];
    loop {
        match p.r.read(&mut probe) {
            Ok(0) => break,
            Ok(_) => return Err(NarError::Trailing(end)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(NarError::Io {
                    offset: end,
                    source: e,
                })
            }
        }
    }
    p.stats.size = end;
    Ok(p.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Builds NAR bytes token by token, for hostile inputs.
    #[derive(Default)]
    struct Nar(Vec<u8>);

    impl Nar {
        fn s(mut self, t: &[u8]) -> Self {
            write_str(&mut self.0, t).unwrap();
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn file(self, contents: &[u8]) -> Self {
            self.s(b"(")
                .s(b"type")
                .s(b"regular")
                .s(b"contents")
                .s(contents)
                .s(b")")
        }
        fn entry(self, name: &[u8]) -> Self {
            self.s(b"entry").s(b"(").s(b"name").s(name).s(b"node")
        }
        fn dir(self) -> Self {
            self.s(b"(").s(b"type").s(b"directory")
        }
    }

    fn start() -> Nar {
        Nar::default().s(MAGIC)
    }

    fn check(n: Nar) -> Result<NarStats, NarError> {
        validate(n.0.as_slice(), &Limits::default())
    }

    fn dir_with(names: &[&[u8]]) -> Nar {
        let mut n = start().dir();
        for name in names {
            n = n.entry(name).file(b"x").s(b")");
        }
        n.s(b")")
    }

    #[test]
    fn hello_matches_nix_store_dump() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("hello.txt");
        fs::write(&f, "hello\n").unwrap();
        let bytes = dump_path(&f, Vec::new()).unwrap();
        assert_eq!(bytes, start().file(b"hello\n").0);
        // `printf 'hello\n' > f; nix-store --dump f | sha256sum` with Nix 2.8.
        assert_eq!(
            data_encoding::HEXLOWER.encode(&Sha256::digest(&bytes)),
            "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
        );
        let st = check(Nar(bytes)).unwrap();
        assert_eq!((st.files, st.content_bytes), (1, 6));
    }

    #[test]
    fn tree_matches_nix_store_dump_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ndir");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a"), "x").unwrap();
        fs::write(root.join("sub/b"), "12345678").unwrap();
        fs::set_permissions(root.join("sub/b"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let bytes = dump_path(&root, Vec::new()).unwrap();
        // The same tree given to `nix-store --dump … | sha256sum` (Nix 2.8).
        assert_eq!(
            data_encoding::HEXLOWER.encode(&Sha256::digest(&bytes)),
            "0a16d51b4cf5b2afd5172873cf97ab25145d48373637428eafaaccd5887b733f"
        );
        let st = check(Nar(bytes)).unwrap();
        assert_eq!((st.files, st.directories, st.symlinks), (2, 2, 1));
    }

    #[test]
    fn non_utf8_and_sorted_by_bytes() {
        let d = tempfile::tempdir().unwrap();
        for name in [&b"\xff"[..], b"B", b"a", b"\xc3\xa9"] {
            fs::write(d.path().join(std::ffi::OsStr::from_bytes(name)), "").unwrap();
        }
        let bytes = dump_path(d.path(), Vec::new()).unwrap();
        assert_eq!(check(Nar(bytes)).unwrap().files, 4);
    }

    #[test]
    fn rejects_bad_names() {
        for name in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'n'; 256]] {
            let err = check(dir_with(&[name])).unwrap_err();
            assert!(
                matches!(err, NarError::Name { .. } | NarError::TooLong { .. }),
                "{name:?}: {err}"
            );
        }
        assert!(check(dir_with(&[&[b'n'; 255]])).is_ok());
    }

    #[test]
    fn rejects_unsorted_and_duplicate_entries() {
        assert!(matches!(
            check(dir_with(&[b"b", b"a"])),
            Err(NarError::Order { .. })
        ));
        assert!(matches!(
            check(dir_with(&[b"a", b"a"])),
            Err(NarError::Order { .. })
        ));
        assert!(check(dir_with(&[b"a", b"b"])).is_ok());
    }

    #[test]
    fn rejects_depth_at_the_limit() {
        let nest = |levels: usize| {
            let mut n = start();
            for _ in 0..levels {
                n = n.dir().entry(b"d");
            }
            n = n.file(b"");
            for _ in 0..levels {
                n = n.s(b")").s(b")");
            }
            n
        };
        assert!(check(nest(MAX_DEPTH - 1)).is_ok());
        assert!(matches!(check(nest(MAX_DEPTH)), Err(NarError::Depth(_))));
    }

    #[test]
    fn rejects_bad_symlinks() {
        let link = |t: &[u8]| {
            start()
                .s(b"(")
                .s(b"type")
                .s(b"symlink")
                .s(b"target")
                .s(t)
                .s(b")")
        };
        assert!(check(link(b"/etc/passwd")).is_ok());
        assert!(matches!(check(link(b"")), Err(NarError::Target { .. })));
        assert!(matches!(check(link(b"a\0")), Err(NarError::Target { .. })));
        assert!(matches!(
            check(link(&[b'a'; 4096])),
            Err(NarError::TooLong { .. })
        ));
    }

    #[test]
    fn rejects_padding_tokens_trailing_and_truncation() {
        let good = start().file(b"abc").0;
        assert!(check(Nar(good.clone())).is_ok());
        // The padding after "abc" sits just before the final ")" token (16 bytes).
        let mut padded = good.clone();
        let at = padded.len() - 16 - 1;
        padded[at] = 1;
        assert!(matches!(check(Nar(padded)), Err(NarError::Padding(_))));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(check(Nar(trailing)), Err(NarError::Trailing(_))));
        for cut in [0, 5, 20, good.len() - 1] {
            assert!(
                matches!(
                    check(Nar(good[..cut].to_vec())),
                    Err(NarError::Truncated(_))
                ),
                "{cut}"
            );
        }
        let exec_marker = start()
            .s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"executable")
            .s(b"x")
            .s(b"contents")
            .s(b"")
            .s(b")");
        assert!(matches!(check(exec_marker), Err(NarError::Token { .. })));
        let unknown = start().s(b"(").s(b"type").s(b"fifo").s(b")");
        assert!(matches!(check(unknown), Err(NarError::Token { .. })));
        assert!(matches!(
            check(Nar::default().s(b"nix-archive-2").file(b"")),
            Err(NarError::Magic)
        ));
        // A huge announced token length is refused before any allocation.
        let huge = start().raw(&u64::MAX.to_le_bytes());
        assert!(matches!(check(huge), Err(NarError::TooLong { .. })));
    }

    #[test]
    fn mutations_never_panic() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("s")).unwrap();
        fs::write(d.path().join("s/f"), "contents").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("s/l")).unwrap();
        let good = dump_path(d.path(), Vec::new()).unwrap();
        for i in 0..good.len() {
            for v in [0u8, 1, 0xff, b'/', b'.'] {
                let mut m = good.clone();
                m[i] = v;
                let _ = check(Nar(m));
            }
            let _ = check(Nar(good[..i].to_vec()));
        }
    }
}
