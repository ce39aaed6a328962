//! The key list on arbitrary bytes: as an envelope a host accepts (what the
//! agent does with `keys.json` and `keys/<version>.json`), as a payload
//! parsed without verifying (what `nixcast keys show` does), and as a
//! payload behind a valid root signature (the bytes signed with the fixed
//! fuzz key as the only root), which is how the fuzzer reaches the checks
//! only a root holder could otherwise reach.
#![no_main]

use data_encoding::BASE64;
use libfuzzer_sys::fuzz_target;
use nixcast_common::keylist::{self, KeyList, Trust};
use nixcast_common::pointer::{self, Envelope, EnvelopeSignature};
use nixcast_fuzz::FUZZ_KEY;

fuzz_target!(|data: &[u8]| {
    let trust = Trust {
        threshold: 1,
        keys: vec![FUZZ_KEY.public()],
    };
    let now = pointer::Timestamp::now();
    let _ = keylist::accept(data, &trust, None, None).map(|a| a.fresh(now));
    let _ = keylist::reload_own(data);
    let _ = keylist::decode_unverified(data);

    let parsed = serde_json::from_slice::<KeyList>(data)
        .ok()
        .filter(|l| l.check().is_ok());
    let sig = FUZZ_KEY.sign(&pointer::pae(keylist::PAYLOAD_TYPE, data));
    let env = Envelope {
        payload_type: keylist::PAYLOAD_TYPE.to_owned(),
        payload: BASE64.encode(data),
        signatures: vec![EnvelopeSignature {
            keyid: FUZZ_KEY.name().to_owned(),
            sig: BASE64.encode(sig.bytes()),
        }],
    };
    let bytes = serde_json::to_vec(&env).expect("an envelope serialises");
    // At the list's own issue time, nothing but its content decides.
    let at = parsed.as_ref().map_or(now, |l| l.issued_at);
    match (keylist::accept(&bytes, &trust, None, None).and_then(|a| a.fresh(at)), parsed) {
        (Ok(a), Some(l)) => assert_eq!(a.get(), &l),
        (Ok(a), None) => panic!("accepted a list that does not check: {:?}", a.get()),
        (Err(e), Some(l)) => {
            // A good list is refused only for its size, or for naming other
            // roots (whose signatures the fuzzer cannot make).
            let own_roots = l.roots.threshold == 1 && l.roots.keys == trust.keys;
            assert!(
                matches!(e, keylist::KeyListError::TooLarge(_)) || !own_roots,
                "a signed, well-formed list was refused: {e}"
            );
        }
        (Err(_), None) => {}
    }
});
