//! Test support for the end-to-end tests in `tests/e2e`: a hostile HTTP
//! server. It serves a cache directory like any web host, except for the
//! paths it is told to lie about: wrong bytes, a body cut short, one that
//! never ends, one that stalls, a redirect elsewhere, an error status.
//! It also takes `PUT` requests (as a report endpoint does): each is
//! written under the root and kept for `take_puts`, unless a rule for its
//! path answers `Status` instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Clone, Debug)]
pub enum Rule {
    /// Answer with these bytes instead of the file.
    Bytes(Vec<u8>),
    /// Send the file's first N bytes, announcing the whole length, then close.
    Truncate(usize),
    /// Send zeros forever, without a length.
    Endless,
    /// Send the file's first N bytes, then nothing, without closing.
    Stall(usize),
    /// Send the file one byte at a time, a byte every 100 ms, without a length.
    Trickle,
    /// Answer 302 to this location.
    Redirect(String),
    /// Answer this status with an empty body.
    Status(u16),
}

#[derive(Default)]
struct Shared {
    root: PathBuf,
    rules: Mutex<HashMap<String, Rule>>,
    log: Mutex<Vec<String>>,
    puts: Mutex<Vec<Put>>,
}

/// A `PUT` request the server took.
#[derive(Clone, Debug)]
pub struct Put {
    pub path: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

pub struct Hostile {
    pub url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hostile {
    /// Serves `root` on a free loopback port until dropped.
    pub fn start(root: PathBuf) -> Self {
        let shared = Arc::new(Shared {
            root,
            ..Default::default()
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send");
                let app = axum::Router::new().fallback(handle).with_state(state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("serve");
            });
            // Stalled bodies would keep the runtime alive; drop them at once.
            rt.shutdown_background();
        });
        let addr = addr_rx.recv().expect("the server starts");
        Hostile {
            url: format!("http://{addr}"),
            shared,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// From now on, answer `path` (for example `/nar/….nar.xz`) by `rule`.
    pub fn set(&self, path: &str, rule: Rule) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .insert(path.to_owned(), rule);
    }

    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// The paths requested since the last call (`PUT`s are not among them).
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.log.lock().unwrap())
    }

    /// The `PUT` requests written since the last call.
    pub fn take_puts(&self) -> Vec<Put> {
        std::mem::take(&mut *self.shared.puts.lock().unwrap())
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let rule = s.rules.lock().unwrap().get(&path).cloned();
    if method == Method::PUT {
        return put(&s, path, rule, &headers, body);
    }
    s.log.lock().unwrap().push(path.clone());
    let file = || {
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            return None;
        }
        std::fs::read(s.root.join(rel)).ok()
    };
    match rule {
        Some(Rule::Bytes(b)) => b.into_response(),
        Some(Rule::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Rule::Redirect(to)) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        Some(Rule::Endless) => {
            let zeros = Bytes::from(vec![0u8; 64 << 10]);
            let stream =
                futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(zeros.clone()));
            Body::from_stream(stream).into_response()
        }
        Some(Rule::Truncate(n)) => {
            let Some(data) = file() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let len = data.len();
            let head = Bytes::from(data[..n.min(len)].to_vec());
            // The stream ends early: the server closes the connection mid-body.
            let stream = futures_util::stream::iter([
                Ok::<_, std::io::Error>(head),
                Err(std::io::Error::other("cut short")),
            ]);
            (
                [(header::CONTENT_LENGTH, len.to_string())],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Some(Rule::Stall(n)) => {
            let Some(data) = file() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let head = Bytes::from(data[..n.min(data.len())].to_vec());
            let stream = futures_util::stream::unfold(Some(head), |first| async move {
                match first {
                    Some(b) => Some((Ok::<_, std::io::Error>(b), None)),
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        None
                    }
                }
            });
            Body::from_stream(stream).into_response()
        }
        Some(Rule::Trickle) => {
            let Some(data) = file() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let stream = futures_util::stream::unfold(0, move |i| {
                let byte = data.get(i).copied();
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    byte.map(|b| (Ok::<_, std::io::Error>(Bytes::from(vec![b])), i + 1))
                }
            });
            Body::from_stream(stream).into_response()
        }
        None => match file() {
            Some(data) => data.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
    }
}

fn put(s: &Shared, path: String, rule: Option<Rule>, headers: &HeaderMap, body: Bytes) -> Response {
    if let Some(Rule::Status(code)) = rule {
        return StatusCode::from_u16(code).unwrap().into_response();
    }
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == ".." || c.is_empty()) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let dest = s.root.join(rel);
    let written = std::fs::create_dir_all(dest.parent().expect("a parent"))
        .and_then(|()| std::fs::write(&dest, &body));
    if written.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.puts.lock().unwrap().push(Put {
        path,
        content_type,
        body: body.to_vec(),
    });
    StatusCode::CREATED.into_response()
}
