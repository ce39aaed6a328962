//! The tombstone: a signed statement that a host is retired, written by
//! `nixcast retire` in place of the host's pointer (`hosts/<host>.json`).
//!
//! A DSSE envelope like the pointer's, signed the same way with the same
//! keys, under a payload type of its own, so that no signature over a
//! pointer passes for one over a tombstone (the type is signed, PAE):
//!
//! ```json
//! { "payloadType": "application/vnd.nixcast.retired.v1+json",
//!   "payload": "<base64 of the payload JSON>",
//!   "signatures": [ { "keyid": "fleet-1", "sig": "<base64 ed25519>" } ] }
//! ```
//!
//! ```json
//! { "host": "web3", "generation": 8, "issuedAt": "2026-12-06T10:00:00Z" }
//! ```
//!
//! `generation` is above every generation published for the host, so that
//! an agent holds a tombstone to the same floor as a pointer (not lower than
//! what it accepted, not issued before it) and, once it accepted one, no
//! older pointer of the host is ever applied again. A tombstone never
//! expires. Agents from before tombstones refuse it as a pointer of an
//! unknown payload type, and stay on what they run.

use serde::{Deserialize, Serialize};

use super::{sign_envelope, verify_signature, Envelope, PointerError, Timestamp, Verified};
use crate::hash::Sha256Hash;
use crate::keys::{PublicKey, SecretKey};

pub const TOMBSTONE_PAYLOAD_TYPE: &str = "application/vnd.nixcast.retired.v1+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tombstone {
    pub host: String,
    /// Above every generation published for the host.
    pub generation: u64,
    pub issued_at: Timestamp,
}

impl Tombstone {
    /// Signs the tombstone into an envelope's JSON bytes.
    pub fn sign(&self, key: &SecretKey) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a tombstone always serialises");
        sign_envelope(TOMBSTONE_PAYLOAD_TYPE, &body, key)
    }
}

/// A tombstone envelope's signature verified with `trusted`, then its payload
/// parsed. The caller checked the payload type.
pub(super) fn verify(
    env: &Envelope,
    trusted: &[PublicKey],
) -> Result<Verified<Tombstone>, PointerError> {
    let (body, key_name) = verify_signature(env, trusted)?;
    let value: Tombstone = serde_json::from_slice(&body).map_err(PointerError::Payload)?;
    if value.generation == 0 {
        return Err(PointerError::GenerationZero);
    }
    Ok(Verified {
        value,
        key_name,
        digest: Sha256Hash::digest(&body),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{verify as verify_pointer, verify_head, Head, PAYLOAD_TYPE};
    use super::*;

    fn sample() -> Tombstone {
        Tombstone {
            host: "web3".into(),
            generation: 4,
            issued_at: Timestamp::now(),
        }
    }

    #[test]
    fn a_tombstone_verifies_as_a_head_and_never_as_a_pointer() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let env = sample().sign(&k);
        let Head::Retired(t) = verify_head(&env, &[k.public()]).unwrap() else {
            panic!("a tombstone")
        };
        assert_eq!(t.get(), &sample().clone_at(t.get().issued_at));
        assert_eq!(t.key_name(), "fleet-1");
        assert!(matches!(
            verify_pointer(&env, &[k.public()]),
            Err(PointerError::PayloadType(_))
        ));
        let other = SecretKey::generate("fleet-1").unwrap();
        assert!(matches!(
            verify_head(&env, &[other.public()]),
            Err(PointerError::Untrusted(_))
        ));
    }

    /// The payload type is signed: a tombstone's signature relabelled as a
    /// pointer's (or the reverse) verifies as neither.
    #[test]
    fn a_relabelled_envelope_verifies_as_neither() {
        let k = SecretKey::generate("fleet-1").unwrap();
        let mut env: Envelope = serde_json::from_slice(&sample().sign(&k)).unwrap();
        env.payload_type = PAYLOAD_TYPE.into();
        let bytes = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            verify_head(&bytes, &[k.public()]),
            Err(PointerError::Untrusted(_))
        ));
        let mut t = sample();
        t.generation = 0;
        assert!(matches!(
            verify_head(&t.sign(&k), &[k.public()]),
            Err(PointerError::GenerationZero)
        ));
    }

    impl Tombstone {
        fn clone_at(&self, issued_at: Timestamp) -> Tombstone {
            Tombstone {
                issued_at,
                ..self.clone()
            }
        }
    }
}
