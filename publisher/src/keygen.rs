//! `nixcast keygen`: a key pair in Nix's own file format.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};
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
    write_file(secret, key.to_file_string().as_bytes(), 0o600)?;
    write_file(public, key.public().to_string().as_bytes(), 0o644)?;
    println!("{}", key.public());
    Ok(())
}

/// Writes beside the destination with the final mode from the start, then
/// renames, so the secret is never readable by others, not even briefly.
fn write_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dest.file_name().context("no file name")?.to_string_lossy(),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}
