//! Enrollment: how a fresh machine asks to join the fleet, and what proves
//! the publisher invited it.
//!
//! **Token.** `nixcast invite` signs a DSSE envelope (the pointer's PAE and
//! ed25519 scheme, with the fleet's Nix signing key) whose payload names the
//! one host it is for, the cache, a random 128-bit id, and how long it holds:
//!
//! ```json
//! { "payloadType": "application/vnd.nixcast.enroll-token.v1+json",
//!   "payload": "<base64 of {"host":"web3","cache":"https://cache.example",
//!                "id":"<32 hex>","issuedAt":"…","expiresAt":"…"}>",
//!   "signatures": [ { "keyid": "fleet-1", "sig": "<base64>" } ] }
//! ```
//!
//! It travels as one word: base64url without padding of that envelope's
//! compact JSON ([`Token::sign`] writes it, [`verify_token`] reads it), at
//! most [`MAX_TOKEN_SIZE`] characters, so that it fits in a shell command.
//! No payload byte of a token is parsed before a fleet key's signature held.
//!
//! **Request.** `nixcast-pull enroll` answers with `enroll/<host>.json`, a
//! DSSE envelope signed with the host's SSH ed25519 host key (the key that
//! signs its reports and opens its sealed objects):
//!
//! ```json
//! { "payloadType": "application/vnd.nixcast.enroll-request.v1+json",
//!   "payload": "<base64 of {"host":"web3","sshKey":"ssh-ed25519 AAAA…",
//!                "token":"<the token>","at":"2026-11-25T10:00:00Z"}>",
//!   "signatures": [ { "keyid": "web3", "sig": "<base64 ed25519>" } ] }
//! ```
//!
//! A request is signed by the key it carries: the signature proves the
//! sender holds that key, and only the token says the publisher wants it.
//! Its payload must therefore be read (strictly, within
//! [`MAX_REQUEST_SIZE`]) to find the key before anything is verified; what
//! it claims is believed only once both the signature under that key and
//! the token under a fleet key hold ([`verify_request`], which makes the
//! only [`Enrollment`]). A token is single-use: whoever keeps requests
//! (serve, `enroll accept`) refuses one whose id is recorded as used
//! ([`crate::layout::Key::EnrollUsed`]).

use std::time::{Duration, SystemTime};

use data_encoding::{BASE64, BASE64URL_NOPAD, HEXLOWER};
use ed25519_dalek::{Signer, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::keys::{PublicKey, SecretKey, Signature};
use crate::layout;
use crate::pointer::{pae, Envelope, EnvelopeSignature, Timestamp};
use crate::report::{HostKey, MAX_CLOCK_SKEW, MAX_SIGNATURES};

pub const TOKEN_PAYLOAD_TYPE: &str = "application/vnd.nixcast.enroll-token.v1+json";
pub const REQUEST_PAYLOAD_TYPE: &str = "application/vnd.nixcast.enroll-request.v1+json";
/// A token is about 400 characters; a longer one is refused undecoded.
pub const MAX_TOKEN_SIZE: usize = 4096;
/// A request is a token and a key; a larger one is refused unread.
pub const MAX_REQUEST_SIZE: usize = 16 * 1024;
/// The longest a token may be valid: an invitation is for a machine being
/// set up now, not a standing credential.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the publisher invites: one host, at one cache, until a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Token {
    pub host: String,
    /// Where the host reads the fleet's cache (the invite's `--url`).
    pub cache: String,
    /// 128 random bits in lowercase hex: what a used token is recorded by.
    pub id: TokenId,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A token's random id: 16 bytes, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the OS random number generator failed");
        Self(id)
    }

    /// Only the form `Display` writes.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let bytes = HEXLOWER.decode(s.as_bytes()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&HEXLOWER.encode(&self.0))
    }
}

impl Serialize for TokenId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("a token id is 32 lowercase hex digits"))
    }
}

/// What a host sends: its name, its SSH host key and its token, at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    pub host: String,
    /// `ssh-ed25519 BASE64`, no comment.
    pub ssh_key: String,
    /// The token in its compact form, as `nixcast invite` printed it.
    pub token: String,
    pub at: Timestamp,
}

#[derive(Debug, Error)]
pub enum EnrollError {
    #[error("the token is {0} characters, more than the limit of {MAX_TOKEN_SIZE}")]
    TokenTooLarge(usize),
    #[error("the token is not base64url (it is one word, as `nixcast invite` printed it)")]
    TokenEncoding,
    #[error("the request is {0} bytes, more than the limit of {MAX_REQUEST_SIZE}")]
    RequestTooLarge(usize),
    #[error("malformed {what} envelope: {source}")]
    Envelope {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{what} payload type is {found:?}, expected {expected:?}")]
    PayloadType {
        what: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("{what} envelope carries {found} signatures, more than the limit of {MAX_SIGNATURES}")]
    TooManySignatures { what: &'static str, found: usize },
    #[error("{0} payload is not valid base64")]
    Base64(&'static str),
    #[error("malformed {what} payload: {source}")]
    Payload {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("the token is not signed by a trusted fleet key (signed by: {0})")]
    TokenUntrusted(String),
    #[error("the request is not signed by the SSH key it carries")]
    RequestUntrusted,
    #[error("the request's key: {0}")]
    SshKey(String),
    #[error("the token is for host {token:?}, not {host:?}")]
    WrongHost { token: String, host: String },
    #[error("the request is from host {request:?}, stored as {stored:?}'s")]
    RequestHost { request: String, stored: String },
    #[error("the token expired at {expires} (now {now})")]
    Expired { expires: Timestamp, now: Timestamp },
    #[error("{what} was made at {at}, ahead of this machine's clock ({now}); a clock is wrong")]
    Future {
        what: &'static str,
        at: Timestamp,
        now: Timestamp,
    },
    #[error("the token is valid from {issued} to {expires}: not a lifetime of up to 30 days")]
    Lifetime {
        issued: Timestamp,
        expires: Timestamp,
    },
    #[error("invalid host name in the {0}")]
    Host(&'static str),
}

impl Token {
    /// A token for `host` at `cache`, valid for `lifetime` from now.
    pub fn new(host: &str, cache: &str, lifetime: Duration) -> Self {
        let issued_at = Timestamp::now();
        Self {
            host: host.to_owned(),
            cache: cache.to_owned(),
            id: TokenId::random(),
            issued_at,
            expires_at: issued_at.plus(lifetime),
        }
    }

    /// The compact, signed form: one base64url word.
    pub fn sign(&self, key: &SecretKey) -> String {
        let body = serde_json::to_vec(self).expect("a token always serialises");
        let env = Envelope::signed(TOKEN_PAYLOAD_TYPE, &body, |m| {
            vec![EnvelopeSignature::new(key.name(), key.sign(m).bytes())]
        });
        BASE64URL_NOPAD.encode(&serde_json::to_vec(&env).expect("an envelope serialises"))
    }

    /// What holds for a token whoever reads it: a valid host name, a
    /// lifetime of at most [`MAX_TOKEN_LIFETIME`], issued no more than the
    /// clock skew ahead of `now`, and not expired (with the same skew).
    fn check(&self, now: SystemTime) -> Result<(), EnrollError> {
        layout::check_host(&self.host).map_err(|_| EnrollError::Host("token"))?;
        let (issued, expires) = (self.issued_at, self.expires_at);
        let lifetime = expires.system_time().duration_since(issued.system_time());
        if !lifetime.is_ok_and(|d| d > Duration::ZERO && d <= MAX_TOKEN_LIFETIME) {
            return Err(EnrollError::Lifetime { issued, expires });
        }
        not_ahead("the token", issued, now)?;
        if expires.system_time() + MAX_CLOCK_SKEW < now {
            return Err(EnrollError::Expired {
                expires,
                now: Timestamp::from_system_time(now),
            });
        }
        Ok(())
    }
}

fn not_ahead(what: &'static str, at: Timestamp, now: SystemTime) -> Result<(), EnrollError> {
    if at.system_time() > now + MAX_CLOCK_SKEW {
        return Err(EnrollError::Future {
            what,
            at,
            now: Timestamp::from_system_time(now),
        });
    }
    Ok(())
}

/// A token whose signature verified with a trusted fleet key and whose
/// times hold at the moment it was checked. Only this module makes one.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    token: Token,
    key_name: String,
}

impl VerifiedToken {
    pub fn get(&self) -> &Token {
        &self.token
    }

    /// The name of the fleet key that signed it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
}

/// Reads a DSSE envelope of `payload_type` and returns it with its body,
/// verifying nothing: the size was capped by the caller.
fn open_envelope(
    bytes: &[u8],
    what: &'static str,
    payload_type: &'static str,
) -> Result<(Envelope, Vec<u8>), EnrollError> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|source| EnrollError::Envelope { what, source })?;
    if env.payload_type != payload_type {
        return Err(EnrollError::PayloadType {
            what,
            found: env.payload_type,
            expected: payload_type,
        });
    }
    if env.signatures.len() > MAX_SIGNATURES {
        return Err(EnrollError::TooManySignatures {
            what,
            found: env.signatures.len(),
        });
    }
    let body = BASE64
        .decode(env.payload.as_bytes())
        .map_err(|_| EnrollError::Base64(what))?;
    Ok((env, body))
}

fn signature_bytes(s: &EnvelopeSignature) -> Option<[u8; 64]> {
    BASE64.decode(s.sig.as_bytes()).ok()?.try_into().ok()
}

/// Verifies a compact token with the fleet's keys, then reads it and
/// checks its times against `now`. It does not check which host it names.
pub fn verify_token(
    compact: &str,
    trusted: &[PublicKey],
    now: SystemTime,
) -> Result<VerifiedToken, EnrollError> {
    let compact = compact.trim();
    if compact.len() > MAX_TOKEN_SIZE {
        return Err(EnrollError::TokenTooLarge(compact.len()));
    }
    let bytes = BASE64URL_NOPAD
        .decode(compact.as_bytes())
        .map_err(|_| EnrollError::TokenEncoding)?;
    let (env, body) = open_envelope(&bytes, "token", TOKEN_PAYLOAD_TYPE)?;
    let message = pae(TOKEN_PAYLOAD_TYPE, &body);
    // keyid is unauthenticated (DSSE): every signature against every key.
    let key_name = env.signatures.iter().find_map(|s| {
        let raw = signature_bytes(s)?;
        trusted.iter().find_map(|k| {
            let sig = Signature::from_parts(k.name(), raw);
            k.verifies(&message, &sig).then(|| k.name().to_owned())
        })
    });
    let Some(key_name) = key_name else {
        let ids: Vec<&str> = env.signatures.iter().map(|s| s.keyid.as_str()).collect();
        return Err(EnrollError::TokenUntrusted(ids.join(", ")));
    };
    let token: Token = serde_json::from_slice(&body).map_err(|source| EnrollError::Payload {
        what: "token",
        source,
    })?;
    token.check(now)?;
    Ok(VerifiedToken { token, key_name })
}

/// A request that verified: its key signed it, a fleet key signed its
/// token, and both name the host it is stored for. Only
/// [`verify_request`] makes one.
#[derive(Debug, Clone)]
pub struct Enrollment {
    request: Request,
    key: VerifyingKey,
    token: VerifiedToken,
}

impl Enrollment {
    pub fn host(&self) -> &str {
        &self.request.host
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn token(&self) -> &Token {
        self.token.get()
    }

    pub fn key(&self) -> VerifyingKey {
        self.key
    }

    /// The key as `ssh-keygen -l` prints its fingerprint: `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }

    /// The recipients file's line for this host: `HOST ssh-ed25519 BASE64`.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}", self.request.host, self.request.ssh_key)
    }
}

/// The SSH wire form of an ed25519 public key (RFC 8709).
fn ssh_blob(key: &VerifyingKey) -> Vec<u8> {
    let mut blob = Vec::with_capacity(51);
    for part in [&b"ssh-ed25519"[..], key.as_bytes()] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    blob
}

/// `ssh-ed25519 BASE64`, the OpenSSH one-line form without a comment.
pub fn openssh_line(key: &VerifyingKey) -> String {
    format!("ssh-ed25519 {}", BASE64.encode(&ssh_blob(key)))
}

/// `SHA256:` and the unpadded base64 of the key's wire form, as OpenSSH
/// prints a fingerprint.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(ssh_blob(key));
    format!(
        "SHA256:{}",
        BASE64.encode(&digest).trim_end_matches('=').to_owned()
    )
}

impl Request {
    /// A request for `host` with `token`, carrying and signed by `key`.
    pub fn new(host: &str, key: &HostKey, token: &str) -> Self {
        Self {
            host: host.to_owned(),
            ssh_key: openssh_line(&key.public()),
            token: token.trim().to_owned(),
            at: Timestamp::now(),
        }
    }

    /// The envelope's JSON bytes, signed with `key` (the one it carries).
    pub fn sign(&self, key: &HostKey) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a request always serialises");
        Envelope::signed(REQUEST_PAYLOAD_TYPE, &body, |m| {
            let sig = key.signing_key().sign(m);
            vec![EnvelopeSignature::new(&self.host, &sig.to_bytes())]
        })
        .file_bytes()
    }
}

/// The key a request carries, held to the one form [`openssh_line`] writes.
fn request_key(text: &str) -> Result<VerifyingKey, EnrollError> {
    let key = crate::seal::ssh_ed25519(text).map_err(|e| EnrollError::SshKey(e.to_string()))?;
    if openssh_line(&key) != text {
        return Err(EnrollError::SshKey(
            "not written as `ssh-ed25519 BASE64` without a comment".into(),
        ));
    }
    Ok(key)
}

/// Verifies a request stored (or to be stored) as `host`'s: its payload
/// read strictly, its signature under the key it carries, its token under
/// one of `trusted`, naming `host`, unexpired at `now`; neither made more
/// than the clock skew ahead of `now`. Whether the token was used already
/// is for the caller, who keeps the records.
pub fn verify_request(
    bytes: &[u8],
    host: &str,
    trusted: &[PublicKey],
    now: SystemTime,
) -> Result<Enrollment, EnrollError> {
    if bytes.len() > MAX_REQUEST_SIZE {
        return Err(EnrollError::RequestTooLarge(bytes.len()));
    }
    let (env, body) = open_envelope(bytes, "request", REQUEST_PAYLOAD_TYPE)?;
    let request: Request =
        serde_json::from_slice(&body).map_err(|source| EnrollError::Payload {
            what: "request",
            source,
        })?;
    let key = request_key(&request.ssh_key)?;
    let message = pae(REQUEST_PAYLOAD_TYPE, &body);
    let signed = env.signatures.iter().any(|s| {
        signature_bytes(s).is_some_and(|raw| {
            let sig = ed25519_dalek::Signature::from_bytes(&raw);
            key.verify_strict(&message, &sig).is_ok()
        })
    });
    if !signed {
        return Err(EnrollError::RequestUntrusted);
    }
    let token = verify_token(&request.token, trusted, now)?;
    if token.get().host != host {
        return Err(EnrollError::WrongHost {
            token: token.get().host.clone(),
            host: host.to_owned(),
        });
    }
    if request.host != host {
        return Err(EnrollError::RequestHost {
            request: request.host.clone(),
            stored: host.to_owned(),
        });
    }
    not_ahead("the request", request.at, now)?;
    Ok(Enrollment {
        request,
        key,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::tests::{SSH_PRIVATE, SSH_PUBLIC};

    fn host_key() -> HostKey {
        HostKey::from_openssh(SSH_PRIVATE.as_bytes(), "k").unwrap()
    }

    fn fleet() -> SecretKey {
        SecretKey::generate("fleet-1").unwrap()
    }

    const DAY: Duration = Duration::from_secs(86400);

    fn request(host: &str, token: &str) -> Vec<u8> {
        Request::new(host, &host_key(), token).sign(&host_key())
    }

    #[test]
    fn an_invited_host_s_request_verifies() {
        let k = fleet();
        let token = Token::new("web3", "https://cache.example", DAY).sign(&k);
        assert!(token.len() < 600, "{}", token.len());
        assert!(token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c)));
        let now = SystemTime::now();
        let e = verify_request(&request("web3", &token), "web3", &[k.public()], now).unwrap();
        assert_eq!(e.host(), "web3");
        assert_eq!(e.key(), host_key().public());
        assert_eq!(e.token().cache, "https://cache.example");
        // The line is what the recipients file reads, and lists this key.
        let line = e.known_hosts_line();
        let listed = crate::seal::Recipients::parse(&line).unwrap();
        assert_eq!(listed.signers_of("web3"), vec![host_key().public()]);
        assert!(SSH_PUBLIC.starts_with(&line["web3 ".len()..]), "{line}");
    }

    #[test]
    fn the_fingerprint_is_the_one_ssh_keygen_prints() {
        // `ssh-keygen -l -f` of seal::tests::SSH_PUBLIC.
        let key = crate::seal::ssh_ed25519(SSH_PUBLIC).unwrap();
        assert_eq!(
            fingerprint(&key),
            "SHA256:MTEvD3Gs/hYZywhuGe7/uTOcrTkvKbTdmzNGGfSGgjM"
        );
    }

    #[test]
    fn tokens_of_another_key_host_or_time_are_refused() {
        let k = fleet();
        let now = SystemTime::now();
        let check =
            |token: &str| verify_request(&request("web3", token), "web3", &[k.public()], now);
        let other = Token::new("web3", "c", DAY).sign(&fleet());
        assert!(matches!(check(&other), Err(EnrollError::TokenUntrusted(_))));
        let web4 = Token::new("web4", "c", DAY).sign(&k);
        assert!(matches!(check(&web4), Err(EnrollError::WrongHost { .. })));
        let mut old = Token::new("web3", "c", DAY);
        old.issued_at = Timestamp::from_system_time(now - 2 * DAY);
        old.expires_at = Timestamp::from_system_time(now - DAY);
        assert!(matches!(
            check(&old.sign(&k)),
            Err(EnrollError::Expired { .. })
        ));
        // Expired a moment ago: within the clock skew, still taken.
        old.expires_at = Timestamp::from_system_time(now - Duration::from_secs(60));
        assert!(check(&old.sign(&k)).is_ok());
        let mut ahead = Token::new("web3", "c", DAY);
        ahead.issued_at = Timestamp::from_system_time(now + Duration::from_secs(3600));
        ahead.expires_at = ahead.issued_at.plus(DAY);
        assert!(matches!(
            check(&ahead.sign(&k)),
            Err(EnrollError::Future { .. })
        ));
        let long = Token::new("web3", "c", MAX_TOKEN_LIFETIME + DAY).sign(&k);
        assert!(matches!(check(&long), Err(EnrollError::Lifetime { .. })));
        assert!(matches!(
            check("not a token!"),
            Err(EnrollError::TokenEncoding)
        ));
        let big = "A".repeat(MAX_TOKEN_SIZE + 1);
        assert!(matches!(check(&big), Err(EnrollError::TokenTooLarge(_))));
    }

    #[test]
    fn a_request_signed_by_another_key_than_it_carries_is_refused() {
        let k = fleet();
        let token = Token::new("web3", "c", DAY).sign(&k);
        let now = SystemTime::now();
        // Carries the host's key, signed by another.
        let other = HostKey::from_seed(&[9; 32]);
        let body = Request::new("web3", &host_key(), &token);
        let forged = body.sign(&other);
        assert!(matches!(
            verify_request(&forged, "web3", &[k.public()], now),
            Err(EnrollError::RequestUntrusted)
        ));
        // A changed payload breaks the signature.
        let good = body.sign(&host_key());
        let mut env: Envelope = serde_json::from_slice(&good).unwrap();
        let mut r = body.clone();
        r.at = Timestamp::from_system_time(now - Duration::from_secs(5));
        env.payload = BASE64.encode(&serde_json::to_vec(&r).unwrap());
        let changed = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            verify_request(&changed, "web3", &[k.public()], now),
            Err(EnrollError::RequestUntrusted)
        ));
        // Stored under another host's name.
        assert!(matches!(
            verify_request(&good, "web4", &[k.public()], now),
            Err(EnrollError::WrongHost { .. })
        ));
    }

    #[test]
    fn requests_are_parsed_strictly_and_capped() {
        let k = fleet();
        let token = Token::new("web3", "c", DAY).sign(&k);
        let now = SystemTime::now();
        let key = host_key();
        let sign_raw = |body: &str| {
            let sig = key
                .signing_key()
                .sign(&pae(REQUEST_PAYLOAD_TYPE, body.as_bytes()));
            serde_json::to_vec(&Envelope {
                payload_type: REQUEST_PAYLOAD_TYPE.into(),
                payload: BASE64.encode(body.as_bytes()),
                signatures: vec![EnvelopeSignature {
                    keyid: "web3".into(),
                    sig: BASE64.encode(&sig.to_bytes()),
                }],
            })
            .unwrap()
        };
        let json = serde_json::to_string(&Request::new("web3", &key, &token)).unwrap();
        assert!(verify_request(&sign_raw(&json), "web3", &[k.public()], now).is_ok());
        let extra = json.replacen('{', "{\"extra\":1,", 1);
        assert!(matches!(
            verify_request(&sign_raw(&extra), "web3", &[k.public()], now),
            Err(EnrollError::Payload { .. })
        ));
        let commented = json.replacen("\",\"token\"", " root@web3\",\"token\"", 1);
        assert!(matches!(
            verify_request(&sign_raw(&commented), "web3", &[k.public()], now),
            Err(EnrollError::SshKey(_))
        ));
        let big = vec![b' '; MAX_REQUEST_SIZE + 1];
        assert!(matches!(
            verify_request(&big, "web3", &[k.public()], now),
            Err(EnrollError::RequestTooLarge(_))
        ));
        let mut env: Envelope = serde_json::from_slice(&sign_raw(&json)).unwrap();
        env.signatures = vec![env.signatures[0].clone(); MAX_SIGNATURES + 1];
        assert!(matches!(
            verify_request(
                &serde_json::to_vec(&env).unwrap(),
                "web3",
                &[k.public()],
                now
            ),
            Err(EnrollError::TooManySignatures { .. })
        ));
    }

    #[test]
    fn token_ids_round_trip_in_one_form() {
        let id = TokenId::random();
        assert_eq!(TokenId::parse(&id.to_string()), Some(id));
        for bad in ["", "00", &"A".repeat(32), &"0".repeat(33), &"g".repeat(32)] {
            assert_eq!(TokenId::parse(bad), None, "{bad}");
        }
    }
}
