//! `nixcast hosts`'s command line.

use std::path::PathBuf;

use anyhow::Result;
use nixcast_cli::keys;

use super::args::load_recipients;
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
    /// Verify pointers with this public key (repeatable); without, they are only decoded.
    #[arg(
        long = "trusted-key-file",
        alias = "public-key-file",
        env = "NIXCAST_TRUSTED_KEY_FILES",
        value_delimiter = ' '
    )]
    public_key_files: Vec<PathBuf>,
    /// Opens sealed manifests and reports (repeatable): an operator's identity or the publisher's secret key file.
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    identities: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
    /// Add what each host reported, verified with the ssh-ed25519 keys this file lists for it.
    #[arg(long)]
    recipients_file: Option<PathBuf>,
    /// Also write the fleet as one self-contained HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    crate::inspect::hosts(
        &Target::open_existing(&a.to)?,
        &keys::read_public_keys(&a.public_key_files)?,
        &keys::read_identities(&a.identities)?,
        a.json,
        a.recipients_file
            .as_deref()
            .map(load_recipients)
            .transpose()?
            .as_ref(),
        a.html.as_deref(),
    )
}
