//! Where each object lives in a cache: the one place that spells out keys.
//!
//! ```text
//! nix-cache-info                          Nix's cache description
//! <hash32>.narinfo, nar/<filehash>.nar.xz a plain path, as Nix writes it
//! manifests/<sha256>.json                 a plain host's manifest
//! manifests/<new>.from-<old>.json         a delta between two manifests
//! sealed/<sha256>                         a sealed NAR, manifest or delta,
//!                                         named by the sha256 of its bytes
//! hosts/<host>.json                       a host's current pointer
//! hosts/<host>/<generation>.json          every pointer ever published
//! reports/<host>.json                     a host's latest signed report
//! ```

use crate::hash::Sha256Hash;
use crate::store_path::StorePath;

pub const NIX_CACHE_INFO: &str = "nix-cache-info";
pub const NIX_CACHE_INFO_TEXT: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
pub const SEALED_DIR: &str = "sealed";
pub const HOSTS_DIR: &str = "hosts";
pub const REPORTS_DIR: &str = "reports";

pub fn narinfo(p: &StorePath) -> String {
    format!("{}.narinfo", p.hash_part())
}

pub fn pointer(host: &str) -> String {
    format!("{HOSTS_DIR}/{host}.json")
}

pub fn report(host: &str) -> String {
    format!("{REPORTS_DIR}/{host}.json")
}

pub fn history_dir(host: &str) -> String {
    format!("{HOSTS_DIR}/{host}")
}

pub fn history(host: &str, generation: u64) -> String {
    format!("{HOSTS_DIR}/{host}/{generation}.json")
}

/// The generation a history key names, if it is one.
pub fn history_generation(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?.strip_suffix(".json")?;
    // Only the form we write: no sign, no leading zero.
    if name.starts_with('0') || !name.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

pub fn manifest(sha256: &Sha256Hash) -> String {
    format!("manifests/{}.json", sha256.to_hex())
}

/// A sealed object, named by the sha256 of its (sealed) bytes.
pub fn sealed(sha256: &Sha256Hash) -> String {
    format!("{SEALED_DIR}/{}", sha256.to_hex())
}

/// Whether `key` is `sealed/<64 lowercase hex>`.
pub fn is_sealed(key: &str) -> bool {
    key.strip_prefix("sealed/")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

/// The sealed delta that rebuilds the sealed manifest `new` (sha256 of its
/// sealed bytes) from the plain manifest with sha256 `old_plain`, which only
/// a host holding that manifest knows.
pub fn sealed_delta(new: &Sha256Hash, old_plain: &Sha256Hash) -> String {
    format!("{SEALED_DIR}/{}.from-{}", new.to_hex(), old_plain.to_hex())
}

/// A host name becomes part of object keys, so it is held to DNS-like
/// characters and length; `None` says what is wrong.
pub fn check_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host name {:?}: use at most 253 letters, digits, '-', '_' and '.'",
            host.chars().take(64).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let h = Sha256Hash::digest(b"x");
        assert!(is_sealed(&sealed(&h)));
        assert!(!is_sealed(&sealed_delta(&h, &h)));
        assert!(!is_sealed("sealed/../x"));
        assert_eq!(history_generation(&history("a", 17)), Some(17));
        for bad in [
            "hosts/a/017.json",
            "hosts/a/+1.json",
            "hosts/a/x.json",
            "hosts/a.json",
        ] {
            assert_eq!(history_generation(bad), None, "{bad}");
        }
        assert!(check_host("web-1.example").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(254)] {
            assert!(check_host(bad).is_err());
        }
    }
}
