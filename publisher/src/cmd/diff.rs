//! `nixcast diff`'s command line.

use std::path::PathBuf;

use anyhow::Result;
use nixcast_cli::keys;

use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    /// The cache: a directory, file://DIR or s3://BUCKET/PREFIX?….
    #[arg(
        long = "cache",
        alias = "to",
        value_name = "CACHE",
        env = "NIXCAST_CACHE"
    )]
    to: String,
    #[arg(long)]
    host: String,
    from: Option<u64>,
    #[arg(value_name = "TO")]
    to_generation: Option<u64>,
    /// Verify pointers with this public key (repeatable).
    #[arg(
        long = "trusted-key-file",
        alias = "public-key-file",
        env = "NIXCAST_TRUSTED_KEY_FILES",
        value_delimiter = ' '
    )]
    public_key_files: Vec<PathBuf>,
    /// Opens sealed manifests (repeatable): an operator's identity or the publisher's secret key file.
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    identities: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    crate::cache::check_host(&a.host)?;
    let trusted = keys::read_public_keys(&a.public_key_files)?;
    crate::inspect::diff(
        &Target::open_existing(&a.to)?,
        &a.host,
        a.from,
        a.to_generation,
        &trusted,
        &keys::read_identities(&a.identities)?,
        a.json,
    )
}
