//! A cache on a web server (`https://…`, or `http://…` on a trusted network).
//!
//! One client with keep-alive, a connect timeout, a stall timeout between
//! body reads, a minimum average rate per body, no automatic decompression,
//! no proxy but the one `--proxy` names, and redirects followed only within
//! the same scheme, host and port. Basic auth from a netrc file goes only to
//! the host its entry names (and so never across a redirect, which stays on
//! that origin). Only a host's report is ever written, by `PUT`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::TryStreamExt;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{StatusCode, Url};

use crate::netrc::Credentials;
use crate::secrets::Secrets;
use crate::{error_chain, redact, Backend, Body, Entry, Error, Fetched, Validators, Waited};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait a long poll asks a server for.
pub const MAX_WAIT: Duration = Duration::from_secs(120);
/// Attempts at one request before a transient failure is final.
pub const ATTEMPTS: u32 = 4;

type FetchError = Error;

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
    /// Which program asks (`nixcast-pull/0.1.0`): a server may tell them apart.
    pub user_agent: &'static str,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            allow_insecure_http: false,
            stall_timeout: Duration::from_secs(60),
            min_rate: 0,
            proxy: None,
            user_agent: concat!("nixcast/", env!("CARGO_PKG_VERSION")),
        }
    }
}

#[derive(Clone, Copy)]
struct Limits {
    min_rate: u64,
    grace: Duration,
}

pub struct Server {
    client: reqwest::Client,
    /// For long polls: the same, with room for the server's wait between reads.
    waiting: reqwest::Client,
    base: Url,
    /// From the netrc entry for `base`'s host.
    auth: Option<Arc<Credentials>>,
    limits: Limits,
}

impl Server {
    /// `https://…`, or `http://…` with `allow_insecure_http`.
    pub fn open(spec: &str, opts: &HttpOptions, secrets: &Secrets) -> anyhow::Result<Self> {
        // One TLS provider for the process, whoever asks first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let allow_insecure_http = opts.allow_insecure_http;
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
        let proxy = match &opts.proxy {
            None => None,
            Some(p) => {
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
                Some(proxy)
            }
        };
        let client = |read_timeout: Duration| {
            let builder = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(read_timeout)
                .redirect(same_origin_redirects())
                .https_only(!allow_insecure_http)
                .user_agent(opts.user_agent)
                // reqwest reads http_proxy & co by default: a variable left in a
                // service's environment would route the agent through a machine
                // nobody chose for it. Only --proxy names one.
                .no_proxy();
            match &proxy {
                Some(p) => builder.proxy(p.clone()),
                None => builder,
            }
            .build()
        };
        let waiting = client(MAX_WAIT + opts.stall_timeout)?;
        let client = client(opts.stall_timeout)?;
        Ok(Server {
            client,
            waiting,
            base,
            auth,
            limits: Limits {
                min_rate: opts.min_rate,
                grace: opts.stall_timeout,
            },
        })
    }

    fn url(&self, key: &str) -> Url {
        self.base.join(key).expect("a relative key")
    }

    /// A GET with the netrc's credentials, retried on transient failures.
    async fn get_response(&self, key: &str, v: &Validators) -> Result<reqwest::Response, Error> {
        let url = self.url(key);
        send_with_retries(&url, v.any(), self.auth.is_some(), || {
            let req = with_auth(self.client.get(url.clone()), &self.auth);
            // The entity tag when there is one, alone: a date has whole
            // seconds, and a server that weighs If-Modified-Since (against
            // RFC 9110, 13.2.2) would answer 304 for a pointer rewritten
            // within the second of the one the agent holds.
            match (&v.etag, &v.last_modified) {
                (Some(e), _) => req.header(IF_NONE_MATCH, e),
                (None, Some(m)) => req.header(IF_MODIFIED_SINCE, m),
                (None, None) => req,
            }
        })
        .await
    }
}

impl Backend for Server {
    fn url_of(&self, key: &str) -> String {
        self.base
            .join(key)
            .map(String::from)
            .unwrap_or_else(|_| key.to_owned())
    }

    fn wait_changed<'a>(
        &'a self,
        key: &'a str,
        v: &'a Validators,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Waited, Error>> {
        async move {
            let url = self.url(key);
            let wait = wait.min(MAX_WAIT);
            // One attempt: the caller's loop is the retry, with its backoff.
            let mut req = with_auth(self.waiting.head(url.clone()), &self.auth)
                .header("prefer", format!("wait={}", wait.as_secs()));
            if let Some(e) = &v.etag {
                req = req.header(IF_NONE_MATCH, e);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Error::other(&redact(url.as_str()), error_chain(&e)))?;
            let applied = resp.headers().contains_key("preference-applied");
            match resp.status() {
                StatusCode::NOT_MODIFIED if applied => Ok(Waited::Unchanged),
                StatusCode::NOT_MODIFIED => Ok(Waited::Unsupported),
                // Changed when the server waited, or when it did not but
                // its entity tag says so; else it neither waits nor tells.
                s if s.is_success() => Ok(
                    match applied || (v.etag.is_some() && changed_tag(&resp, v)) {
                        true => Waited::Changed,
                        false => Waited::Unsupported,
                    },
                ),
                StatusCode::NOT_FOUND => Err(Error::NotFound(url.to_string())),
                s => Err(Error::other(url.as_str(), format!("HTTP {s}"))),
            }
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        cap: u64,
        v: &'a Validators,
    ) -> BoxFuture<'a, Result<Fetched, Error>> {
        async move {
            let resp = self.get_response(key, v).await?;
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
            let bytes = read_capped(&self.url(key), resp, cap, self.limits).await?;
            Ok(Fetched::Body(bytes, validators))
        }
        .boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn io::Read + Send>, Error>> {
        async move {
            let resp = self.get_response(key, &Validators::default()).await?;
            let stream = at_least(resp.bytes_stream(), self.limits);
            let reader = tokio_util::io::StreamReader::new(stream);
            Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)) as Box<dyn io::Read + Send>)
        }
        .boxed()
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        async move {
            let url = self.url(key);
            let r = send_with_retries(&url, false, self.auth.is_some(), || {
                with_auth(self.client.head(url.clone()), &self.auth)
            })
            .await;
            match r {
                Ok(_) => Ok(true),
                Err(Error::NotFound(_)) => Ok(false),
                Err(e) => Err(e),
            }
        }
        .boxed()
    }

    /// Sends `body` by `PUT` (as JSON: a report), once; the next run retries.
    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let url = self.url_of(key);
            let Body::Bytes(body) = body else {
                return Err(Error::other(&url, "only small objects are sent by PUT"));
            };
            let req = with_auth(self.client.put(self.url(key)), &self.auth)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(put_refused(&url, r).await),
                Err(e) => Err(Error::other(&url, error_chain(&e))),
            }
        }
        .boxed()
    }

    fn put_new<'a>(&'a self, key: &'a str, _: Vec<u8>) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            Err(Error::other(
                &self.url_of(key),
                "a web server is not written to but by PUT",
            ))
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Error>> {
        async move {
            Err(Error::other(
                &self.url_of(prefix),
                "a web server cannot be listed",
            ))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            Err(Error::other(
                &self.url_of(key),
                "a web server is not written to but by PUT",
            ))
        }
        .boxed()
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), Error>> {
        async { Ok(()) }.boxed()
    }
}

/// Whether a response's entity tag differs from the one held.
fn changed_tag(resp: &reqwest::Response, v: &Validators) -> bool {
    let tag = resp.headers().get(ETAG).and_then(|t| t.to_str().ok());
    tag != v.etag.as_deref()
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

/// What a failed PUT says: a 4xx answer (but 408 and 429, which pass) is a
/// refusal, with the first KiB of the server's text, which says why.
async fn put_refused(url: &str, r: reqwest::Response) -> Error {
    let status = r.status();
    let mut why = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    why.truncate(1024);
    let why = String::from_utf8_lossy(&why).trim().to_owned();
    let msg = match why.is_empty() {
        true => format!("server answered {status}"),
        false => format!("server answered {status}: {why}"),
    };
    let transient = status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    match transient {
        true => Error::other(url, msg),
        false => Error::Refused {
            url: url.to_owned(),
            msg,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cache;

    fn test_options() -> HttpOptions {
        HttpOptions {
            allow_insecure_http: false,
            stall_timeout: Duration::from_secs(1),
            ..HttpOptions::default()
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
            let err = Cache::new(spec, &test_options(), &Secrets::default())
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
        let err = Cache::new(
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

    fn http(url: &str) -> Cache {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let opts = HttpOptions {
            allow_insecure_http: true,
            ..test_options()
        };
        Cache::new(url, &opts, &Secrets::default()).unwrap()
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

    /// A server that answers 304 to any If-Modified-Since (as some do,
    /// whatever the entity tag says) must not hide a rewritten pointer.
    #[tokio::test]
    async fn an_entity_tag_is_sent_without_the_date() {
        let (url, seen) = server(|head, _| {
            if head.to_ascii_lowercase().contains("if-modified-since") {
                reply("304 Not Modified", "", "")
            } else {
                reply("200 OK", "ETag: \"v2\"\r\n", "new pointer")
            }
        })
        .await;
        let v = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: Some("Sun, 06 Dec 2026 07:00:00 GMT".into()),
        };
        let got = http(&url).get_pointer("p", 100, &v).await.unwrap();
        assert!(
            matches!(got, Fetched::Body(..)),
            "a 304 hid the new pointer"
        );
        let head = seen.lock().unwrap()[0].to_ascii_lowercase();
        assert!(
            head.contains("if-none-match") && !head.contains("if-modified-since"),
            "{head}"
        );
        // Without a tag, the date is what there is.
        let v = Validators { etag: None, ..v };
        let got = http(&url).get_pointer("p", 100, &v).await.unwrap();
        assert!(matches!(got, Fetched::NotModified));
    }

    /// A long poll tells a server that waited from one that does not (which
    /// the agent then polls), and a change from none.
    #[tokio::test]
    async fn a_long_poll_tells_a_waiting_server_from_one_that_does_not() {
        let (url, seen) = server(|head, _| {
            let path = head.split_whitespace().nth(1).unwrap_or("");
            match path {
                "/waits" => reply("304 Not Modified", "Preference-Applied: wait=60\r\n", ""),
                "/plain" => reply("304 Not Modified", "", ""),
                "/changed" => reply("200 OK", "ETag: \"v2\"\r\n", ""),
                _ => reply("200 OK", "ETag: \"v1\"\r\n", ""),
            }
        })
        .await;
        let v = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: None,
        };
        let src = http(&url);
        let wait = |key: &'static str| {
            let (src, v) = (&src, &v);
            async move {
                src.wait_changed(key, v, Duration::from_secs(60))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(wait("waits").await, Waited::Unchanged);
        assert_eq!(wait("plain").await, Waited::Unsupported);
        assert_eq!(wait("changed").await, Waited::Changed);
        // 200 with the tag held: a server that ignores If-None-Match.
        assert_eq!(wait("ignores").await, Waited::Unsupported);
        let head = seen.lock().unwrap()[0].to_ascii_lowercase();
        assert!(
            head.starts_with("head ")
                && head.contains("prefer: wait=60")
                && head.contains("if-none-match"),
            "{head}"
        );
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
