//! Where a cache is written: a directory now, an object store later.
//!
//! Keys are relative paths such as `nar/<hash>.nar.xz` or `hosts/foobar.json`.
//! Every write is atomic: bytes go to a temporary file that is flushed to
//! disk and then renamed, so a reader sees a whole file or none.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tempfile::NamedTempFile;

pub struct Target {
    root: PathBuf,
}

impl Target {
    /// Opens a cache that must exist already (for reading commands).
    pub fn open_existing(spec: &str) -> Result<Self> {
        let dir = Self::dir_of(spec)?;
        anyhow::ensure!(dir.is_dir(), "{} is not a cache directory", dir.display());
        Ok(Self { root: dir })
    }

    fn dir_of(spec: &str) -> Result<PathBuf> {
        if let Some(rest) = spec.strip_prefix("file://") {
            Ok(PathBuf::from(rest))
        } else if spec.contains("://") {
            bail!("unsupported target {spec:?}: use a directory or file://DIR");
        } else {
            Ok(PathBuf::from(spec))
        }
    }

    /// Parses `--to`: a directory or `file://DIR`; created if missing.
    pub fn open(spec: &str) -> Result<Self> {
        let root = Self::dir_of(spec)?;
        for sub in ["", "nar", "manifests", "hosts"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create {}", root.join(sub).display()))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    pub fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn path(&self, key: &str) -> PathBuf {
        debug_assert!(!key.starts_with('/') && !key.split('/').any(|c| c == ".."));
        self.root.join(key)
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        let p = self.path(key);
        p.try_exists()
            .with_context(|| format!("cannot check {}", p.display()))
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(key);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    /// Keys directly under `prefix/` (for example the history of one host).
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.path(prefix);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        let mut keys = Vec::new();
        for e in entries {
            let name = e?.file_name();
            if let Some(n) = name.to_str() {
                if !n.starts_with('.') {
                    keys.push(format!("{prefix}/{n}"));
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Every file under `prefix` ("" for the top level only), with its size
    /// and modification time, for garbage collection.
    pub fn entries(&self, prefix: &str) -> Result<Vec<(String, u64, std::time::SystemTime)>> {
        let dir = self.root.join(prefix);
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        for e in rd {
            let e = e?;
            let md = e.metadata()?;
            if !md.is_file() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            out.push((key, md.len(), md.modified()?));
        }
        out.sort();
        Ok(out)
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", p.display())),
        }
    }

    /// A temporary file on the same file system as the target, for `put_file`.
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(self.root.join("nar"))
            .context("cannot create a temporary file in the target")
    }

    /// Moves a finished temporary file to `key`, after flushing it to disk so
    /// that no crash can leave a named file with missing bytes.
    pub fn put_file(&self, key: &str, file: NamedTempFile) -> Result<()> {
        let dest = self.path(key);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        file.as_file().sync_all()?;
        file.persist(&dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        Ok(())
    }

    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes)?;
        self.put_file(key, tmp)
    }

    /// Like `put`, but fails if `key` exists: history is never rewritten.
    pub fn put_new(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        let dest = self.path(key);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        tmp.persist_noclobber(&dest)
            .with_context(|| format!("cannot write {}: does it exist already?", dest.display()))?;
        Ok(())
    }

    /// Makes the renames of this run durable (directory entries are flushed).
    pub fn sync(&self) -> Result<()> {
        for sub in ["nar", "", "manifests", "hosts"] {
            let d = self.root.join(sub);
            fs::File::open(&d)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", d.display()))?;
        }
        Ok(())
    }
}
