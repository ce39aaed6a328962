//! The strict NAR reader on arbitrary bytes. It may refuse, never panic, and
//! its verdict may not depend on how the bytes arrive: a socket hands them
//! over in pieces that split tokens and padding anywhere.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use nixcast_common::nar::{self, Limits};

/// Hands out at most 7 bytes per read, so that no length field, token or
/// padding arrives whole.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(7).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let whole = nar::validate(data, &limits);
    let trickled = nar::validate(Trickle(data), &limits);
    match (&whole, &trickled) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            // Trailing bytes are refused, so a valid archive is all the input.
            assert_eq!(a.nar_size, data.len() as u64);
        }
        // The error says where; that may not depend on the reads either.
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("the verdict depends on read sizes: {whole:?} vs {trickled:?}"),
    }
    // Small limits let short inputs reach the depth and entry-count refusals.
    let tight = Limits {
        max_depth: 3,
        max_entries: 4,
    };
    if nar::validate(data, &tight).is_ok() {
        assert!(
            whole.is_ok(),
            "tighter limits accepted what the defaults refused"
        );
    }
});
