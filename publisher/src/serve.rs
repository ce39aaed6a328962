//! `nixcast serve DIR`: a read-only HTTP server for a static cache directory.
//!
//! It lets a published cache be used by `nix copy --from http://…`,
//! `substituters =` and `nixcast-pull` without a real web host. Any web server
//! or object store can serve the same directory; this one answers the
//! agent's conditional requests (its pointer poll) as a CDN would, and the
//! ranged requests that `curl -C -` and download tools send.
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
//!   none), no compression, no TLS, no writes of any kind, except, with
//!   `--accept-reports`, a host's signed report (`serve/accept.rs`) and an
//!   invited host's enrollment request (`serve/enroll.rs`).

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
use futures_util::StreamExt;
use httpdate::HttpDate;
use nixcast_common::layout::{Key, Lifetime};
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

/// The files of a cache, and the reports it takes, if it takes them.
struct Served {
    root: Arc<PathBuf>,
    reports: Option<Reports>,
    changes: watch::Changes,
    /// One permit per file open to send: the files a server sends at once
    /// are counted apart from its connections, most of which (waiting
    /// pointer requests, idle keep-alives) hold no file.
    files: Arc<tokio::sync::Semaphore>,
}

/// Builds the service for the directory `root`, taking hosts' reports when
/// `reports` is given, sending at most `open_files` files at once.
///
/// The root is canonicalized once, here. If that fails the router still
/// answers, but fails closed: no file's real path starts with a path that is
/// not canonical, so every request gets 404. [`run`] checks the root first and
/// reports the error instead.
pub fn router(root: PathBuf, reports: Option<Reports>, open_files: usize) -> Router {
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
    let served = Served {
        changes: watch::Changes::new(&root),
        root: Arc::new(root),
        reports,
        files: Arc::new(tokio::sync::Semaphore::new(open_files.max(1))),
    };
    Router::new().fallback(handle).with_state(Arc::new(served))
}

/// What clients may hold of the server. A client that is slow, or many of
/// them, can then make others wait for a while, but never for good, and
/// never run the server out of file descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once. Further clients wait in the kernel's
    /// accept queue until one ends. Lowered at start to what the file
    /// descriptor limit leaves beside `max_open_files`: a connection takes
    /// one descriptor.
    pub max_connections: usize,
    /// Files sent at once, each one more descriptor. A request for a file
    /// waits for one of them; a waiting pointer request holds none, so
    /// thousands of hosts may wait on their pointers (`--watch`) with
    /// nothing open but their connections. Lowered at start, with
    /// `max_connections`, to what the descriptor limit allows.
    pub max_open_files: usize,
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
            max_open_files: 1024,
            header_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// Descriptors left for everything but connections: the runtime, the
/// listener, standard streams, logging.
const RESERVED_FDS: u64 = 32;

/// The connections and open files to serve at once: those of `limits`, or
/// fewer if the file descriptor limit cannot hold them all.
fn within_fd_limit(limits: &Limits) -> (usize, usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let Some(fds) = limit.current else {
        return (limits.max_connections, limits.max_open_files);
    };
    let fit = fit(fds, limits.max_connections, limits.max_open_files);
    if fit != (limits.max_connections, limits.max_open_files) {
        tracing::warn!(
            "the file descriptor limit ({fds}) allows {} connections and {} open files at once, \
             not {} and {}: serving at most those",
            fit.0,
            fit.1,
            limits.max_connections,
            limits.max_open_files
        );
    }
    fit
}

/// How many of `connections` and `files` fit in `fds` descriptors beside
/// the reserved ones: at most half of them for files, the rest for
/// connections (a connection sending a file holds both).
fn fit(fds: u64, connections: usize, files: usize) -> (usize, usize) {
    let free = usize::try_from(fds.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    let files = files.min(free / 2).max(1);
    let connections = connections.min(free.saturating_sub(files)).max(1);
    (connections, files)
}

/// Serves `root` on `listener` (taking hosts' reports when `reports` is
/// given) until `shutdown` completes, then lets the requests in flight finish.
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
    reports: Option<Reports>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let canonical = checked_root(&root).await?;
    let (max_connections, max_open_files) = within_fd_limit(&limits);
    tracing::info!(
        addr = %listener.local_addr()?,
        root = %canonical.display(),
        max_connections,
        max_open_files,
        accept_reports = reports.is_some(),
        "serving the cache"
    );
    let app = router(canonical, reports, max_open_files);
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
    State(served): State<Arc<Served>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match &served.reports {
        Some(reports) if method == Method::PUT && enroll::is_request(uri.path()) => {
            enroll::put(reports, served.root.clone(), uri.path(), &headers, body).await
        }
        Some(reports) if method == Method::PUT => {
            accept::put(reports, served.root.clone(), uri.path(), &headers, body).await
        }
        _ => respond(&served, &method, uri.path(), &headers).await,
    };
    let status = response.status().as_u16();
    tracing::debug!(%method, path = uri.path(), status, "request");
    response
}

async fn respond(
    served: &Served,
    method: &Method,
    raw_path: &str,
    headers: &HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return Refusal::MethodNotAllowed.response();
    }
    // A long poll (`watch.rs`): subscribed before the file is looked at, so
    // that no change between the look and the wait is missed.
    let name = relative_path(raw_path).ok();
    let wait = name.as_ref().and_then(|n| watch::wanted(headers, n));
    let mut changes = wait.zip(name).map(|(w, n)| {
        let deadline = tokio::time::Instant::now() + w;
        (served.changes.subscribe(&n), deadline)
    });
    loop {
        let file = match lookup(&served.root, &served.files, raw_path).await {
            Ok(file) => file,
            Err(refusal) => return refusal.response(),
        };
        let Some((rx, deadline)) = changes.as_mut() else {
            return respond_with(file, method, raw_path, headers).await;
        };
        let wait = wait.expect("set with changes");
        if !not_modified(headers, &file) {
            return watch::applied(respond_with(file, method, raw_path, headers).await, wait);
        }
        // Not held open while waiting: a waiter costs no descriptor but its
        // connection's.
        let unchanged = watch::applied(file.validated(StatusCode::NOT_MODIFIED), wait);
        drop(file);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() {
                return unchanged;
            },
            () = tokio::time::sleep_until(*deadline) => return unchanged,
        }
    }
}

/// The answer for a file found: 304, the whole file or a range.
async fn respond_with(
    file: Found,
    method: &Method,
    raw_path: &str,
    headers: &HeaderMap,
) -> Response {
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
    /// The file's place among those open (`Served::files`), given back
    /// with the file once sent or dropped.
    open: tokio::sync::OwnedSemaphorePermit,
    /// The checked path relative to the root, as the client named it: the
    /// content type and caching follow the name asked for, not a symlink's
    /// target.
    name: String,
    len: u64,
    modified: SystemTime,
    etag: String,
}

async fn lookup(
    root: &Path,
    files: &Arc<tokio::sync::Semaphore>,
    raw_path: &str,
) -> Result<Found, Refusal> {
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
    let open = files.clone().acquire_owned().await.expect("never closed");
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
        open,
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
            let open = self.open;
            let stream = ReaderStream::with_capacity(file.take(len), CHUNK).map(move |chunk| {
                let _sending = &open;
                chunk
            });
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

/// How long others may keep a file, from what its name promises (see the
/// constants for the reasons); a name that is no cache key promises nothing.
fn cache_control(name: &str) -> &'static str {
    match Key::parse(name).map(|k| k.lifetime()) {
        Some(Lifetime::Immutable) => IMMUTABLE,
        Some(Lifetime::History) => HISTORY,
        Some(Lifetime::Narinfo) => NARINFO,
        Some(Lifetime::Mutable) | None => REVALIDATE,
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

mod accept;
mod enroll;
mod watch;
pub use accept::Reports;

#[cfg(test)]
mod tests;
