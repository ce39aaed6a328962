//! Where the publisher's commands reach a cache: the shared cache layer
//! (`nixcast_cache`: a directory or an S3-style bucket), driven from the
//! publisher's synchronous code.
//!
//! Keys are relative paths such as `nar/<hash>.nar.xz` or `hosts/foobar.json`.
//! Every write is atomic (the backends say how), and `sync` makes them
//! durable before the pointer that names them is written.

use std::fs;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use nixcast_cache::dir::Dir;
use nixcast_cache::s3::Bucket;
use nixcast_cache::{Backend, Body, Cache, HttpOptions};
use nixcast_common::layout;
use tempfile::NamedTempFile;

pub struct Target {
    cache: Cache,
    describe: String,
    rt: tokio::runtime::Runtime,
}

impl Target {
    /// Parses `--cache`: a directory (created if missing), `file://DIR`, or `s3://BUCKET/PREFIX?…`.
    pub fn open(spec: &str) -> Result<Self> {
        if spec.starts_with("s3://") {
            return Self::bucket(spec);
        }
        let root = Self::dir_of(spec)?;
        for sub in [
            "",
            layout::NAR_DIR,
            layout::MANIFESTS_DIR,
            layout::HOSTS_DIR,
        ] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create {}", root.join(sub).display()))?;
        }
        Self::dir(&root)
    }

    /// Opens a cache that must exist already (for reading commands).
    pub fn open_existing(spec: &str) -> Result<Self> {
        if spec.starts_with("s3://") {
            return Self::bucket(spec);
        }
        let dir = Self::dir_of(spec)?;
        anyhow::ensure!(dir.is_dir(), "{} is not a cache directory", dir.display());
        Self::dir(&dir)
    }

    fn dir(root: &std::path::Path) -> Result<Self> {
        // A directory never waits: one thread drives it.
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(Self {
            cache: Cache::from(Arc::new(Dir::new(root)) as Arc<dyn Backend>),
            describe: format!("file://{}", root.display()),
            rt,
        })
    }

    fn bucket(spec: &str) -> Result<Self> {
        let opts = HttpOptions {
            // The publisher's endpoint is the operator's own choice.
            allow_insecure_http: true,
            ..HttpOptions::default()
        };
        let bucket = Bucket::open(spec, &opts, &Vec::new())?.denied_is_missing();
        let describe = bucket.url_of("");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            cache: Cache::from(Arc::new(bucket) as Arc<dyn Backend>),
            describe: describe.trim_end_matches('/').to_owned(),
            rt,
        })
    }

    fn dir_of(spec: &str) -> Result<std::path::PathBuf> {
        if let Some(rest) = spec.strip_prefix("file://") {
            Ok(rest.into())
        } else if spec.contains("://") {
            bail!("unsupported target {spec:?}: use a directory, file://DIR or s3://BUCKET/PREFIX");
        } else {
            Ok(spec.into())
        }
    }

    /// The cache, for the shared read path (`nixcast_cache::reader`).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Runs one of the cache layer's steps to its end.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn backend(&self) -> &dyn Backend {
        self.cache.backend()
    }

    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.rt.block_on(self.backend().exists(key))?)
    }

    /// An object's bytes, or None if it does not exist. Anyone who can write
    /// to the bucket can put anything under a key we read, so no more than
    /// `max` bytes are ever read: a larger object is an error.
    pub fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.rt.block_on(self.cache.get_if_any(key, max))?)
    }

    /// Streams an object of at most `max` bytes into `out`; a larger one is
    /// an error once `max` bytes are written.
    pub fn read_to(&self, key: &str, out: &mut dyn Write, max: u64) -> Result<u64> {
        let reader = self.rt.block_on(self.cache.open(key))?;
        // A bucket's reader blocks on the runtime: it is read off it.
        let n = io::copy(&mut reader.take(max.saturating_add(1)), out)
            .with_context(|| format!("cannot read {}/{key}", self.describe))?;
        if n > max {
            bail!("{}/{key} is larger than {max} bytes", self.describe);
        }
        Ok(n)
    }

    /// Files directly under `prefix` ("" for the top level), with size and
    /// modification time: keys such as `hosts/foobar.json`.
    pub fn entries(&self, prefix: &str) -> Result<Vec<(String, u64, SystemTime)>> {
        let listed = self.rt.block_on(self.backend().list(prefix))?;
        Ok(listed
            .into_iter()
            .map(|e| (e.key, e.size, e.modified))
            .collect())
    }

    /// The keys of the files directly under `prefix/`.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .entries(prefix)?
            .into_iter()
            .map(|(k, _, _)| k)
            .collect())
    }

    /// A temporary local file for `put_file`.
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        Ok(self.backend().temp_file()?)
    }

    /// Stores a finished temporary file under `key`.
    pub fn put_file(&self, key: &str, file: NamedTempFile) -> Result<()> {
        Ok(self
            .rt
            .block_on(self.backend().put(key, Body::File(file)))?)
    }

    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        Ok(self
            .rt
            .block_on(self.backend().put(key, Body::Bytes(bytes.to_vec())))?)
    }

    /// Like `put`, but fails if `key` exists: history is never rewritten.
    pub fn put_new(&self, key: &str, bytes: &[u8]) -> Result<()> {
        Ok(self
            .rt
            .block_on(self.backend().put_new(key, bytes.to_vec()))?)
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        Ok(self.rt.block_on(self.backend().delete(key))?)
    }

    /// Makes every write of this run durable.
    pub fn sync(&self) -> Result<()> {
        Ok(self.rt.block_on(self.backend().sync())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().to_str().unwrap()).unwrap();
        target.put("hosts/h.json", &[b'x'; 100]).unwrap();
        let got = target.get_at_most("hosts/h.json", 100).unwrap().unwrap();
        assert_eq!(got.len(), 100);
        let err = target.get_at_most("hosts/h.json", 99).unwrap_err();
        assert!(err.to_string().contains("more than 99 bytes"), "{err}");
        assert!(target.get_at_most("hosts/none.json", 99).unwrap().is_none());
        let mut out = Vec::new();
        assert_eq!(target.read_to("hosts/h.json", &mut out, 100).unwrap(), 100);
        let mut out = Vec::new();
        let err = target.read_to("hosts/h.json", &mut out, 99).unwrap_err();
        assert!(err.to_string().contains("larger than 99 bytes"), "{err}");
        assert!(out.len() <= 100, "{}", out.len());
    }
}
