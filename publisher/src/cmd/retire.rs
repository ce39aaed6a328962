//! `nixcast retire`'s command line.

use std::path::PathBuf;

use anyhow::Result;

use super::args::{CacheArg, SigningKeyArg};
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cache: CacheArg,
    /// The host to retire.
    #[arg(long)]
    host: String,
    #[command(flatten)]
    key: SigningKeyArg,
    /// Remove the host's lines from this recipients file, so that the next publish seals nothing
    /// to its keys.
    #[arg(long)]
    recipients_file: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    crate::retire::retire(
        &Target::open_existing(&a.cache.cache)?,
        &a.host,
        &a.key.read()?,
        a.recipients_file.as_deref(),
    )
}
