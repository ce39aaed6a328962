//! `nixcast serve --accept-reports`: the one write the server takes.
//!
//! `PUT /reports/HOST.json` is stored when its body (at most
//! [`report::MAX_REPORT_SIZE`] bytes, read within the header timeout) is a
//! report signed by an ssh-ed25519 key the recipients file lists for HOST
//! (at most [`report::MAX_SIGNATURES`] signatures, counted before any is
//! verified), not made more than [`report::MAX_CLOCK_SKEW`] ahead of this
//! server's clock, and comes after the report stored there in its host's
//! order (`(at, seq)`, signed, and in the clear for a sealed report too);
//! the file appears atomically (through [`Target::put`]). The recipients
//! file is read again when its modification time or size changed
//! ([`Reports::reloading`]): a host `enroll accept` added reports at once.
//! Every other PUT, and every report that does not verify, gets 403 and
//! writes nothing; one that does not come after the stored one (a replay)
//! gets 409. A sealed
//! report is otherwise checked for its signature only: the server cannot
//! read it. A sealed report of an older agent, without the clear header,
//! cannot be ordered: it is taken only when the stored one cannot be
//! ordered either.
//!
//! Verifying is the costly part of a request, and it runs on tokio's
//! blocking threads, a few at a time ([`Reports::new`]), so that a flood of
//! bogus reports neither stalls the workers that answer GETs nor takes
//! every CPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use nixcast_common::layout;
use nixcast_common::report::{self, Order, Signed};
use nixcast_common::seal::Recipients;

use crate::target::Target;

/// What `serve` needs to take reports.
pub struct Reports {
    /// Lists each host's ssh-ed25519 keys.
    fleet: std::sync::Mutex<Fleet>,
    /// How long a client has to send a report's body.
    pub body_timeout: Duration,
    /// The fleet's signing keys, which sign enrollment tokens
    /// (`serve/enroll.rs`); none: no enrollment requests are taken.
    pub enroll_keys: Vec<nixcast_common::PublicKey>,
    /// One report (or request) is checked against the stored one and written at a time.
    pub(super) lock: tokio::sync::Mutex<()>,
    /// Reports verified at once: one CPU is left to the rest of the server.
    pub(super) verifying: Arc<tokio::sync::Semaphore>,
}

/// The recipients file as last read, and where it is read from again when
/// it changed (`enroll accept` adds a host's line; retiring one removes it).
struct Fleet {
    recipients: Recipients,
    file: Option<(PathBuf, Option<(SystemTime, u64)>)>,
}

impl Reports {
    pub fn new(fleet: Recipients, body_timeout: Duration) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            fleet: std::sync::Mutex::new(Fleet {
                recipients: fleet,
                file: None,
            }),
            body_timeout,
            enroll_keys: Vec::new(),
            lock: tokio::sync::Mutex::new(()),
            verifying: Arc::new(tokio::sync::Semaphore::new(cpus.saturating_sub(1).max(1))),
        }
    }

    /// Reads the recipients file again whenever its modification time or
    /// size changed, so that a host accepted (or removed) while the server
    /// runs is known to it; a file that no longer parses keeps the last one.
    pub fn reloading(self, file: PathBuf) -> Self {
        let stamp = stamp(&file);
        self.fleet.lock().expect("not poisoned").file = Some((file, stamp));
        self
    }

    /// The recipients, from the file as it is now.
    fn fleet(&self) -> Recipients {
        let mut fleet = self.fleet.lock().expect("not poisoned");
        let Fleet { recipients, file } = &mut *fleet;
        if let Some((path, seen)) = file {
            let now = stamp(path);
            if now != *seen {
                *seen = now;
                match load(path) {
                    Ok(r) => *recipients = r,
                    Err(e) => tracing::warn!("keeping the recipients read before: {e:#}"),
                }
            }
        }
        recipients.clone()
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Recipients> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Recipients::parse(&text).with_context(|| format!("recipients file {}", path.display()))
}

/// What tells a changed file: its modification time and size.
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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
    let keys = reports.fleet().signers_of(host);
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
    let verified = {
        let Ok(_permit) = reports.verifying.acquire().await else {
            return refuse(host, "the server is shutting down".into());
        };
        let (host, keys, bytes) = (host.to_owned(), keys.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || report::verify(&bytes, &host, &keys)).await
    };
    let signed = match verified {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(host, e.to_string()),
        Err(e) => return refuse(host, format!("cannot verify: {e}")),
    };
    let now = SystemTime::now();
    let times = match &signed {
        Signed::Plain(r) => r.check_times(now, None),
        Signed::Sealed(s) => s.header.map_or(Ok(()), |o| report::check_at(o.at, now)),
    };
    if let Err(e) = times {
        return refuse(host, format!("its times are not believed: {e}"));
    }
    let _one_at_a_time = reports.lock.lock().await;
    let host_owned = host.to_owned();
    let stored = tokio::task::spawn_blocking(move || {
        let verify = |b: &[u8]| report::verify(b, &host_owned, &keys).ok();
        store(&root, &host_owned, &bytes, &signed, verify, now)
    })
    .await
    .unwrap_or_else(|e| Err(Stored::Failed(e.to_string())));
    match stored {
        Ok(()) => {
            tracing::info!(host, "accepted a report");
            answer(StatusCode::NO_CONTENT, String::new())
        }
        Err(Stored::Older { stored, got }) => {
            let why =
                format!("{host}: {got} does not come after the {stored} stored (a replay?)\n");
            tracing::info!(host, "refused a report: {}", why.trim_end());
            answer(StatusCode::CONFLICT, why)
        }
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
    Older {
        stored: String,
        got: String,
    },
    Failed(String),
}

/// Whether a report ordered `new` may replace the stored one, ordered
/// `old` (`None`: a sealed report of an older agent, which has no order).
/// Only a later report replaces an ordered one: an equal order is a
/// replay unless the bytes are the same (a retry); an unordered report
/// replaces only an unordered one.
fn replaces(new: Option<Order>, old: Option<Order>, same_bytes: bool) -> bool {
    match (new, old) {
        (Some(n), Some(o)) => n > o || (n == o && same_bytes),
        (None, Some(_)) => false,
        (_, None) => true,
    }
}

fn store(
    root: &std::path::Path,
    host: &str,
    bytes: &[u8],
    signed: &Signed,
    verify: impl Fn(&[u8]) -> Option<Signed>,
    now: SystemTime,
) -> Result<(), Stored> {
    let target = Target::open_existing(&root.to_string_lossy())
        .map_err(|e| Stored::Failed(format!("{e:#}")))?;
    let key = layout::report(host);
    let old = target
        .get_at_most(&key, report::MAX_REPORT_SIZE as u64)
        .ok()
        .flatten();
    // A stored report that does not verify (planted behind our back) has no
    // place in the order; nor has one from beyond the clock skew, which
    // would otherwise lock its host out until that time.
    let stored = old.as_deref().and_then(|b| Some((verify(b)?, b)));
    if let Some((stored, old_bytes)) = stored {
        let old_order = stored.order();
        let believed = old_order.is_none_or(|o| report::check_at(o.at, now).is_ok());
        if believed && !replaces(signed.order(), old_order, old_bytes == bytes) {
            let show = |o: Option<Order>| {
                o.map_or_else(
                    || "sealed report of an older agent".into(),
                    |o| o.to_string(),
                )
            };
            return Err(Stored::Older {
                stored: show(old_order),
                got: show(signed.order()),
            });
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

/// 403 with why; `why` may quote the sender's bytes (serde names the
/// field it did not expect), so it is escaped for the log and the answer.
fn refuse(host: &str, why: String) -> Response {
    let why = nixcast_cli::text::clean(&why);
    tracing::info!(host, "refused a report: {why}");
    answer(StatusCode::FORBIDDEN, format!("{host}: {why}\n"))
}

pub(super) fn answer(status: StatusCode, text: String) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;
    use nixcast_common::pointer::Timestamp;

    #[test]
    fn only_a_later_report_replaces_an_ordered_one() {
        let t = Timestamp::now();
        let at = |secs: u64, seq: u64| {
            Some(Order {
                at: t.plus(Duration::from_secs(secs)),
                seq,
            })
        };
        assert!(replaces(at(1, 0), at(0, 9), false));
        assert!(replaces(at(0, 2), at(0, 1), false));
        assert!(!replaces(at(0, 1), at(0, 2), false));
        assert!(!replaces(at(0, 9), at(1, 0), false));
        // The same order: a retry of the same bytes, or a replay.
        assert!(replaces(at(0, 1), at(0, 1), true));
        assert!(!replaces(at(0, 1), at(0, 1), false));
        // A sealed report of an older agent has no order.
        assert!(!replaces(None, at(0, 1), false));
        assert!(replaces(None, None, false));
        assert!(replaces(at(0, 1), None, false));
    }
}
