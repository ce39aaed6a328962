//! Nix's base-32 encoding ("nixbase32").
//!
//! Alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no `e`, `o`, `u`, `t`). Unlike
//! RFC 4648 the output is written from the last 5-bit group to the first, so
//! a 20-byte store-path digest encodes to 32 characters and a sha256 to 52.
//! Source of truth: Nix's `src/libutil/hash.cc` (`printHash32`, `parseHash32`).

use thiserror::Error;

pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid nixbase32 character {0:?} at position {1}")]
    Char(char, usize),
    #[error("nixbase32 string has length {got}, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("nixbase32 string has non-zero bits beyond the decoded length")]
    Overflow,
}

/// Number of characters needed for `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n * 8 - 1) / 5 + 1
    }
}

pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let mut c = input[i] >> j;
        if j > 3 && i + 1 < input.len() {
            c |= input[i + 1] << (8 - j);
        }
        out.push(ALPHABET[(c & 0x1f) as usize] as char);
    }
    out
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Checks that `s` uses only the alphabet, without decoding.
pub fn is_valid_char(c: u8) -> bool {
    digit(c).is_some()
}

/// Decodes `s` into exactly `N` bytes.
pub fn decode<const N: usize>(s: &[u8]) -> Result<[u8; N], DecodeError> {
    let expected = encoded_len(N);
    if s.len() != expected {
        return Err(DecodeError::Length {
            got: s.len(),
            expected,
        });
    }
    let mut out = [0u8; N];
    for (pos, &ch) in s.iter().enumerate() {
        let d = digit(ch).ok_or(DecodeError::Char(ch as char, pos))?;
        let n = s.len() - pos - 1;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= d << j;
        let carry = ((d as u16) >> (8 - j)) as u8;
        if i + 1 < N {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(DecodeError::Overflow);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sha256() {
        // sha256("") in nixbase32, as printed by `nix-hash --type sha256 --to-base32`.
        let bytes = data_encoding::HEXLOWER
            .decode(b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .unwrap();
        let s = encode(&bytes);
        assert_eq!(s, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode::<32>(s.as_bytes()).unwrap().to_vec(), bytes);
    }

    #[test]
    fn round_trip_and_rejects() {
        for n in 0..=255u8 {
            let bytes = [n; 20];
            let s = encode(&bytes);
            assert_eq!(s.len(), 32);
            assert_eq!(decode::<20>(s.as_bytes()).unwrap(), bytes);
        }
        assert!(matches!(
            decode::<20>(b"e0000000000000000000000000000000"),
            Err(DecodeError::Char('e', 0))
        ));
        assert!(matches!(
            decode::<20>(b"000"),
            Err(DecodeError::Length { .. })
        ));
        // 52 chars carry 260 bits; the top 4 must be zero for 32 bytes.
        let mut over = vec![b'z'];
        over.extend_from_slice(&[b'0'; 51]);
        assert_eq!(decode::<32>(&over), Err(DecodeError::Overflow));
    }
}
