//! The narinfo parser on arbitrary text. What parses must render, parse back
//! to the same narinfo, and keep a signature valid through that round trip.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use nixcast_common::narinfo::NarInfo;
use nixcast_common::PublicKey;
use nixcast_fuzz::FUZZ_KEY;

/// The key the vectors in `seeds/narinfo` are signed with, so that real
/// signatures reach the verifier too.
static CACHE_NIXOS_ORG: LazyLock<PublicKey> = LazyLock::new(|| {
    PublicKey::parse("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=")
        .expect("the cache.nixos.org key parses")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ni) = NarInfo::parse(text) else {
        return;
    };
    let _ = ni.verify(std::slice::from_ref(&*CACHE_NIXOS_ORG));

    // Rendering drops only what the parser recorded as tolerated (quirks).
    let again = NarInfo::parse(&ni.render()).expect("a rendered narinfo parses");
    assert_eq!(again.render(), ni.render());
    assert_eq!(without_quirks(&again), without_quirks(&ni));

    // A parsed narinfo never has NarSize 0, so signing it cannot panic.
    let mut signed = ni;
    signed.sign(&FUZZ_KEY);
    let trusted = [FUZZ_KEY.public()];
    assert!(signed.verify(&trusted));
    let reread = NarInfo::parse(&signed.render()).expect("a signed narinfo parses");
    assert!(
        reread.verify(&trusted),
        "the signature did not survive render and parse"
    );
});

fn without_quirks(ni: &NarInfo) -> NarInfo {
    NarInfo {
        quirks: Vec::new(),
        ..ni.clone()
    }
}
