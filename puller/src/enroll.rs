//! `nixcast-pull enroll`: a fresh machine asks to join the fleet, then
//! waits until it is published.
//!
//! It reads the host's SSH host key (the first OpenSSH ed25519 `--identity`,
//! else `/etc/ssh/ssh_host_ed25519_key`; it never makes one: the key the
//! fleet learns must be the one sshd and the sealed objects use), checks the
//! token with the pinned fleet keys, and sends `enroll/HOST.json` signed
//! with that key (`nixcast_common::enroll`) where reports go: `--report-to`,
//! else the cache itself (`serve --accept-reports`, a bucket, a
//! directory). A transient failure to send is retried; a refusal is final.
//! Then it polls `hosts/HOST.json` with a growing interval, saying on
//! stderr that it waits, until the pointer is there or `--enroll-timeout`
//! passed. Applying it is the caller's: the same run as `run`'s.

use std::time::{Duration, Instant, SystemTime};

use anyhow::anyhow;
use nixcast_common::enroll::{self, Request};
use nixcast_common::layout::Key;

use crate::config::{Config, Trusted};
use crate::source::{FetchError, Source};

/// What `enroll` is given beside a run's settings.
pub struct Enroll {
    /// The token, as `nixcast invite` printed it.
    pub token: String,
    /// How long to wait for the request to be sent, accepted and published.
    pub timeout: Duration,
    /// Where the request goes.
    pub send_to: Source,
}

/// Why no pointer came: each has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// The token does not hold, or the request was refused.
    #[error("refused: {0:#}")]
    Refused(anyhow::Error),
    #[error("{0:#}")]
    TimedOut(anyhow::Error),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

/// The first poll waits this long; each next one twice as long, up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_secs(1);
const MAX_POLL: Duration = Duration::from_secs(15);

/// Sends the request (unless the host's pointer is there already) and
/// waits for the pointer.
pub async fn request_and_wait(cfg: &Config, e: &Enroll) -> Result<(), Stop> {
    let started = Instant::now();
    let host = &cfg.policy.host;
    let pointer = Key::Pointer(host.clone()).to_string();
    if published(cfg, &pointer).await? {
        tracing::info!(host, "the host is published already: applying it");
        return Ok(());
    }
    let body = signed_request(cfg, e)?;
    send(e, host, &body, started).await?;
    let mut interval = FIRST_POLL;
    loop {
        if published(cfg, &pointer).await? {
            tracing::info!(host, "accepted and published: applying");
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= e.timeout {
            return Err(Stop::TimedOut(anyhow!(
                "{host} was not published within --enroll-timeout {}: accept it with `nixcast \
                 enroll accept --host {host}` and publish it, then run this again",
                humantime::format_duration(e.timeout)
            )));
        }
        tracing::info!(
            "waiting for {host} to be accepted and published ({} of {})",
            humantime::format_duration(Duration::from_secs(waited.as_secs())),
            humantime::format_duration(e.timeout)
        );
        tokio::time::sleep(interval.min(e.timeout - waited)).await;
        interval = (interval * 2).min(MAX_POLL);
    }
}

/// Whether the host's pointer exists; a failure to ask is a wait, not an end.
async fn published(cfg: &Config, pointer: &str) -> Result<bool, Stop> {
    match cfg.ports.source.backend().exists(pointer).await {
        Ok(found) => Ok(found),
        Err(err) => {
            tracing::warn!("cannot tell whether {pointer} exists (trying again): {err}");
            Ok(false)
        }
    }
}

/// The request, signed with the host key, once the token held here.
fn signed_request(cfg: &Config, e: &Enroll) -> Result<Vec<u8>, Stop> {
    let key = crate::report::host_key(&cfg.policy.identity_files).map_err(|err| {
        Stop::Other(err.context(
            "enroll sends this host's SSH host key and never makes one: start sshd once (it \
             makes its keys) or run `ssh-keygen -A`",
        ))
    })?;
    // With pinned keys, a token that cannot hold is refused here, before
    // anything is sent (with roots, the keys are not known yet).
    if let Trusted::Pinned(keys) = &cfg.policy.trusted {
        let t = enroll::verify_token(&e.token, keys, SystemTime::now())
            .map_err(|err| Stop::Refused(anyhow!("the token: {err}")))?;
        if t.get().host != cfg.policy.host {
            return Err(Stop::Refused(anyhow!(
                "the token is for host {:?}, not {:?}",
                t.get().host,
                cfg.policy.host
            )));
        }
    }
    let request = Request::new(&cfg.policy.host, &key, &e.token);
    tracing::info!(
        host = %cfg.policy.host,
        fingerprint = %enroll::fingerprint(&key.public()),
        "sending the enrollment request"
    );
    Ok(request.sign(&key))
}

/// PUTs the request, retrying what may pass, within the time left.
async fn send(e: &Enroll, host: &str, body: &[u8], started: Instant) -> Result<(), Stop> {
    let key = Key::EnrollRequest(host.to_owned()).to_string();
    let url = e.send_to.url_of(&key);
    let mut interval = FIRST_POLL;
    loop {
        match e.send_to.put(&key, body.to_vec()).await {
            Ok(()) => {
                tracing::info!(%url, "request sent: waiting for it to be accepted");
                return Ok(());
            }
            Err(err @ FetchError::Refused { .. }) => return Err(Stop::Refused(err.into())),
            Err(err) if started.elapsed() + interval >= e.timeout => {
                return Err(Stop::TimedOut(
                    anyhow::Error::from(err).context("cannot send the enrollment request"),
                ))
            }
            Err(err) => tracing::warn!("cannot send the request (trying again): {err}"),
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_POLL);
    }
}
