//! The pointer envelope on arbitrary bytes, and the payload parser behind a
//! valid signature (the input signed with a fixed test key), so that the
//! fuzzer reaches the code an attacker with a stolen key would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixcast_common::pointer::{self, Envelope, EnvelopeSignature};
use nixcast_common::SecretKey;

// A throwaway key made by `nixcast keygen` for the fuzzer only.
const KEY: &str = "fuzz-1:dxqYjHvzcEQziq1e6wqnDkW4M1Qe/muEiUDomayOWmylTg/R2U21mtajMDkb0QceQnHRTemjsgDR1yEkATp/Og==";

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::parse(KEY).expect("the fuzz key");
    let trusted = [key.public()];
    let _ = pointer::verify(data, &trusted);
    let sig = key.sign(&pointer::pae(pointer::PAYLOAD_TYPE, data));
    let env = Envelope {
        payload_type: pointer::PAYLOAD_TYPE.to_owned(),
        payload: encode(data),
        signatures: vec![EnvelopeSignature {
            keyid: "fuzz-1".to_owned(),
            sig: encode(sig.bytes()),
        }],
    };
    let bytes = serde_json::to_vec(&env).expect("an envelope serialises");
    if let Ok(v) = pointer::verify(&bytes, &trusted) {
        assert_eq!(v.get().generation > 0, true);
    }
});

fn encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}
