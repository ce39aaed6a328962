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
        Self::start_full(limits, None).await
    }

    async fn start_full(limits: Limits, reports: Option<Reports>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(run(
            listener,
            dir.path().join("root"),
            limits,
            reports,
            shutdown,
        ));
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
        let request =
            format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
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
    let h = nixcast_common::Sha256Hash::digest(b"x");
    let nar = format!("nar/{}.nar.xz", h.to_nixbase32());
    let manifest = format!("manifests/{}.json", h.to_hex());
    let sealed = format!("sealed/{}", h.to_hex());
    let sealed_delta = format!("sealed/{}.from-{}", h.to_hex(), h.to_hex());
    let cases: [(&str, &str); 11] = [
        ("nix-cache-info", "no-cache"),
        ("hosts/foobar.json", "no-cache"),
        ("hosts/foobar/7.json", "public, max-age=86400"),
        (
            "0123456789abcdfghijklmnpqrsvwxyz.narinfo",
            "public, max-age=300",
        ),
        (&nar, "public, max-age=31536000, immutable"),
        (&manifest, "public, max-age=31536000, immutable"),
        (&sealed, "public, max-age=31536000, immutable"),
        (&sealed_delta, "public, max-age=31536000, immutable"),
        // Only a name that is a hash of the bytes promises they never change.
        ("nar/a.nar.xz", "no-cache"),
        ("sealed/e", "no-cache"),
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

/// Puts a NAR far larger than the socket buffers on both ends (and
/// `nix-cache-info`), and asks for the NAR from a client that never reads.
async fn stalled_client(server: &Server) -> (tokio::net::TcpStream, usize) {
    let size = 64 << 20;
    server.put("nar/big.nar", &vec![7u8; size]);
    server.put("nix-cache-info", b"StoreDir: /nix/store\n");
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /nar/big.nar HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    (stalled, size)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_others_get_served() {
    let server = Server::start_with(Limits {
        max_connections: 1,
        send_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let (mut stalled, size) = stalled_client(&server).await;
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
async fn files_sent_at_once_are_bounded_apart_from_connections() {
    let server = Server::start_with(Limits {
        max_connections: 8,
        max_open_files: 1,
        send_timeout: Duration::from_secs(2),
        ..Limits::default()
    })
    .await;
    // A client that takes the headers and a little of the body, then stops
    // reading: it holds the one file the server may have open.
    let (mut stalled, _) = stalled_client(&server).await;
    let mut first = [0u8; 4096];
    stalled.read_exact(&mut first).await.unwrap();
    // A request with no file to send is answered at once beside it...
    let missing = server.get("/nar/none.nar").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // ...while one for a file waits for the stalled one to be cut off.
    let waiting = tokio::spawn(server.get("/nix-cache-info").send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second file was opened while the only one allowed was held"
    );
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest).await;
    let response = tokio::time::timeout(Duration::from_secs(120), waiting)
        .await
        .expect("served once the stalled client was cut off")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[test]
fn connections_and_open_files_share_the_descriptor_limit() {
    // Plenty: as asked.
    assert_eq!(fit(20_000, 11_000, 1024), (11_000, 1024));
    // A common soft limit: half of what is free for files, the rest for connections.
    assert_eq!(fit(1024, 1024, 1024), (496, 496));
    assert_eq!(fit(1024, 100, 1024), (100, 496));
    // Nothing free still serves one at a time.
    assert_eq!(fit(10, 1024, 1024), (1, 1));
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
            None,
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

// Reports (`--accept-reports`), with two keys made by
// `ssh-keygen -t ed25519 -N ''`: one listed for canary, one for web.
const CANARY_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACAd5hcH5kRelNFJ7uozTK1WfEEbC9E2nXoex1IU9QoGRAAAAJBj4uIYY+Li
GAAAAAtzc2gtZWQyNTUxOQAAACAd5hcH5kRelNFJ7uozTK1WfEEbC9E2nXoex1IU9QoGRA
AAAEAl259VlvruKKmxSUw42829SR51eWl6+oBanAw2lCHM6R3mFwfmRF6U0Unu6jNMrVZ8
QRsL0Tadeh7HUhT1CgZEAAAABmNhbmFyeQECAwQFBgc=
-----END OPENSSH PRIVATE KEY-----
";
const WEB_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDY+rpezahdMFprfb6JZHwnSLwbkvt9LUeatNOEhTe2GwAAAIhkHOyZZBzs
mQAAAAtzc2gtZWQyNTUxOQAAACDY+rpezahdMFprfb6JZHwnSLwbkvt9LUeatNOEhTe2Gw
AAAEC4jHK5cHtUMVaHrybra0gTNtA7x4rPJhnKWX3UFaLWQ9j6ul7NqF0wWmt9volkfCdI
vBuS+30tR5q004SFN7YbAAAAA3dlYgEC
-----END OPENSSH PRIVATE KEY-----
";
const FLEET: &str = "\
canary ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB3mFwfmRF6U0Unu6jNMrVZ8QRsL0Tadeh7HUhT1CgZE canary
web ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINj6ul7NqF0wWmt9volkfCdIvBuS+30tR5q004SFN7Yb web
";

fn a_report(host: &str, at: nixcast_common::pointer::Timestamp) -> nixcast_common::report::Report {
    use nixcast_common::report::{Outcome, Report};
    Report {
        host: host.into(),
        pointer_generation: Some(2),
        applied_generation: Some(2),
        applied_store_path: None,
        applied_at: Some(at),
        outcome: Outcome::Ok,
        error: None,
        last_failure: None,
        at,
        seq: None,
        interval: 3600,
        booted_system: None,
        current_system: None,
        agent_version: "0.1.0".into(),
        key_list_version: None,
        reboot_pending: None,
    }
}

fn signed(host: &str, key: &str, at: nixcast_common::pointer::Timestamp) -> Vec<u8> {
    let key = nixcast_common::report::HostKey::from_openssh(key.as_bytes(), "test").unwrap();
    a_report(host, at).sign(&key, &[]).unwrap()
}

async fn accepting() -> Server {
    let fleet = nixcast_common::seal::Recipients::parse(FLEET).unwrap();
    let server = Server::start_full(
        Limits::default(),
        Some(Reports::new(fleet, Duration::from_secs(10))),
    )
    .await;
    // A cache directory, as `nixcast publish` leaves one.
    std::fs::create_dir(server.root().join("nar")).unwrap();
    server
}

impl Server {
    async fn put_report(&self, path: &str, body: Vec<u8>) -> (u16, String) {
        let r = self
            .request(reqwest::Method::PUT, path)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[tokio::test]
async fn a_report_signed_by_its_hosts_key_is_stored_and_nothing_else_is() {
    use nixcast_common::pointer::Timestamp;
    let server = accepting().await;
    let stored = server.root().join("reports/web.json");
    let now = Timestamp::now();
    let good = signed("web", WEB_KEY, now);
    assert_eq!(
        server.put_report("/reports/web.json", good.clone()).await.0,
        204
    );
    assert_eq!(std::fs::read(&stored).unwrap(), good);
    // It is served back like any file.
    let got = server.get("/reports/web.json").send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap(), good);

    // Signed by another host's key, unsigned, for another host, or garbage: 403, nothing written.
    let by_canary = signed("web", CANARY_KEY, now);
    let (status, text) = server.put_report("/reports/web.json", by_canary).await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("not signed by a key listed for host web"),
        "{text}"
    );
    let mut env: serde_json::Value = serde_json::from_slice(&good).unwrap();
    env["signatures"] = serde_json::json!([]);
    let unsigned = serde_json::to_vec(&env).unwrap();
    assert_eq!(
        server.put_report("/reports/web.json", unsigned).await.0,
        403
    );
    let canarys = signed("canary", CANARY_KEY, now);
    let (status, text) = server.put_report("/reports/web.json", canarys).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(
        server
            .put_report("/reports/web.json", b"{}".to_vec())
            .await
            .0,
        403
    );
    assert_eq!(std::fs::read(&stored).unwrap(), good);
    // A host the file does not list has no key to sign with.
    let (status, text) = server
        .put_report("/reports/db.json", signed("db", WEB_KEY, now))
        .await;
    assert_eq!(status, 403);
    assert!(text.contains("no ssh-ed25519 key"), "{text}");

    // Nothing but reports is writable, however the path is spelled.
    for path in [
        "/hosts/web.json",
        "/reports/web",
        "/reports/web.json.tmp",
        "/reports/../hosts/web.json",
        "/reports/%2e%2e%2fhosts%2fweb.json",
        "/reports/sub/web.json",
        "/nix-cache-info",
    ] {
        let (status, _) = server.put_report(path, good.clone()).await;
        assert_eq!(status, 403, "{path}");
    }
    assert!(!server.root().join("hosts").exists());
    assert!(!server.root().join("nix-cache-info").exists());
    let (status, _) = server.raw("DELETE", "/reports/web.json").await;
    assert_eq!(status, 405);
    assert_eq!(std::fs::read(&stored).unwrap(), good);

    // An older report (a replay) does not replace a newer one; a newer does.
    let before = Timestamp::from_system_time(now.system_time() - Duration::from_secs(60));
    let (status, _) = server
        .put_report("/reports/web.json", signed("web", WEB_KEY, before))
        .await;
    assert_eq!(status, 409);
    assert_eq!(std::fs::read(&stored).unwrap(), good);
    let later = signed("web", WEB_KEY, now.plus(Duration::from_secs(60)));
    assert_eq!(
        server
            .put_report("/reports/web.json", later.clone())
            .await
            .0,
        204
    );
    assert_eq!(std::fs::read(&stored).unwrap(), later);

    // A body beyond the limit is refused unread.
    let big = vec![b' '; nixcast_common::report::MAX_REPORT_SIZE + 1];
    assert_eq!(server.put_report("/reports/web.json", big).await.0, 413);
    assert_eq!(std::fs::read(&stored).unwrap(), later);
    // No temporary file is left behind.
    assert_eq!(
        std::fs::read_dir(server.root().join("nar"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn without_accept_reports_a_put_is_not_allowed() {
    let server = Server::start().await;
    let body = signed("web", WEB_KEY, nixcast_common::pointer::Timestamp::now());
    let (status, _) = server.put_report("/reports/web.json", body).await;
    assert_eq!(status, 405);
    assert!(!server.root().join("reports").exists());
}

/// Reports of `web` made at `at` with counter `seq`, plain or sealed to an operator.
fn ordered(at: nixcast_common::pointer::Timestamp, seq: u64, sealed: bool) -> Vec<u8> {
    use nixcast_common::report::{HostKey, Outcome};
    let key = HostKey::from_openssh(WEB_KEY.as_bytes(), "test").unwrap();
    let op = nixcast_common::seal::Identity::of_publisher(
        &nixcast_common::SecretKey::generate("op-1").unwrap(),
    );
    let mut r = a_report("web", at);
    r.seq = Some(seq);
    // Two reports of one second that differ: ok, then failed.
    if seq.is_multiple_of(2) {
        r.outcome = Outcome::Failed;
    }
    let to = if sealed { vec![op.recipient()] } else { vec![] };
    r.sign(&key, &to).unwrap()
}

#[tokio::test]
async fn replays_never_replace_a_later_report_sealed_or_plain_same_second_included() {
    use nixcast_common::pointer::Timestamp;
    let server = accepting().await;
    let stored = server.root().join("reports/web.json");
    let now = Timestamp::now();
    let minute_ago = Timestamp::from_system_time(now.system_time() - Duration::from_secs(60));
    for sealed in [false, true] {
        std::fs::remove_file(&stored).ok();
        let first = ordered(minute_ago, 1, sealed);
        let ok_now = ordered(now, 3, sealed);
        let failed_now = ordered(now, 4, sealed);
        for (body, status) in [(&first, 204), (&ok_now, 204), (&failed_now, 204)] {
            let (got, text) = server.put_report("/reports/web.json", body.clone()).await;
            assert_eq!(got, status, "sealed {sealed}: {text}");
        }
        // The earlier "ok" of the same second, and the older one: 409.
        for replay in [&ok_now, &first] {
            let (got, text) = server.put_report("/reports/web.json", replay.clone()).await;
            assert_eq!(got, 409, "sealed {sealed}: {text}");
            assert!(text.contains("does not come after"), "{text}");
        }
        // The stored report again (a retry) is no conflict.
        let (got, _) = server
            .put_report("/reports/web.json", failed_now.clone())
            .await;
        assert_eq!(got, 204);
        assert_eq!(std::fs::read(&stored).unwrap(), failed_now);
    }
}

#[tokio::test]
async fn a_report_from_the_future_is_refused_and_locks_no_one_out() {
    use nixcast_common::pointer::Timestamp;
    let server = accepting().await;
    let stored = server.root().join("reports/web.json");
    let year = Duration::from_secs(365 * 86_400);
    let future = Timestamp::now().plus(year);
    for sealed in [false, true] {
        let (status, text) = server
            .put_report("/reports/web.json", ordered(future, 9, sealed))
            .await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("ahead of this machine's clock"), "{text}");
        assert!(!stored.exists());
    }
    // One stored before this server checked: the next report replaces it.
    std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
    std::fs::write(&stored, ordered(future, 9, false)).unwrap();
    let now = ordered(Timestamp::now(), 1, false);
    assert_eq!(
        server.put_report("/reports/web.json", now.clone()).await.0,
        204
    );
    assert_eq!(std::fs::read(&stored).unwrap(), now);
    // An absurd interval is refused too.
    let key = nixcast_common::report::HostKey::from_openssh(WEB_KEY.as_bytes(), "t").unwrap();
    let mut r = a_report("web", Timestamp::now());
    r.interval = u64::MAX;
    let (status, text) = server
        .put_report("/reports/web.json", r.sign(&key, &[]).unwrap())
        .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("interval"), "{text}");
}

#[tokio::test]
async fn an_envelope_of_many_signatures_is_refused_before_any_is_verified() {
    use nixcast_common::pointer::Timestamp;
    let server = accepting().await;
    let good = signed("web", WEB_KEY, Timestamp::now());
    let mut env: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let sig = env["signatures"][0].clone();
    // The good signature last, after bogus ones: still too many.
    let mut sigs = vec![sig.clone(); nixcast_common::report::MAX_SIGNATURES];
    sigs.push(sig);
    env["signatures"] = serde_json::Value::Array(sigs);
    let (status, text) = server
        .put_report("/reports/web.json", serde_json::to_vec(&env).unwrap())
        .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("signatures, more than the limit"), "{text}");
    // A sender's bytes in the refusal come back escaped.
    let (status, text) = server
        .put_report("/reports/web.json", br#"{"\u001b[2J\u202e":2}"#.to_vec())
        .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("unknown field"), "{text:?}");
    assert!(!text.contains(['\x1b', '\u{202e}']), "{text:?}");
}

#[tokio::test]
async fn an_enrollment_request_is_taken_only_with_a_fleet_token_for_its_host() {
    use nixcast_common::enroll::{Request, Token};
    let fleet_key = nixcast_common::SecretKey::generate("fleet-1").unwrap();
    let fleet = nixcast_common::seal::Recipients::parse(FLEET).unwrap();
    let mut reports = Reports::new(fleet, Duration::from_secs(10));
    reports.enroll_keys = vec![fleet_key.public()];
    let server = Server::start_full(Limits::default(), Some(reports)).await;
    let key = nixcast_common::report::HostKey::from_openssh(WEB_KEY.as_bytes(), "t").unwrap();
    let token = Token::new("web3", "http://c", Duration::from_secs(60)).sign(&fleet_key);
    let body = Request::new("web3", &key, &token).sign(&key);
    // Only `enroll/HOST.json` of the token's host is a request's name.
    for path in [
        "/enroll/web4.json",
        "/enroll/web3",
        "/enroll/x/web3.json",
        "/enroll/.x.json",
    ] {
        let (status, why) = server.put_report(path, body.clone()).await;
        assert_eq!(status, 403, "{path}: {why}");
    }
    let big = vec![b' '; nixcast_common::enroll::MAX_REQUEST_SIZE + 1];
    assert_eq!(server.put_report("/enroll/web3.json", big).await.0, 413);
    assert!(!server.root().join("enroll").exists());
    let (status, why) = server.put_report("/enroll/web3.json", body.clone()).await;
    assert_eq!(status, 204, "{why}");
    assert_eq!(
        std::fs::read(server.root().join("enroll/web3.json")).unwrap(),
        body
    );
}
