//! Files that appear whole. Bytes go to a temporary file beside the
//! destination (a dot-name, which `nixcast gc` removes when a run was cut
//! short), which gets its final mode (by fchmod: not narrowed by the umask;
//! a temporary file starts as 0600, so a secret is never readable by others),
//! is flushed to disk, and is renamed over the destination; then the
//! directory is flushed, so that after a crash or a power loss the file is
//! the old one or the new one, whole.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// Reads a small file the program was given (a key, an identity, a netrc
/// or environment file, a state file): a regular file of at most `cap`
/// bytes, or an error that says what it is instead (the caller names the
/// file). It is opened without blocking, so that a FIFO named by mistake or
/// malice neither hangs the program nor, like `/dev/zero`, fills its memory.
pub fn read_small(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Not blocking on a FIFO; not becoming a terminal's controlling
        // process by opening one.
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)?;
    let md = file.metadata()?;
    if !md.is_file() {
        let what = format!("not a regular file ({})", kind_of(&md.file_type()));
        return Err(Error::new(ErrorKind::InvalidInput, what));
    }
    let too_large = || Error::new(ErrorKind::InvalidData, format!("larger than {cap} bytes"));
    if md.len() > cap {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    // The file may grow while it is read: the cap holds anyway.
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Like `read_small`, as UTF-8 text.
pub fn read_small_text(path: &Path, cap: u64) -> std::io::Result<String> {
    String::from_utf8(read_small(path, cap)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Whether a file may replace one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    Yes,
    /// Fail if the destination exists (history is never rewritten).
    No,
}

/// The directory a path is in (`.` for a bare name).
pub fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A temporary file in `dir`, for `persist`.
pub fn temp_in(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

/// Gives a finished temporary file `mode`, flushes it and renames it to
/// `dest`. The directory is not flushed: see `sync_dir`.
pub fn persist(tmp: NamedTempFile, dest: &Path, mode: u32, replace: Replace) -> Result<File> {
    let file = tmp.as_file();
    file.set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    match replace {
        Replace::Yes => tmp
            .persist(dest)
            .with_context(|| format!("cannot write {}", dest.display())),
        Replace::No => tmp
            .persist_noclobber(dest)
            .with_context(|| format!("cannot write {}: does it exist already?", dest.display())),
    }
}

/// Flushes a directory's entries (the renames into it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Writes `bytes` to `path` atomically and durably, with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = dir_of(path);
    let mut tmp = temp_in(dir)?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    persist(tmp, path, mode, Replace::Yes)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_read_takes_only_a_regular_file_within_its_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"twelve bytes", 0o600).unwrap();
        assert_eq!(read_small(&p, 12).unwrap(), b"twelve bytes");
        let err = read_small(&p, 11).unwrap_err();
        assert!(err.to_string().contains("larger than 11 bytes"), "{err}");
        let fifo = d.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer: a blocking open would never return.
        let err = read_small(&fifo, 100).unwrap_err();
        assert!(
            err.to_string().contains("not a regular file (a FIFO)"),
            "{err}"
        );
        let err = read_small(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(err.to_string().contains("(a device)"), "{err}");
        let err = read_small(d.path(), 100).unwrap_err();
        assert!(err.to_string().contains("(a directory)"), "{err}");
    }

    #[test]
    fn writes_replace_whole_with_the_mode_given() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"one", 0o600).unwrap();
        write(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");

        let tmp = temp_in(d.path()).unwrap();
        let err = persist(tmp, &p, 0o644, Replace::No).unwrap_err();
        assert!(format!("{err:#}").contains("exist already"), "{err:#}");
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
    }
}
