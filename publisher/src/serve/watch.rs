//! Long polls of a host's pointer: a `GET` or `HEAD` of `hosts/HOST.json`
//! with `If-None-Match` and `Prefer: wait=N` (RFC 7240) is answered when the
//! pointer changes, or with 304 after N seconds (at most [`MAX_WAIT`]), so
//! that an agent run with `--watch` applies a release within a second of
//! its publish, with no polling and no port open on the host. The answer
//! says `Preference-Applied: wait=N`; where that is missing (nginx, a CDN,
//! a bucket) the agent polls instead.
//!
//! One task notices changes for all waiting requests: it reads the
//! modification time of `hosts/` ten times a second (every pointer is
//! written by a rename into it), and when that changed, the files waited
//! for; the waiters of a file that changed look at it again. A waiter
//! costs a task and its connection: no open file and no timer but its
//! deadline.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::http::header::{HeaderMap, HeaderValue};
use axum::response::Response;
use nixcast_common::layout::{self, Key};
use tokio::sync::watch;

/// The longest a request is held: below the idle timeouts of common proxies.
pub const MAX_WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

/// A file as `stat` sees it: a rename (as publish writes) changes the
/// inode, a rewrite the time or size.
type Seen = Option<(u64, SystemTime, u64)>;

/// Per pointer file with waiters: who to wake, and the file as last seen.
type Waiting = Arc<Mutex<HashMap<String, (watch::Sender<u64>, Seen)>>>;

pub struct Changes {
    dir: PathBuf,
    waiting: Waiting,
    started: OnceLock<()>,
}

impl Changes {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join(layout::HOSTS_DIR),
            waiting: Arc::default(),
            started: OnceLock::new(),
        }
    }

    /// A receiver woken when `name` (a pointer, relative to the root)
    /// changes; the watching task starts with the first.
    pub fn subscribe(&self, name: &str) -> watch::Receiver<u64> {
        self.started.get_or_init(|| {
            tokio::spawn(notice(self.dir.clone(), self.waiting.clone()));
        });
        let file = name.rsplit('/').next().unwrap_or(name).to_owned();
        let mut waiting = self.waiting.lock().expect("no panics while held");
        match waiting.get(&file) {
            Some((tx, _)) => tx.subscribe(),
            None => {
                let seen = stat(&self.dir.join(&file));
                let (tx, rx) = watch::channel(0);
                waiting.insert(file, (tx, seen));
                rx
            }
        }
    }
}

fn stat(path: &Path) -> Seen {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

/// While anyone waits, looks at `hosts/` ten times a second; when it
/// changed, at each file waited for, and wakes the waiters of those that
/// changed: a release wakes its host's waiters, not every host's.
async fn notice(dir: PathBuf, waiting: Waiting) {
    let modified = |dir: &Path| std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    let mut last = modified(&dir);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = modified(&dir);
        if now == last {
            continue;
        }
        last = now;
        // Thousands of waited files are thousands of stats: off the
        // workers that answer requests.
        let (d, w) = (dir.clone(), waiting.clone());
        let _ = tokio::task::spawn_blocking(move || wake_changed(&d, &w)).await;
    }
}

/// Wakes the waiters of each file waited for that changed since last seen.
fn wake_changed(dir: &Path, waiting: &Waiting) {
    let mut waiting = waiting.lock().expect("no panics while held");
    waiting.retain(|_, (tx, _)| tx.receiver_count() > 0);
    for (file, (tx, seen)) in waiting.iter_mut() {
        let now = stat(&dir.join(file));
        if now != *seen {
            *seen = now;
            tx.send_modify(|n| *n += 1);
        }
    }
}

/// How long the request asks to be held, if it asks (`Prefer: wait=N`) and
/// names a host's pointer (`name`, relative to the root).
pub fn wanted(headers: &HeaderMap, name: &str) -> Option<Duration> {
    if !matches!(Key::parse(name), Some(Key::Pointer(_))) {
        return None;
    }
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim().eq_ignore_ascii_case("wait"))
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .map(|secs| Duration::from_secs(secs).min(MAX_WAIT))
}

/// Says the wait was honoured, so the client knows it may rely on it.
pub fn applied(mut response: Response, wait: Duration) -> Response {
    let value = HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
        .expect("digits are a header value");
    response.headers_mut().insert("preference-applied", value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pointer_waits_and_never_past_the_bound() {
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=30"));
        assert_eq!(wanted(&h, "hosts/web.json"), Some(Duration::from_secs(30)));
        assert_eq!(wanted(&h, "keys.json"), None);
        assert_eq!(wanted(&h, "hosts/web/3.json"), None);
        h.insert("prefer", HeaderValue::from_static("wait=99999"));
        assert_eq!(wanted(&h, "hosts/web.json"), Some(MAX_WAIT));
        h.insert("prefer", HeaderValue::from_static("wait=soon"));
        assert_eq!(wanted(&h, "hosts/web.json"), None);
        assert_eq!(wanted(&HeaderMap::new(), "hosts/web.json"), None);
    }
}
