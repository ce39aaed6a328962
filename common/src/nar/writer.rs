//! Writes the NAR of a tree on disk, byte for byte as `nix-store --dump`.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{padding_len, write_str, MAGIC, MAX_DEPTH};

/// Why [`dump_path`] could not archive a tree.
#[derive(Debug, Error)]
pub enum NarWriteError {
    /// Reading the tree failed (stat, open, read, readlink or readdir).
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// The output refused bytes.
    #[error("cannot write the NAR, at {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    /// A socket, fifo or device: NAR has no way to say what it is.
    #[error("cannot archive {}: it is a {kind}, not a regular file, directory or symlink", path.display())]
    Unsupported { path: PathBuf, kind: &'static str },
    /// The file grew or shrank between `fstat` and the end of its contents;
    /// its NAR would not describe any one state of the tree.
    #[error("{} changed while it was archived: {expected} bytes expected, {found} read", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// What `open` reached is not the regular file `lstat` saw: the path was
    /// replaced, perhaps by a symlink, which must not be followed.
    #[error("{} was replaced while it was archived", path.display())]
    Replaced { path: PathBuf },
    /// Nix refuses to read a NAR this deep since CVE-2026-44028, as does
    /// [`super::validate`], so there is no point in writing it.
    #[error("cannot archive {}: it is nested {MAX_DEPTH} or more directories deep", path.display())]
    TooDeep { path: PathBuf },
}

/// Writes the NAR of `path` (a regular file, directory or symlink) to `out`
/// and returns `out`.
///
/// Symlinks are archived as symlinks and never followed, `path` included.
/// A regular file is executable when its owner may execute it, as in Nix.
/// Entries are sorted by their raw bytes; names need not be UTF-8. File
/// contents are streamed through a 64 KiB buffer. `out` receives many small
/// writes, so give it a buffered writer.
///
/// The tree must not change meanwhile, as store paths do not. A file that
/// is resized or replaced while it is read is an error; a directory swapped
/// for a symlink between `lstat` and listing it is not noticed, which the
/// caller's comparison with the `NarHash` Nix recorded would catch.
pub fn dump_path<W: Write>(path: &Path, mut out: W) -> Result<W, NarWriteError> {
    let mut w = Dumper {
        out: &mut out,
        buf: Vec::new(),
    };
    w.str(path, MAGIC)?;
    w.node(path, 0)?;
    Ok(out)
}

struct Dumper<'a, W> {
    out: &'a mut W,
    /// The copy buffer, allocated at the first non-empty file.
    buf: Vec<u8>,
}

impl<W: Write> Dumper<'_, W> {
    fn str(&mut self, path: &Path, s: &[u8]) -> Result<(), NarWriteError> {
        write_str(self.out, s).map_err(|error| write_error(path, error))
    }

    fn node(&mut self, path: &Path, depth: usize) -> Result<(), NarWriteError> {
        if depth >= MAX_DEPTH {
            return Err(NarWriteError::TooDeep { path: path.into() });
        }
        let md = fs::symlink_metadata(path).map_err(|error| read_error(path, error))?;
        let ft = md.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "file of unknown type"
            };
            return Err(NarWriteError::Unsupported {
                path: path.into(),
                kind,
            });
        }
        self.str(path, b"(")?;
        self.str(path, b"type")?;
        if ft.is_file() {
            self.regular(path, &md)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|error| read_error(path, error))?;
            self.str(path, b"symlink")?;
            self.str(path, b"target")?;
            self.str(path, target.as_os_str().as_bytes())?;
        } else {
            self.directory(path, depth)?;
        }
        self.str(path, b")")
    }

    fn regular(&mut self, path: &Path, lstat: &Metadata) -> Result<(), NarWriteError> {
        let mut file = File::open(path).map_err(|error| read_error(path, error))?;
        // `open` follows symlinks, so the path could have been swapped for a
        // link (or another file) since `lstat`. Comparing the inode of what
        // we opened with what we inspected catches that.
        let md = file.metadata().map_err(|error| read_error(path, error))?;
        let len = md.len();
        if !md.is_file() || md.dev() != lstat.dev() || md.ino() != lstat.ino() {
            return Err(NarWriteError::Replaced { path: path.into() });
        }
        self.str(path, b"regular")?;
        // Nix tests the owner's execute bit only (S_IXUSR).
        if md.mode() & 0o100 != 0 {
            self.str(path, b"executable")?;
            self.str(path, b"")?;
        }
        self.str(path, b"contents")?;
        self.out
            .write_all(&len.to_le_bytes())
            .map_err(|error| write_error(path, error))?;
        let copied = self.copy(path, &mut file, len)?;
        if copied != len {
            return Err(NarWriteError::Changed {
                path: path.into(),
                expected: len,
                found: copied,
            });
        }
        self.out
            .write_all(&[0; 8][..padding_len(len)])
            .map_err(|error| write_error(path, error))
    }

    /// Copies the file to the output, stopping at `len` bytes since the
    /// length is already written; returns how many bytes the file really
    /// had, up to `len + 1`, so that a file that grew is noticed.
    fn copy(&mut self, path: &Path, file: &mut File, len: u64) -> Result<u64, NarWriteError> {
        if len > 0 && self.buf.is_empty() {
            self.buf = vec![0; 64 * 1024];
        }
        let mut copied = 0u64;
        while copied < len {
            // The minimum is at most the buffer's length, so it fits a usize.
            let want = (len - copied).min(self.buf.len() as u64) as usize;
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(read_error(path, error)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(|error| write_error(path, error))?;
            copied += n as u64;
        }
        let mut probe = [0u8; 1];
        loop {
            match file.read(&mut probe) {
                Ok(0) => return Ok(copied),
                Ok(_) => return Ok(copied + 1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(read_error(path, error)),
            }
        }
    }

    fn directory(&mut self, path: &Path, depth: usize) -> Result<(), NarWriteError> {
        self.str(path, b"directory")?;
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(|error| read_error(path, error))? {
            let entry = entry.map_err(|error| read_error(path, error))?;
            names.push(entry.file_name());
        }
        // The order of the raw bytes, which is what `std::map<std::string>`
        // gives Nix; `OsString`'s own order is not promised to be that.
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = path.join(&name);
            self.str(path, b"entry")?;
            self.str(path, b"(")?;
            self.str(path, b"name")?;
            self.str(path, name.as_bytes())?;
            self.str(path, b"node")?;
            self.node(&child, depth + 1)?;
            self.str(path, b")")?;
        }
        Ok(())
    }
}

fn read_error(path: &Path, error: io::Error) -> NarWriteError {
    NarWriteError::Read {
        path: path.into(),
        error,
    }
}

fn write_error(path: &Path, error: io::Error) -> NarWriteError {
    NarWriteError::Write {
        path: path.into(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;

    use sha2::{Digest, Sha256};

    use super::super::test_support::NarBuilder;
    use super::super::{validate, Limits};
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn hello_is_byte_exact() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("hello");
        fs::write(&f, "hello\n").unwrap();
        chmod(&f, 0o644);
        let nar = dump_path(&f, Vec::new()).unwrap();

        // Spelled out from the grammar, so that a shared mistake between the
        // writer and the test builder cannot hide.
        let mut want = Vec::new();
        let mut s = |len: u8, text: &[u8]| {
            want.extend_from_slice(&[len, 0, 0, 0, 0, 0, 0, 0]);
            want.extend_from_slice(text);
        };
        s(13, b"nix-archive-1\0\0\0");
        s(1, b"(\0\0\0\0\0\0\0");
        s(4, b"type\0\0\0\0");
        s(7, b"regular\0");
        s(8, b"contents");
        s(6, b"hello\n\0\0");
        s(1, b")\0\0\0\0\0\0\0");
        assert_eq!(nar, want);
        assert_eq!(nar.len(), 120);

        // `printf 'hello\n' > /tmp/nar-check/hello;
        //  nix-store --dump /tmp/nar-check/hello | sha256sum` with Nix 2.8.0.
        assert_eq!(
            sha256_hex(&nar),
            "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
        );
    }

    /// The tree below was built by hand in /tmp/nar-check/t with the same
    /// names, contents and modes, and dumped with `nix-store --dump` (Nix
    /// 2.8.0): 2704 bytes, of this sha256.
    #[test]
    fn tree_matches_nix_store_dump() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("bin")).unwrap();
        fs::create_dir_all(t.join("nested/deeper/deepest")).unwrap();
        fs::create_dir(t.join("void")).unwrap();
        let files: [(&[u8], &[u8], u32); 8] = [
            (b"a.txt", b"x", 0o644),
            (b"bin/run", b"#!/bin/sh\n", 0o755),
            (b"bin/eight", b"12345678", 0o644),
            (b"empty", b"", 0o644),
            // Group may execute, owner may not: Nix does not mark it.
            (b"gx", b"g", 0o654),
            (b"\xc3\xa9", b"e", 0o644),
            (b"\xff", b"ff", 0o644),
            (b"nested/deeper/deepest/z", b"z", 0o644),
        ];
        for (name, contents, mode) in files {
            let p = t.join(OsStr::from_bytes(name));
            fs::write(&p, contents).unwrap();
            chmod(&p, mode);
        }
        std::os::unix::fs::symlink("/etc/passwd", t.join("link")).unwrap();

        let nar = dump_path(&t, Vec::new()).unwrap();
        assert_eq!(nar.len(), 2704);
        assert_eq!(
            sha256_hex(&nar),
            "3a1e708f8eb8c3267be480885af445ad4b269d873fe147d9270daf71b4d1b9eb"
        );
        let st = validate(nar.as_slice(), &Limits::default()).unwrap();
        assert_eq!(
            (st.files, st.executables, st.directories, st.symlinks),
            (8, 1, 6, 1)
        );
        assert_eq!((st.content_bytes, st.nar_size), (24, 2704));
    }

    #[test]
    fn symlinks_are_archived_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "do not archive me").unwrap();
        let root = d.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();

        let nar = dump_path(&root, Vec::new()).unwrap();
        let target = outside.as_os_str().as_bytes();
        let want = NarBuilder::start()
            .dir()
            .entry(b"l")
            .symlink(target)
            .s(b")")
            .s(b")");
        assert_eq!(nar, want.bytes());

        // A symlink given as the root is archived as a symlink too.
        let nar = dump_path(&root.join("l"), Vec::new()).unwrap();
        assert_eq!(nar, NarBuilder::start().symlink(target).bytes());
    }

    #[test]
    fn executable_and_padding() {
        let d = tempfile::tempdir().unwrap();
        for (len, mode) in [
            (0usize, 0o755),
            (7, 0o700),
            (8, 0o100),
            (9, 0o644),
            (16, 0o755),
        ] {
            let f = d.path().join(format!("f{len}"));
            let contents = vec![b'c'; len];
            fs::write(&f, &contents).unwrap();
            chmod(&f, mode);
            let nar = dump_path(&f, Vec::new()).unwrap();
            let want = if mode & 0o100 != 0 {
                NarBuilder::start()
                    .s(b"(")
                    .s(b"type")
                    .s(b"regular")
                    .s(b"executable")
                    .s(b"")
                    .s(b"contents")
                    .s(&contents)
                    .s(b")")
            } else {
                NarBuilder::start().file(&contents)
            };
            assert_eq!(nar, want.bytes(), "{len} bytes, mode {mode:o}");
        }
    }

    #[test]
    fn sockets_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = dump_path(d.path(), Vec::new()).unwrap_err();
        assert!(
            matches!(&err, NarWriteError::Unsupported { path, kind: "socket" } if *path == sock),
            "{err}"
        );
    }

    #[test]
    fn missing_path_is_a_read_error() {
        let d = tempfile::tempdir().unwrap();
        let err = dump_path(&d.path().join("nope"), Vec::new()).unwrap_err();
        assert!(matches!(err, NarWriteError::Read { .. }), "{err}");
    }

    #[test]
    fn too_deep_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().join("root");
        for _ in 0..MAX_DEPTH {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        // The innermost directory is at depth MAX_DEPTH; its parent is fine.
        let err = dump_path(&d.path().join("root"), Vec::new()).unwrap_err();
        assert!(
            matches!(&err, NarWriteError::TooDeep { path } if *path == p),
            "{err}"
        );
        assert!(dump_path(&d.path().join("root/d"), Vec::new()).is_ok());
    }

    /// A writer that fails after a few bytes, as a full disk does.
    #[derive(Debug)]
    struct Full(usize);

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_errors_are_write_errors() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, vec![0u8; 100_000]).unwrap();
        for room in [0, 60, 70_000] {
            let err = dump_path(&f, Full(room)).unwrap_err();
            assert!(matches!(err, NarWriteError::Write { .. }), "{room}: {err}");
        }
    }

    /// A file that grows while it is read must not produce a NAR whose
    /// length field disagrees with its contents. `/proc/self/status` reports
    /// a size of 0 but has contents, which is the same shape.
    #[test]
    fn file_longer_than_its_metadata_is_refused() {
        let status = Path::new("/proc/self/status");
        assert_eq!(fs::symlink_metadata(status).unwrap().len(), 0);
        let err = dump_path(status, Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                NarWriteError::Changed {
                    expected: 0,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );
    }
}
