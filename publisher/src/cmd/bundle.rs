//! `nixcast bundle`'s command line.

use std::path::PathBuf;

use anyhow::Result;

use super::args::{CacheArg, IdentityArgs};
use crate::bundle::Base;
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    host: String,
    #[command(flatten)]
    cache: CacheArg,
    /// Leave out what this generation of the host has.
    #[arg(long, conflicts_with = "base_path")]
    base: Option<u64>,
    /// Leave out what the generation running this store path has.
    #[arg(long)]
    base_path: Option<String>,
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    identities: IdentityArgs,
}

pub fn run(a: Args) -> Result<()> {
    crate::cache::check_host(&a.host)?;
    let base = match (a.base, a.base_path) {
        (Some(g), _) => Base::Generation(g),
        (None, Some(p)) => Base::Path(nixcast_common::StorePath::from_absolute(&p)?),
        (None, None) => Base::None,
    };
    crate::bundle::bundle(
        &Target::open_existing(&a.cache.cache)?,
        &a.host,
        &base,
        &a.identities.read()?,
        &a.output,
    )
}
