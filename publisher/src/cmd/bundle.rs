//! `nixcast bundle`'s command line.

use std::path::PathBuf;

use anyhow::Result;
use nixcast_cli::keys;

use crate::bundle::Base;
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    host: String,
    /// The cache to read: a directory, file://DIR or s3://….
    #[arg(
        long = "cache",
        alias = "from",
        value_name = "CACHE",
        env = "NIXCAST_CACHE"
    )]
    from: String,
    /// Leave out what this generation of the host has.
    #[arg(long, conflicts_with = "base_path")]
    base: Option<u64>,
    /// Leave out what the generation running this store path has.
    #[arg(long)]
    base_path: Option<String>,
    #[arg(long)]
    output: PathBuf,
    /// Opens sealed manifests (repeatable): an operator's identity or the publisher's secret key file.
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    identities: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    crate::cache::check_host(&a.host)?;
    let base = match (a.base, a.base_path) {
        (Some(g), _) => Base::Generation(g),
        (None, Some(p)) => Base::Path(nixcast_common::StorePath::from_absolute(&p)?),
        (None, None) => Base::None,
    };
    crate::bundle::bundle(
        &Target::open_existing(&a.from)?,
        &a.host,
        &base,
        &keys::read_identities(&a.identities)?,
        &a.output,
    )
}
