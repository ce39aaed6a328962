//! Opening sealed objects: arbitrary bytes handed to the age reader with a
//! fixed identity (where a hostile bucket would put them), read as a
//! recipients file and as an identity file. Nothing may panic, and what
//! opens must be bounded by the limit.
#![no_main]

use std::io::Read;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use nixcast_common::seal::{self, Identity, Recipients};
use nixcast_fuzz::FUZZ_KEY;

static ID: LazyLock<Identity> = LazyLock::new(|| Identity::of_publisher(&FUZZ_KEY));

fuzz_target!(|data: &[u8]| {
    const LIMIT: u64 = 1 << 16;
    if let Ok(plain) = seal::open_bytes(std::slice::from_ref(&ID), data, LIMIT) {
        assert!(plain.len() as u64 <= LIMIT);
    }
    // The streaming reader, as the agent uses it for NARs, in small reads.
    if let Ok(mut r) = seal::open(std::slice::from_ref(&ID), data) {
        let mut buf = [0u8; 1000];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Recipients::parse(text);
    }
    let _ = Identity::from_file(data, "fuzz");
});
