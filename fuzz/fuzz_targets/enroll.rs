//! An enrollment request as `nixcast serve --accept-reports` receives it
//! (arbitrary bytes for host `web`: the size and signature-count bounds,
//! the strict payload, the key it carries, its signature, then the token
//! inside it under the fuzz fleet key), a token on its own as `nixcast-pull
//! enroll` checks it, and a payload behind valid signatures: bytes that
//! parse as a token are signed with the fuzz fleet key, put in a request
//! signed with the fuzz host key, and must come back as they were signed
//! whenever their times and host hold.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use nixcast_common::enroll::{self, Request, Token};
use nixcast_common::seal::Recipients;
use nixcast_fuzz::{FUZZ_KEY, HOST_KEY};

fuzz_target!(|data: &[u8]| {
    let keys = [FUZZ_KEY.public()];
    let now = SystemTime::now();

    if let Ok(e) = enroll::verify_request(data, "web", &keys, now) {
        assert_eq!(e.host(), "web");
        assert_eq!(e.token().host, "web");
        // The line `enroll accept` adds lists the key that signed.
        let listed = Recipients::parse(&e.known_hosts_line()).expect("the line parses");
        assert_eq!(listed.signers_of("web"), vec![e.key()]);
        assert!(e.fingerprint().starts_with("SHA256:"));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = enroll::verify_token(text, &keys, now) {
            assert!(t.get().expires_at > t.get().issued_at);
        }
    }

    let Ok(token) = serde_json::from_slice::<Token>(data) else {
        return;
    };
    let compact = token.sign(&FUZZ_KEY);
    let Ok(t) = enroll::verify_token(&compact, &keys, now) else {
        return;
    };
    assert_eq!(t.get(), &token);
    if token.host != "web" {
        return;
    }
    let env = Request::new("web", &HOST_KEY, &compact).sign(&HOST_KEY);
    match enroll::verify_request(&env, "web", &keys, now) {
        Ok(e) => {
            assert_eq!(e.token(), &token);
            assert_eq!(e.key(), HOST_KEY.public());
        }
        Err(enroll::EnrollError::TokenTooLarge(_) | enroll::EnrollError::RequestTooLarge(_)) => {}
        Err(e) => panic!("a request signed here was refused: {e}"),
    }
});
