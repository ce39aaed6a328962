//! `nixcast enroll accept`'s command line: which pending requests, then
//! `enroll::accept` for each.

use std::path::PathBuf;

use anyhow::Result;

use super::args::CacheArg;
use crate::target::Target;

#[derive(clap::Subcommand)]
pub enum Args {
    /// Accept a host's pending request: check it and its token, add its key to the recipients
    /// file, record the token as used. A sealed `nixcast publish` of the host follows.
    Accept(AcceptArgs),
}

#[derive(clap::Args)]
pub struct AcceptArgs {
    /// The host whose request to accept (repeatable).
    #[arg(long = "host", required_unless_present = "all")]
    hosts: Vec<String>,
    /// Every pending request that verifies.
    #[arg(long, conflicts_with = "hosts")]
    all: bool,
    #[command(flatten)]
    cache: CacheArg,
    /// The fleet's public key, which signed the tokens (repeatable).
    #[arg(
        long = "trusted-key-file",
        required = true,
        env = "NIXCAST_TRUSTED_KEY_FILES",
        value_delimiter = ' '
    )]
    trusted_key_files: Vec<PathBuf>,
    /// The recipients file the host's `HOST ssh-ed25519 BASE64` line is added to.
    #[arg(long)]
    recipients_file: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let Args::Accept(a) = a;
    let keys = nixcast_cli::keys::read_public_keys(&a.trusted_key_files)?;
    let target = Target::open_existing(&a.cache.cache)?;
    let hosts = match a.all {
        false => a.hosts,
        true => crate::enroll::pending(&target, &keys)?
            .into_iter()
            .filter(|(_, e)| e.is_ok())
            .map(|(h, _)| h)
            .collect(),
    };
    if a.all && hosts.is_empty() {
        println!("no pending request verifies");
    }
    let mut failed = Vec::new();
    for host in &hosts {
        crate::cache::check_host(host)?;
        match crate::enroll::accept(&target, host, &keys, &a.recipients_file) {
            Ok(e) => println!(
                "accepted {host} ({}): added to {}",
                e.fingerprint(),
                a.recipients_file.display()
            ),
            Err(e) => {
                nixcast_cli::logging::report_error(&e.context(host.clone()));
                failed.push(host.as_str());
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "not accepted: {}", failed.join(", "));
    Ok(())
}
