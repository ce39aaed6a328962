//! A host's report: a signed statement of what its agent last did, stored as
//! `reports/<host>.json` next to the pointers.
//!
//! A DSSE envelope like the pointer's, signed with the host's SSH ed25519 key
//! (its `/etc/ssh/ssh_host_ed25519_key`), so that the trusted side verifies it
//! with the key the recipients file lists for that host:
//!
//! ```json
//! { "payloadType": "application/vnd.nixcast.report.v1+json",
//!   "payload": "<base64 of the report JSON>",
//!   "signatures": [ { "keyid": "web1", "sig": "<base64 ed25519>" } ] }
//! ```
//!
//! A sealed host's report is sealed to the operators (`*` in the recipients
//! file) before it is signed. Signing what is sealed lets `nixcast serve`
//! check who wrote a report without being able to read it. The payload type
//! is then `…report.sealed.v2+json`, whose payload carries in the clear, under
//! the same signature, what a report store needs to keep reports in order:
//!
//! ```json
//! { "host": "web1", "at": "2026-11-25T10:05:00Z", "seq": 42,
//!   "sealed": "<base64 of the age bytes of the report JSON>" }
//! ```
//!
//! The report inside must repeat `host`, `at` and `seq`. Agents before this
//! header signed the age bytes alone (`…report.v1+age`): still read, but a
//! report store cannot order them. The host named inside must be the host the
//! report is stored for, checked after opening.
//!
//! **Order.** A report's place among its host's reports is `(at, seq)`: `seq`
//! is a counter the agent raises for every report it makes, so two reports of
//! the same second are ordered too, and `at` first keeps a host whose state
//! directory was wiped (its counter back at 1) in order as long as its clock
//! runs on. A report without `seq` (an older agent) counts as `seq` 0.
//!
//! **Times.** Every time a report carries is the host's own clock: a reader
//! bounds them with [`Report::check_times`] against its clock and the signed
//! pointer before believing them.
//!
//! Payload (unknown fields are ignored, so that an older publisher reads a
//! newer agent's report):
//!
//! ```json
//! { "host": "web1", "pointerGeneration": 8, "appliedGeneration": 7,
//!   "appliedStorePath": "/nix/store/…", "appliedAt": "2026-11-25T10:00:00Z",
//!   "outcome": "failed", "error": { "kind": "activation-failed", "message": "…" },
//!   "lastFailure": { "at": "…", "generation": 8, "kind": "…", "message": "…" },
//!   "at": "2026-11-25T10:05:00Z", "seq": 42, "interval": 3600,
//!   "bootedSystem": "/nix/store/…", "currentSystem": "/nix/store/…",
//!   "agentVersion": "0.1.0" }
//! ```

use std::time::{Duration, SystemTime};

use data_encoding::BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::pointer::{pae, Envelope, EnvelopeSignature, Timestamp};
use crate::seal::{self, Identity, Recipient, SealError};

pub const PAYLOAD_TYPE: &str = "application/vnd.nixcast.report.v1+json";
/// The age bytes alone, as agents before the clear header signed them.
pub const SEALED_PAYLOAD_TYPE: &str = "application/vnd.nixcast.report.v1+age";
/// A [`SealedHeader`]: `host`, `at` and `seq` in the clear, the report sealed.
pub const SEALED_HEADER_PAYLOAD_TYPE: &str = "application/vnd.nixcast.report.sealed.v2+json";
/// Signatures an envelope may carry. A host signs with one key; a few more
/// allow a key rotation. Each is verified against each listed key, so an
/// envelope of hundreds would make every one a costly request: more are
/// refused before any is verified.
pub const MAX_SIGNATURES: usize = 4;
/// How far a report's times may be ahead of the reader's clock (and before
/// the pointer it applied). Hosts kept by NTP differ by well under a second;
/// five minutes (Kerberos's default, and the agent's own bound on a
/// pointer's `issuedAt`) allows a host whose clock drifts between syncs,
/// while a VM booted with a clock hours or years off is refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The longest report interval believed: a week. A longer one would keep a
/// silent host from ever looking stale.
pub const MAX_INTERVAL: u64 = 7 * 24 * 3600;
/// A report is a few hundred bytes; a larger body is refused unread.
pub const MAX_REPORT_SIZE: usize = 64 * 1024;
/// Messages in a report are cut to this many bytes.
pub const MAX_MESSAGE: usize = 4096;

/// What the run that made the report ended with. Publishers before
/// `retired` refuse a report that names it (an unknown variant); from it on,
/// an outcome a newer agent adds reads as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    /// The host read its tombstone: it applies nothing any more.
    Retired,
    /// An outcome this reader does not know.
    #[serde(other)]
    Other,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Retired => "retired",
            Outcome::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The agent's failure kind, as in its metrics (`activation-failed`, …).
    pub kind: String,
    pub message: String,
}

/// The last run that failed, kept until a later report replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    pub at: Timestamp,
    /// The generation the failed run tried to apply, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub host: String,
    /// The generation of the newest pointer the agent verified.
    #[serde(default)]
    pub pointer_generation: Option<u64>,
    /// The generation the host runs (none before its first switch).
    #[serde(default)]
    pub applied_generation: Option<u64>,
    #[serde(default)]
    pub applied_store_path: Option<String>,
    /// When the applied generation was switched to.
    #[serde(default)]
    pub applied_at: Option<Timestamp>,
    pub outcome: Outcome,
    /// Why this run failed (outcome `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
    /// When the report was made.
    pub at: Timestamp,
    /// The agent's count of reports made, which orders reports of one
    /// second (`None` from agents before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Seconds between reports of a quiet host: three without one is stale.
    pub interval: u64,
    #[serde(default)]
    pub booted_system: Option<String>,
    #[serde(default)]
    pub current_system: Option<String>,
    pub agent_version: String,
    /// The version of the key list the agent holds, when it trusts roots
    /// (`--root-key`); none with pinned keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_list_version: Option<u64>,
    /// A reboot the agent waits for a window to make, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_pending: Option<String>,
}

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("report is {0} bytes, more than the limit of {MAX_REPORT_SIZE}")]
    TooLarge(usize),
    #[error("malformed report envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("report payload type is {0:?}")]
    PayloadType(String),
    #[error("report payload is not valid base64")]
    Base64,
    #[error("report is not signed by a key listed for host {0}")]
    Untrusted(String),
    #[error("malformed report payload: {0}")]
    Payload(serde_json::Error),
    #[error("report is for host {found:?}, stored as {expected}'s")]
    WrongHost { expected: String, found: String },
    #[error("sealed report: {0}")]
    Seal(#[from] SealError),
    #[error("report envelope carries {0} signatures, more than the limit of {MAX_SIGNATURES}")]
    TooManySignatures(usize),
    #[error("the sealed report's header says {header}, the report inside says {inside}")]
    HeaderMismatch { header: String, inside: String },
}

/// Why a report's times are not believed (each names the times compared).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeError {
    #[error(
        "it was made at {at}, {ahead} ahead of this machine's clock ({now}); a clock is wrong"
    )]
    Future {
        at: Timestamp,
        ahead: String,
        now: Timestamp,
    },
    #[error("its interval of {0} seconds is outside 1 s to {MAX_INTERVAL} s (a week)")]
    Interval(u64),
    #[error("it says it applied its generation at {applied}, after the report was made ({at})")]
    AppliedAfterReport { applied: Timestamp, at: Timestamp },
    #[error("it says it failed at {failed}, after the report was made ({at})")]
    FailedAfterReport { failed: Timestamp, at: Timestamp },
    #[error(
        "it says it applied generation {generation} at {applied}, before its pointer was issued \
         ({issued}); a clock is wrong"
    )]
    AppliedBeforeIssued {
        generation: u64,
        applied: Timestamp,
        issued: Timestamp,
    },
}

/// Where a report stands among its host's reports: `(at, seq)`, compared in
/// that order (see the module header). Signed, and readable without opening
/// a sealed report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    pub at: Timestamp,
    pub seq: u64,
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "report {} made at {}", self.seq, self.at)
    }
}

/// The clear part of a sealed report's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedHeader {
    pub host: String,
    pub at: Timestamp,
    pub seq: u64,
    /// Base64 of the age bytes.
    pub sealed: String,
}

/// A host's SSH ed25519 key, which signs its reports.
pub struct HostKey {
    key: SigningKey,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &self.key.verifying_key())
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// Reads an unencrypted OpenSSH ed25519 private key; `source` names it in errors.
    pub fn from_openssh(bytes: &[u8], source: &str) -> Result<Self, SealError> {
        let err = |what: &str| SealError::Identity(format!("{source}: {what}"));
        let text = std::str::from_utf8(bytes).map_err(|_| err("not a text file"))?;
        let key = ssh_key::PrivateKey::from_openssh(text.trim())
            .map_err(|_| err("not a readable OpenSSH private key"))?;
        if key.is_encrypted() {
            return Err(err("the OpenSSH key is encrypted"));
        }
        let pair = key
            .key_data()
            .ed25519()
            .ok_or_else(|| err("not an ed25519 key"))?;
        let seed = Zeroizing::new(pair.private.to_bytes());
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// For the other statements a host signs (an enrollment request).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    #[cfg(test)]
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }
}

impl Report {
    /// Signs the report into an envelope's JSON bytes; sealed to `seal_to`
    /// first when that is not empty.
    pub fn sign(&self, key: &HostKey, seal_to: &[Recipient]) -> std::io::Result<Vec<u8>> {
        let mut body = serde_json::to_vec(self).expect("a report always serialises");
        let mut payload_type = PAYLOAD_TYPE;
        if !seal_to.is_empty() {
            let header = SealedHeader {
                host: self.host.clone(),
                at: self.at,
                seq: self.seq.unwrap_or(0),
                sealed: BASE64.encode(&seal::seal_bytes(seal_to, &body)?),
            };
            body = serde_json::to_vec(&header).expect("a header always serialises");
            payload_type = SEALED_HEADER_PAYLOAD_TYPE;
        }
        Ok(Envelope::signed(payload_type, &body, |m| {
            vec![EnvelopeSignature::new(
                &self.host,
                &key.key.sign(m).to_bytes(),
            )]
        })
        .file_bytes())
    }

    /// Cuts a message to [`MAX_MESSAGE`] bytes on a character boundary.
    pub fn cut(message: &str) -> String {
        let mut end = message.len().min(MAX_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message[..end].to_owned()
    }

    /// Where this report stands among its host's reports.
    pub fn order(&self) -> Order {
        Order {
            at: self.at,
            seq: self.seq.unwrap_or(0),
        }
    }

    /// Checks the times the report carries against the reader's clock
    /// (`now`): not made more than [`MAX_CLOCK_SKEW`] ahead of it, an
    /// interval from 1 s to [`MAX_INTERVAL`], nothing applied or failed
    /// after the report was made; and, given the issue time of the signed
    /// pointer of the generation it says it applied, not applied more than
    /// the skew before that pointer existed.
    pub fn check_times(
        &self,
        now: SystemTime,
        applied_pointer_issued: Option<Timestamp>,
    ) -> Result<(), TimeError> {
        check_at(self.at, now)?;
        if self.interval == 0 || self.interval > MAX_INTERVAL {
            return Err(TimeError::Interval(self.interval));
        }
        if let Some(applied) = self.applied_at {
            if applied > self.at {
                return Err(TimeError::AppliedAfterReport {
                    applied,
                    at: self.at,
                });
            }
            if let (Some(issued), Some(generation)) =
                (applied_pointer_issued, self.applied_generation)
            {
                if applied.system_time() + MAX_CLOCK_SKEW < issued.system_time() {
                    return Err(TimeError::AppliedBeforeIssued {
                        generation,
                        applied,
                        issued,
                    });
                }
            }
        }
        if let Some(f) = &self.last_failure {
            if f.at > self.at {
                return Err(TimeError::FailedAfterReport {
                    failed: f.at,
                    at: self.at,
                });
            }
        }
        Ok(())
    }
}

/// A report made at `at` is not from more than [`MAX_CLOCK_SKEW`] after `now`.
pub fn check_at(at: Timestamp, now: SystemTime) -> Result<(), TimeError> {
    match at.system_time().duration_since(now) {
        Ok(ahead) if ahead > MAX_CLOCK_SKEW => Err(TimeError::Future {
            at,
            ahead: humantime::format_duration(Duration::from_secs(ahead.as_secs())).to_string(),
            now: Timestamp::from_system_time(now),
        }),
        _ => Ok(()),
    }
}

/// A report whose signature verified with one of its host's keys.
#[derive(Debug)]
pub enum Signed {
    Plain(Box<Report>),
    /// Sealed to the operators: [`Signed::open`] reads it.
    Sealed(Box<Sealed>),
}

/// A sealed report as verified: its clear header, if it has one, and the
/// age bytes.
#[derive(Debug)]
pub struct Sealed {
    /// `None` for an agent that signed the age bytes alone.
    pub header: Option<Order>,
    pub bytes: Vec<u8>,
}

impl Signed {
    /// Where the report stands among its host's reports; `None` for a
    /// sealed one without a clear header, which nothing can order.
    pub fn order(&self) -> Option<Order> {
        match self {
            Signed::Plain(r) => Some(r.order()),
            Signed::Sealed(s) => s.header,
        }
    }

    /// The report, opening it with `identities` if it is sealed, and checking
    /// that it is `host`'s.
    pub fn open(self, host: &str, identities: &[Identity]) -> Result<Report, ReportError> {
        let report: Report = match self {
            Signed::Plain(r) => *r,
            Signed::Sealed(s) => {
                let plain = seal::open_bytes(identities, &s.bytes, MAX_REPORT_SIZE as u64)?;
                let r: Report = serde_json::from_slice(&plain).map_err(ReportError::Payload)?;
                // The header was what a report store ordered it by.
                if let Some(header) = s.header {
                    if header != r.order() {
                        return Err(ReportError::HeaderMismatch {
                            header: header.to_string(),
                            inside: r.order().to_string(),
                        });
                    }
                }
                r
            }
        };
        if report.host != host {
            return Err(ReportError::WrongHost {
                expected: host.to_owned(),
                found: report.host,
            });
        }
        Ok(report)
    }
}

/// Checks that `bytes` is a report envelope signed by one of `keys` (those
/// listed for `host`). A plain payload is parsed and must name `host`; a
/// sealed one is returned as it is. Nothing is parsed before a signature
/// verified.
pub fn verify(bytes: &[u8], host: &str, keys: &[VerifyingKey]) -> Result<Signed, ReportError> {
    if bytes.len() > MAX_REPORT_SIZE {
        return Err(ReportError::TooLarge(bytes.len()));
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(ReportError::Envelope)?;
    if ![
        PAYLOAD_TYPE,
        SEALED_PAYLOAD_TYPE,
        SEALED_HEADER_PAYLOAD_TYPE,
    ]
    .contains(&env.payload_type.as_str())
    {
        return Err(ReportError::PayloadType(env.payload_type));
    }
    if env.signatures.len() > MAX_SIGNATURES {
        return Err(ReportError::TooManySignatures(env.signatures.len()));
    }
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| ReportError::Base64)?;
    let message = pae(&env.payload_type, &body);
    let signed = env.signatures.iter().any(|s| {
        let Some(raw) = BASE64
            .decode(s.sig.as_bytes())
            .ok()
            .and_then(|v| <[u8; 64]>::try_from(v).ok())
        else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&raw);
        keys.iter().any(|k| k.verify_strict(&message, &sig).is_ok())
    });
    if !signed {
        return Err(ReportError::Untrusted(host.to_owned()));
    }
    if env.payload_type == SEALED_PAYLOAD_TYPE {
        return Ok(Signed::Sealed(Box::new(Sealed {
            header: None,
            bytes: body,
        })));
    }
    if env.payload_type == SEALED_HEADER_PAYLOAD_TYPE {
        let h: SealedHeader = serde_json::from_slice(&body).map_err(ReportError::Payload)?;
        if h.host != host {
            return Err(ReportError::WrongHost {
                expected: host.to_owned(),
                found: h.host,
            });
        }
        let bytes = BASE64
            .decode(h.sealed.as_bytes())
            .map_err(|_| ReportError::Base64)?;
        return Ok(Signed::Sealed(Box::new(Sealed {
            header: Some(Order {
                at: h.at,
                seq: h.seq,
            }),
            bytes,
        })));
    }
    let report: Report = serde_json::from_slice(&body).map_err(ReportError::Payload)?;
    Signed::Plain(Box::new(report))
        .open(host, &[])
        .map(|r| Signed::Plain(Box::new(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use crate::seal::tests::{SSH_PRIVATE, SSH_PUBLIC};

    fn sample(host: &str) -> Report {
        Report {
            host: host.into(),
            pointer_generation: Some(3),
            applied_generation: Some(3),
            applied_store_path: Some("/nix/store/x".into()),
            applied_at: Some(Timestamp::now()),
            outcome: Outcome::Ok,
            error: None,
            last_failure: None,
            at: Timestamp::now(),
            seq: Some(1),
            interval: 3600,
            booted_system: None,
            current_system: None,
            agent_version: "0.1.0".into(),
            key_list_version: None,
            reboot_pending: None,
        }
    }

    #[test]
    fn signed_with_the_host_key_verifies_with_its_listed_public_key() {
        let key = HostKey::from_openssh(SSH_PRIVATE.as_bytes(), "k").unwrap();
        let listed = seal::Recipients::parse(&format!("web1 {SSH_PUBLIC}\n")).unwrap();
        let keys = listed.signers_of("web1");
        assert_eq!(keys, vec![key.public()]);
        let env = sample("web1").sign(&key, &[]).unwrap();
        let Signed::Plain(r) = verify(&env, "web1", &keys).unwrap() else {
            panic!("plain")
        };
        assert_eq!(*r, sample("web1").clone_with_times(&r));
        // Stored under another host's name: refused, even with its key.
        let e = verify(&env, "web2", &keys).unwrap_err();
        assert!(matches!(e, ReportError::WrongHost { .. }), "{e}");
        // Another key does not verify; a changed byte does not either.
        let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert!(matches!(
            verify(&env, "web1", &[other]),
            Err(ReportError::Untrusted(_))
        ));
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        let mut body = BASE64.decode(e.payload.as_bytes()).unwrap();
        body[12] ^= 1;
        e.payload = BASE64.encode(&body);
        let tampered = serde_json::to_vec(&e).unwrap();
        assert!(verify(&tampered, "web1", &keys).is_err());
        e.signatures.clear();
        let unsigned = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            verify(&unsigned, "web1", &keys),
            Err(ReportError::Untrusted(_))
        ));
    }

    #[test]
    fn a_sealed_report_verifies_unread_and_opens_for_the_operator() {
        let key = HostKey::from_openssh(SSH_PRIVATE.as_bytes(), "k").unwrap();
        let op = Identity::of_publisher(&SecretKey::generate("op-1").unwrap());
        let env = sample("web1").sign(&key, &[op.recipient()]).unwrap();
        assert!(!String::from_utf8_lossy(&env).contains("appliedGeneration"));
        let signed = verify(&env, "web1", &[key.public()]).unwrap();
        assert!(matches!(signed, Signed::Sealed(_)));
        let r = signed.open("web1", &[op]).unwrap();
        assert_eq!(r.applied_generation, Some(3));
        let signed = verify(&env, "web1", &[key.public()]).unwrap();
        assert!(signed.open("web1", &[]).is_err());
    }

    #[test]
    fn a_sealed_report_carries_its_order_in_the_clear_under_the_signature() {
        let key = HostKey::from_openssh(SSH_PRIVATE.as_bytes(), "k").unwrap();
        let op = Identity::of_publisher(&SecretKey::generate("op-1").unwrap());
        let mut r = sample("web1");
        r.seq = Some(7);
        let env = r.sign(&key, &[op.recipient()]).unwrap();
        let signed = verify(&env, "web1", &[key.public()]).unwrap();
        assert_eq!(signed.order(), Some(r.order()));
        assert_eq!(
            signed.open("web1", std::slice::from_ref(&op)).unwrap().seq,
            Some(7)
        );
        // The clear header is signed: changing its counter breaks the signature.
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        let body = BASE64.decode(e.payload.as_bytes()).unwrap();
        let mut h: SealedHeader = serde_json::from_slice(&body).unwrap();
        h.seq = 8;
        e.payload = BASE64.encode(&serde_json::to_vec(&h).unwrap());
        let changed = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            verify(&changed, "web1", &[key.public()]),
            Err(ReportError::Untrusted(_))
        ));
        // Stored under another host's name: refused before opening.
        assert!(matches!(
            verify(&env, "web2", &[key.public()]),
            Err(ReportError::WrongHost { .. })
        ));
    }

    #[test]
    fn more_signatures_than_the_limit_are_refused_unverified() {
        let key = HostKey::from_openssh(SSH_PRIVATE.as_bytes(), "k").unwrap();
        let env = sample("web1").sign(&key, &[]).unwrap();
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        let sig = e.signatures[0].clone();
        e.signatures = vec![sig; MAX_SIGNATURES];
        let at_limit = serde_json::to_vec(&e).unwrap();
        assert!(verify(&at_limit, "web1", &[key.public()]).is_ok());
        e.signatures.push(e.signatures[0].clone());
        let over = serde_json::to_vec(&e).unwrap();
        assert!(matches!(
            verify(&over, "web1", &[key.public()]),
            Err(ReportError::TooManySignatures(5))
        ));
    }

    #[test]
    fn a_reports_times_are_bounded_by_the_readers_clock_and_its_pointer() {
        let now = SystemTime::now();
        let t = |secs: i64| {
            Timestamp::from_system_time(if secs >= 0 {
                now + Duration::from_secs(secs as u64)
            } else {
                now - Duration::from_secs((-secs) as u64)
            })
        };
        let mut r = sample("web1");
        r.at = t(0);
        r.applied_at = Some(t(-600));
        assert_eq!(r.check_times(now, Some(t(-700))), Ok(()));
        // Within the skew of the clock and of the pointer: believed.
        r.at = t(299);
        assert_eq!(r.check_times(now, Some(t(-400))), Ok(()));
        r.at = t(3600);
        assert!(matches!(
            r.check_times(now, None),
            Err(TimeError::Future { .. })
        ));
        r.at = t(0);
        assert!(matches!(
            r.check_times(now, Some(t(-200))),
            Err(TimeError::AppliedBeforeIssued { generation: 3, .. })
        ));
        for bad in [0, MAX_INTERVAL + 1, u64::MAX] {
            let r = Report {
                interval: bad,
                ..r.clone()
            };
            assert_eq!(r.check_times(now, None), Err(TimeError::Interval(bad)));
        }
        let mut late = r.clone();
        late.applied_at = Some(t(1));
        assert!(matches!(
            late.check_times(now, None),
            Err(TimeError::AppliedAfterReport { .. })
        ));
        let mut failed = r.clone();
        failed.last_failure = Some(LastFailure {
            at: t(1),
            generation: None,
            kind: "x".into(),
            message: String::new(),
        });
        assert!(matches!(
            failed.check_times(now, None),
            Err(TimeError::FailedAfterReport { .. })
        ));
    }

    #[test]
    fn unknown_fields_are_ignored_and_messages_are_cut() {
        let mut v = serde_json::to_value(sample("web1")).unwrap();
        v["futureField"] = serde_json::json!(1);
        let r: Report = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r.host, "web1");
        v["outcome"] = serde_json::json!("retired");
        let r: Report = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r.outcome, Outcome::Retired);
        v["outcome"] = serde_json::json!("sleeping");
        let r: Report = serde_json::from_value(v).unwrap();
        assert_eq!(r.outcome, Outcome::Other);
        let long = "é".repeat(MAX_MESSAGE);
        assert!(Report::cut(&long).len() <= MAX_MESSAGE);
    }

    impl Report {
        fn clone_with_times(&self, other: &Report) -> Report {
            Report {
                at: other.at,
                applied_at: other.applied_at,
                ..self.clone()
            }
        }
    }
}
