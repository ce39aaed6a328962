//! `nixcast keygen`: a key pair in Nix's own file format.

use std::path::Path;

use anyhow::{ensure, Result};
use nixcast_common::SecretKey;

pub fn keygen(name: &str, secret: &Path, public: &Path, force: bool) -> Result<()> {
    let key = SecretKey::generate(name)?;
    // Unlike nix-store --generate-binary-cache-key, never replace a key by accident.
    if !force {
        for p in [secret, public] {
            ensure!(
                !p.exists(),
                "{} exists; use --force to replace it",
                p.display()
            );
        }
    }
    // Written whole or not at all; the secret is never readable by others,
    // not even under its temporary name.
    nixcast_cli::fs::write(secret, key.to_file_string().as_bytes(), 0o600)?;
    nixcast_cli::fs::write(public, key.public().to_string().as_bytes(), 0o644)?;
    println!("{}", key.public());
    Ok(())
}
