//! `nixcast diff`'s command line.

use anyhow::Result;

use super::args::{CacheArg, IdentityArgs, TrustArgs};
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cache: CacheArg,
    #[arg(long)]
    host: String,
    from: Option<u64>,
    #[arg(value_name = "TO")]
    to_generation: Option<u64>,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    identities: IdentityArgs,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    crate::cache::check_host(&a.host)?;
    let trusted = a.trust.read()?;
    crate::inspect::diff(
        &Target::open_existing(&a.cache.cache)?,
        &a.host,
        a.from,
        a.to_generation,
        &trusted,
        &a.identities.read()?,
        a.json,
    )
}
