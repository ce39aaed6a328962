//! `nixcast serve DIR`: a read-only HTTP server for a static cache directory.
//!
//! It lets a published cache be used by `nix copy --from http://…`,
//! `substituters =` and `nixcast-pull` without a real web host. Any web server
//! or object store can serve the same directory; this one only makes sure the
//! agent's conditional and ranged requests are answered well.
//!
//! What it does:
//! - answers `GET` and `HEAD` for regular files under the root (any other
//!   method gets 405), streaming each body from the file;
//! - names the content type from the cache layout (`*.narinfo`,
//!   `nix-cache-info`, `*.nar[.xz|.zst|.bz2]`, `*.json`, else octet-stream);
//! - sends `ETag` (size, mtime in nanoseconds and inode) and `Last-Modified`,
//!   and answers `If-None-Match` / `If-Modified-Since` with 304;
//! - answers one `Range: bytes=…` with 206 (or 416), honouring `If-Range`;
//! - sends a `Cache-Control` that matches how each kind of file changes.
//!
//! What it does not do:
//! - no directory listing and no index file: a directory, `/` included, is 404;
//! - nothing outside the root, even through a symlink, and no dot-file (the
//!   publisher's half-written `.tmp-*` files live beside the NARs);
//! - no multi-range (`multipart/byteranges`): such a request gets the whole
//!   file, which HTTP allows;
//! - no `If-Match` / `If-Unmodified-Since` (they guard writes, and there are
//!   none), no compression, no TLS, no writes of any kind.

use std::fs::Metadata;
use std::future::Future;
use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use httpdate::HttpDate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio_util::io::ReaderStream;

/// Bytes read from the file per body chunk: big enough that a NAR of
/// hundreds of MiB is not sent in tiny pieces, small enough to stay bounded.
const CHUNK: usize = 64 * 1024;

/// For files that change in place (the latest pointer of a host and
/// `nix-cache-info`), and for anything we know nothing about. Caches may keep
/// them but must revalidate each time, which the `ETag` turns into a cheap 304:
/// exactly the agent's `If-None-Match` poll.
const REVALIDATE: &str = "no-cache";

/// For files named by a hash of their own bytes (`nar/<filehash>…`,
/// `manifests/<sha256>.json`): a name never gets other bytes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// For narinfos. A narinfo is named by its store path's hash, not by a hash of
/// its own text, so the publisher may rewrite it (another compression, hence
/// another NAR URL). Its absence is not final either: a narinfo may be
/// published later for a path that was missing. A short max-age bounds how long
/// a cache in between can keep an old one; absences are never cached by us,
/// because every 404 is sent with `no-store` (see [`ERROR_CACHE_CONTROL`]).
const NARINFO: &str = "public, max-age=300";

/// For `hosts/<host>/<generation>.json`. The history is immutable by design,
/// but its names are counters, not content hashes: a publish that stopped
/// between the history pointer and the latest pointer could reuse a number.
/// A day bounds the harm of that while still sparing the server.
const HISTORY: &str = "public, max-age=86400";

/// For every error answer: a 404 must not outlive the publish that fixes it.
const ERROR_CACHE_CONTROL: &str = "no-store";

/// The latest time `httpdate` can format (end of year 9999); it panics past it.
const LATEST_HTTP_DATE: Duration = Duration::from_secs(253_402_300_799);

/// Builds the service for the directory `root`.
///
/// The root is canonicalized once, here. If that fails the router still
/// answers, but fails closed: no file's real path starts with a path that is
/// not canonical, so every request gets 404. [`run`] checks the root first and
/// reports the error instead.
pub fn router(root: PathBuf) -> Router {
    let root = match root.canonicalize() {
        Ok(canonical) => canonical,
        Err(err) => {
            tracing::error!(
                root = %root.display(),
                %err,
                "cannot resolve the served directory; every request will get 404"
            );
            root
        }
    };
    Router::new().fallback(handle).with_state(Arc::new(root))
}

/// What clients may hold of the server. A client that is slow, or many of
/// them, can then make others wait for a while, but never for good, and
/// never run the server out of file descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once. Further clients wait in the kernel's
    /// accept queue until one ends. Lowered at start to what the file
    /// descriptor limit allows: a connection takes one descriptor, and one
    /// more while it sends a file.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, counted from when
    /// the server starts to wait for them; so also how long a kept-alive
    /// connection may sit idle. Trickling bytes does not extend it.
    pub header_timeout: Duration,
    /// How long a response may wait for the client to take more of it
    /// before the connection is closed. A slow download goes on as long as
    /// it moves at all within this time.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// Descriptors left for everything but connections: the runtime, the
/// listener, standard streams, logging.
const RESERVED_FDS: u64 = 32;

/// `wanted`, or fewer connections if the file descriptor limit cannot hold
/// that many.
fn connections_within_fd_limit(wanted: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let Some(fds) = limit.current else {
        return wanted;
    };
    let fit = usize::try_from(fds.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if fit < wanted {
        tracing::warn!(
            "the file descriptor limit ({fds}) allows {fit} connections at once, not {wanted}: serving at most {fit}"
        );
        return fit;
    }
    wanted
}

/// Serves `root` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
///
/// Fails at once if `root` is not a directory, so that a typo in the command
/// line is an error rather than a server that answers 404 to everything.
///
/// Speaks HTTP/1.1 only: that is what Nix and the agent use over plain HTTP,
/// and its header timeout bounds every connection from its first byte.
pub async fn run(
    listener: tokio::net::TcpListener,
    root: PathBuf,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let canonical = checked_root(&root).await?;
    let max_connections = connections_within_fd_limit(limits.max_connections);
    tracing::info!(
        addr = %listener.local_addr()?,
        root = %canonical.display(),
        max_connections,
        "serving the cache read-only"
    );
    let app = router(canonical);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A permit first: at the limit, clients wait in the accept queue
        // rather than take descriptors the server needs.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: either way, try again shortly.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Nix asks for many small files, one after another on a connection.
        // With Nagle's algorithm a small answer's last segment often waits for
        // the client's delayed ACK of the one before: 40 ms or more on Linux,
        // each time.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "cannot set TCP_NODELAY on a connection");
        }
        let io = hyper_util::rt::TokioIo::new(SendDeadline::new(tcp, limits.send_timeout));
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection whose writes fail once the client has taken nothing for
/// `timeout`: a client that asks for a NAR and never reads it would
/// otherwise hold its connection, and a file, for good.
struct SendDeadline<T> {
    io: T,
    timeout: Duration,
    /// Armed when a write has to wait; cleared when one makes progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> SendDeadline<T> {
    fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
        }
    }

    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing of the response for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.check(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.check(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        this.check(cx, result)
    }
}

async fn checked_root(root: &Path) -> io::Result<PathBuf> {
    let annotate = |err: io::Error| {
        io::Error::new(
            err.kind(),
            format!("cannot serve {}: {err}", root.display()),
        )
    };
    let canonical = tokio::fs::canonicalize(root).await.map_err(annotate)?;
    if !tokio::fs::metadata(&canonical)
        .await
        .map_err(annotate)?
        .is_dir()
    {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("cannot serve {}: not a directory", root.display()),
        ));
    }
    Ok(canonical)
}

async fn handle(
    State(root): State<Arc<PathBuf>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = respond(&root, &method, uri.path(), &headers).await;
    let status = response.status().as_u16();
    tracing::debug!(%method, path = uri.path(), status, "request");
    response
}

async fn respond(root: &Path, method: &Method, raw_path: &str, headers: &HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return Refusal::MethodNotAllowed.response();
    }
    let file = match lookup(root, raw_path).await {
        Ok(file) => file,
        Err(refusal) => return refusal.response(),
    };
    if not_modified(headers, &file) {
        return file.validated(StatusCode::NOT_MODIFIED);
    }
    let range = match headers.get(header::RANGE) {
        Some(value) if if_range_allows(headers, &file) => {
            byte_range(value.to_str().unwrap_or(""), file.len)
        }
        _ => ByteRange::Whole,
    };
    let (status, start, len) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, file.len),
        ByteRange::Part { start, len } => (StatusCode::PARTIAL_CONTENT, start, len),
        ByteRange::Unsatisfiable => return file.unsatisfiable(),
    };
    let result = file.send(status, start, len, method == Method::GET).await;
    result.unwrap_or_else(|err| {
        tracing::warn!(path = raw_path, %err, "cannot read a served file");
        Refusal::Internal.response()
    })
}

/// Why a request gets no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The path is malformed or tries to leave the root.
    BadRequest,
    /// No regular file of that name inside the root (or one we do not serve).
    NotFound,
    MethodNotAllowed,
    /// The file is there, but the one byte range asked for is not in it.
    RangeNotSatisfiable,
    /// The file was found but could not be read.
    Internal,
}

impl Refusal {
    fn response(self) -> Response {
        let (status, text) = match self {
            Refusal::BadRequest => (StatusCode::BAD_REQUEST, "bad request\n"),
            Refusal::NotFound => (StatusCode::NOT_FOUND, "not found\n"),
            Refusal::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            Refusal::RangeNotSatisfiable => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n")
            }
            Refusal::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n"),
        };
        let mut response = Response::new(Body::from(text));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(ERROR_CACHE_CONTROL),
        );
        if self == Refusal::MethodNotAllowed {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}

/// Turns the raw (still percent-encoded) URL path into a relative path of
/// checked segments joined by `/`.
///
/// Decoding is done only to judge each segment: an encoded `/` or `..` must
/// not sneak past the checks that the plain ones meet.
fn relative_path(raw: &str) -> Result<String, Refusal> {
    let rest = raw.strip_prefix('/').ok_or(Refusal::BadRequest)?;
    let mut segments = Vec::new();
    for raw_segment in rest.split('/') {
        let segment = percent_decode(raw_segment).ok_or(Refusal::BadRequest)?;
        check_segment(&segment)?;
        segments.push(segment);
    }
    Ok(segments.join("/"))
}

fn check_segment(segment: &str) -> Result<(), Refusal> {
    if segment == "." || segment == ".." || segment.contains(['/', '\\', '\0']) {
        return Err(Refusal::BadRequest);
    }
    // An empty segment comes from `/`, `a//b` or a trailing slash: each names a
    // directory or nothing, never a file.
    if segment.is_empty() {
        return Err(Refusal::NotFound);
    }
    // No name in a Nix cache starts with a dot, and the publisher writes
    // `nar/.tmp-*` before renaming: serving one would hand out half a file.
    if segment.starts_with('.') {
        return Err(Refusal::NotFound);
    }
    Ok(())
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not
/// UTF-8 (no cache name needs either).
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An open regular file inside the root, with what the headers need.
struct Found {
    file: tokio::fs::File,
    /// The checked path relative to the root, as the client named it: the
    /// content type and caching follow the name asked for, not a symlink's
    /// target.
    name: String,
    len: u64,
    modified: SystemTime,
    etag: String,
}

async fn lookup(root: &Path, raw_path: &str) -> Result<Found, Refusal> {
    let name = relative_path(raw_path)?;
    let not_found = |err: io::Error| {
        tracing::debug!(path = raw_path, %err, "not served");
        Refusal::NotFound
    };
    // Canonicalizing resolves every symlink, so the prefix check sees where
    // the bytes really are: a symlink inside the root that points outside is
    // refused like `..` would be.
    let real = tokio::fs::canonicalize(root.join(&name))
        .await
        .map_err(not_found)?;
    if !real.starts_with(root) {
        let real = real.display();
        tracing::debug!(path = raw_path, %real, "refused: resolves outside the root");
        return Err(Refusal::NotFound);
    }
    // Checked before opening: opening a FIFO would block until some writer
    // came, and a directory has no bytes to serve.
    if !tokio::fs::metadata(&real)
        .await
        .map_err(not_found)?
        .is_file()
    {
        return Err(Refusal::NotFound);
    }
    let file = tokio::fs::File::open(&real).await.map_err(not_found)?;
    // The validators come from the open handle, so they describe the bytes we
    // send even if the name is replaced meanwhile (the publisher renames).
    let meta = file.metadata().await.map_err(not_found)?;
    if !meta.is_file() {
        return Err(Refusal::NotFound);
    }
    let modified = http_time(meta.modified().unwrap_or(UNIX_EPOCH));
    Ok(Found {
        etag: entity_tag(&meta, modified),
        file,
        name,
        len: meta.len(),
        modified,
    })
}

/// Clamps a file time into what an HTTP date can say, because `httpdate`
/// panics before 1970 and after 9999 and a file's mtime can be anything.
fn http_time(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => UNIX_EPOCH + since_epoch.min(LATEST_HTTP_DATE),
        Err(_) => UNIX_EPOCH,
    }
}

/// A strong entity tag. The inode changes on every atomic rename, the size and
/// the nanosecond mtime on every rewrite in place: together they change
/// whenever the bytes do, without reading them.
fn entity_tag(meta: &Metadata, modified: SystemTime) -> String {
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{:x}-{:x}\"", meta.len(), nanos, meta.ino())
}

impl Found {
    /// The headers that say which version of the file this is and how long
    /// it may be kept; a 304 carries these alone, since it has no content.
    fn validated(&self, status: StatusCode) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        set(headers, header::ETAG, self.etag.clone());
        let last_modified = httpdate::fmt_http_date(self.modified);
        set(headers, header::LAST_MODIFIED, last_modified);
        let cache_control = cache_control(&self.name);
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        response
    }

    /// `len` bytes from `start` with status 200 or 206, streamed from the file
    /// (for `HEAD` the same headers and no body).
    async fn send(
        self,
        status: StatusCode,
        start: u64,
        len: u64,
        with_body: bool,
    ) -> io::Result<Response> {
        let mut response = self.validated(status);
        let headers = response.headers_mut();
        let content_type = content_type(&self.name);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        // Set by hand because a streamed body has no known size; for `HEAD`
        // it is the size the `GET` body would have.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if status == StatusCode::PARTIAL_CONTENT {
            let range = format!("bytes {start}-{}/{}", start + len - 1, self.len);
            set(headers, header::CONTENT_RANGE, range);
        }
        if with_body {
            let mut file = self.file;
            file.seek(SeekFrom::Start(start)).await?;
            // `take` stops at the length announced even if the file grows.
            let stream = ReaderStream::with_capacity(file.take(len), CHUNK);
            *response.body_mut() = Body::from_stream(stream);
        }
        Ok(response)
    }

    /// 416 is an error about the request, not a version of the file: it gets
    /// the error headers (no caching) plus the length the client should have
    /// asked within.
    fn unsatisfiable(&self) -> Response {
        let mut response = Refusal::RangeNotSatisfiable.response();
        let headers = response.headers_mut();
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        set(
            headers,
            header::CONTENT_RANGE,
            format!("bytes */{}", self.len),
        );
        response
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: String) {
    // Every value we format is digits, ASCII punctuation or an HTTP date.
    let value = HeaderValue::try_from(value).expect("header values are formatted from ASCII");
    headers.insert(name, value);
}

fn content_type(name: &str) -> &'static str {
    let file_name = name.rsplit('/').next().unwrap_or(name);
    const NAR_SUFFIXES: [&str; 4] = [".nar", ".nar.xz", ".nar.zst", ".nar.bz2"];
    if file_name == "nix-cache-info" {
        "text/x-nix-cache-info"
    } else if file_name.ends_with(".narinfo") {
        "text/x-nix-narinfo"
    } else if NAR_SUFFIXES
        .iter()
        .any(|suffix| file_name.ends_with(suffix))
    {
        "application/x-nix-nar"
    } else if file_name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// How long others may keep a file, from where it sits in the cache layout
/// (see the constants for the reasons).
fn cache_control(name: &str) -> &'static str {
    let segments: Vec<&str> = name.split('/').collect();
    match segments.as_slice() {
        ["nix-cache-info"] => REVALIDATE,
        ["hosts", pointer] if pointer.ends_with(".json") => REVALIDATE,
        ["hosts", _, generation] if generation.ends_with(".json") => HISTORY,
        ["nar", ..] | ["manifests", ..] => IMMUTABLE,
        [narinfo] if narinfo.ends_with(".narinfo") => NARINFO,
        _ => REVALIDATE,
    }
}

/// Whether a 304 answers the request.
fn not_modified(headers: &HeaderMap, file: &Found) -> bool {
    let mut if_none_match = headers.get_all(header::IF_NONE_MATCH).iter().peekable();
    // An entity tag is the more precise validator, so when `If-None-Match` is
    // present `If-Modified-Since` is ignored (RFC 9110, 13.1.3).
    if if_none_match.peek().is_some() {
        return if_none_match
            .filter_map(|value| value.to_str().ok())
            .any(|list| {
                list.trim() == "*" || entity_tags(list).iter().any(|tag| tag.opaque == file.etag)
            });
    }
    let Some(since) = header_date(headers, header::IF_MODIFIED_SINCE) else {
        return false;
    };
    // Compared to the second, the precision of HTTP dates.
    HttpDate::from(file.modified) <= since
}

/// Whether `If-Range` (if any) lets the `Range` apply; when it does not, the
/// client's copy is stale and it gets the whole file.
fn if_range_allows(headers: &HeaderMap, file: &Found) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        // If-Range needs the strong comparison: a weak tag never matches.
        let tags = entity_tags(value);
        return matches!(tags.as_slice(), [tag] if !tag.weak && tag.opaque == file.etag);
    }
    value
        .parse::<HttpDate>()
        .is_ok_and(|date| date == HttpDate::from(file.modified))
}

fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<HttpDate> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[derive(Debug, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// With its quotes, as it is compared.
    opaque: &'a str,
}

/// Parses `#entity-tag` (RFC 9110, 8.8.3). A quoted tag may contain commas,
/// so the list is scanned tag by tag rather than split on `,`; scanning stops
/// at the first thing that is not a tag.
fn entity_tags(list: &str) -> Vec<EntityTag<'_>> {
    let mut tags = Vec::new();
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let Some(body) = after.strip_prefix('"') else {
            return tags;
        };
        let Some(end) = body.find('"') else {
            return tags;
        };
        tags.push(EntityTag {
            weak,
            opaque: &after[..end + 2],
        });
        rest = &body[end + 1..];
    }
}

/// What a `Range` header asks of a file of a given length.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    /// Serve the whole file with 200: no usable range was asked for.
    Whole,
    Part {
        start: u64,
        len: u64,
    },
    Unsatisfiable,
}

/// Parses one `bytes=` range (RFC 9110, 14.1.2). Anything we do not handle
/// (another unit, several ranges, a malformed spec) gives `Whole`, since a
/// server may always ignore `Range`.
fn byte_range(value: &str, file_len: u64) -> ByteRange {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return ByteRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match digits(suffix) {
            None => ByteRange::Whole,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if file_len == 0 => ByteRange::Unsatisfiable,
            Some(suffix) => {
                let start = file_len.saturating_sub(suffix);
                ByteRange::Part {
                    start,
                    len: file_len - start,
                }
            }
        },
        (first, last) => {
            let Some(start) = digits(first) else {
                return ByteRange::Whole;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                digits(last)
            };
            match end {
                None => ByteRange::Whole,
                Some(end) if end < start => ByteRange::Whole,
                Some(_) if start >= file_len => ByteRange::Unsatisfiable,
                Some(end) => ByteRange::Part {
                    start,
                    len: end.min(file_len - 1) - start + 1,
                },
            }
        }
    }
}

/// A non-empty run of ASCII digits (`u64::from_str` alone would accept `+5`).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use reqwest::header::{
        ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
        IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
    };
    use tokio::io::AsyncWriteExt;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const TEN: &[u8] = b"0123456789";

    /// A real server on a loopback port, serving `<tempdir>/root`; the
    /// temporary directory also holds files outside the root.
    struct Server {
        addr: SocketAddr,
        dir: tempfile::TempDir,
        client: reqwest::Client,
        stop: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn start() -> Server {
            Self::start_with(Limits::default()).await
        }

        async fn start_with(limits: Limits) -> Server {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("root")).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let task = tokio::spawn(run(listener, dir.path().join("root"), limits, shutdown));
            // reqwest builds its TLS config even for plain http, so it needs a
            // provider; another test may have installed it already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            Server {
                addr,
                dir,
                client,
                stop,
                task,
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        /// Writes `bytes` at `name` under the root, creating directories.
        fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.root().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            path
        }

        fn get(&self, path: &str) -> reqwest::RequestBuilder {
            self.client.get(format!("http://{}{path}", self.addr))
        }

        fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
            self.client
                .request(method, format!("http://{}{path}", self.addr))
        }

        /// Sends `METHOD TARGET` exactly as written (reqwest would normalise
        /// dot segments away) and returns the status and the whole answer.
        async fn raw(&self, method: &str, target: &str) -> (u16, Vec<u8>) {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let request = format!(
                "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            let status_line = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP answer: {status_line:?}"));
            (status, answer)
        }

        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
        response
            .headers()
            .get(&name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[tokio::test]
    async fn content_types_follow_the_cache_layout() {
        let server = Server::start().await;
        let cases = [
            ("nix-cache-info", "text/x-nix-cache-info"),
            (
                "0123456789abcdfghijklmnpqrsvwxyz.narinfo",
                "text/x-nix-narinfo",
            ),
            ("nar/a.nar", "application/x-nix-nar"),
            ("nar/b.nar.xz", "application/x-nix-nar"),
            ("nar/c.nar.zst", "application/x-nix-nar"),
            ("nar/d.nar.bz2", "application/x-nix-nar"),
            ("manifests/e.json", "application/json"),
            ("hosts/foobar.json", "application/json"),
            ("hosts/foobar/7.json", "application/json"),
            ("nar/f.nar.gz.tmp", "application/octet-stream"),
            ("log/x", "application/octet-stream"),
        ];
        for (name, expected) in cases {
            server.put(name, name.as_bytes());
            let response = server.get(&format!("/{name}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{name}");
            assert_eq!(header(&response, CONTENT_TYPE), expected, "{name}");
            assert_eq!(header(&response, ACCEPT_RANGES), "bytes", "{name}");
            assert_eq!(
                header(&response, CONTENT_LENGTH),
                name.len().to_string(),
                "{name}"
            );
            assert_eq!(response.bytes().await.unwrap(), name.as_bytes(), "{name}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn cache_control_matches_how_each_file_changes() {
        let server = Server::start().await;
        let cases = [
            ("nix-cache-info", "no-cache"),
            ("hosts/foobar.json", "no-cache"),
            ("hosts/foobar/7.json", "public, max-age=86400"),
            (
                "0123456789abcdfghijklmnpqrsvwxyz.narinfo",
                "public, max-age=300",
            ),
            ("nar/a.nar.xz", "public, max-age=31536000, immutable"),
            ("manifests/e.json", "public, max-age=31536000, immutable"),
            ("other.bin", "no-cache"),
        ];
        for (name, expected) in cases {
            server.put(name, b"x");
            let response = server.get(&format!("/{name}")).send().await.unwrap();
            assert_eq!(header(&response, CACHE_CONTROL), expected, "{name}");
        }
        let missing = server.get("/missing.narinfo").send().await.unwrap();
        assert_eq!(header(&missing, CACHE_CONTROL), "no-store");
        server.stop().await;
    }

    #[tokio::test]
    async fn missing_files_are_404_with_a_short_text() {
        let server = Server::start().await;
        server.put("present.narinfo", b"x");
        for path in [
            "/missing.narinfo",
            "/nar/missing.nar.xz",
            "/present.narinfo/below",
        ] {
            let response = server.get(path).send().await.unwrap();
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(header(&response, CONTENT_TYPE), "text/plain; charset=utf-8");
            assert_eq!(response.text().await.unwrap(), "not found\n");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn the_root_and_directories_are_404() {
        let server = Server::start().await;
        // Files a listing or an index lookup would reveal.
        server.put("index.html", b"index");
        server.put("nar/index.html", b"index");
        server.put("nar/a.nar", b"nar");
        for path in ["/", "/nar", "/nar/", "//nar/a.nar", "/nar//a.nar"] {
            let response = server.get(path).send().await.unwrap();
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(response.text().await.unwrap(), "not found\n", "{path}");
        }
        // The same file under its real name is there.
        assert_eq!(server.get("/nar/a.nar").send().await.unwrap().status(), 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn dot_segments_cannot_leave_the_root() {
        let server = Server::start().await;
        std::fs::write(server.dir.path().join("secret"), b"SECRET-BYTES").unwrap();
        server.put("nar/a.nar", b"inside");
        // The raw helper does reach files, so a 400 below is the server's doing.
        let (status, answer) = server.raw("GET", "/nar/a.nar").await;
        assert_eq!(status, 200);
        assert!(contains(&answer, b"inside"));
        for target in [
            "/../secret",
            "/nar/../../secret",
            "/%2e%2e/secret",
            "/%2E%2E/secret",
            "/nar/%2e%2e/%2e%2e/secret",
            "/..%2fsecret",
            "/%2e%2e%2fsecret",
            "/./nar/a.nar",
            "/%2e/nar/a.nar",
        ] {
            let (status, answer) = server.raw("GET", target).await;
            assert_eq!(status, 400, "{target}");
            assert!(!contains(&answer, b"SECRET-BYTES"), "{target}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn encoded_separators_nul_and_broken_escapes_are_refused() {
        let server = Server::start().await;
        server.put("nar/a.nar", b"inside");
        server.put("a b", b"space");
        // An encoded `/` is not a separator: `nar%2fa.nar` must not find nar/a.nar.
        for target in [
            "/nar%2fa.nar",
            "/nar%2Fa.nar",
            "/nar%5ca.nar",
            "/a%00b",
            "/%zz",
            "/a%2",
            "/%ff",
        ] {
            let (status, _) = server.raw("GET", target).await;
            assert_eq!(status, 400, "{target}");
        }
        // A harmless escape is decoded.
        let (status, answer) = server.raw("GET", "/a%20b").await;
        assert_eq!(status, 200);
        assert!(contains(&answer, b"space"));
        server.stop().await;
    }

    #[tokio::test]
    async fn dot_files_are_not_served() {
        let server = Server::start().await;
        server.put("nar/.tmp-half", b"half a nar");
        server.put(".hidden", b"hidden");
        for path in ["/nar/.tmp-half", "/.hidden", "/nar/%2etmp-half"] {
            let (status, answer) = server.raw("GET", path).await;
            assert_eq!(status, 404, "{path}");
            assert!(
                !contains(&answer, b"half a nar") && !contains(&answer, b"hidden"),
                "{path}"
            );
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn symlinks_are_followed_only_within_the_root() {
        let server = Server::start().await;
        let outside = server.dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"SECRET-BYTES").unwrap();
        let inside = server.put("nar/a.nar", b"inside");
        let root = server.root();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("to-outside")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dir-outside")).unwrap();
        std::os::unix::fs::symlink(&inside, root.join("to-inside.nar")).unwrap();
        std::os::unix::fs::symlink("nar/a.nar", root.join("relative.nar")).unwrap();

        for path in ["/to-outside", "/dir-outside/secret"] {
            let response = server.get(path).send().await.unwrap();
            assert_eq!(response.status(), 404, "{path}");
            assert!(!response.text().await.unwrap().contains("SECRET"), "{path}");
        }
        for path in ["/to-inside.nar", "/relative.nar"] {
            let response = server.get(path).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            // Typed by the name asked for, not by the link's target.
            assert_eq!(header(&response, CONTENT_TYPE), "application/x-nix-nar");
            assert_eq!(response.bytes().await.unwrap(), &b"inside"[..], "{path}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn a_fifo_is_404_without_blocking() {
        let server = Server::start().await;
        let fifo = server.root().join("pipe.narinfo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening a FIFO for reading would wait for a writer forever.
        let request = server.get("/pipe.narinfo").send();
        let Ok(response) = tokio::time::timeout(Duration::from_secs(10), request).await else {
            // Free the server's blocked reader, or the runtime would wait for
            // it forever instead of reporting the failure.
            drop(std::fs::OpenOptions::new().write(true).open(&fifo));
            panic!("the server opened the FIFO and waited for a writer");
        };
        let response = response.unwrap();
        assert_eq!(response.status(), 404);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_matching_etag_gives_304_without_a_body() {
        let server = Server::start().await;
        server.put("hosts/foobar.json", b"{\"pointer\":1}");
        let first = server.get("/hosts/foobar.json").send().await.unwrap();
        assert_eq!(first.status(), 200);
        let etag = header(&first, ETAG).to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{etag}"
        );

        for value in [
            etag.clone(),
            format!("\"other\", {etag}"),
            format!("W/{etag}"),
            "*".to_owned(),
        ] {
            let response = server
                .get("/hosts/foobar.json")
                .header(IF_NONE_MATCH, &value)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 304, "{value}");
            assert_eq!(header(&response, ETAG), etag);
            assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
            assert!(response.bytes().await.unwrap().is_empty(), "{value}");
        }
        // A tag containing a comma is one tag, not two halves that could match.
        let tricky = format!("\"a,{}", &etag[1..]);
        for value in ["\"other\"", "W/\"other\"", tricky.as_str()] {
            let response = server
                .get("/hosts/foobar.json")
                .header(IF_NONE_MATCH, value)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{value}");
            assert_eq!(response.bytes().await.unwrap(), &b"{\"pointer\":1}"[..]);
        }
        // If-None-Match wins over If-Modified-Since, which alone would say 304.
        let response = server
            .get("/hosts/foobar.json")
            .header(IF_NONE_MATCH, "\"other\"")
            .header(IF_MODIFIED_SINCE, header(&first, LAST_MODIFIED))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn the_etag_changes_when_the_file_is_replaced() {
        let server = Server::start().await;
        let path = server.put("hosts/foobar.json", b"{\"generation\":1}");
        let old = server.get("/hosts/foobar.json").send().await.unwrap();
        let old_etag = header(&old, ETAG).to_owned();
        // Replaced as the publisher does it: a new file renamed over the old.
        let next = path.with_file_name("next");
        std::fs::write(&next, b"{\"generation\":2}").unwrap();
        std::fs::rename(&next, &path).unwrap();

        let response = server
            .get("/hosts/foobar.json")
            .header(IF_NONE_MATCH, &old_etag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_ne!(header(&response, ETAG), old_etag);
        assert_eq!(response.bytes().await.unwrap(), &b"{\"generation\":2}"[..]);
        server.stop().await;
    }

    #[tokio::test]
    async fn if_modified_since_gives_304_unless_the_file_is_newer() {
        let server = Server::start().await;
        let path = server.put("nix-cache-info", b"StoreDir: /nix/store\n");
        let mtime = UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();

        let response = server.get("/nix-cache-info").send().await.unwrap();
        assert_eq!(
            header(&response, LAST_MODIFIED),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        for since in [
            "Tue, 14 Nov 2023 22:13:20 GMT",
            "Wed, 15 Nov 2023 00:00:00 GMT",
        ] {
            let response = server
                .get("/nix-cache-info")
                .header(IF_MODIFIED_SINCE, since)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 304, "{since}");
            assert!(response.bytes().await.unwrap().is_empty());
        }
        for since in ["Tue, 14 Nov 2023 22:13:19 GMT", "not a date"] {
            let response = server
                .get("/nix-cache-info")
                .header(IF_MODIFIED_SINCE, since)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{since}");
            assert_eq!(
                response.bytes().await.unwrap(),
                &b"StoreDir: /nix/store\n"[..]
            );
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn ranges_give_206_with_the_right_bytes() {
        let server = Server::start().await;
        server.put("nar/ten.nar", TEN);
        let cases = [
            ("bytes=2-5", "2345", "bytes 2-5/10"),
            ("bytes=-3", "789", "bytes 7-9/10"),
            ("bytes=5-", "56789", "bytes 5-9/10"),
            ("bytes=8-100", "89", "bytes 8-9/10"),
            ("bytes=-100", "0123456789", "bytes 0-9/10"),
            ("bytes=0-0", "0", "bytes 0-0/10"),
        ];
        for (range, body, content_range) in cases {
            let response = server
                .get("/nar/ten.nar")
                .header(RANGE, range)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 206, "{range}");
            assert_eq!(header(&response, CONTENT_RANGE), content_range, "{range}");
            assert_eq!(
                header(&response, CONTENT_LENGTH),
                body.len().to_string(),
                "{range}"
            );
            assert_eq!(header(&response, ACCEPT_RANGES), "bytes", "{range}");
            assert_eq!(response.text().await.unwrap(), body, "{range}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn an_unsatisfiable_range_is_416() {
        let server = Server::start().await;
        server.put("nar/ten.nar", TEN);
        server.put("nar/empty.nar", b"");
        for (path, range, content_range) in [
            ("/nar/ten.nar", "bytes=10-", "bytes */10"),
            ("/nar/ten.nar", "bytes=20-30", "bytes */10"),
            ("/nar/ten.nar", "bytes=-0", "bytes */10"),
            ("/nar/empty.nar", "bytes=-5", "bytes */0"),
        ] {
            let response = server.get(path).header(RANGE, range).send().await.unwrap();
            assert_eq!(response.status(), 416, "{range}");
            assert_eq!(header(&response, CONTENT_RANGE), content_range, "{range}");
            assert_eq!(header(&response, CACHE_CONTROL), "no-store", "{range}");
            assert_eq!(
                response.text().await.unwrap(),
                "range not satisfiable\n",
                "{range}"
            );
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn ranges_we_do_not_handle_get_the_whole_file() {
        let server = Server::start().await;
        server.put("nar/ten.nar", TEN);
        for range in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=5-2",
            "bytes=+1-2",
            "bytes",
        ] {
            let response = server
                .get("/nar/ten.nar")
                .header(RANGE, range)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{range}");
            assert!(response.headers().get(CONTENT_RANGE).is_none(), "{range}");
            assert_eq!(response.bytes().await.unwrap(), TEN, "{range}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn if_range_applies_the_range_only_to_the_same_file() {
        let server = Server::start().await;
        server.put("nar/ten.nar", TEN);
        let first = server.get("/nar/ten.nar").send().await.unwrap();
        let etag = header(&first, ETAG).to_owned();
        let last_modified = header(&first, LAST_MODIFIED).to_owned();

        for (if_range, status) in [
            (etag.clone(), 206),
            (last_modified, 206),
            ("\"other\"".to_owned(), 200),
            (format!("W/{etag}"), 200),
            ("Mon, 01 Jan 2001 00:00:00 GMT".to_owned(), 200),
        ] {
            let response = server
                .get("/nar/ten.nar")
                .header(RANGE, "bytes=2-5")
                .header(IF_RANGE, &if_range)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{if_range}");
            let expected: &[u8] = if status == 206 { b"2345" } else { TEN };
            assert_eq!(response.bytes().await.unwrap(), expected, "{if_range}");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn head_has_the_headers_and_no_body() {
        let server = Server::start().await;
        server.put("abc.narinfo", b"StorePath: /nix/store/abc\n");
        let get = server.get("/abc.narinfo").send().await.unwrap();
        let head = server
            .request(reqwest::Method::HEAD, "/abc.narinfo")
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        for name in [
            CONTENT_LENGTH,
            CONTENT_TYPE,
            ETAG,
            LAST_MODIFIED,
            CACHE_CONTROL,
            ACCEPT_RANGES,
        ] {
            assert_eq!(header(&head, name.clone()), header(&get, name));
        }
        assert_eq!(header(&head, CONTENT_LENGTH), "26");
        // On the wire the answer ends with the headers: no body bytes follow.
        let (status, answer) = server.raw("HEAD", "/abc.narinfo").await;
        assert_eq!(status, 200);
        assert!(
            answer.ends_with(b"\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(!contains(&answer, b"StorePath"));
        server.stop().await;
    }

    #[tokio::test]
    async fn other_methods_are_405() {
        let server = Server::start().await;
        server.put("nar/a.nar", b"nar");
        for method in [
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
            reqwest::Method::OPTIONS,
        ] {
            let response = server
                .request(method.clone(), "/nar/a.nar")
                .body("x")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method}");
            assert_eq!(header(&response, ALLOW), "GET, HEAD");
        }
        assert_eq!(
            std::fs::read(server.root().join("nar/a.nar")).unwrap(),
            b"nar"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_large_file_streams_intact() {
        let server = Server::start().await;
        // Pseudo-random bytes (xorshift), so a misplaced chunk cannot go unseen.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let data: Vec<u8> = (0..5 * 1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        server.put("nar/big.nar", &data);

        let response = server.get("/nar/big.nar").send().await.unwrap();
        assert_eq!(header(&response, CONTENT_LENGTH), data.len().to_string());
        assert!(
            response.bytes().await.unwrap() == data[..],
            "whole file differs"
        );

        let response = server
            .get("/nar/big.nar")
            .header(RANGE, "bytes=1000000-3999999")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206);
        assert!(
            response.bytes().await.unwrap() == data[1_000_000..4_000_000],
            "range differs"
        );
        server.stop().await;
    }

    /// A client that sends the start of a request, then one byte every
    /// 20 ms. Returns true once the server closes the connection, false if
    /// it still listens after 1000 bytes (20 s).
    async fn trickle_headers(addr: SocketAddr) -> bool {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let start = b"GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        if stream.write_all(start).await.is_err() {
            return true;
        }
        for _ in 0..1000 {
            if stream.write_all(b"a").await.is_err() {
                return true;
            }
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte));
            if let Ok(Ok(0) | Err(_)) = read.await {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn clients_that_trickle_headers_are_cut_off_and_others_get_served() {
        let server = Server::start_with(Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        server.put("nix-cache-info", b"StoreDir: /nix/store\n");
        // Three times as many slow clients as the server serves at once.
        let slow: Vec<_> = (0..12)
            .map(|_| tokio::spawn(trickle_headers(server.addr)))
            .collect();
        let response = server.get("/nix-cache-info").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "StoreDir: /nix/store\n");
        for client in slow {
            assert!(client.await.unwrap(), "a slow client was never cut off");
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off_and_others_get_served() {
        let server = Server::start_with(Limits {
            max_connections: 1,
            send_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // Far more than the socket buffers on both ends hold.
        let size = 64 << 20;
        server.put("nar/big.nar", &vec![7u8; size]);
        server.put("nix-cache-info", b"StoreDir: /nix/store\n");
        let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stalled
            .write_all(b"GET /nar/big.nar HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        // Served only once the stalled client's connection is closed: the
        // server takes one at a time. (The bound only turns a hang into a
        // failure.)
        let response = tokio::time::timeout(
            Duration::from_secs(120),
            server.get("/nix-cache-info").send(),
        )
        .await
        .expect("served while another client stopped reading")
        .unwrap();
        assert_eq!(response.status(), 200);
        let mut got = Vec::new();
        let _ = stalled.read_to_end(&mut got).await;
        assert!(
            got.len() < size,
            "the whole file went to a client that did not read"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn run_refuses_a_root_that_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        for root in [dir.path().join("missing"), dir.path().join("file")] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let err = run(
                listener,
                root.clone(),
                Limits::default(),
                std::future::pending(),
            )
            .await
            .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("cannot serve {}", root.display())),
                "{err}"
            );
        }
    }

    #[test]
    fn entity_tag_lists_are_scanned_tag_by_tag() {
        let tag = |weak, opaque| EntityTag { weak, opaque };
        assert_eq!(entity_tags("\"a\""), [tag(false, "\"a\"")]);
        assert_eq!(
            entity_tags(" W/\"a,b\" ,\"c\""),
            [tag(true, "\"a,b\""), tag(false, "\"c\"")]
        );
        assert_eq!(entity_tags("\"a\", junk, \"b\""), [tag(false, "\"a\"")]);
        assert_eq!(entity_tags("\"unterminated"), []);
    }

    #[test]
    fn byte_ranges_parse_strictly() {
        use ByteRange::{Part, Unsatisfiable, Whole};
        assert_eq!(byte_range("bytes=2-5", 10), Part { start: 2, len: 4 });
        assert_eq!(byte_range("Bytes=2-", 10), Part { start: 2, len: 8 });
        assert_eq!(byte_range("bytes=-3", 10), Part { start: 7, len: 3 });
        assert_eq!(byte_range("bytes=9-9", 10), Part { start: 9, len: 1 });
        assert_eq!(byte_range("bytes=10-10", 10), Unsatisfiable);
        assert_eq!(byte_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(byte_range("bytes=-", 10), Whole);
        assert_eq!(byte_range("bytes=a-b", 10), Whole);
        assert_eq!(byte_range("bytes=99999999999999999999-", 10), Whole);
    }

    #[test]
    fn file_times_are_clamped_to_what_http_dates_can_say() {
        assert_eq!(http_time(UNIX_EPOCH - Duration::from_secs(5)), UNIX_EPOCH);
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(
            httpdate::fmt_http_date(http_time(far)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }
}
