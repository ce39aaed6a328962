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
mod tests;
