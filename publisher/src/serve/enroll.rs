//! `PUT /enroll/HOST.json`: an invited host's enrollment request, taken by
//! `serve --accept-reports` when the server knows the fleet's signing keys
//! (`--trusted-key-file`).
//!
//! The body (at most [`enroll::MAX_REQUEST_SIZE`] bytes, read within the
//! header timeout) is stored when [`crate::enroll::admit`] takes it: signed
//! by the SSH key it carries, its token signed by a fleet key, naming HOST,
//! unexpired, not used (no `enrolled/<id>.json`), and not bound to another
//! key by the pending request. Anything else gets 403 and writes nothing.
//! Verifying runs on the blocking threads under the same limit as reports,
//! and one request at a time is checked against what is stored and written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use nixcast_common::enroll;
use nixcast_common::layout::Key;

use super::accept::{answer, Reports};
use crate::enroll::Refusal;
use crate::target::Target;

/// Whether a PUT is for `enroll/…` (a request, or a name that is refused).
pub fn is_request(path: &str) -> bool {
    path.starts_with(&format!("/{}/", nixcast_common::layout::ENROLL_DIR))
}

/// The host a PUT path names, if it is exactly `/enroll/HOST.json`.
fn host_of(path: &str) -> Option<String> {
    match Key::parse(path.strip_prefix('/')?)? {
        Key::EnrollRequest(host) => Some(host),
        _ => None,
    }
}

pub async fn put(
    reports: &Reports,
    root: Arc<PathBuf>,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(host) = host_of(path) else {
        return refuse("?", "only PUT /enroll/HOST.json takes a request".into());
    };
    if reports.enroll_keys.is_empty() {
        return refuse(
            &host,
            "this server takes no enrollment requests: it was started without \
             --trusted-key-file"
                .into(),
        );
    }
    let bytes = match read_body(reports, headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(_permit) = reports.verifying.acquire().await else {
        return refuse(&host, "the server is shutting down".into());
    };
    let _one_at_a_time = reports.lock.lock().await;
    let keys = reports.enroll_keys.clone();
    let h = host.clone();
    let stored = tokio::task::spawn_blocking(move || store(&root, &h, &bytes, &keys))
        .await
        .unwrap_or_else(|e| Err(Refusal::Cache(anyhow::anyhow!("{e}"))));
    match stored {
        Ok(fingerprint) => {
            tracing::info!(%host, %fingerprint, "took an enrollment request");
            answer(StatusCode::NO_CONTENT, String::new())
        }
        Err(Refusal::Cache(e)) => {
            tracing::warn!(%host, "cannot store an enrollment request: {e:#}");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store the request\n".into(),
            )
        }
        Err(e) => refuse(&host, e.to_string()),
    }
}

/// The body, within the size limit and the time the client has.
async fn read_body(
    reports: &Reports,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request is at most {} bytes\n", enroll::MAX_REQUEST_SIZE),
        )
    };
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > enroll::MAX_REQUEST_SIZE as u64) {
        return Err(too_large());
    }
    let read = axum::body::to_bytes(body, enroll::MAX_REQUEST_SIZE);
    match tokio::time::timeout(reports.body_timeout, read).await {
        Err(_) => Err(answer(
            StatusCode::REQUEST_TIMEOUT,
            "the body came too slowly\n".into(),
        )),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Admits the request and stores it; returns its key's fingerprint.
fn store(
    root: &std::path::Path,
    host: &str,
    bytes: &[u8],
    keys: &[nixcast_common::PublicKey],
) -> Result<String, Refusal> {
    let target = Target::open_existing(&root.to_string_lossy()).map_err(Refusal::Cache)?;
    let e = crate::enroll::admit(&target, host, bytes, keys, SystemTime::now())?;
    let key = Key::EnrollRequest(host.to_owned()).to_string();
    target.put(&key, bytes).map_err(Refusal::Cache)?;
    Ok(e.fingerprint())
}

/// 403 with why, escaped (it may quote the sender's bytes).
fn refuse(host: &str, why: String) -> Response {
    let why = nixcast_cli::text::clean(&why);
    tracing::info!(host, "refused an enrollment request: {why}");
    answer(StatusCode::FORBIDDEN, format!("{host}: {why}\n"))
}
