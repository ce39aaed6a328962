//! One way to a nixcast cache, for both programs.
//!
//! A cache is a flat set of objects named by [`layout::Key`]s (see
//! `nixcast_common::layout`). Below, one small [`Backend`] trait and a file
//! per place a cache can be:
//!
//! - [`dir`]: a local directory (`DIR`, `file://DIR`), written atomically;
//! - [`s3`]: an S3-style bucket (`s3://BUCKET/PREFIX?endpoint=…&region=…`);
//! - [`http`]: a web server (`https://…`), read with validators and netrc
//!   credentials, written (reports only) by `PUT`;
//! - [`bundle`]: a tar file laid out like a cache (`nixcast bundle`), read only.
//!
//! Above them, [`Cache`] is the handle both programs hold, and [`reader`]
//! the one read path from a pointer to the manifest it pins:
//! `Verified<Pointer>` → `Pinned` manifest, sealed objects opened only after
//! their pin held.
//!
//! Every read is bounded: small objects by a cap, streams by the caller's
//! signed sizes. No credential reaches an error message. Only this crate
//! knows about S3 and HTTP.

pub mod bundle;
pub mod dir;
pub mod http;
pub mod netrc;
pub mod reader;
pub mod s3;
pub mod secrets;

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;
use thiserror::Error;

pub use http::HttpOptions;
pub use secrets::Secrets;

/// How a cache operation failed. A caller branches on these: a missing
/// object, an object larger than any signed or fixed size allows (an attack,
/// not an outage), or anything else on the way (retry next time).
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{url}: {msg}")]
    Transport { url: String, msg: String },
    #[error("{url}: more than {cap} bytes")]
    TooLarge { url: String, cap: u64 },
    /// A server refused a write for good (a 4xx answer to a PUT other
    /// than 408 and 429), saying why in `msg`.
    #[error("{url}: refused: {msg}")]
    Refused { url: String, msg: String },
}

/// The agent's name for it.
pub type FetchError = Error;

impl Error {
    fn io(url: &str, e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound(url.to_owned())
        } else {
            Error::Transport {
                url: url.to_owned(),
                msg: e.to_string(),
            }
        }
    }

    fn other(url: &str, msg: impl Into<String>) -> Self {
        Error::Transport {
            url: url.to_owned(),
            msg: msg.into(),
        }
    }
}

/// HTTP cache validators of the last pointer that was fully handled.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    fn any(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

pub enum Fetched {
    NotModified,
    Body(Vec<u8>, Validators),
}

/// An object found by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// What a `put` writes: bytes in memory, or a file prepared in
/// [`Backend::temp_file`] (a compressed NAR), which is never read whole.
pub enum Body {
    Bytes(Vec<u8>),
    File(NamedTempFile),
}

/// A place a cache can be. Keys are relative (`hosts/foobar.json`) and
/// were checked before they get here. Objects appear whole or not at all.
pub trait Backend: Send + Sync {
    /// Where `key` is, for messages; never with credentials.
    fn url_of(&self, key: &str) -> String;

    /// A small object, read whole, refused beyond `cap` bytes; with
    /// validators, `NotModified` when they still match (one request).
    fn get<'a>(
        &'a self,
        key: &'a str,
        cap: u64,
        validators: &'a Validators,
    ) -> BoxFuture<'a, Result<Fetched, Error>>;

    /// A streaming reader of an object, for use on a blocking thread; the
    /// caller bounds it. Errors while reading are transport errors.
    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn Read + Send>, Error>>;

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>>;

    /// Writes `key`, replacing what was there.
    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, Result<(), Error>>;

    /// Writes `key` only if it does not exist yet: history is never rewritten.
    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<(), Error>>;

    /// The objects directly under `prefix` ("" for the top level), sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Error>>;

    /// Deletes `key`; a missing one is no error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Makes every write so far durable before anything that names it is
    /// written (a directory's entries are flushed; a bucket's PUT is).
    fn sync(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// A local file to prepare a large object in, for `Body::File`: beside
    /// the objects for a directory (so that its rename is atomic).
    fn temp_file(&self) -> io::Result<NamedTempFile> {
        nixcast_cli::fs::temp_in(&std::env::temp_dir()).map_err(io::Error::other)
    }

    /// Whether `key` is there, when that is known without a request (a bundle).
    fn holds(&self, _key: &str) -> Option<bool> {
        None
    }

    /// Waits up to `wait` for `key` to differ from `v` (a long poll, `Prefer:
    /// wait=N`), where the backend and its server can: only `nixcast serve`
    /// over HTTP. Others answer `Unsupported` at once.
    fn wait_changed<'a>(
        &'a self,
        _key: &'a str,
        _v: &'a Validators,
        _wait: std::time::Duration,
    ) -> BoxFuture<'a, Result<Waited, Error>> {
        Box::pin(async { Ok(Waited::Unsupported) })
    }
}

/// What a long poll learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The object differs from the validators given (or they were none).
    Changed,
    /// Still the same when the server's wait ended.
    Unchanged,
    /// The server does not wait (it answered at once, without
    /// `Preference-Applied`): poll instead.
    Unsupported,
}

/// A cache, as both programs hold it: a shared backend.
#[derive(Clone)]
pub struct Cache {
    backend: Arc<dyn Backend>,
    bundle: bool,
}

impl Cache {
    /// `https://…`, `http://…` (only with `allow_insecure_http`),
    /// `s3://BUCKET/PREFIX?endpoint=…&region=…`, `file://DIR` or a directory.
    /// An HTTP cache sends basic auth when the netrc has an entry for its
    /// host; a bucket uses the AWS settings.
    pub fn new(spec: &str, opts: &HttpOptions, secrets: &Secrets) -> anyhow::Result<Self> {
        if let Some(dir) = spec.strip_prefix("file://") {
            return Ok(Self::dir(dir));
        }
        if !spec.contains("://") {
            return Ok(Self::dir(spec));
        }
        if spec.starts_with("s3://") {
            let bucket = s3::Bucket::open(spec, opts, &secrets.aws)?;
            return Ok(Self::from(Arc::new(bucket) as Arc<dyn Backend>));
        }
        let server = http::Server::open(spec, opts, secrets)?;
        Ok(Self::from(Arc::new(server) as Arc<dyn Backend>))
    }

    /// A local directory, as it is (nothing is created).
    pub fn dir(path: impl AsRef<Path>) -> Self {
        Self::from(Arc::new(dir::Dir::new(path.as_ref())) as Arc<dyn Backend>)
    }

    /// Like `new`, for a place others may write into too (the agent's
    /// reports): a directory is never written through a link below it.
    pub fn new_for_writes(
        spec: &str,
        opts: &HttpOptions,
        secrets: &Secrets,
    ) -> anyhow::Result<Self> {
        let dir = spec
            .strip_prefix("file://")
            .or((!spec.contains("://")).then_some(spec));
        match dir {
            Some(d) => Ok(Self::from(
                Arc::new(dir::Dir::refusing_links(Path::new(d))) as Arc<dyn Backend>
            )),
            None => Self::new(spec, opts, secrets),
        }
    }

    /// Indexes a bundle: one pass over its tar headers, no data read.
    pub fn bundle(file: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            backend: Arc::new(bundle::Bundle::open(file)?),
            bundle: true,
        })
    }

    pub fn is_bundle(&self) -> bool {
        self.bundle
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn url_of(&self, key: &str) -> String {
        self.backend.url_of(key)
    }

    /// The pointer, or `NotModified` when the validators still match.
    pub async fn get_pointer(&self, key: &str, cap: u64, v: &Validators) -> Result<Fetched, Error> {
        self.backend.get(key, cap, v).await
    }

    /// See [`Backend::wait_changed`].
    pub async fn wait_changed(
        &self,
        key: &str,
        v: &Validators,
        wait: std::time::Duration,
    ) -> Result<Waited, Error> {
        self.backend.wait_changed(key, v, wait).await
    }

    /// A small object, read whole, refused beyond `cap` bytes.
    pub async fn get_small(&self, key: &str, cap: u64) -> Result<Vec<u8>, Error> {
        match self.backend.get(key, cap, &Validators::default()).await? {
            Fetched::Body(bytes, _) => Ok(bytes),
            Fetched::NotModified => Err(Error::other(
                &self.url_of(key),
                "not modified, to a request without validators",
            )),
        }
    }

    /// Like `get_small`, with a missing object as `None`.
    pub async fn get_if_any(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>, Error> {
        match self.get_small(key, cap).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, Error> {
        self.backend.open(key).await
    }

    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), Error> {
        self.backend.put(key, Body::Bytes(body)).await
    }

    pub fn holds(&self, key: &str) -> Option<bool> {
        self.backend.holds(key)
    }
}

impl From<Arc<dyn Backend>> for Cache {
    fn from(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            bundle: false,
        }
    }
}

/// `spec` without the user name and password it may hold, for messages.
/// Everything up to the last `@` goes: a password may hold `/`, `?` or `#`.
pub fn redact(spec: &str) -> String {
    match spec.split_once("://") {
        Some((scheme, rest)) if rest.contains('@') => {
            let at = rest.rfind('@').expect("contains @");
            format!("{scheme}://…@{}", &rest[at + 1..])
        }
        _ => spec.to_owned(),
    }
}

/// An error's whole chain on one line (reqwest's Display hides the cause:
/// "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Reads at most `cap` bytes of `r`; more is `TooLarge`.
fn read_capped(url: &str, r: impl Read, cap: u64) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    r.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(url, e))?;
    if buf.len() as u64 > cap {
        return Err(Error::TooLarge {
            url: url.to_owned(),
            cap,
        });
    }
    Ok(buf)
}
