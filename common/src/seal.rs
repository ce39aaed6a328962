//! Sealing: the age encryption that keeps a sealed host's manifest and NARs
//! readable by that host (and the operator) only.
//!
//! Recipients come from a file in OpenSSH `known_hosts` form, so that
//! `ssh-keyscan -t ed25519 HOST >> fleet.recipients` works as it is:
//!
//! ```text
//! # comments and blank lines are ignored
//! web1,web1.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… root@web1
//! laptop age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq
//! * age1…        # an operator: added to everything sealed
//! ```
//!
//! Every recipient becomes an age X25519 recipient. An ssh-ed25519 key is
//! converted to its X25519 form (the Edwards-to-Montgomery map; the host
//! decrypts with the X25519 scalar of its private key, as `ssh-to-age` and
//! sops-nix do). age's own `ssh-ed25519` stanzas would carry a tag made from
//! the recipient's public key, and anyone holding the fleet's host keys could
//! then tell which host each sealed object is for; X25519 stanzas name no one.
//!
//! Identities (what decrypts) are read from an OpenSSH private key
//! (unencrypted ed25519, such as `/etc/ssh/ssh_host_ed25519_key`), an age
//! identity file (`AGE-SECRET-KEY-1…` lines), or a Nix secret key file: the
//! publisher's own identity is derived from its signing key, and every sealed
//! manifest is sealed to it too, so the publisher can read back what it wrote
//! (to reuse sealed objects) without keeping another key.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;

use bech32::{ToBase32, Variant};
use sha2::{Digest, Sha256, Sha512};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::hash::Sha256Hash;
use crate::keys::SecretKey;

/// The host pattern that adds a recipient to everything sealed.
pub const ALL_HOSTS: &str = "*";
/// Label of the publisher's derived identity (see the module's text).
const PUBLISHER_LABEL: &str = "nixcast sealing identity v1";
/// Label of the key that names recipient sets in manifests.
const FINGERPRINT_LABEL: &str = "nixcast recipient set v1";

#[derive(Debug, Error)]
pub enum SealError {
    #[error("line {line}: {what}")]
    Line { line: usize, what: String },
    #[error("not a recipient: {0} (use `ssh-ed25519 BASE64` or `age1…`)")]
    Recipient(String),
    #[error("{0}")]
    Identity(String),
    #[error("sealed to none of the identities given")]
    NoMatchingIdentity,
    #[error("not a sealed object: {0}")]
    Format(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// An age X25519 recipient, from an `age1…` string or an ssh-ed25519 public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Recipient {
    key: age::x25519::Recipient,
    /// The `age1…` form: the same for both ways of writing one key.
    text: String,
}

impl Recipient {
    fn from_montgomery(bytes: [u8; 32]) -> Self {
        let text = bech32::encode("age", bytes.to_base32(), Variant::Bech32)
            .expect("32 bytes always encode");
        let key = age::x25519::Recipient::from_str(&text).expect("just encoded");
        Self { key, text }
    }
}

impl FromStr for Recipient {
    type Err = SealError;

    /// `age1…`, or `ssh-ed25519 BASE64 [comment]`.
    fn from_str(s: &str) -> Result<Self, SealError> {
        let s = s.trim();
        if s.starts_with("age1") {
            let key = age::x25519::Recipient::from_str(s)
                .map_err(|e| SealError::Recipient(format!("{}: {e}", short(s))))?;
            return Ok(Self {
                text: key.to_string(),
                key,
            });
        }
        if !s.starts_with("ssh-ed25519 ") {
            let kind = s.split_whitespace().next().unwrap_or("");
            return Err(SealError::Recipient(format!(
                "key type {:?} is not supported",
                short(kind)
            )));
        }
        let point = ssh_ed25519(s)?;
        Ok(Self::from_montgomery(point.to_montgomery().to_bytes()))
    }
}

/// The key of an `ssh-ed25519 BASE64 [comment]` line, refused when weak.
pub fn ssh_ed25519(s: &str) -> Result<ed25519_dalek::VerifyingKey, SealError> {
    let key = ssh_key::PublicKey::from_openssh(s.trim())
        .map_err(|e| SealError::Recipient(format!("ssh-ed25519 key: {e}")))?;
    let ed = key
        .key_data()
        .ed25519()
        .ok_or_else(|| SealError::Recipient("not an ssh-ed25519 key".into()))?;
    let point = ed25519_dalek::VerifyingKey::from_bytes(&ed.0)
        .map_err(|_| SealError::Recipient("ssh-ed25519 key is not a curve point".into()))?;
    if point.is_weak() {
        return Err(SealError::Recipient("ssh-ed25519 key is weak".into()));
    }
    Ok(point)
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// At most 40 characters of something a user wrote, for an error message.
fn short(s: &str) -> String {
    let t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

/// A recipients file: which keys each host's sealed objects are for.
#[derive(Clone, Debug, Default)]
pub struct Recipients {
    entries: Vec<(String, Recipient)>,
    /// Each host's ssh-ed25519 keys, which verify its reports.
    signers: Vec<(String, ed25519_dalek::VerifyingKey)>,
}

impl Recipients {
    /// Parses `known_hosts`-style lines: `HOST[,HOST…] KEY [comment]`.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut r = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: String| SealError::Line { line: i + 1, what };
            let (hosts, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| err("expected `HOST KEY`".into()))?;
            if hosts.starts_with('|') {
                return Err(err(
                    "hashed host names cannot be matched: run ssh-keyscan without -H".into(),
                ));
            }
            if hosts.starts_with('@') {
                return Err(err(format!(
                    "markers such as {} are not supported",
                    short(hosts)
                )));
            }
            let key = key.trim_start();
            // An age key has no comment field in known_hosts; a `#` starts one.
            let key = match key.strip_prefix("age1") {
                Some(_) => key.split_whitespace().next().unwrap_or(""),
                None => key,
            };
            let recipient = Recipient::from_str(key).map_err(|e| err(e.to_string()))?;
            let signer = match key.starts_with("ssh-ed25519 ") {
                true => Some(ssh_ed25519(key).map_err(|e| err(e.to_string()))?),
                false => None,
            };
            for h in hosts.split(',') {
                // `[host]:port` names the same host for our purposes.
                let h = h
                    .strip_prefix('[')
                    .and_then(|h| h.split_once("]:"))
                    .map_or(h, |(h, _)| h);
                if h.is_empty() {
                    return Err(err("empty host name".into()));
                }
                r.add(h, recipient.clone());
                if let Some(k) = signer {
                    r.signers.push((h.to_owned(), k));
                }
            }
        }
        Ok(r)
    }

    pub fn add(&mut self, host: &str, recipient: Recipient) {
        if !self
            .entries
            .iter()
            .any(|(h, r)| h == host && *r == recipient)
        {
            self.entries.push((host.to_owned(), recipient));
        }
    }

    /// A host's own recipients, without the operators'. Empty: the host is not sealed.
    pub fn of_host(&self, host: &str) -> Vec<Recipient> {
        self.entries
            .iter()
            .filter(|(h, _)| h == host)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The ssh-ed25519 keys listed for `host` (not `*`'s): what may sign its reports.
    pub fn signers_of(&self, host: &str) -> Vec<ed25519_dalek::VerifyingKey> {
        self.signers
            .iter()
            .filter(|(h, _)| h == host && h != ALL_HOSTS)
            .map(|(_, k)| *k)
            .collect()
    }

    /// Every host named, in the order first listed, without `*`.
    pub fn hosts(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (h, _) in &self.entries {
            if h != ALL_HOSTS && !out.contains(&h.as_str()) {
                out.push(h);
            }
        }
        out
    }

    /// The recipients of every sealed object (host `*`).
    pub fn operators(&self) -> Vec<Recipient> {
        self.of_host(ALL_HOSTS)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A recipients file's text without `host`: a line that names only `host`
/// goes, one that names it among others loses that name, and every other
/// byte (comments, blank lines, other hosts' lines, `*`) stays as it was.
/// Also returns how many lines named `host`.
pub fn without_host(text: &str, host: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut changed = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let Some((names, rest)) = body
            .split_once(char::is_whitespace)
            .filter(|_| !body.starts_with('#'))
            .map(|(n, _)| (n, &body[n.len()..]))
        else {
            out.push_str(line);
            continue;
        };
        let named = |h: &str| {
            let h = h
                .strip_prefix('[')
                .and_then(|h| h.split_once("]:"))
                .map_or(h, |(h, _)| h);
            h == host
        };
        if !names.split(',').any(named) {
            out.push_str(line);
            continue;
        }
        changed += 1;
        let kept: Vec<&str> = names.split(',').filter(|h| !named(h)).collect();
        if !kept.is_empty() {
            out.push_str(indent);
            out.push_str(&kept.join(","));
            out.push_str(rest);
        }
    }
    (out, changed)
}

/// What decrypts: an age X25519 identity, with where it came from.
#[derive(Clone)]
pub struct Identity {
    key: age::x25519::Identity,
    source: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Identity {
    fn from_scalar(scalar: &[u8; 32], source: String) -> Self {
        let text = Zeroizing::new(
            bech32::encode("age-secret-key-", scalar.to_base32(), Variant::Bech32)
                .expect("32 bytes always encode")
                .to_uppercase(),
        );
        let key = age::x25519::Identity::from_str(&text).expect("just encoded");
        Self { key, source }
    }

    /// The publisher's own identity, derived from its signing key.
    pub fn of_publisher(key: &SecretKey) -> Self {
        let scalar = key.derive(PUBLISHER_LABEL);
        Self::from_scalar(&scalar, format!("the publisher key {}", key.name()))
    }

    /// Every identity in a file: an OpenSSH ed25519 private key, an age
    /// identity file, or a Nix secret key. `source` names it in messages.
    pub fn from_file(bytes: &[u8], source: &str) -> Result<Vec<Self>, SealError> {
        let err = |what: &str| SealError::Identity(format!("{source}: {what}"));
        let text = std::str::from_utf8(bytes).map_err(|_| err("not a text file"))?;
        let trimmed = text.trim();
        if trimmed.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
            let key = ssh_key::PrivateKey::from_openssh(trimmed)
                .map_err(|_| err("not a readable OpenSSH private key"))?;
            if key.is_encrypted() {
                return Err(err(
                    "the OpenSSH key is encrypted; give an unencrypted key such as the host key",
                ));
            }
            let pair = key
                .key_data()
                .ed25519()
                .ok_or_else(|| err("not an ed25519 key (ssh-keygen -t ed25519 makes one)"))?;
            let mut hashed = Zeroizing::new([0u8; 64]);
            hashed.copy_from_slice(&Sha512::digest(pair.private.to_bytes()));
            let mut scalar = Zeroizing::new([0u8; 32]);
            scalar.copy_from_slice(&hashed[..32]);
            return Ok(vec![Self::from_scalar(&scalar, source.to_owned())]);
        }
        if trimmed.starts_with("-----BEGIN") {
            return Err(err("only OpenSSH ed25519 private keys are supported"));
        }
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("AGE-SECRET-KEY-1") {
                let key = age::x25519::Identity::from_str(line)
                    .map_err(|e| err(&format!("bad age identity: {e}")))?;
                out.push(Self {
                    key,
                    source: source.to_owned(),
                });
            } else if let Ok(k) = SecretKey::parse(line) {
                let mut id = Self::of_publisher(&k);
                id.source = format!("{source} (publisher key {})", k.name());
                out.push(id);
            } else {
                // Never echo the line: it may be a secret of some other kind.
                return Err(err(
                    "not an identity: expected an OpenSSH ed25519 private key, \
                     AGE-SECRET-KEY-1… lines or a Nix secret key",
                ));
            }
        }
        if out.is_empty() {
            return Err(err("holds no identity"));
        }
        Ok(out)
    }

    pub fn recipient(&self) -> Recipient {
        Recipient::from_str(&self.key.to_public().to_string()).expect("age writes age1 keys")
    }

    /// Where this identity came from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// A name for a set of recipients that only the publisher can compute, so
/// that a host reading a manifest cannot test guesses of who else shares an
/// object. Order and duplicates do not matter.
pub fn fingerprint(key: &SecretKey, recipients: &[Recipient]) -> Sha256Hash {
    let mut texts: Vec<&str> = recipients.iter().map(|r| r.text.as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    let salt = key.derive(FINGERPRINT_LABEL);
    let mut h = Sha256::new();
    h.update(&salt[..]);
    for t in texts {
        h.update(t.as_bytes());
        h.update(b"\n");
    }
    Sha256Hash(h.finalize().into())
}

/// Starts sealing to `recipients`; the caller must call `finish` on the writer.
pub fn seal<W: Write>(
    recipients: &[Recipient],
    out: W,
) -> io::Result<age::stream::StreamWriter<W>> {
    let mut unique: Vec<&Recipient> = recipients.iter().collect();
    unique.sort_by(|a, b| a.text.cmp(&b.text));
    unique.dedup();
    let encryptor =
        age::Encryptor::with_recipients(unique.iter().map(|r| &r.key as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("cannot seal: {e}")))?;
    encryptor.wrap_output(out)
}

/// Seals a small object in memory (a manifest, a delta).
pub fn seal_bytes(recipients: &[Recipient], plain: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = seal(recipients, Vec::with_capacity(plain.len() + 512))?;
    w.write_all(plain)?;
    w.finish()
}

/// Opens a sealed stream with the first identity that can. Every chunk read
/// from the result is authenticated; a changed or cut stream is an error.
pub fn open<R: BufRead>(
    identities: &[Identity],
    input: R,
) -> Result<age::stream::StreamReader<R>, SealError> {
    let decryptor = age::Decryptor::new_buffered(input).map_err(map_decrypt_error)?;
    if decryptor.is_scrypt() {
        return Err(SealError::Format("sealed with a passphrase".into()));
    }
    decryptor
        .decrypt(identities.iter().map(|i| &i.key as &dyn age::Identity))
        .map_err(map_decrypt_error)
}

/// Opens a small sealed object in memory, at most `limit` bytes of plain text.
pub fn open_bytes(
    identities: &[Identity],
    sealed: &[u8],
    limit: u64,
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::new();
    open(identities, sealed)?
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(SealError::Format(format!("more than {limit} bytes inside")));
    }
    Ok(out)
}

fn map_decrypt_error(e: age::DecryptError) -> SealError {
    match e {
        age::DecryptError::NoMatchingKeys => SealError::NoMatchingIdentity,
        age::DecryptError::Io(e) => SealError::Io(e),
        e => SealError::Format(e.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_host_leaves_a_recipients_file_and_nothing_else_changes() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLE";
        let text = format!(
            "# the fleet\n\nweb1 {k} web1\nweb3 {k} web3\n  [web3]:2222 {k}\n\
             web2,web3,web4 {k} shared\n* age1xyz\n# web3 {k}\nweb30 {k}"
        );
        let (out, n) = without_host(&text, "web3");
        assert_eq!(n, 3);
        assert_eq!(
            out,
            format!(
                "# the fleet\n\nweb1 {k} web1\nweb2,web4 {k} shared\n* age1xyz\n# web3 {k}\n\
                 web30 {k}"
            )
        );
        assert_eq!(without_host(&out, "web3"), (out.clone(), 0));
    }

    // Made with `ssh-keygen -t ed25519 -N '' -C test`.
    pub(crate) const SSH_PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACB0J0YZmvwA0n0ViYu5McUzj63Y5ejoTyesh/cwjkKOjQAAAJC/SAd2v0gH
dgAAAAtzc2gtZWQyNTUxOQAAACB0J0YZmvwA0n0ViYu5McUzj63Y5ejoTyesh/cwjkKOjQ
AAAECJdmNDPJ7C8/5I9oAcnNFBpjO7sg2yPgFiKNPQ/canF3QnRhma/ADSfRWJi7kxxTOP
rdjl6OhPJ6yH9zCOQo6NAAAACHRlc3Qta2V5AQIDBAU=
-----END OPENSSH PRIVATE KEY-----
";
    pub(crate) const SSH_PUBLIC: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHQnRhma/ADSfRWJi7kxxTOPrdjl6OhPJ6yH9zCOQo6N test-key";

    #[test]
    fn an_ssh_host_key_opens_what_was_sealed_to_its_public_half() {
        let ids = Identity::from_file(SSH_PRIVATE.as_bytes(), "key").unwrap();
        let r: Recipient = SSH_PUBLIC.parse().unwrap();
        assert_eq!(ids[0].recipient(), r);
        let sealed = seal_bytes(&[r], b"secret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(open_bytes(&ids, &sealed, 100).unwrap(), b"secret");
        // Neither the key's text nor a tag of it is in the header.
        let header = String::from_utf8_lossy(&sealed[..sealed.len().min(200)]).into_owned();
        assert!(header.contains("X25519") && !header.contains("ssh-ed25519"));
    }

    #[test]
    fn another_identity_is_refused_and_a_changed_byte_is_caught() {
        let publisher = SecretKey::generate("fleet-1").unwrap();
        let other = Identity::of_publisher(&SecretKey::generate("other-1").unwrap());
        let mine = Identity::of_publisher(&publisher);
        let sealed = seal_bytes(&[mine.recipient()], &[7u8; 200_000]).unwrap();
        assert!(matches!(
            open_bytes(&[other], &sealed, 1 << 20),
            Err(SealError::NoMatchingIdentity)
        ));
        let mut bad = sealed.clone();
        let n = bad.len() - 100;
        bad[n] ^= 1;
        assert!(open_bytes(std::slice::from_ref(&mine), &bad, 1 << 20).is_err());
        let cut = &sealed[..sealed.len() - 10];
        assert!(open_bytes(std::slice::from_ref(&mine), cut, 1 << 20).is_err());
        assert!(open_bytes(&[mine], &sealed, 1000).is_err(), "limit");
    }

    #[test]
    fn recipients_files_in_known_hosts_form() {
        let text = format!(
            "# fleet\n\nweb1,[web1.example.org]:2222 {SSH_PUBLIC}\n* {}  # operator\n",
            Identity::of_publisher(&SecretKey::generate("op-1").unwrap()).recipient()
        );
        let r = Recipients::parse(&text).unwrap();
        assert_eq!(r.of_host("web1").len(), 1);
        assert_eq!(r.of_host("web1.example.org").len(), 1);
        assert_eq!(r.operators().len(), 1);
        assert!(r.of_host("web2").is_empty());
        for bad in [
            "web1",
            "|1|abc= ssh-ed25519 AAAA",
            "web1 ssh-rsa AAAAB3NzaC1yc2E",
            "web1 ssh-ed25519 AAAA",
            "web1 age1notakey",
        ] {
            let e = Recipients::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("line 1: "), "{bad}: {e}");
        }
    }

    #[test]
    fn identity_files_of_each_kind() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let from_nix = Identity::from_file(k.to_file_string().as_bytes(), "f").unwrap();
        assert_eq!(
            from_nix[0].recipient(),
            Identity::of_publisher(&k).recipient()
        );
        let age_id = age::x25519::Identity::generate();
        let age_line = age::secrecy::ExposeSecret::expose_secret(&age_id.to_string()).to_owned();
        let ids = Identity::from_file(format!("# created: now\n{age_line}\n").as_bytes(), "f");
        assert_eq!(ids.unwrap().len(), 1);
        let e = Identity::from_file(b"hunter2-secret\n", "f")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(Identity::from_file(b"", "f").is_err());
    }

    #[test]
    fn fingerprints_ignore_order_and_need_the_publisher_key() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let a = Identity::of_publisher(&SecretKey::generate("a-1").unwrap()).recipient();
        let b = Identity::of_publisher(&SecretKey::generate("b-1").unwrap()).recipient();
        let ab = fingerprint(&k, &[a.clone(), b.clone()]);
        assert_eq!(ab, fingerprint(&k, &[b.clone(), a.clone(), b.clone()]));
        assert_ne!(ab, fingerprint(&k, std::slice::from_ref(&a)));
        let other = SecretKey::generate("fleet-1").unwrap();
        assert_ne!(ab, fingerprint(&other, &[a, b]));
    }
}
