//! Where a cache is written: a directory, or an S3-style bucket.
//!
//! Keys are relative paths such as `nar/<hash>.nar.xz` or `hosts/foobar.json`.
//! Every write is atomic: in a directory, bytes go to a temporary file that
//! is flushed to disk and then renamed (`nixcast_cli::fs`); in a bucket, an object appears whole
//! when its PUT (or the completion of its multipart upload) succeeds. Only
//! this module knows about S3.

use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use nixcast_cli::fs::Replace;
use nixcast_common::layout;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tempfile::NamedTempFile;

/// Objects up to this size are sent in one PUT; larger ones in parts of this size.
const PART_SIZE: usize = 8 << 20;

pub struct Target {
    kind: Kind,
}

enum Kind {
    Dir(PathBuf),
    S3(S3),
}

struct S3 {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
    rt: tokio::runtime::Runtime,
    /// Local temporary files (compressed NARs) wait here for upload.
    staging: tempfile::TempDir,
}

impl S3 {
    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn key_of(&self, p: &ObjectPath) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_owned()
        } else {
            s.strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(s)
                .to_owned()
        }
    }

    /// `s3://BUCKET/PREFIX?endpoint=URL&region=R`; credentials from the
    /// standard AWS variables.
    fn open(spec: &str) -> Result<Self> {
        let rest = spec.strip_prefix("s3://").expect("an s3 URL");
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        anyhow::ensure!(!bucket.is_empty(), "no bucket in {spec:?}");
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("bad parameter {pair:?} in {spec:?}"))?;
            b = match k {
                "endpoint" => b
                    .with_endpoint(v)
                    .with_allow_http(v.starts_with("http://"))
                    .with_virtual_hosted_style_request(false),
                "region" => b.with_region(v),
                _ => bail!("unknown parameter {k:?} in {spec:?}: use endpoint and region"),
            };
        }
        let store = b.build().with_context(|| format!("cannot open {spec}"))?;
        Ok(S3 {
            store: Arc::new(store),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?,
            staging: tempfile::Builder::new()
                .prefix("nixcast-upload-")
                .tempdir()?,
        })
    }

    /// S3 answers 403 instead of 404 for a missing key when the caller may not list.
    fn missing(e: &object_store::Error) -> bool {
        matches!(
            e,
            object_store::Error::NotFound { .. } | object_store::Error::PermissionDenied { .. }
        )
    }
}

impl Target {
    /// Parses `--to`: a directory (created if missing), `file://DIR`, or `s3://BUCKET/PREFIX?…`.
    pub fn open(spec: &str) -> Result<Self> {
        if spec.starts_with("s3://") {
            return Ok(Self {
                kind: Kind::S3(S3::open(spec)?),
            });
        }
        let root = Self::dir_of(spec)?;
        for sub in ["", "nar", "manifests", layout::HOSTS_DIR] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create {}", root.join(sub).display()))?;
        }
        Ok(Self {
            kind: Kind::Dir(root),
        })
    }

    /// Opens a cache that must exist already (for reading commands).
    pub fn open_existing(spec: &str) -> Result<Self> {
        if spec.starts_with("s3://") {
            return Self::open(spec);
        }
        let dir = Self::dir_of(spec)?;
        anyhow::ensure!(dir.is_dir(), "{} is not a cache directory", dir.display());
        Ok(Self {
            kind: Kind::Dir(dir),
        })
    }

    fn dir_of(spec: &str) -> Result<PathBuf> {
        if let Some(rest) = spec.strip_prefix("file://") {
            Ok(PathBuf::from(rest))
        } else if spec.contains("://") {
            bail!("unsupported target {spec:?}: use a directory, file://DIR or s3://BUCKET/PREFIX");
        } else {
            Ok(PathBuf::from(spec))
        }
    }

    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Dir(root) => format!("file://{}", root.display()),
            Kind::S3(s) => format!("s3://{}/{}", s.bucket, s.prefix),
        }
    }

    fn file(root: &std::path::Path, key: &str) -> PathBuf {
        debug_assert!(!key.starts_with('/') && !key.split('/').any(|c| c == ".."));
        root.join(key)
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        match &self.kind {
            Kind::Dir(root) => {
                let p = Self::file(root, key);
                p.try_exists()
                    .with_context(|| format!("cannot check {}", p.display()))
            }
            Kind::S3(s) => match s.rt.block_on(s.store.head(&s.path(key))) {
                Ok(_) => Ok(true),
                Err(e) if S3::missing(&e) => Ok(false),
                Err(e) => Err(e).with_context(|| format!("cannot check {}/{key}", self.describe())),
            },
        }
    }

    /// An object's bytes, or None if it does not exist. Anyone who can write
    /// to the bucket can put anything under a key we read, so no more than
    /// `max` bytes are ever read: a larger object is an error.
    pub fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let too_large = || anyhow::anyhow!("{}/{key} is larger than {max} bytes", self.describe());
        match &self.kind {
            Kind::Dir(root) => {
                let p = Self::file(root, key);
                let file = match fs::File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", p.display()))
                    }
                };
                let mut bytes = Vec::new();
                file.take(max.saturating_add(1))
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                if bytes.len() as u64 > max {
                    return Err(too_large());
                }
                Ok(Some(bytes))
            }
            Kind::S3(s) => {
                let got = s.rt.block_on(async {
                    let got = s.store.get(&s.path(key)).await?;
                    if got.meta.size > max {
                        return Ok(Err(too_large()));
                    }
                    // The announced size is the server's word: count as well.
                    let mut stream = got.into_stream();
                    let mut bytes = Vec::new();
                    while let Some(chunk) = stream.next().await {
                        bytes.extend_from_slice(&chunk?);
                        if bytes.len() as u64 > max {
                            return Ok(Err(too_large()));
                        }
                    }
                    Ok(Ok(bytes))
                });
                match got {
                    Ok(b) => b.map(Some),
                    Err(e) if S3::missing(&e) => Ok(None),
                    Err(e) => {
                        Err(e).with_context(|| format!("cannot read {}/{key}", self.describe()))
                    }
                }
            }
        }
    }

    /// Streams an object of at most `max` bytes into `out`; a larger one is
    /// an error once `max` bytes are written.
    pub fn read_to(&self, key: &str, out: &mut dyn Write, max: u64) -> Result<u64> {
        let too_large = || anyhow::anyhow!("{}/{key} is larger than {max} bytes", self.describe());
        match &self.kind {
            Kind::Dir(root) => {
                let p = Self::file(root, key);
                let f =
                    fs::File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
                let n = io::copy(&mut f.take(max.saturating_add(1)), out)?;
                if n > max {
                    return Err(too_large());
                }
                Ok(n)
            }
            Kind::S3(s) => s.rt.block_on(async {
                let mut stream = s.store.get(&s.path(key)).await?.into_stream();
                let mut n = 0;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    n += chunk.len() as u64;
                    if n > max {
                        return Err(too_large());
                    }
                    out.write_all(&chunk)?;
                }
                Ok(n)
            }),
        }
    }

    /// Files directly under `prefix` ("" for the top level), with size and
    /// modification time: keys such as `hosts/foobar.json`.
    pub fn entries(&self, prefix: &str) -> Result<Vec<(String, u64, SystemTime)>> {
        let mut out = Vec::new();
        match &self.kind {
            Kind::Dir(root) => {
                let dir = root.join(prefix);
                let rd = match fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot list {}", dir.display()))
                    }
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
            }
            Kind::S3(s) => {
                let dir = if prefix.is_empty() {
                    s.path("").to_string()
                } else {
                    s.path(prefix).to_string()
                };
                let listed =
                    s.rt.block_on(s.store.list_with_delimiter(Some(&ObjectPath::from(dir))))
                        .with_context(|| format!("cannot list {}/{prefix}", self.describe()))?;
                for o in listed.objects {
                    out.push((s.key_of(&o.location), o.size, o.last_modified.into()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The keys of the files directly under `prefix/`.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .entries(prefix)?
            .into_iter()
            .map(|(k, _, _)| k)
            .collect())
    }

    /// A temporary local file for `put_file`: beside the target for a
    /// directory (so that the final rename is atomic), in a staging directory
    /// for a bucket.
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        let dir = match &self.kind {
            Kind::Dir(root) => root.join("nar"),
            Kind::S3(s) => s.staging.path().to_owned(),
        };
        nixcast_cli::fs::temp_in(&dir)
    }

    /// Stores a finished temporary file under `key`.
    pub fn put_file(&self, key: &str, file: NamedTempFile) -> Result<()> {
        match &self.kind {
            Kind::Dir(root) => {
                let dest = Self::file(root, key);
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)?;
                }
                // World-readable: a cache is public, and the web server
                // serving it usually runs as another user.
                nixcast_cli::fs::persist(file, &dest, 0o644, Replace::Yes)?;
                Ok(())
            }
            Kind::S3(s) => {
                let len = file.as_file().metadata()?.len();
                let mut f = file.reopen()?;
                let path = s.path(key);
                let done: Result<()> = s.rt.block_on(async {
                    if len as usize <= PART_SIZE {
                        let mut buf = Vec::with_capacity(len as usize);
                        f.read_to_end(&mut buf)?;
                        s.store.put(&path, PutPayload::from(buf)).await?;
                        return Ok(());
                    }
                    // Large NARs go up in parts; the object appears when the upload completes.
                    let upload = s.store.put_multipart(&path).await?;
                    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        w.wait_for_capacity(4).await?;
                        w.write(&buf[..n]);
                    }
                    w.finish().await?;
                    Ok(())
                });
                done.with_context(|| format!("cannot upload {}/{key}", self.describe()))
            }
        }
    }

    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match &self.kind {
            Kind::Dir(_) => {
                let mut tmp = self.temp_file()?;
                tmp.write_all(bytes)?;
                self.put_file(key, tmp)
            }
            Kind::S3(s) => {
                s.rt.block_on(s.store.put(&s.path(key), PutPayload::from(bytes.to_vec())))
                    .map(|_| ())
                    .with_context(|| format!("cannot upload {}/{key}", self.describe()))
            }
        }
    }

    /// Like `put`, but fails if `key` exists: history is never rewritten.
    pub fn put_new(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match &self.kind {
            Kind::Dir(root) => {
                let mut tmp = self.temp_file()?;
                tmp.write_all(bytes)?;
                let dest = Self::file(root, key);
                let parent = dest.parent().expect("a key names a file under the root");
                fs::create_dir_all(parent)?;
                nixcast_cli::fs::persist(tmp, &dest, 0o644, Replace::No)?;
                // History goes to hosts/HOST/, which `sync` does not cover.
                nixcast_cli::fs::sync_dir(parent)
            }
            Kind::S3(_) => {
                // Not every S3-compatible server has conditional PUTs; a HEAD
                // first catches all but two publishers racing.
                anyhow::ensure!(
                    !self.exists(key)?,
                    "{}/{key} exists already",
                    self.describe()
                );
                self.put(key, bytes)
            }
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        match &self.kind {
            Kind::Dir(root) => {
                let p = Self::file(root, key);
                match fs::remove_file(&p) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("cannot delete {}", p.display())),
                }
            }
            Kind::S3(s) => match s.rt.block_on(s.store.delete(&s.path(key))) {
                Ok(()) => Ok(()),
                Err(e) if S3::missing(&e) => Ok(()),
                Err(e) => {
                    Err(e).with_context(|| format!("cannot delete {}/{key}", self.describe()))
                }
            },
        }
    }

    /// Makes the renames of this run durable (directory entries are flushed);
    /// an object store is durable once a PUT returns.
    pub fn sync(&self) -> Result<()> {
        let Kind::Dir(root) = &self.kind else {
            return Ok(());
        };
        for sub in ["nar", "", "manifests", "hosts"] {
            nixcast_cli::fs::sync_dir(&root.join(sub))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn published_files_are_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().to_str().unwrap()).unwrap();
        let mut nar = target.temp_file().unwrap();
        nar.write_all(b"nar bytes").unwrap();
        target.put_file("nar/abc.nar.zst", nar).unwrap();
        target.put("abc.narinfo", b"StorePath: ...\n").unwrap();
        target.put_new("hosts/h/1.json", b"{}").unwrap();
        for key in ["nar/abc.nar.zst", "abc.narinfo", "hosts/h/1.json"] {
            let mode = fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644, "{key}: {mode:o}");
        }
    }

    #[test]
    fn reads_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().to_str().unwrap()).unwrap();
        target.put("hosts/h.json", &[b'x'; 100]).unwrap();
        assert_eq!(
            target
                .get_at_most("hosts/h.json", 100)
                .unwrap()
                .unwrap()
                .len(),
            100
        );
        let err = target.get_at_most("hosts/h.json", 99).unwrap_err();
        assert!(err.to_string().contains("larger than 99 bytes"), "{err}");
        assert!(target.get_at_most("hosts/none.json", 99).unwrap().is_none());
        let mut out = Vec::new();
        assert_eq!(target.read_to("hosts/h.json", &mut out, 100).unwrap(), 100);
        let mut out = Vec::new();
        let err = target.read_to("hosts/h.json", &mut out, 99).unwrap_err();
        assert!(err.to_string().contains("larger than 99 bytes"), "{err}");
        assert!(out.len() <= 100, "{}", out.len());
    }
}
