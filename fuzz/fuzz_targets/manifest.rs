//! The manifest parser on arbitrary bytes; what parses must serialise and parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixcast_common::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let _ = m.topological();
        let again = Manifest::parse(&m.to_json()).expect("a serialised manifest parses");
        assert_eq!(again, m);
    }
});
