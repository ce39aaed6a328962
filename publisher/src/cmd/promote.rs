//! `nixcast promote`'s command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use nixcast_common::seal::Recipients;

use super::args::{load_recipients, CacheArg, ExpiryArg, IdentityArgs, SigningKeyArg};
use crate::promote::Options;
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cache: CacheArg,
    /// A host to promote (repeatable).
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    #[command(flatten)]
    key: SigningKeyArg,
    /// The staged generation to promote (default: the highest).
    #[arg(long)]
    generation: Option<u64>,
    /// Refuse unless this host runs its newest generation, healthy (repeatable).
    #[arg(long = "after", value_name = "CANARY", requires = "recipients_file")]
    after: Vec<String>,
    /// How long each canary must have run its newest generation.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    healthy_for: Duration,
    /// Lists each canary's ssh-ed25519 keys, which verify its reports.
    #[arg(long)]
    recipients_file: Option<PathBuf>,
    #[command(flatten)]
    identities: IdentityArgs,
    #[command(flatten)]
    expiry: ExpiryArg,
}

pub fn run(a: Args) -> Result<()> {
    let opts = Options {
        key: a.key.read()?,
        generation: a.generation,
        expires_in: a.expiry.expires_in.0,
        after: a.after,
        healthy_for: a.healthy_for,
        fleet: match &a.recipients_file {
            Some(f) => load_recipients(f)?,
            None => Recipients::default(),
        },
        ids: a.identities.read()?,
    };
    crate::promote::promote(&Target::open_existing(&a.cache.cache)?, &a.hosts, &opts)
}
