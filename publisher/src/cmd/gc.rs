//! `nixcast gc`'s command line.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Generations kept per host (the current one is always kept).
    #[arg(long)]
    keep: usize,
    /// Only delete files older than this, so that agents pulling now lose nothing.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    grace: Duration,
    #[arg(long)]
    dry_run: bool,
    /// Opens sealed manifests (repeatable); without one, nothing sealed is deleted.
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    identities: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    crate::gc::gc(
        &Target::open_existing(&a.to)?,
        a.keep,
        a.grace,
        &keys::read_identities(&a.identities)?,
        a.dry_run,
    )
}
