//! Enrollment requests as a cache holds them, for everyone who judges one:
//! `serve --accept-reports` before it stores a request, `nixcast enroll
//! accept` before it lists the host, `nixcast hosts --enrollments`.
//!
//! A request is `enroll/HOST.json` (`nixcast_common::enroll` has the
//! format). A token is single-use: `enroll accept` records the request
//! that used it as `enrolled/<token id>.json` (written with `put_new`, so
//! two accepts cannot both claim it), and no request whose token is
//! recorded there is taken again. Before that, the pending request binds
//! its token to its key: another key's request with the same token is
//! refused, the same key's (the agent sending again after a restart)
//! replaces it. A pending request for a host whose token still holds keeps
//! requests with other tokens out until it is accepted or deleted.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use nixcast_common::enroll::{self, Enrollment};
use nixcast_common::layout::{self, Key};
use nixcast_common::seal::Recipients;
use nixcast_common::PublicKey;

use crate::target::Target;

/// Why a request is not taken: each is a 403 at serve and an error at accept.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Invalid(#[from] enroll::EnrollError),
    #[error("the token was used already: {0} holds the request that used it")]
    Used(String),
    #[error(
        "the token is bound to another key: the pending request {key} was made with it by {fingerprint}"
    )]
    OtherKey { key: String, fingerprint: String },
    #[error(
        "a request for {host} with another token is pending ({fingerprint}): accept it, or delete \
         {key}"
    )]
    Pending {
        host: String,
        key: String,
        fingerprint: String,
    },
    #[error("{0:#}")]
    Cache(anyhow::Error),
}

/// Checks a request for `host` against the fleet's keys, the used tokens
/// and the pending request (see the module's text); `Ok` means it may be
/// stored as `enroll/HOST.json`.
pub fn admit(
    target: &Target,
    host: &str,
    bytes: &[u8],
    keys: &[PublicKey],
    now: SystemTime,
) -> Result<Enrollment, Refusal> {
    let e = enroll::verify_request(bytes, host, keys, now)?;
    check_unused(target, &e)?;
    let key = Key::EnrollRequest(host.to_owned()).to_string();
    let pending = target
        .get_at_most(&key, enroll::MAX_REQUEST_SIZE as u64)
        .map_err(Refusal::Cache)?;
    // A stored request that no longer verifies (its token expired, or it
    // was planted) binds nothing.
    let held = pending.and_then(|b| enroll::verify_request(&b, host, keys, now).ok());
    if let Some(held) = held {
        let same_token = held.token().id == e.token().id;
        if same_token && held.key() != e.key() {
            return Err(Refusal::OtherKey {
                key,
                fingerprint: held.fingerprint(),
            });
        }
        if !same_token {
            return Err(Refusal::Pending {
                host: host.to_owned(),
                key,
                fingerprint: held.fingerprint(),
            });
        }
    }
    Ok(e)
}

fn check_unused(target: &Target, e: &Enrollment) -> Result<(), Refusal> {
    let used = Key::EnrollUsed(e.token().id).to_string();
    match target.exists(&used) {
        Ok(false) => Ok(()),
        Ok(true) => Err(Refusal::Used(used)),
        Err(err) => Err(Refusal::Cache(err)),
    }
}

/// Every pending request, by host, as it verifies now (an error says why not).
pub fn pending(target: &Target, keys: &[PublicKey]) -> Result<Vec<(String, Result<Enrollment>)>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for key in target.list(layout::ENROLL_DIR)? {
        let Some(Key::EnrollRequest(host)) = Key::parse(&key) else {
            continue;
        };
        let checked = read_request(target, &key)
            .and_then(|b| Ok(enroll::verify_request(&b, &host, keys, now)?))
            .and_then(|e| check_unused(target, &e).map(|()| e).map_err(Into::into));
        out.push((host, checked));
    }
    Ok(out)
}

fn read_request(target: &Target, key: &str) -> Result<Vec<u8>> {
    target
        .get_at_most(key, enroll::MAX_REQUEST_SIZE as u64)?
        .with_context(|| format!("{}/{key} does not exist", target.describe()))
}

/// Accepts `host`'s pending request: checks it and its token again (a
/// cache written without `serve` checked nothing), claims the token, adds
/// the host's key to the recipients file, and removes the request and the
/// agent published for the invitation. Returns what was accepted.
pub fn accept(
    target: &Target,
    host: &str,
    keys: &[PublicKey],
    recipients_file: &Path,
) -> Result<Enrollment> {
    let key = Key::EnrollRequest(host.to_owned()).to_string();
    let bytes = read_request(target, &key)?;
    let e = enroll::verify_request(&bytes, host, keys, SystemTime::now())
        .with_context(|| format!("refused {}/{key}", target.describe()))?;
    check_unused(target, &e).with_context(|| format!("refused {}/{key}", target.describe()))?;
    // Before anything is written: a host listed with another key is the
    // operator's to sort out, not ours to overwrite.
    let listed = listed_keys(recipients_file, host)?;
    let line = enroll::openssh_line(&e.key());
    if listed.iter().any(|k| *k != line) {
        bail!(
            "{} lists {host} with another ssh-ed25519 key already; remove that line first if \
             the host was rebuilt (this request's key is {})",
            recipients_file.display(),
            e.fingerprint()
        );
    }
    target
        .put_new(&Key::EnrollUsed(e.token().id).to_string(), &bytes)
        .context("cannot record the token as used (was it accepted at the same time?)")?;
    if listed.is_empty() {
        append_line(recipients_file, &e.known_hosts_line()).with_context(|| {
            format!(
                "the token is recorded as used, but {host}'s line is not in {}: add `{}` by hand",
                recipients_file.display(),
                e.known_hosts_line()
            )
        })?;
    }
    target.delete(&key)?;
    target.delete(&Key::Agent(host.to_owned()).to_string())?;
    target.sync()?;
    Ok(e)
}

/// The ssh-ed25519 keys the recipients file lists for `host`, as
/// `ssh-ed25519 BASE64` (a missing file lists none).
fn listed_keys(file: &Path, host: &str) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let r =
        Recipients::parse(&text).with_context(|| format!("recipients file {}", file.display()))?;
    Ok(r.signers_of(host)
        .iter()
        .map(enroll::openssh_line)
        .collect())
}

/// The file with `line` added at its end, written whole (`cli::fs`).
fn append_line(file: &Path, line: &str) -> Result<()> {
    let mut text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    writeln!(text, "{line}")?;
    let mode = std::fs::metadata(file).map_or(0o644, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
    });
    nixcast_cli::fs::write(file, &text, mode)
}

/// `hosts --enrollments`: one line a pending request, tab-separated: host,
/// the key's fingerprint and the token's expiry, or `refused` and why.
pub fn print_pending(target: &Target, keys: &[PublicKey]) -> Result<()> {
    anyhow::ensure!(
        !keys.is_empty(),
        "give the fleet's public key with --trusted-key-file: tokens are checked against it"
    );
    for (host, checked) in pending(target, keys)? {
        match checked {
            Ok(e) => println!(
                "{host}\t{}\ttoken expires {}",
                e.fingerprint(),
                e.token().expires_at
            ),
            Err(err) => println!(
                "{host}\trefused\t{}",
                nixcast_cli::text::clean(&format!("{err:#}"))
            ),
        }
    }
    Ok(())
}
