//! `nixcast gc`'s command line.

use std::time::Duration;

use anyhow::Result;

use super::args::{CacheArg, IdentityArgs, TrustArgs};
use crate::target::Target;

#[derive(clap::Args)]
#[command(mut_arg("identities", |a| a.help(
    "Opens sealed manifests (repeatable); without one, nothing sealed is deleted"
)))]
pub struct Args {
    #[command(flatten)]
    cache: CacheArg,
    /// Generations kept per host (the current one is always kept).
    #[arg(long)]
    keep: usize,
    /// Only delete files older than this, so that agents pulling now lose nothing.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    grace: Duration,
    #[arg(long)]
    dry_run: bool,
    /// Delete the tombstones of retired hosts (and their reports) too: their agents then find no
    /// pointer at all.
    #[arg(long)]
    forget_retired: bool,
    #[command(flatten)]
    identities: IdentityArgs,
    // Pointers must verify with these keys: an unverified history entry is
    // neither kept nor deleted.
    #[command(flatten)]
    trust: TrustArgs,
}

pub fn run(a: Args) -> Result<()> {
    crate::gc::gc(
        &Target::open_existing(&a.cache.cache)?,
        a.keep,
        a.grace,
        &a.identities.read()?,
        &a.trust.read()?,
        a.dry_run,
        a.forget_retired,
    )
}
