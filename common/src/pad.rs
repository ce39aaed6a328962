//! Padmé lengths (Nikitin et al., "Reducing Metadata Leakage from
//! Encrypted Files and Communication with PURBs", PETS 2019), which sealed
//! objects are padded to: a length keeps only its top `log2(log2(L)) + 1`
//! bits, which leaks O(log log L) bits and costs at most 12 %.

/// The Padmé length of `len`: `len` with its low bits rounded up, keeping
/// `floor(log2(E)) + 1` bits of mantissa for `E = floor(log2(len))`.
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros());
    let s = 64 - u64::from(e.leading_zeros());
    let zero_bits = e - s;
    let mask = (1u64 << zero_bits) - 1;
    (len + mask) & !mask
}

/// JSON padded with trailing newlines (which every JSON reader skips) to a Padmé length.
pub fn pad_json(mut json: Vec<u8>) -> Vec<u8> {
    let to = padme(json.len() as u64) as usize;
    json.resize(to, b'\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padme_keeps_few_bits_and_costs_little() {
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(9), 10);
        for len in [100u64, 1000, 4097, 65_537, 1 << 20, 123_456_789] {
            let p = padme(len);
            assert!(
                p >= len && (p - len) as f64 <= 0.12 * len as f64,
                "{len} → {p}"
            );
            assert_eq!(padme(p), p, "a Padmé length pads to itself");
        }
        // Lengths near one another share their padded length.
        assert_eq!(padme(1_000_001), padme(1_010_000));
    }

    #[test]
    fn json_is_padded_with_newlines() {
        let j = pad_json(b"{\"a\":1}".to_vec());
        assert_eq!(j.len() as u64, padme(7));
        let long = format!("\"{}\"", "a".repeat(1000));
        let v: serde_json::Value = serde_json::from_slice(&pad_json(long.into_bytes())).unwrap();
        assert!(v.is_string());
    }
}
