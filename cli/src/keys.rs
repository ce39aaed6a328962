//! Keys given on the command line or in files: the public keys pointers
//! are verified with, and the identities that open sealed objects.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nixcast_common::keys::KeyError;
use nixcast_common::seal::Identity;
use nixcast_common::{PublicKey, SecretKey};

/// A public key in Nix's `name:base64` form, given as `source` (a flag or a
/// file, for messages). What is given may be a secret key by mistake: it is
/// then refused as such, and no part of the text is echoed (the errors of
/// `PublicKey::parse` name only the key name and lengths), so that it does
/// not reach a log.
pub fn public_key(text: &str, source: &str) -> Result<PublicKey> {
    let secret = || {
        anyhow!(
            "{source} is a secret key, not a public key: give its public half (the public key \
             file `nixcast keygen` wrote, or `nix key convert-secret-to-public`), and treat the \
             secret key as exposed"
        )
    };
    if SecretKey::parse(text).is_ok() {
        return Err(secret());
    }
    match PublicKey::parse(text) {
        Ok(k) => Ok(k),
        Err(KeyError::Length { got: 64, .. }) => Err(secret()),
        Err(e) => Err(e).with_context(|| format!("bad public key in {source}")),
    }
}

/// The public keys in `files` (`--trusted-key-file`), one each.
pub fn read_public_keys(files: &[PathBuf]) -> Result<Vec<PublicKey>> {
    files.iter().map(|f| read_public_key(f)).collect()
}

/// Far above any key or identity file: an OpenSSH key is some hundred bytes.
pub const MAX_KEY_FILE: u64 = 64 << 10;

fn read_public_key(file: &Path) -> Result<PublicKey> {
    let text = crate::fs::read_small_text(file, MAX_KEY_FILE)
        .with_context(|| format!("cannot read {}", file.display()))?;
    public_key(&text, &format!("--trusted-key-file {}", file.display()))
}

/// The signing key in `file` (`--secret-key-file`), in Nix's format. The
/// text read is zeroed once parsed.
pub fn read_secret_key(file: &Path) -> Result<SecretKey> {
    let text = zeroize::Zeroizing::new(
        crate::fs::read_small_text(file, MAX_KEY_FILE)
            .with_context(|| format!("cannot read {}", file.display()))?,
    );
    SecretKey::parse(&text)
        .with_context(|| format!("cannot load the secret key {}", file.display()))
}

/// The identities in `files` (`--identity`): OpenSSH ed25519 keys, age
/// identity files, or the publisher's Nix secret key file. Their bytes are
/// zeroed once parsed.
pub fn read_identities(files: &[PathBuf]) -> Result<Vec<Identity>> {
    let mut out = Vec::new();
    for f in files {
        let bytes = zeroize::Zeroizing::new(
            crate::fs::read_small(f, MAX_KEY_FILE)
                .with_context(|| format!("cannot read the identity {}", f.display()))?,
        );
        out.extend(Identity::from_file(&bytes, &f.display().to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_key_is_refused_without_being_echoed() {
        let secret = SecretKey::generate("test-1").unwrap();
        let text = secret.to_file_string();
        let material = text.split_once(':').unwrap().1;
        let err = public_key(&text, "--trusted-key #1").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("is a secret key, not a public key"), "{msg}");
        assert!(!msg.contains(&material[..12]), "{msg}");
        let public = secret.public().to_string();
        assert_eq!(public_key(&public, "x").unwrap().to_string(), public);
        assert!(format!("{:#}", public_key("test-1:AAAA", "F").unwrap_err()).contains("in F"));
    }

    #[test]
    fn key_files() {
        let d = tempfile::tempdir().unwrap();
        let secret = SecretKey::generate("test-1").unwrap();
        let (sec, publ) = (d.path().join("k.sec"), d.path().join("k.pub"));
        std::fs::write(&sec, secret.to_file_string().as_bytes()).unwrap();
        std::fs::write(&publ, secret.public().to_string()).unwrap();
        assert_eq!(read_secret_key(&sec).unwrap().public(), secret.public());
        assert_eq!(read_public_keys(&[publ]).unwrap(), [secret.public()]);
        let err = read_public_keys(std::slice::from_ref(&sec)).unwrap_err();
        assert!(
            format!("{err:#}").contains("k.sec is a secret key"),
            "{err:#}"
        );
        let err = read_secret_key(&d.path().join("none")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    }

    #[test]
    fn an_identity_that_is_no_file_is_refused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("ssh_host_ed25519_key");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // With no writer, reading it as a file would never return.
        let err = read_identities(&[fifo, "/dev/zero".into()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a regular file (a FIFO)"),
            "{err:#}"
        );
        let err = read_identities(&["/dev/zero".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("(a device)"), "{err:#}");
    }
}
