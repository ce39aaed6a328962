//! The pointer on arbitrary bytes, three ways: as an envelope to verify (what
//! the agent does with `hosts/<host>.json`), as an envelope or payload parsed
//! without verifying (what display tools do), and as a payload behind a valid
//! signature (the bytes signed with a fixed test key), which is how the
//! fuzzer reaches the code only a key holder could otherwise reach. The
//! same for a retired host's tombstone, read by `verify_head`.
#![no_main]

use data_encoding::BASE64;
use libfuzzer_sys::fuzz_target;
use nixcast_common::pointer::{self, Envelope, EnvelopeSignature, Head, Pointer, Tombstone};
use nixcast_common::Sha256Hash;
use nixcast_fuzz::FUZZ_KEY;

fuzz_target!(|data: &[u8]| {
    let trusted = [FUZZ_KEY.public()];

    // The seed envelopes are signed with the fuzz key, so they verify.
    if let Ok(v) = pointer::verify(data, &trusted) {
        assert_eq!(v.key_name(), FUZZ_KEY.name());
    }

    let _ = serde_json::from_slice::<Envelope>(data);
    let parsed = serde_json::from_slice::<Pointer>(data)
        .ok()
        .filter(|p| p.check().is_ok());

    let sig = FUZZ_KEY.sign(&pointer::pae(pointer::PAYLOAD_TYPE, data));
    let env = Envelope {
        payload_type: pointer::PAYLOAD_TYPE.to_owned(),
        payload: BASE64.encode(data),
        signatures: vec![EnvelopeSignature {
            keyid: FUZZ_KEY.name().to_owned(),
            sig: BASE64.encode(sig.bytes()),
        }],
    };
    let bytes = serde_json::to_vec(&env).expect("an envelope serialises");
    // Verifying accepts a signed payload exactly when it parses and checks.
    match (pointer::verify(&bytes, &trusted), parsed) {
        (Ok(v), Some(p)) => {
            assert_eq!(v.get(), &p);
            assert_eq!(v.digest(), Sha256Hash::digest(data));
        }
        (Err(_), None) => {}
        (Err(e), Some(_)) => {
            // Only the envelope's size cap may refuse a good payload.
            assert!(
                matches!(e, pointer::PointerError::TooLarge(_)),
                "a signed, well-formed payload was refused: {e}"
            );
        }
        (Ok(v), None) => panic!(
            "verify accepted a payload that does not parse: {:?}",
            v.get()
        ),
    }

    let _ = pointer::verify_head(data, &trusted);
    let _ = pointer::decode_head_unverified(data);
    let tombstone = serde_json::from_slice::<Tombstone>(data)
        .ok()
        .filter(|t| t.generation != 0);
    let sig = FUZZ_KEY.sign(&pointer::pae(pointer::TOMBSTONE_PAYLOAD_TYPE, data));
    let env = Envelope {
        payload_type: pointer::TOMBSTONE_PAYLOAD_TYPE.to_owned(),
        payload: BASE64.encode(data),
        signatures: vec![EnvelopeSignature {
            keyid: FUZZ_KEY.name().to_owned(),
            sig: BASE64.encode(sig.bytes()),
        }],
    };
    let bytes = serde_json::to_vec(&env).expect("an envelope serialises");
    // A signed tombstone payload is a tombstone exactly when it parses.
    match (pointer::verify_head(&bytes, &trusted), tombstone) {
        (Ok(Head::Retired(v)), Some(t)) => assert_eq!(v.get(), &t),
        (Err(_), None) => {}
        (Err(e), Some(_)) => assert!(
            matches!(e, pointer::PointerError::TooLarge(_)),
            "a signed, well-formed tombstone was refused: {e}"
        ),
        (Ok(Head::Pointer(_)), _) => panic!("a tombstone's envelope verified as a pointer"),
        (Ok(Head::Retired(v)), None) => panic!(
            "verify_head accepted a tombstone that does not parse: {:?}",
            v.get()
        ),
    }
});
