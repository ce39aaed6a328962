//! The strict NAR reader on arbitrary bytes: it may refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixcast_common::nar;

fuzz_target!(|data: &[u8]| {
    let _ = nar::validate(data, &nar::Limits::default());
});
