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
//! file) before it is signed: the payload type is then `…report.v1+age` and the
//! payload the age bytes. Signing what is sealed lets `nixcast serve` check who
//! wrote a report without being able to read it. The host named inside must be
//! the host the report is stored for, checked after opening.
//!
//! Payload (unknown fields are ignored, so that an older publisher reads a
//! newer agent's report):
//!
//! ```json
//! { "host": "web1", "pointerGeneration": 8, "appliedGeneration": 7,
//!   "appliedStorePath": "/nix/store/…", "appliedAt": "2026-11-25T10:00:00Z",
//!   "outcome": "failed", "error": { "kind": "activation-failed", "message": "…" },
//!   "lastFailure": { "at": "…", "generation": 8, "kind": "…", "message": "…" },
//!   "at": "2026-11-25T10:05:00Z", "interval": 3600,
//!   "bootedSystem": "/nix/store/…", "currentSystem": "/nix/store/…",
//!   "agentVersion": "0.1.0" }
//! ```

use data_encoding::BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::pointer::{pae, Envelope, EnvelopeSignature, Timestamp};
use crate::seal::{self, Identity, Recipient, SealError};

pub const PAYLOAD_TYPE: &str = "application/vnd.nixcast.report.v1+json";
pub const SEALED_PAYLOAD_TYPE: &str = "application/vnd.nixcast.report.v1+age";
/// A report is a few hundred bytes; a larger body is refused unread.
pub const MAX_REPORT_SIZE: usize = 64 * 1024;
/// Messages in a report are cut to this many bytes.
pub const MAX_MESSAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
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
    /// Seconds between reports of a quiet host: three without one is stale.
    pub interval: u64,
    #[serde(default)]
    pub booted_system: Option<String>,
    #[serde(default)]
    pub current_system: Option<String>,
    pub agent_version: String,
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
}

impl Report {
    /// Signs the report into an envelope's JSON bytes; sealed to `seal_to`
    /// first when that is not empty.
    pub fn sign(&self, key: &HostKey, seal_to: &[Recipient]) -> std::io::Result<Vec<u8>> {
        let mut body = serde_json::to_vec(self).expect("a report always serialises");
        let mut payload_type = PAYLOAD_TYPE;
        if !seal_to.is_empty() {
            body = seal::seal_bytes(seal_to, &body)?;
            payload_type = SEALED_PAYLOAD_TYPE;
        }
        let sig = key.key.sign(&pae(payload_type, &body));
        let env = Envelope {
            payload_type: payload_type.to_owned(),
            payload: BASE64.encode(&body),
            signatures: vec![EnvelopeSignature {
                keyid: self.host.clone(),
                sig: BASE64.encode(&sig.to_bytes()),
            }],
        };
        let mut v = serde_json::to_vec_pretty(&env).expect("an envelope always serialises");
        v.push(b'\n');
        Ok(v)
    }

    /// Cuts a message to [`MAX_MESSAGE`] bytes on a character boundary.
    pub fn cut(message: &str) -> String {
        let mut end = message.len().min(MAX_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message[..end].to_owned()
    }
}

/// A report whose signature verified with one of its host's keys.
#[derive(Debug)]
pub enum Signed {
    Plain(Box<Report>),
    /// Sealed to the operators: [`Signed::open`] reads it.
    Sealed(Vec<u8>),
}

impl Signed {
    /// The report, opening it with `identities` if it is sealed, and checking
    /// that it is `host`'s.
    pub fn open(self, host: &str, identities: &[Identity]) -> Result<Report, ReportError> {
        let report = match self {
            Signed::Plain(r) => *r,
            Signed::Sealed(bytes) => {
                let plain = seal::open_bytes(identities, &bytes, MAX_REPORT_SIZE as u64)?;
                serde_json::from_slice(&plain).map_err(ReportError::Payload)?
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
    if env.payload_type != PAYLOAD_TYPE && env.payload_type != SEALED_PAYLOAD_TYPE {
        return Err(ReportError::PayloadType(env.payload_type));
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
        return Ok(Signed::Sealed(body));
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
            interval: 3600,
            booted_system: None,
            current_system: None,
            agent_version: "0.1.0".into(),
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
    fn unknown_fields_are_ignored_and_messages_are_cut() {
        let mut v = serde_json::to_value(sample("web1")).unwrap();
        v["futureField"] = serde_json::json!(1);
        let r: Report = serde_json::from_value(v).unwrap();
        assert_eq!(r.host, "web1");
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
