//! Where the agent reads a cache from: HTTP(S), an S3-style bucket, a local
//! directory or a bundle.
//!
//! Keys are relative (`hosts/foobar.json`, `manifests/….json`, `nar/….nar.xz`)
//! and were checked before they get here (host names, the manifest's URL
//! pattern). Every read is bounded: small files by a cap, NARs by the signed
//! FileSize (checked by the caller as the bytes arrive). HTTP uses one client
//! with keep-alive, a connect timeout, a stall timeout between body reads, a
//! minimum average rate per body, no automatic decompression, no proxy but
//! the one `--proxy` names, and follows redirects only within the same
//! scheme, host and port. Basic auth from a netrc file goes only to the host
//! its entry names (and so never across a redirect, which stays on that
//! origin). A bucket is read with object_store and the standard `AWS_*`
//! credentials; this and `publisher/src/target.rs` are all that know S3.
//! No credential reaches an error message: a URL holding one is refused.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::{GetOptions, ObjectStore};
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::netrc::Credentials;
use crate::secrets::Secrets;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 4;

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{url}: {msg}")]
    Transport { url: String, msg: String },
    #[error("{url}: more than {cap} bytes")]
    TooLarge { url: String, cap: u64 },
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

pub enum Fetched {
    NotModified,
    Body(Vec<u8>, Validators),
}

/// How the agent talks HTTP, to its cache and to upstream caches alike.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub allow_insecure_http: bool,
    /// No byte for this long ends a transfer.
    pub stall_timeout: Duration,
    /// Bytes per second a transfer must average once `stall_timeout` has
    /// passed (0: none). A stall timeout alone restarts on every byte: a
    /// server that trickles would hold a run, and its lock, for days.
    pub min_rate: u64,
    pub proxy: Option<String>,
}

#[derive(Clone, Copy)]
pub struct Limits {
    min_rate: u64,
    grace: Duration,
}

#[derive(Clone)]
pub enum Source {
    Http {
        client: reqwest::Client,
        base: Url,
        /// From the netrc entry for `base`'s host.
        auth: Option<Arc<Credentials>>,
        limits: Limits,
    },
    S3(Arc<Bucket>),
    Dir(PathBuf),
    /// A tar file laid out like a cache (`nixcast bundle`): key → (offset, size).
    Bundle {
        file: PathBuf,
        index: std::sync::Arc<HashMap<String, (u64, u64)>>,
    },
}

impl Source {
    /// `https://…`, `http://…` (only with `allow_insecure_http`),
    /// `s3://BUCKET/PREFIX?endpoint=…&region=…`, `file://DIR` or a directory.
    /// An HTTP source sends basic auth when the netrc has an entry for its
    /// host; a bucket uses the AWS settings.
    pub fn new(spec: &str, opts: &HttpOptions, secrets: &Secrets) -> anyhow::Result<Self> {
        let allow_insecure_http = opts.allow_insecure_http;
        let stall = opts.stall_timeout;
        if let Some(dir) = spec.strip_prefix("file://") {
            return Ok(Source::Dir(PathBuf::from(dir)));
        }
        if !spec.contains("://") {
            return Ok(Source::Dir(PathBuf::from(spec)));
        }
        if spec.starts_with("s3://") {
            let bucket = Bucket::open(spec, allow_insecure_http, stall, &secrets.aws)?;
            return Ok(Source::S3(Arc::new(bucket)));
        }
        let shown = redact(spec);
        let use_netrc = "put them in a netrc file (`machine HOST login USER password PASSWORD`) \
                         and pass --netrc-file FILE";
        let mut base = Url::parse(spec).map_err(|e| match shown != spec {
            true => anyhow::anyhow!(
                "invalid cache URL {shown:?}: {e}; if it holds credentials, {use_netrc}"
            ),
            false => anyhow::anyhow!("invalid cache URL {shown:?}: {e}"),
        })?;
        anyhow::ensure!(
            base.username().is_empty() && base.password().is_none(),
            "the cache URL {shown} holds a user name or password; {use_netrc}"
        );
        match base.scheme() {
            "https" => {}
            "http" if allow_insecure_http => {}
            "http" => anyhow::bail!(
                "refusing plain http cache {spec}: a closure reveals the host's configuration; \
                 use https, or --allow-insecure-http on a trusted network"
            ),
            s => anyhow::bail!("unsupported cache URL scheme {s:?} in {shown}"),
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        // curl, and so Nix, matches netrc entries on the host name alone.
        let host = base.host_str().unwrap_or("").trim_matches(['[', ']']);
        let auth = secrets
            .netrc
            .as_ref()
            .and_then(|n| n.lookup(host))
            .map(Arc::new);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(opts.stall_timeout)
            .redirect(same_origin_redirects())
            .https_only(!allow_insecure_http)
            .user_agent(concat!("nixcast-pull/", env!("CARGO_PKG_VERSION")))
            // reqwest reads http_proxy & co by default: a variable left in a
            // service's environment would route the agent through a machine
            // nobody chose for it. Only --proxy names one.
            .no_proxy();
        if let Some(p) = &opts.proxy {
            let proxy = reqwest::Proxy::all(p.as_str())
                .map_err(|e| anyhow::anyhow!("invalid --proxy: {}", error_chain(&e)))?;
            let shown = Url::parse(p).map_or_else(
                |_| "(unparsable)".to_owned(),
                |u| {
                    format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""))
                        + &u.port().map_or(String::new(), |p| format!(":{p}"))
                },
            );
            tracing::info!(proxy = %shown, cache = %base, "using a proxy");
            builder = builder.proxy(proxy);
        }
        let client = builder.build()?;
        Ok(Source::Http {
            client,
            base,
            auth,
            limits: Limits {
                min_rate: opts.min_rate,
                grace: opts.stall_timeout,
            },
        })
    }

    /// Indexes a bundle: one pass over its tar headers, no data read.
    pub fn bundle(file: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let f = std::fs::File::open(file)
            .with_context(|| format!("cannot open the bundle {}", file.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut index = HashMap::new();
        for e in ar
            .entries_with_seek()
            .with_context(|| format!("{} is not a bundle", file.display()))?
        {
            let e = e.with_context(|| format!("{} is not a valid bundle", file.display()))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = e.path()?.to_string_lossy().into_owned();
            index.insert(name, (e.raw_file_position(), e.size()));
        }
        Ok(Source::Bundle {
            file: file.to_owned(),
            index: std::sync::Arc::new(index),
        })
    }

    /// Whether a bundle holds `key`; `None` for sources that can only tell by fetching.
    pub fn holds(&self, key: &str) -> Option<bool> {
        match self {
            Source::Bundle { index, .. } => Some(index.contains_key(key)),
            _ => None,
        }
    }

    fn bundle_reader(&self, key: &str) -> Result<(std::io::Take<std::fs::File>, u64), FetchError> {
        let Source::Bundle { file, index } = self else {
            unreachable!("only for bundles")
        };
        let url = self.url_of(key);
        let &(offset, size) = index
            .get(key)
            .ok_or_else(|| FetchError::NotFound(url.clone()))?;
        let mut f = std::fs::File::open(file).map_err(|e| io_error(&url, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_error(&url, e))?;
        Ok((f.take(size), size))
    }

    pub fn url_of(&self, key: &str) -> String {
        match self {
            Source::Bundle { file, .. } => format!("{}#{key}", file.display()),
            Source::Http { base, .. } => base
                .join(key)
                .map(String::from)
                .unwrap_or_else(|_| key.to_owned()),
            Source::S3(b) => b.url_of(key),
            Source::Dir(d) => format!("file://{}", d.join(key).display()),
        }
    }

    /// The pointer, or `NotModified` when the validators still match (one request).
    pub async fn get_pointer(
        &self,
        key: &str,
        cap: u64,
        v: &Validators,
    ) -> Result<Fetched, FetchError> {
        match self {
            Source::Dir(_) | Source::Bundle { .. } => Ok(Fetched::Body(
                self.get_small(key, cap).await?,
                Validators::default(),
            )),
            Source::S3(b) => {
                let opts = GetOptions {
                    if_none_match: v.etag.clone(),
                    ..GetOptions::default()
                };
                let r = match b.store.get_opts(&b.path(key), opts).await {
                    Err(object_store::Error::NotModified { .. }) => {
                        return Ok(Fetched::NotModified)
                    }
                    r => r.map_err(|e| b.error(key, e))?,
                };
                let validators = Validators {
                    etag: r.meta.e_tag.clone(),
                    last_modified: None,
                };
                Ok(Fetched::Body(b.read_capped(key, r, cap).await?, validators))
            }
            Source::Http {
                client,
                base,
                auth,
                limits,
            } => {
                let url = base.join(key).expect("relative key");
                let conditional = v.etag.is_some() || v.last_modified.is_some();
                let resp = send_with_retries(&url, conditional, auth.is_some(), || {
                    let mut req = with_auth(client.get(url.clone()), auth);
                    if let Some(e) = &v.etag {
                        req = req.header(IF_NONE_MATCH, e);
                    }
                    if let Some(m) = &v.last_modified {
                        req = req.header(IF_MODIFIED_SINCE, m);
                    }
                    req
                })
                .await?;
                if resp.status() == StatusCode::NOT_MODIFIED {
                    return Ok(Fetched::NotModified);
                }
                let header = |h| {
                    resp.headers()
                        .get(h)
                        .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                        .map(str::to_owned)
                };
                let validators = Validators {
                    etag: header(ETAG),
                    last_modified: header(LAST_MODIFIED),
                };
                let bytes = read_capped(&url, resp, cap, *limits).await?;
                Ok(Fetched::Body(bytes, validators))
            }
        }
    }

    /// A small file, read whole, refused beyond `cap` bytes.
    pub async fn get_small(&self, key: &str, cap: u64) -> Result<Vec<u8>, FetchError> {
        match self {
            Source::Bundle { .. } => {
                let url = self.url_of(key);
                let (r, size) = self.bundle_reader(key)?;
                if size > cap {
                    return Err(FetchError::TooLarge { url, cap });
                }
                let mut buf = Vec::new();
                { r }.read_to_end(&mut buf).map_err(|e| io_error(&url, e))?;
                Ok(buf)
            }
            Source::Dir(d) => {
                let p = d.join(key);
                let url = self.url_of(key);
                let f = std::fs::File::open(&p).map_err(|e| io_error(&url, e))?;
                let mut buf = Vec::new();
                f.take(cap + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| io_error(&url, e))?;
                if buf.len() as u64 > cap {
                    return Err(FetchError::TooLarge { url, cap });
                }
                Ok(buf)
            }
            Source::S3(b) => {
                let r = b.get(key, GetOptions::default()).await?;
                b.read_capped(key, r, cap).await
            }
            Source::Http {
                client,
                base,
                auth,
                limits,
            } => {
                let url = base.join(key).expect("relative key");
                let resp = send_with_retries(&url, false, auth.is_some(), || {
                    with_auth(client.get(url.clone()), auth)
                })
                .await?;
                read_capped(&url, resp, cap, *limits).await
            }
        }
    }

    /// A streaming reader of a file's body, for use on a blocking thread.
    /// Errors while reading are transport errors (io::Error).
    pub async fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, FetchError> {
        match self {
            Source::Bundle { .. } => Ok(Box::new(self.bundle_reader(key)?.0)),
            Source::Dir(d) => {
                let f =
                    std::fs::File::open(d.join(key)).map_err(|e| io_error(&self.url_of(key), e))?;
                Ok(Box::new(f))
            }
            Source::S3(b) => {
                let r = b.get(key, GetOptions::default()).await?;
                let stream = r.into_stream().map_err(io::Error::other);
                let reader = tokio_util::io::StreamReader::new(stream);
                Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)))
            }
            Source::Http {
                client,
                base,
                auth,
                limits,
            } => {
                let url = base.join(key).expect("relative key");
                let resp = send_with_retries(&url, false, auth.is_some(), || {
                    with_auth(client.get(url.clone()), auth)
                })
                .await?;
                let stream = at_least(resp.bytes_stream(), *limits);
                let reader = tokio_util::io::StreamReader::new(stream);
                Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)))
            }
        }
    }
}

/// Writing: only a host's report (`--report-to`) is ever written, once per
/// run at most, with one attempt (the next run retries).
impl Source {
    /// Writes `body` as `key`: a directory gets it atomically (a temporary
    /// file renamed), an HTTP server by `PUT` (as JSON), a bucket by a
    /// signed `PutObject`.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FetchError> {
        let url = self.url_of(key);
        match self {
            Source::Bundle { .. } => Err(FetchError::Transport {
                url,
                msg: "a bundle cannot be written to".to_owned(),
            }),
            Source::Dir(d) => {
                let p = d.join(key);
                let write = || -> io::Result<()> {
                    let dir = p.parent().expect("a key has a directory");
                    std::fs::create_dir_all(dir)?;
                    let mut tmp = tempfile::Builder::new()
                        .prefix(".nixcast-")
                        .tempfile_in(dir)?;
                    io::Write::write_all(&mut tmp, &body)?;
                    use std::os::unix::fs::PermissionsExt;
                    tmp.as_file()
                        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
                    tmp.as_file().sync_all()?;
                    tmp.persist(&p).map_err(|e| e.error)?;
                    Ok(())
                };
                write().map_err(|e| io_error(&url, e))
            }
            Source::S3(b) => {
                use object_store::ObjectStoreExt;
                let put = b.store.put(&b.path(key), body.into()).await;
                put.map(drop).map_err(|e| b.error(key, e))
            }
            Source::Http {
                client, base, auth, ..
            } => {
                let target = base.join(key).expect("relative key");
                let req = with_auth(client.put(target), auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
                match req.send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(FetchError::Transport {
                        url,
                        msg: format!("server answered {}", r.status()),
                    }),
                    Err(e) => Err(FetchError::Transport {
                        url,
                        msg: error_chain(&e),
                    }),
                }
            }
        }
    }
}

fn with_auth(
    req: reqwest::RequestBuilder,
    auth: &Option<Arc<Credentials>>,
) -> reqwest::RequestBuilder {
    match auth {
        // reqwest marks the header sensitive: it is never logged, and it is
        // dropped on a redirect to another host (which we refuse anyway).
        Some(c) => req.basic_auth(&c.login, Some(c.password.as_str())),
        None => req,
    }
}

/// `spec` without the user name and password it may hold, for messages.
/// Everything up to the last `@` goes: a password may hold `/`, `?` or `#`.
fn redact(spec: &str) -> String {
    match spec.split_once("://") {
        Some((scheme, rest)) if rest.contains('@') => {
            let at = rest.rfind('@').expect("contains @");
            format!("{scheme}://…@{}", &rest[at + 1..])
        }
        _ => spec.to_owned(),
    }
}

/// An S3-style bucket, read with the credentials of the standard `AWS_*`
/// variables and `--environment-file` (or what else object_store finds: a
/// web identity token, container or instance credentials).
pub struct Bucket {
    store: object_store::aws::AmazonS3,
    bucket: String,
    prefix: String,
}

impl Bucket {
    /// `s3://BUCKET/PREFIX?endpoint=URL&region=R`, as `nixcast publish --to`
    /// takes it. Messages never echo the URL's query or a user part.
    fn open(
        spec: &str,
        allow_insecure_http: bool,
        stall: Duration,
        aws: &crate::secrets::AwsSettings,
    ) -> anyhow::Result<Self> {
        let rest = spec.strip_prefix("s3://").expect("an s3 URL");
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        anyhow::ensure!(
            !location.contains('@'),
            "the bucket URL {} holds credentials; give them in the AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY variables",
            redact(spec)
        );
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        anyhow::ensure!(!bucket.is_empty(), "no bucket in s3://{location}");
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // NARs take as long as they take; what must not happen is a stall.
            .with_timeout_disabled()
            .with_read_timeout(stall);
        let retry = object_store::RetryConfig {
            max_retries: ATTEMPTS as usize - 1,
            ..Default::default()
        };
        let mut b = object_store::aws::AmazonS3Builder::from_env();
        for (k, v) in aws {
            let key = k.parse().map_err(|_| {
                anyhow::anyhow!(
                    "unknown AWS setting {} in --environment-file",
                    k.to_uppercase()
                )
            })?;
            b = b.with_config(key, v.as_str());
        }
        let mut b = b
            .with_bucket_name(bucket)
            .with_client_options(client)
            .with_retry(retry);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                anyhow::bail!("a parameter without a value in the query of s3://{location}");
            };
            b = match k {
                "endpoint" => {
                    anyhow::ensure!(
                        !v.contains('@'),
                        "the endpoint of s3://{location} holds credentials; give them in the \
                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables"
                    );
                    let http = v.starts_with("http://");
                    anyhow::ensure!(
                        !http || allow_insecure_http,
                        "refusing the plain http endpoint {v}: a closure reveals the host's \
                         configuration; use https, or --allow-insecure-http on a trusted network"
                    );
                    b.with_endpoint(v)
                        .with_allow_http(http)
                        .with_virtual_hosted_style_request(false)
                }
                "region" => b.with_region(v),
                _ => anyhow::bail!(
                    "unknown parameter {:?} in the query of s3://{location}: use endpoint and region",
                    k.escape_debug().to_string()
                ),
            };
        }
        let store = b
            .build()
            .map_err(|e| anyhow::anyhow!("cannot open s3://{location}: {e}"))?;
        Ok(Bucket {
            store,
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    fn path(&self, key: &str) -> object_store::path::Path {
        if self.prefix.is_empty() {
            key.into()
        } else {
            format!("{}/{key}", self.prefix).into()
        }
    }

    fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.path(key))
    }

    async fn get(
        &self,
        key: &str,
        opts: GetOptions,
    ) -> Result<object_store::GetResult, FetchError> {
        let r = self.store.get_opts(&self.path(key), opts).await;
        r.map_err(|e| self.error(key, e))
    }

    /// object_store's messages hold their causes already (no `error_chain`).
    fn error(&self, key: &str, e: object_store::Error) -> FetchError {
        use object_store::Error as E;
        let url = self.url_of(key);
        match e {
            E::NotFound { .. } => FetchError::NotFound(url),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                // S3's error code says which: a bad signature, an unknown key, a policy.
                let text = e.to_string();
                let code = text
                    .split_once("<Code>")
                    .and_then(|(_, rest)| rest.split_once("</Code>"))
                    .map(|(code, _)| code)
                    .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric()))
                    .unwrap_or("no error code");
                FetchError::Transport {
                    url,
                    msg: format!(
                        "access denied ({code}); do the AWS_* credentials allow reading this bucket?"
                    ),
                }
            }
            e => FetchError::Transport {
                url,
                msg: printable(&e.to_string()),
            },
        }
    }

    async fn read_capped(
        &self,
        key: &str,
        r: object_store::GetResult,
        cap: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let url = self.url_of(key);
        if r.meta.size > cap {
            return Err(FetchError::TooLarge { url, cap });
        }
        let mut stream = r.into_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.try_next().await.map_err(|e| FetchError::Transport {
            url: url.clone(),
            msg: printable(&e.to_string()),
        })? {
            if (buf.len() + chunk.len()) as u64 > cap {
                return Err(FetchError::TooLarge { url, cap });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }
}

/// An S3 error may quote the server's answer: no control characters from it
/// reach a terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn io_error(url: &str, e: io::Error) -> FetchError {
    if e.kind() == io::ErrorKind::NotFound {
        FetchError::NotFound(url.to_owned())
    } else {
        FetchError::Transport {
            url: url.to_owned(),
            msg: e.to_string(),
        }
    }
}

fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = &attempt.previous()[0];
        let next = attempt.url();
        if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else if next.scheme() != first.scheme()
            || next.host_str() != first.host_str()
            || next.port_or_known_default() != first.port_or_known_default()
        {
            let msg = format!("refusing a redirect from {first} to another origin: {next}");
            attempt.error(msg)
        } else {
            attempt.follow()
        }
    })
}

/// Sends a request, retrying connection errors, timeouts and 5xx/429 answers
/// with exponential backoff. 2xx is returned, and 304 to a `conditional`
/// request (to any other, it answers nothing that was asked: a protocol
/// error); 404 (and 403, which S3 answers for a missing key in a bucket that
/// may not be listed) is `NotFound`. `authed`: whether the requests carry
/// netrc credentials (for a 401's message).
async fn send_with_retries(
    url: &Url,
    conditional: bool,
    authed: bool,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, FetchError> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        let transient = match make().send().await {
            Ok(r) if r.status().is_success() => return Ok(r),
            Ok(r) if r.status() == StatusCode::NOT_MODIFIED && conditional => return Ok(r),
            Ok(r) if r.status() == StatusCode::NOT_MODIFIED => {
                return Err(FetchError::Transport {
                    url: url.to_string(),
                    msg: "the server answered 304 Not Modified to a request without \
                          validators (a protocol error)"
                        .to_owned(),
                })
            }
            Ok(r) if matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::FORBIDDEN) => {
                return Err(FetchError::NotFound(url.to_string()))
            }
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                let why = if authed {
                    "the server refused the credentials of the netrc entry for this host"
                } else {
                    "the cache wants credentials: pass --netrc-file with an entry for this host"
                };
                return Err(FetchError::Transport {
                    url: url.to_string(),
                    msg: format!("server answered {}; {why}", r.status()),
                });
            }
            Ok(r)
                if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS =>
            {
                format!("server answered {}", r.status())
            }
            Ok(r) => {
                return Err(FetchError::Transport {
                    url: url.to_string(),
                    msg: format!("server answered {}", r.status()),
                })
            }
            Err(e) if e.is_redirect() || e.is_builder() => {
                return Err(FetchError::Transport {
                    url: url.to_string(),
                    msg: error_chain(&e),
                })
            }
            Err(e) => error_chain(&e),
        };
        if attempt >= ATTEMPTS {
            return Err(FetchError::Transport {
                url: url.to_string(),
                msg: format!("{transient} (after {attempt} attempts)"),
            });
        }
        tracing::warn!(%url, error = %transient, "retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

/// A body that fails once it arrives slower than `limits.min_rate` on
/// average, counted from the request after `limits.grace`. (A body with no
/// byte at all for `grace` fails by the client's read timeout.)
fn at_least<B: AsRef<[u8]>>(
    body: impl futures_util::Stream<Item = reqwest::Result<B>>,
    limits: Limits,
) -> impl futures_util::Stream<Item = io::Result<B>> {
    let start = std::time::Instant::now();
    let mut count: u64 = 0;
    body.map_err(io::Error::other).and_then(move |chunk| {
        count = count.saturating_add(chunk.as_ref().len() as u64);
        let elapsed = start.elapsed();
        let slow = limits.min_rate > 0
            && elapsed > limits.grace
            && (count as f64) < limits.min_rate as f64 * elapsed.as_secs_f64();
        let result = if slow {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{count} bytes in {:.0?}, slower than the minimum of {} bytes/s (--min-rate)",
                    elapsed, limits.min_rate
                ),
            ))
        } else {
            Ok(chunk)
        };
        std::future::ready(result)
    })
}

async fn read_capped(
    url: &Url,
    resp: reqwest::Response,
    cap: u64,
    limits: Limits,
) -> Result<Vec<u8>, FetchError> {
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            cap,
        });
    }
    // Sized once from the length the server announces (within the cap), so
    // that a small NAR is not copied and left behind as it grows.
    let size = resp.content_length().unwrap_or(0).min(cap);
    let stream = at_least(resp.bytes_stream(), limits);
    futures_util::pin_mut!(stream);
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = stream.try_next().await.map_err(|e| FetchError::Transport {
        url: url.to_string(),
        msg: error_chain(&e),
    })? {
        if (buf.len() + chunk.len()) as u64 > cap {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                cap,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// reqwest's Display hides the cause ("error sending request"); show the chain.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn test_options() -> HttpOptions {
        HttpOptions {
            allow_insecure_http: false,
            stall_timeout: Duration::from_secs(1),
            min_rate: 0,
            proxy: None,
        }
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_echoing_them() {
        for spec in [
            "https://alice:hunter2@cache.example.org/",
            "https://hunter2@cache.example.org",
            "https://alice:hun#ter2@cache.example.org",
            "https://alice:hun/ter2@cache.example.org",
            "https://alice:hun?ter2@cache.example.org/x",
            "s3://alice:hunter2@bucket/prefix?region=eu-west-1",
            "s3://bucket/prefix?endpoint=https://alice:hunter2@s3.example.org",
        ] {
            let err = Source::new(spec, &test_options(), &Secrets::default())
                .err()
                .unwrap_or_else(|| panic!("{spec} accepted"));
            let msg = format!("{err:#}");
            assert!(!msg.contains("hunter2") && !msg.contains("ter2@"), "{msg}");
            assert!(
                msg.contains("--netrc-file") || msg.contains("AWS_SECRET_ACCESS_KEY"),
                "{msg}"
            );
        }
    }

    #[test]
    fn unknown_bucket_parameters_are_not_echoed_with_their_values() {
        let err = Source::new(
            "s3://bucket?secret_access_key=hunter2",
            &test_options(),
            &Secrets::default(),
        )
        .err()
        .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("secret_access_key") && !msg.contains("hunter2"),
            "{msg}"
        );
    }

    /// A loopback HTTP/1.1 server answering each request (one per
    /// connection) with what `answer` gives for its request head and number
    /// (from 1). Returns its base URL and the heads it saw.
    async fn server(
        answer: impl Fn(&str, usize) -> String + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let n = {
                    let mut seen = log.lock().unwrap();
                    seen.push(head.clone());
                    seen.len()
                };
                let _ = sock.write_all(answer(&head, n).as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        (format!("http://{addr}/"), seen)
    }

    fn reply(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    fn http(url: &str) -> Source {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let opts = HttpOptions {
            allow_insecure_http: true,
            ..test_options()
        };
        Source::new(url, &opts, &Secrets::default()).unwrap()
    }

    fn transport(r: Result<Vec<u8>, FetchError>) -> String {
        match r {
            Err(FetchError::Transport { msg, .. }) => msg,
            other => panic!("expected a transport error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_a_missing_file_is_not() {
        let (url, seen) = server(|head, n| match (head.contains("/missing"), n) {
            (true, _) => reply("404 Not Found", "", ""),
            (false, 1 | 2) => reply("503 Service Unavailable", "", ""),
            (false, _) => reply("200 OK", "", "hello"),
        })
        .await;
        let src = http(&url);
        assert_eq!(src.get_small("f", 100).await.unwrap(), b"hello");
        assert_eq!(seen.lock().unwrap().len(), 3);
        let r = src.get_small("missing", 100).await;
        assert!(matches!(r, Err(FetchError::NotFound(_))), "{r:?}");
        assert_eq!(seen.lock().unwrap().len(), 4, "a 404 is not retried");
    }

    #[tokio::test]
    async fn a_server_that_keeps_failing_is_given_up_after_four_attempts() {
        let (url, seen) = server(|_, _| reply("500 Internal Server Error", "", "")).await;
        let msg = transport(http(&url).get_small("f", 100).await);
        assert!(
            msg.contains("500") && msg.contains("after 4 attempts"),
            "{msg}"
        );
        assert_eq!(seen.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn redirects_are_followed_within_the_origin_only() {
        let (elsewhere, asked_elsewhere) = server(|_, _| reply("200 OK", "", "elsewhere")).await;
        let (url, _) = server(move |head, _| {
            if head.starts_with("GET /a ") {
                reply("302 Found", "Location: /b\r\n", "")
            } else if head.starts_with("GET /b ") {
                reply("200 OK", "", "moved")
            } else {
                reply("302 Found", &format!("Location: {elsewhere}x\r\n"), "")
            }
        })
        .await;
        let src = http(&url);
        assert_eq!(src.get_small("a", 100).await.unwrap(), b"moved");
        let msg = transport(src.get_small("c", 100).await);
        assert!(msg.contains("refusing a redirect"), "{msg}");
        assert!(asked_elsewhere.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn not_modified_answers_only_a_conditional_request() {
        let (url, seen) = server(|head, _| {
            let etag = "ETag: \"v1\"\r\n";
            if head.to_ascii_lowercase().contains("if-none-match: \"v1\"") {
                reply("304 Not Modified", etag, "")
            } else if head.contains("/stuck") {
                reply("304 Not Modified", "", "")
            } else {
                reply("200 OK", etag, "pointer")
            }
        })
        .await;
        let src = http(&url);
        let first = src
            .get_pointer("p", 100, &Validators::default())
            .await
            .unwrap();
        let Fetched::Body(bytes, v) = first else {
            panic!("a first request is not conditional")
        };
        assert_eq!(
            (bytes.as_slice(), v.etag.as_deref()),
            (&b"pointer"[..], Some("\"v1\""))
        );
        let again = src.get_pointer("p", 100, &v).await.unwrap();
        assert!(matches!(again, Fetched::NotModified));
        let msg = transport(src.get_small("stuck", 100).await);
        assert!(msg.contains("protocol error"), "{msg}");
        assert_eq!(seen.lock().unwrap().len(), 3, "none of these is retried");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_and_a_request_for_credentials_are_refused() {
        let (url, _) = server(|head, _| {
            if head.contains("/private") {
                reply("401 Unauthorized", "", "")
            } else {
                reply("200 OK", "", &"x".repeat(200))
            }
        })
        .await;
        let src = http(&url);
        let r = src.get_small("big", 100).await;
        assert!(
            matches!(r, Err(FetchError::TooLarge { cap: 100, .. })),
            "{r:?}"
        );
        let msg = transport(src.get_small("private", 100).await);
        assert!(msg.contains("--netrc-file"), "{msg}");
    }
}
