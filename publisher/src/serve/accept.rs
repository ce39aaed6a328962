//! `nixcast serve --accept-reports`: the one write the server takes.
//!
//! `PUT /reports/HOST.json` is stored when its body (at most
//! [`report::MAX_REPORT_SIZE`] bytes, read within the header timeout) is a
//! report signed by an ssh-ed25519 key the recipients file lists for HOST,
//! and is not older than the plain report stored there; the file appears
//! atomically (through [`Target::put`]). Every other PUT, and every report
//! that does not verify, gets 403 and writes nothing. A sealed report is
//! checked for its signature only: the server cannot read it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use nixcast_common::layout;
use nixcast_common::report::{self, Signed};
use nixcast_common::seal::Recipients;

use crate::target::Target;

/// What `serve` needs to take reports.
pub struct Reports {
    /// Lists each host's ssh-ed25519 keys.
    pub fleet: Recipients,
    /// How long a client has to send a report's body.
    pub body_timeout: Duration,
    /// One report is checked against the stored one and written at a time.
    lock: tokio::sync::Mutex<()>,
}

impl Reports {
    pub fn new(fleet: Recipients, body_timeout: Duration) -> Self {
        Self {
            fleet,
            body_timeout,
            lock: tokio::sync::Mutex::new(()),
        }
    }
}

/// The host a PUT path names, if it is exactly `/reports/HOST.json` with a
/// valid host name (which needs no percent-encoding, so none is decoded).
fn host_of(path: &str) -> Option<&str> {
    let host = path
        .strip_prefix('/')?
        .strip_prefix(layout::REPORTS_DIR)?
        .strip_prefix('/')?
        .strip_suffix(".json")?;
    layout::check_host(host).ok()?;
    Some(host)
}

pub async fn put(
    reports: &Reports,
    root: Arc<PathBuf>,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(host) = host_of(path) else {
        return answer(
            StatusCode::FORBIDDEN,
            "only reports are writable: PUT /reports/HOST.json\n".into(),
        );
    };
    let keys = reports.fleet.signers_of(host);
    if keys.is_empty() {
        return refuse(host, "no ssh-ed25519 key is listed for this host".into());
    }
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > report::MAX_REPORT_SIZE as u64) {
        return too_large();
    }
    let read = axum::body::to_bytes(body, report::MAX_REPORT_SIZE);
    let bytes = match tokio::time::timeout(reports.body_timeout, read).await {
        Err(_) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                "the body came too slowly\n".into(),
            )
        }
        // The only error left once the connection is up is the length limit.
        Ok(Err(_)) => return too_large(),
        Ok(Ok(b)) => b,
    };
    let signed = match report::verify(&bytes, host, &keys) {
        Ok(s) => s,
        Err(e) => return refuse(host, e.to_string()),
    };
    let _one_at_a_time = reports.lock.lock().await;
    let host_owned = host.to_owned();
    let stored = tokio::task::spawn_blocking(move || {
        let verify = |b: &[u8]| report::verify(b, &host_owned, &keys).ok();
        store(&root, &host_owned, &bytes, &signed, verify)
    })
    .await
    .unwrap_or_else(|e| Err(Stored::Failed(e.to_string())));
    match stored {
        Ok(()) => {
            tracing::info!(host, "accepted a report");
            answer(StatusCode::NO_CONTENT, String::new())
        }
        Err(Stored::Older) => answer(
            StatusCode::CONFLICT,
            format!("{host}: this report is older than the one stored\n"),
        ),
        Err(Stored::Failed(e)) => {
            tracing::warn!(host, "cannot store a report: {e}");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store the report\n".into(),
            )
        }
    }
}

enum Stored {
    /// A replayed report would hide a newer one (a failure since, say).
    Older,
    Failed(String),
}

fn store(
    root: &std::path::Path,
    host: &str,
    bytes: &[u8],
    signed: &Signed,
    verify: impl Fn(&[u8]) -> Option<Signed>,
) -> Result<(), Stored> {
    let target = Target::open_existing(&root.to_string_lossy())
        .map_err(|e| Stored::Failed(format!("{e:#}")))?;
    let key = layout::report(host);
    // Only a plain report can be compared; a sealed one says nothing to us.
    if let Signed::Plain(new) = signed {
        let old = target
            .get_at_most(&key, report::MAX_REPORT_SIZE as u64)
            .ok()
            .flatten();
        if let Some(Signed::Plain(old)) = old.and_then(|b| verify(&b)) {
            if old.at > new.at {
                return Err(Stored::Older);
            }
        }
    }
    target
        .put(&key, bytes)
        .map_err(|e| Stored::Failed(format!("{e:#}")))
}

fn too_large() -> Response {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a report is at most {} bytes\n", report::MAX_REPORT_SIZE),
    )
}

fn refuse(host: &str, why: String) -> Response {
    tracing::info!(host, "refused a report: {why}");
    answer(StatusCode::FORBIDDEN, format!("{host}: {why}\n"))
}

fn answer(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}
