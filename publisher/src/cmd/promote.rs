//! `nixcast promote`'s command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use nixcast_cli::keys;
use nixcast_common::seal::Recipients;

use super::args::{load_recipients, parse_expiry, Expiry};
use crate::promote::Options;
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    /// The cache: a directory, file://DIR or s3://BUCKET/PREFIX?….
    #[arg(long = "cache", value_name = "CACHE", env = "NIXCAST_CACHE")]
    cache: String,
    /// A host to promote (repeatable).
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    #[arg(long, env = "NIXCAST_SECRET_KEY_FILE")]
    secret_key_file: PathBuf,
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
    /// Opens sealed reports (repeatable): an operator's identity or the publisher's secret key file.
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    identities: Vec<PathBuf>,
    /// How long the new pointer stays valid ("30d", "12h"), or "never".
    #[arg(long, default_value = "30d", value_parser = parse_expiry)]
    expires_in: Expiry,
}

pub fn run(a: Args) -> Result<()> {
    let opts = Options {
        key: keys::read_secret_key(&a.secret_key_file)?,
        generation: a.generation,
        expires_in: a.expires_in.0,
        after: a.after,
        healthy_for: a.healthy_for,
        fleet: match &a.recipients_file {
            Some(f) => load_recipients(f)?,
            None => Recipients::default(),
        },
        ids: keys::read_identities(&a.identities)?,
    };
    crate::promote::promote(&Target::open_existing(&a.cache)?, &a.hosts, &opts)
}
