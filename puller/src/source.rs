//! Where the agent reads a cache from: HTTP(S) or a local directory.
//!
//! Keys are relative (`hosts/foobar.json`, `manifests/….json`, `nar/….nar.xz`)
//! and were checked before they get here (host names, the manifest's URL
//! pattern). Every read is bounded: small files by a cap, NARs by the signed
//! FileSize (checked by the caller while streaming). HTTP uses one client
//! with keep-alive, a connect timeout, a stall timeout between body reads, a
//! minimum average rate per body, no automatic decompression, no proxy but
//! the one `--proxy` names, and follows redirects only within the same
//! scheme, host and port.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::TryStreamExt;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
        limits: Limits,
    },
    Dir(PathBuf),
    /// A tar file laid out like a cache (`nixcast bundle`): key → (offset, size).
    Bundle {
        file: PathBuf,
        index: std::sync::Arc<HashMap<String, (u64, u64)>>,
    },
}

impl Source {
    /// `https://…`, `http://…` (only with `allow_insecure_http`), `file://DIR` or a directory.
    pub fn new(spec: &str, opts: &HttpOptions) -> anyhow::Result<Self> {
        let allow_insecure_http = opts.allow_insecure_http;
        if let Some(dir) = spec.strip_prefix("file://") {
            return Ok(Source::Dir(PathBuf::from(dir)));
        }
        if !spec.contains("://") {
            return Ok(Source::Dir(PathBuf::from(spec)));
        }
        let mut base =
            Url::parse(spec).map_err(|e| anyhow::anyhow!("invalid cache URL {spec:?}: {e}"))?;
        match base.scheme() {
            "https" => {}
            "http" if allow_insecure_http => {}
            "http" => anyhow::bail!(
                "refusing plain http cache {spec}: a closure reveals the host's configuration; \
                 use https, or --allow-insecure-http on a trusted network"
            ),
            s => anyhow::bail!("unsupported cache URL scheme {s:?} in {spec}"),
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
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
            Source::Http {
                client,
                base,
                limits,
            } => {
                let url = base.join(key).expect("relative key");
                let conditional = v.etag.is_some() || v.last_modified.is_some();
                let resp = send_with_retries(&url, conditional, || {
                    let mut req = client.get(url.clone());
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
            Source::Http {
                client,
                base,
                limits,
            } => {
                let url = base.join(key).expect("relative key");
                let resp = send_with_retries(&url, false, || client.get(url.clone())).await?;
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
            Source::Http {
                client,
                base,
                limits,
            } => {
                let url = base.join(key).expect("relative key");
                let resp = send_with_retries(&url, false, || client.get(url.clone())).await?;
                let stream = at_least(resp.bytes_stream(), *limits);
                let reader = tokio_util::io::StreamReader::new(stream);
                Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)))
            }
        }
    }
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
/// may not be listed) is `NotFound`.
async fn send_with_retries(
    url: &Url,
    conditional: bool,
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
    let stream = at_least(resp.bytes_stream(), limits);
    futures_util::pin_mut!(stream);
    let mut buf = Vec::new();
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
