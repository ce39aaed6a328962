//! The NAR-delta index on arbitrary bytes, as the agent reads it: as an
//! envelope to verify (for the pair of manifests of the seeds), decoded
//! without verifying (what gc and bundles do), and as a payload behind a
//! valid signature (signed with the fuzz key), which is how the fuzzer
//! reaches the checks only a key holder could otherwise reach. Verifying
//! must accept a signed payload exactly when it parses and checks, and a
//! checked index must sign and verify back to itself.
#![no_main]

use data_encoding::BASE64;
use libfuzzer_sys::fuzz_target;
use nixcast_common::nardelta::{self, Index};
use nixcast_common::pointer::{pae, Envelope, EnvelopeSignature};
use nixcast_common::Sha256Hash;
use nixcast_fuzz::FUZZ_KEY;

fuzz_target!(|data: &[u8]| {
    let trusted = [FUZZ_KEY.public()];
    // The pair the seeds name: sha256("new") and sha256("old").
    let (new, old) = (Sha256Hash::digest(b"new"), Sha256Hash::digest(b"old"));
    for sealed in [false, true] {
        if let Ok(i) = nardelta::verify(data, &trusted, new, old, sealed) {
            assert!(i.check(sealed).is_ok());
            assert_eq!((i.manifest, i.from), (new, old));
        }
    }
    let _ = nardelta::decode_unverified(data);

    let parsed = serde_json::from_slice::<Index>(data).ok();
    let sig = FUZZ_KEY.sign(&pae(nardelta::PAYLOAD_TYPE, data));
    let env = Envelope {
        payload_type: nardelta::PAYLOAD_TYPE.to_owned(),
        payload: BASE64.encode(data),
        signatures: vec![EnvelopeSignature {
            keyid: FUZZ_KEY.name().to_owned(),
            sig: BASE64.encode(sig.bytes()),
        }],
    };
    let bytes = serde_json::to_vec(&env).expect("an envelope serialises");
    let (pin, from) = parsed.as_ref().map_or((new, old), |i| (i.manifest, i.from));
    for sealed in [false, true] {
        let good = parsed.as_ref().filter(|i| i.check(sealed).is_ok());
        match (nardelta::verify(&bytes, &trusted, pin, from, sealed), good) {
            (Ok(v), Some(i)) => {
                assert_eq!(&v, i);
                let again = nardelta::verify(&i.sign(&FUZZ_KEY), &trusted, pin, from, sealed);
                assert_eq!(again.ok().as_ref(), Some(i));
            }
            (Err(_), None) => {}
            (Err(e), Some(_)) => assert!(
                matches!(e, nardelta::IndexError::TooLarge(_)),
                "a signed, well-formed index was refused: {e}"
            ),
            (Ok(v), None) => panic!("verify accepted an index that does not check: {v:?}"),
        }
    }
});
