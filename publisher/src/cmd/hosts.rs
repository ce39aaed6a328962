//! `nixcast hosts`'s command line.

use std::path::PathBuf;

use anyhow::Result;

use super::args::{load_recipients, CacheArg, IdentityArgs, TrustArgs};
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cache: CacheArg,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    identities: IdentityArgs,
    #[arg(long)]
    json: bool,
    /// Add what each host reported, verified with the ssh-ed25519 keys this file lists for it.
    #[arg(long)]
    recipients_file: Option<PathBuf>,
    /// Also write the fleet as one self-contained HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// List pending enrollment requests instead (host, key fingerprint, token expiry, or why not).
    #[arg(long, conflicts_with_all = ["json", "html"])]
    enrollments: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.enrollments {
        let target = Target::open_existing(&a.cache.cache)?;
        return crate::enroll::print_pending(&target, &a.trust.read()?);
    }
    crate::inspect::hosts(
        &Target::open_existing(&a.cache.cache)?,
        &a.trust.read()?,
        &a.identities.read()?,
        a.json,
        a.recipients_file
            .as_deref()
            .map(load_recipients)
            .transpose()?
            .as_ref(),
        a.html.as_deref(),
    )
}
