//! What the fuzz targets share: a fixed signing key, so that inputs get past
//! signature checks and reach the parsers behind them.

use std::sync::LazyLock;

use nixcast_common::SecretKey;

/// A throwaway key made by `nixcast keygen --name fuzz-1` for the fuzzer
/// only. The seed envelopes in `seeds/pointer` are signed with it.
const KEY: &str = "fuzz-1:dxqYjHvzcEQziq1e6wqnDkW4M1Qe/muEiUDomayOWmylTg/R2U21mtajMDkb0QceQnHRTemjsgDR1yEkATp/Og==";

/// Parsed once: parsing derives the public half, which would otherwise cost
/// more than most fuzz inputs do.
pub static FUZZ_KEY: LazyLock<SecretKey> =
    LazyLock::new(|| SecretKey::parse(KEY).expect("the fuzz key parses"));
