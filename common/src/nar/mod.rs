//! NAR, the Nix ARchive: the one canonical serialisation of a file system
//! tree that Nix hashes (`NarHash`), signs and ships.
//!
//! A NAR holds only what Nix keeps of a tree: regular files (contents and
//! one executable flag), symlinks (their target) and directories (their
//! entries sorted by name). Owners, times and other mode bits are dropped,
//! so equal trees give equal bytes.
//!
//! Two primitives make up the whole format: a `u64` is 8 bytes,
//! little-endian; a string is its length as a `u64`, its bytes, then zero
//! bytes up to the next multiple of 8. Grammar, with `str(..)` a string:
//!
//! ```text
//! nar   = str("nix-archive-1") node
//! node  = str("(") str("type") body str(")")
//! body  = str("regular") [ str("executable") str("") ] str("contents") str(CONTENTS)
//!       | str("symlink") str("target") str(TARGET)
//!       | str("directory") entry*
//! entry = str("entry") str("(") str("name") str(NAME) str("node") node str(")")
//! ```
//!
//! A file holding `hello\n` is 120 bytes: `0d 00 00 00 00 00 00 00`,
//! `nix-archive-1` and 3 zero bytes, then `(`, `type`, `regular`,
//! `contents`, `06 00 …`, `hello\n` and 2 zero bytes, and `)`, each token a
//! string as above.
//!
//! Nix's parser (`src/libutil/archive.cc`, `parseDump`) is the source of
//! truth for what a valid NAR is. Since the fix for CVE-2024-45593 and the
//! hardening after CVE-2026-44028 it rejects: names that are empty, `.`,
//! `..` or contain `/` or NUL; entries whose names are not strictly
//! increasing byte strings (unsorted or duplicate); names over 255 bytes;
//! symlink targets that are empty, contain NUL or exceed 4095 bytes;
//! nesting 64 deep (`narMaxDepth`); non-zero padding; and an `executable`
//! marker with a non-empty value. [`validate`] rejects all of these too, in
//! release builds, and also trailing bytes after the archive and more
//! entries than [`Limits::max_entries`], so that a hostile archive can cost
//! neither unbounded memory nor a crash.
//!
//! - [`dump_path`] writes the NAR of a file, directory or symlink, as
//!   `nix-store --dump` does: symlinks are archived, never followed.
//! - [`validate`] reads one NAR from an untrusted stream in one pass, with
//!   bounded memory, and says where it found a problem.

mod reader;
mod writer;

pub use reader::{validate, Limits, NarError, NarStats};
pub use writer::{dump_path, NarWriteError};

/// The string every NAR starts with.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// The deepest nesting Nix accepts: the root is at depth 0 and a node at
/// depth `MAX_DEPTH` is refused (Nix's `narMaxDepth`).
pub const MAX_DEPTH: usize = 64;

/// The longest entry name, in bytes (Nix's `narMaxName`, `NAME_MAX` on Linux).
pub const MAX_NAME_LEN: usize = 255;

/// The longest symlink target, in bytes (Nix's `narMaxTarget`, `PATH_MAX - 1`).
pub const MAX_TARGET_LEN: usize = 4095;

/// The longest string accepted where the grammar expects a token. The
/// longest token is `nix-archive-1` (13 bytes); Nix allows 32 so that short
/// garbage still shows up in its error messages, and so do we.
pub const MAX_TOKEN_LEN: usize = 32;

/// How many zero bytes follow a string of `len` bytes.
fn padding_len(len: u64) -> usize {
    // The remainder is below 8, so the cast cannot truncate.
    ((8 - len % 8) % 8) as usize
}

/// Writes one string of the wire format: length, bytes, zero padding.
fn write_str<W: std::io::Write>(out: &mut W, s: &[u8]) -> std::io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s)?;
    out.write_all(&[0; 8][..padding_len(s.len() as u64)])
}

/// Shows bytes from an archive or a file name in a message: printable ASCII
/// as is, everything else escaped, so that hostile names cannot inject
/// control characters into logs.
fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers to build NARs in tests: a token-level builder for hostile
    //! archives, and a small tree description that can be written to disk or
    //! encoded directly, as an oracle independent of [`super::dump_path`].

    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::{write_str, MAGIC};

    /// Builds NAR bytes token by token, including invalid ones.
    #[derive(Default, Clone)]
    pub struct NarBuilder(pub Vec<u8>);

    impl NarBuilder {
        /// A builder that has already written the magic.
        pub fn start() -> Self {
            Self::default().s(MAGIC)
        }

        /// Appends one well-formed string.
        pub fn s(mut self, s: &[u8]) -> Self {
            write_str(&mut self.0, s).expect("writing to a Vec cannot fail");
            self
        }

        /// Appends raw bytes, for broken lengths and padding.
        pub fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }

        pub fn u64(self, n: u64) -> Self {
            self.raw(&n.to_le_bytes())
        }

        /// A whole regular file node.
        pub fn file(self, contents: &[u8]) -> Self {
            self.s(b"(")
                .s(b"type")
                .s(b"regular")
                .s(b"contents")
                .s(contents)
                .s(b")")
        }

        /// A whole symlink node.
        pub fn symlink(self, target: &[u8]) -> Self {
            self.s(b"(")
                .s(b"type")
                .s(b"symlink")
                .s(b"target")
                .s(target)
                .s(b")")
        }

        /// Opens a directory node; close it with `.s(b")")`.
        pub fn dir(self) -> Self {
            self.s(b"(").s(b"type").s(b"directory")
        }

        /// Opens an entry up to its node; close it with `.s(b")")` after the node.
        pub fn entry(self, name: &[u8]) -> Self {
            self.s(b"entry").s(b"(").s(b"name").s(name).s(b"node")
        }

        pub fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    /// A file system tree, described in memory.
    #[derive(Debug, Clone)]
    pub enum Tree {
        File {
            executable: bool,
            contents: Vec<u8>,
        },
        Symlink(Vec<u8>),
        /// Entries in any order; names must be unique and valid.
        Dir(Vec<(Vec<u8>, Tree)>),
    }

    impl Tree {
        /// Encodes the tree straight from the grammar, without the file system.
        pub fn to_nar(&self) -> Vec<u8> {
            let mut b = NarBuilder::start();
            self.encode(&mut b);
            b.0
        }

        fn encode(&self, b: &mut NarBuilder) {
            let mut s = |t: &[u8]| write_str(&mut b.0, t).expect("a Vec cannot fail");
            s(b"(");
            s(b"type");
            match self {
                Tree::File {
                    executable,
                    contents,
                } => {
                    s(b"regular");
                    if *executable {
                        s(b"executable");
                        s(b"");
                    }
                    s(b"contents");
                    s(contents);
                }
                Tree::Symlink(target) => {
                    s(b"symlink");
                    s(b"target");
                    s(target);
                }
                Tree::Dir(entries) => {
                    s(b"directory");
                    let mut sorted: Vec<_> = entries.iter().collect();
                    sorted.sort_by(|a, b| a.0.cmp(&b.0));
                    for (name, node) in sorted {
                        for t in [&b"entry"[..], b"(", b"name", name, b"node"] {
                            write_str(&mut b.0, t).expect("a Vec cannot fail");
                        }
                        node.encode(b);
                        write_str(&mut b.0, b")").expect("a Vec cannot fail");
                    }
                }
            }
            write_str(&mut b.0, b")").expect("a Vec cannot fail");
        }

        /// Creates the tree at `path`, which must not exist yet.
        pub fn write_to(&self, path: &Path) {
            match self {
                Tree::File {
                    executable,
                    contents,
                } => {
                    fs::write(path, contents).unwrap();
                    let mode = if *executable { 0o755 } else { 0o644 };
                    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
                }
                Tree::Symlink(target) => {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path).unwrap()
                }
                Tree::Dir(entries) => {
                    fs::create_dir(path).unwrap();
                    for (name, node) in entries {
                        node.write_to(&path.join(std::ffi::OsStr::from_bytes(name)));
                    }
                }
            }
        }

        /// (files, directories, symlinks, content bytes), as [`super::NarStats`] counts them.
        pub fn counts(&self) -> (u64, u64, u64, u64) {
            match self {
                Tree::File { contents, .. } => (1, 0, 0, contents.len() as u64),
                Tree::Symlink(_) => (0, 0, 1, 0),
                Tree::Dir(entries) => entries.iter().fold((0, 1, 0, 0), |acc, (_, node)| {
                    let c = node.counts();
                    (acc.0 + c.0, acc.1 + c.1, acc.2 + c.2, acc.3 + c.3)
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Tests that need both halves: the writer's output must pass the reader.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::test_support::Tree;
    use super::*;

    /// Names from a small alphabet, so that siblings often share prefixes
    /// and the byte order of non-ASCII names matters.
    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![b'a', b'b', b'A', b'.', b'-', 0xc3, 0xa9, 0xff]),
            1..6,
        )
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..20)).prop_map(
                |(executable, contents)| Tree::File {
                    executable,
                    contents
                }
            ),
            prop::collection::vec(1u8..=255, 1..12).prop_map(Tree::Symlink),
        ];
        leaf.prop_recursive(4, 24, 5, |inner| {
            // A map makes sibling names unique, as a file system does.
            prop::collection::btree_map(name(), inner, 0..5)
                .prop_map(|m: BTreeMap<_, _>| Tree::Dir(m.into_iter().collect()))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// A tree written to disk and dumped gives exactly the bytes the
        /// grammar gives, and the reader accepts them and counts the tree.
        #[test]
        fn dump_matches_grammar_and_validates(t in tree()) {
            let d = tempfile::tempdir().unwrap();
            let root = d.path().join("root");
            t.write_to(&root);
            let nar = dump_path(&root, Vec::new()).unwrap();
            prop_assert_eq!(&nar, &t.to_nar());
            let st = validate(nar.as_slice(), &Limits::default()).unwrap();
            prop_assert_eq!(
                (st.files, st.directories, st.symlinks, st.content_bytes),
                t.counts()
            );
            prop_assert_eq!(st.nar_size, nar.len() as u64);
        }

        /// Damaged archives are rejected or accepted, but never panic the reader;
        /// cut short, they are rejected as such.
        #[test]
        fn mutations_never_panic(
            t in tree(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let good = t.to_nar();
            let mut bad = good.clone();
            for (at, byte) in edits {
                let i = at.index(bad.len());
                bad[i] = byte;
            }
            let _ = validate(bad.as_slice(), &Limits::default());
            // Every strict prefix of a valid archive is an early end.
            let short = validate(&good[..cut.index(good.len())], &Limits::default());
            prop_assert!(matches!(short, Err(NarError::Truncated { .. })), "{:?}", short);
        }
    }
}
