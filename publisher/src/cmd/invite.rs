//! `nixcast invite`'s command line: the agent's package (given, or built
//! from a flake), the token's lifetime; then `invite::invite`, whose command
//! goes to stdout and what it says about it to stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nixcast_common::enroll::MAX_TOKEN_LIFETIME;
use nixcast_common::manifest::Compression;
use nixcast_common::seal::Recipients;

use super::args::{parse_compression, CacheArg, SigningKeyArg};
use crate::invite::{self, Invite};
use crate::nix;
use crate::publish::Options;
use crate::sealing::Sealing;
use crate::target::Target;

#[derive(clap::Args)]
pub struct Args {
    /// The host invited: its pointer will be `hosts/HOST.json`.
    #[arg(long)]
    host: String,
    #[command(flatten)]
    cache: CacheArg,
    /// Where the new machine reads the cache (https://…, s3://…); it sends its request there too.
    #[arg(long)]
    url: String,
    #[command(flatten)]
    key: SigningKeyArg,
    /// How the agent's NARs are compressed (xz, zstd or none).
    #[arg(long, default_value = "xz", value_parser = parse_compression)]
    compression: Compression,
    /// How long the token holds (at most 30d).
    #[arg(long, default_value = "24h", value_parser = parse_lifetime)]
    expires_in: Duration,
    /// Print a cloud-init user-data file that runs the command at first boot.
    #[arg(long)]
    cloud_init: bool,
    /// The agent's package: a store path (or a link to one, such as ./result) holding
    /// bin/nixcast-pull [default: built from --agent-flake].
    #[arg(long, conflicts_with = "agent_flake")]
    agent_path: Option<PathBuf>,
    /// The flake package that holds the agent.
    #[arg(long, default_value = ".#default")]
    agent_flake: String,
    /// A root key of the fleet's key list (repeatable): the host trusts the list they sign
    /// (`nixcast keys sign`) instead of the key --secret-key-file pins for the first fetch.
    #[arg(long = "root-key-file")]
    root_key_files: Vec<PathBuf>,
    /// How many of the roots must sign the first key list the host accepts.
    #[arg(long, default_value_t = 1, requires = "root_key_files")]
    root_threshold: u32,
    /// One more argument for `nixcast-pull enroll` in the command (repeatable), such as
    /// --report-to=URL or --state-dir=DIR.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}: use a duration such as 24h"))?;
    if d.as_secs() < 60 || d > MAX_TOKEN_LIFETIME {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1m to 30d"
        ));
    }
    Ok(d)
}

pub fn run(a: Args) -> Result<()> {
    let key = a.key.read()?;
    crate::cache::check_host(&a.host)?;
    let (agent, from) = match &a.agent_path {
        Some(p) => (nix::resolve_store_path(p)?, "--agent-path".to_owned()),
        None => (
            nix::build(&a.agent_flake).context("building the agent (or give --agent-path)")?,
            a.agent_flake.clone(),
        ),
    };
    let roots = match a.root_key_files.is_empty() {
        true => None,
        false => Some((
            nixcast_cli::keys::read_public_keys(&a.root_key_files)?,
            a.root_threshold,
        )),
    };
    if let Some((keys, n)) = &roots {
        anyhow::ensure!(
            *n >= 1 && *n as usize <= keys.len(),
            "--root-threshold {n} is not between 1 and the {} root keys given",
            keys.len()
        );
    }
    let target = Target::open(&a.cache.cache)?;
    let opts = Options {
        key,
        compression: a.compression,
        expires_in: None,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        force: false,
        system: None,
        upstreams: crate::upstream::Upstreams::new(Vec::new(), Vec::new())?,
        sealing: Sealing::new(Recipients::default()),
        stage: false,
        release: None,
        // The agent's closure has no previous generation to be a delta of.
        deltas: false,
    };
    let inv = Invite {
        host: a.host,
        url: a.url,
        lifetime: a.expires_in,
        agent,
        agent_args: a.agent_args,
        roots,
        cloud_init: a.cloud_init,
    };
    let done = invite::invite(&nix::Nix, &target, &inv, &opts)?;
    eprintln!(
        "agent: {} (from {from}), published to {} ({} new paths, {} written)",
        inv.agent,
        target.describe(),
        done.new_paths,
        nixcast_cli::fmt::human_bytes(done.bytes_written)
    );
    eprintln!(
        "token for {} expires at {}; run this as root on the new machine (it needs only Nix):",
        inv.host, done.token.expires_at
    );
    print!("{}", done.text);
    Ok(())
}
