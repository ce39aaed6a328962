//! The narinfo parser on arbitrary text; what parses must render and parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixcast_common::narinfo::NarInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ni) = NarInfo::parse(text) {
        let _ = ni.fingerprint();
        let again = NarInfo::parse(&ni.render()).expect("a rendered narinfo parses");
        assert_eq!(again.render(), ni.render());
    }
});
