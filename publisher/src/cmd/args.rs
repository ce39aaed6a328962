//! Flags several subcommands take, each group defined once and flattened
//! into them (`#[command(flatten)]`), and the values they parse. Earlier
//! spellings (`--to`, `--from`, `--public-key-file`) are hidden aliases:
//! accepted, never shown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nixcast_cli::keys;
use nixcast_common::manifest::Compression;
use nixcast_common::seal::{Identity, Recipients};
use nixcast_common::{PublicKey, SecretKey};

/// `--cache`: the cache a command reads or writes.
#[derive(clap::Args)]
pub struct CacheArg {
    /// The cache: a directory, file://DIR or s3://BUCKET/PREFIX?….
    #[arg(
        long = "cache",
        aliases = ["to", "from"],
        value_name = "CACHE",
        env = "NIXCAST_CACHE"
    )]
    pub cache: String,
}

/// `--trusted-key-file`: the public keys pointers must verify with.
#[derive(clap::Args)]
pub struct TrustArgs {
    /// Verify pointers with this public key (repeatable); without, they are only decoded.
    #[arg(
        long = "trusted-key-file",
        alias = "public-key-file",
        env = "NIXCAST_TRUSTED_KEY_FILES",
        value_delimiter = ' '
    )]
    pub trusted_key_files: Vec<PathBuf>,
}

impl TrustArgs {
    pub fn read(&self) -> Result<Vec<PublicKey>> {
        keys::read_public_keys(&self.trusted_key_files)
    }
}

/// `--identity`: what opens sealed manifests and reports.
#[derive(clap::Args)]
pub struct IdentityArgs {
    /// Opens what is sealed (repeatable): an operator's identity or the publisher's secret key file.
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    pub identities: Vec<PathBuf>,
}

impl IdentityArgs {
    pub fn read(&self) -> Result<Vec<Identity>> {
        keys::read_identities(&self.identities)
    }
}

/// `--secret-key-file`: the key pointers and narinfos are signed with.
#[derive(clap::Args)]
pub struct SigningKeyArg {
    /// The signing key (`nixcast keygen`).
    #[arg(long, env = "NIXCAST_SECRET_KEY_FILE")]
    pub secret_key_file: PathBuf,
}

impl SigningKeyArg {
    pub fn read(&self) -> Result<SecretKey> {
        keys::read_secret_key(&self.secret_key_file)
    }
}

/// `--expires-in`: the lifetime of a pointer signed now.
#[derive(clap::Args)]
pub struct ExpiryArg {
    /// How long the pointer stays valid ("30d", "12h"), or "never".
    #[arg(long, default_value = "30d", value_parser = parse_expiry)]
    pub expires_in: Expiry,
}

/// A pointer's lifetime: `None` for "never".
#[derive(Clone, Copy)]
pub struct Expiry(pub Option<Duration>);

pub fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s == "never" {
        return Ok(Expiry(None));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: use a duration such as 30d or 12h, or never"))?;
    // Checked here, before any NAR is written, rather than when the pointer
    // is dated at the end.
    if d.as_secs() < 1 || d > crate::publish::MAX_EXPIRES_IN {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1s to {}, or never",
            humantime::format_duration(crate::publish::MAX_EXPIRES_IN)
        ));
    }
    Ok(Expiry(Some(d)))
}

pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}: use a duration such as 10s"))?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1ms to 1d"
        ));
    }
    Ok(d)
}

pub fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

/// A recipients file (`HOST ssh-ed25519 BASE64`, `HOST age1…`).
pub fn load_recipients(file: &Path) -> Result<Recipients> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Recipients::parse(&text).with_context(|| format!("recipients file {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        cache: CacheArg,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        identities: IdentityArgs,
    }

    #[test]
    fn old_spellings_fill_the_same_fields() {
        for (old, keys) in [
            ("--to", "--public-key-file"),
            ("--from", "--trusted-key-file"),
        ] {
            let f =
                Flags::try_parse_from(["t", old, "/srv/c", keys, "a.pub", keys, "b.pub"]).unwrap();
            assert_eq!(f.cache.cache, "/srv/c");
            assert_eq!(
                f.trust.trusted_key_files,
                [PathBuf::from("a.pub"), PathBuf::from("b.pub")]
            );
            assert!(f.identities.identities.is_empty());
        }
    }
}
