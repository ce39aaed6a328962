//! `nixcast publish`'s command line: which hosts, built or given how,
//! sealed to whom; then `publish::publish` for each, one after another.

use std::path::PathBuf;

use anyhow::{Context, Result};
use nixcast_cli::keys;
use nixcast_common::manifest::Compression;
use nixcast_common::pointer::Timestamp;
use nixcast_common::seal::{self, Recipients};
use nixcast_common::StorePath;

use super::args::{load_recipients, parse_compression, CacheArg, ExpiryArg, SigningKeyArg};
use crate::nix::{self, Store};
use crate::publish::{self, Options, Outcome};
use crate::sealing::Sealing;
use crate::target::Target;
use crate::upstream;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["path", "flake"]))]
pub struct Args {
    /// The host; its pointer is `hosts/HOST.json` (repeatable with --flake).
    #[arg(long = "host", required_unless_present = "all")]
    hosts: Vec<String>,
    /// With --flake: every attribute of nixosConfigurations.
    #[arg(long, requires = "flake", conflicts_with = "hosts")]
    all: bool,
    #[command(flatten)]
    cache: CacheArg,
    /// An already-built system (a store path or a symlink to one, such as ./result); repeatable,
    /// the Nth for the Nth --host, so that one command (one release) publishes several hosts.
    #[arg(long)]
    path: Vec<PathBuf>,
    /// Build REF#nixosConfigurations.HOST.config.system.build.toplevel.
    #[arg(long)]
    flake: Option<String>,
    #[command(flatten)]
    key: SigningKeyArg,
    #[arg(long, default_value = "xz", value_parser = parse_compression)]
    compression: Compression,
    #[command(flatten)]
    expiry: ExpiryArg,
    /// Paths compressed at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// The platform the pointer names (default: TOPLEVEL/system, else this machine's).
    #[arg(long)]
    system: Option<String>,
    /// Publish even when the current pointer has another key, or names the same path.
    #[arg(long)]
    force: bool,
    /// A cache whose paths need not be uploaded (repeatable): the manifest points agents there.
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    /// A key an upstream's narinfos must be signed with (repeatable; without one, any upstream narinfo describing the same content counts).
    #[arg(long = "upstream-key")]
    upstream_keys: Vec<String>,
    /// Seal hosts to the keys listed for them in this file (OpenSSH known_hosts form:
    /// `HOST ssh-ed25519 BASE64`, `HOST age1…`; host `*` adds an operator to everything sealed).
    #[arg(long)]
    recipients_file: Option<PathBuf>,
    /// Seal the hosts of this command to KEY too (`ssh-ed25519 BASE64` or `age1…`; repeatable).
    #[arg(long = "recipient", value_name = "KEY")]
    recipients: Vec<String>,
    /// Write everything but the host's pointer: `nixcast promote` makes the generation current.
    #[arg(long)]
    stage: bool,
    /// Write no NAR deltas against the host's previous generation: its
    /// agent then fetches every new path whole.
    #[arg(long)]
    no_deltas: bool,
}

pub fn run(a: Args) -> Result<()> {
    let key = a.key.read()?;
    let hosts = match &a.flake {
        Some(f) if a.all => nix::flake_hosts(f)?,
        _ => a.hosts.clone(),
    };
    for h in &hosts {
        crate::cache::check_host(h)?;
    }
    let recipients = recipients(&a, &hosts)?;
    let target = Target::open(&a.cache.cache)?;
    let mut tops = tops(&a, &hosts)?;
    if !a.force {
        // A retired host is refused before its closure counts for the
        // sealing: no path is sealed to its keys for its sake.
        for (host, top) in &mut tops {
            if let Some(why) = publish::retired(&target, host)? {
                *top = Err(why);
            }
        }
    }
    let store = nix::Nix;
    let mut sealing = Sealing::new(recipients);
    // A path is sealed to every sealed host of this command that holds it,
    // so the closures of all of them are known before the first is written.
    for (host, top) in &tops {
        if let (true, Ok(top)) = (sealing.is_sealed(host), top) {
            let closure = store.closure(top)?;
            sealing.add_closure(host, closure.iter().map(|i| &i.path));
        }
    }
    let opts = Options {
        key,
        compression: a.compression,
        expires_in: a.expiry.expires_in.0,
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        force: a.force,
        system: a.system,
        upstreams: upstream::Upstreams::new(
            a.upstreams,
            a.upstream_keys
                .iter()
                .map(|k| keys::public_key(k, "--upstream-key"))
                .collect::<Result<_>>()?,
        )?,
        sealing,
        stage: a.stage,
        deltas: !a.no_deltas,
        // One time for every host of this command: one release.
        release: Some(Timestamp::now()),
    };
    publish_each(&store, &target, &tops, &opts)
}

/// Who each host is sealed to: the recipients file, plus `--recipient`
/// for every host of this command.
fn recipients(a: &Args, hosts: &[String]) -> Result<Recipients> {
    let mut recipients = match &a.recipients_file {
        Some(f) => load_recipients(f)?,
        None => Recipients::default(),
    };
    for r in &a.recipients {
        let r: seal::Recipient = r.parse().context("--recipient")?;
        for h in hosts {
            recipients.add(h, r.clone());
        }
    }
    Ok(recipients)
}

/// Each host's system: the path given, or built from the flake (a host
/// that fails to build fails alone).
fn tops(a: &Args, hosts: &[String]) -> Result<Vec<(String, Result<StorePath>)>> {
    Ok(match (a.path.as_slice(), &a.flake) {
        ([], Some(f)) => nix::build_flake_hosts(f, hosts),
        ([], None) => unreachable!("clap requires --path or --flake"),
        (paths, _) => {
            anyhow::ensure!(
                hosts.len() == paths.len(),
                "--path and --host go in pairs (the Nth path for the Nth host): {} hosts, {} paths",
                hosts.len(),
                paths.len()
            );
            hosts
                .iter()
                .zip(paths)
                .map(|(h, p)| (h.clone(), nix::resolve_store_path(p)))
                .collect()
        }
    })
}

/// One host after another: paths shared by several are found in the
/// target by the later ones, so each is compressed and written once.
fn publish_each(
    store: &dyn Store,
    target: &Target,
    tops: &[(String, Result<StorePath>)],
    opts: &Options,
) -> Result<()> {
    let mut failed = Vec::new();
    for (host, top) in tops {
        match top
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|t| publish::publish(store, target, host, t, opts))
        {
            Ok(Outcome::Published(s)) => {
                tracing::info!(host = %s.host, generation = s.generation, new = s.new_paths, reused = s.reused_paths, bytes = s.bytes_written, "published");
                println!("{s}");
            }
            Ok(Outcome::Unchanged {
                generation,
                store_path,
            }) => {
                println!("{host} is already at generation {generation} with {store_path}: nothing to publish");
            }
            Err(e) => {
                nixcast_cli::logging::report_error(&e.context(host.clone()));
                failed.push(host.as_str());
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} hosts failed: {}",
        failed.len(),
        tops.len(),
        failed.join(", ")
    );
    Ok(())
}
