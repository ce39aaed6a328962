//! `nixcast`: the trusted side. Makes keys, publishes hosts into a signed
//! static cache, and serves a cache directory for tests and demos.
//!
//! Exit codes: 0 success (also "nothing to publish"), 1 error, 2 usage.

mod bundle;
mod cache;
mod compress;
mod fleet;
mod gc;
mod inspect;
mod keygen;
mod nix;
mod promote;
mod publish;
mod sealing;
mod serve;
mod target;
mod upstream;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nixcast_cli::keys;
use nixcast_cli::logging::{self, LogArgs, LogFormat};
use nixcast_common::manifest::Compression;
use nixcast_common::seal::{self, Recipients};

#[derive(Parser)]
#[command(
    name = "nixcast",
    version,
    about = "Publish NixOS hosts as a signed static Nix binary cache"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a signing key pair in Nix's format (as `nix-store --generate-binary-cache-key`).
    Keygen {
        /// Key name, conventionally with a number to bump on rotation: `fleet-1`.
        #[arg(long)]
        name: String,
        #[arg(long)]
        secret_key_file: PathBuf,
        #[arg(long)]
        public_key_file: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Publish a host's system closure and a signed pointer to it.
    Publish(PublishArgs),
    /// List every host in a cache: generation, store path, times, closure size.
    Hosts {
        /// The cache: a directory, file://DIR or s3://BUCKET/PREFIX?….
        #[arg(
            long = "cache",
            alias = "to",
            value_name = "CACHE",
            env = "NIXCAST_CACHE"
        )]
        to: String,
        /// Verify pointers with this public key (repeatable); without, they are only decoded.
        #[arg(
            long = "trusted-key-file",
            alias = "public-key-file",
            env = "NIXCAST_TRUSTED_KEY_FILES",
            value_delimiter = ' '
        )]
        public_key_files: Vec<PathBuf>,
        /// Opens sealed manifests and reports (repeatable): an operator's identity or the publisher's secret key file.
        #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
        identities: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Add what each host reported, verified with the ssh-ed25519 keys this file lists for it.
        #[arg(long)]
        recipients_file: Option<PathBuf>,
        /// Also write the fleet as one self-contained HTML page to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Make a staged generation current: sign a fresh pointer for it.
    Promote(PromoteArgs),
    /// What changed between two generations of a host (default: the latest and the one before).
    Diff {
        /// The cache: a directory, file://DIR or s3://BUCKET/PREFIX?….
        #[arg(
            long = "cache",
            alias = "to",
            value_name = "CACHE",
            env = "NIXCAST_CACHE"
        )]
        to: String,
        #[arg(long)]
        host: String,
        from: Option<u64>,
        #[arg(value_name = "TO")]
        to_generation: Option<u64>,
        /// Verify pointers with this public key (repeatable).
        #[arg(
            long = "trusted-key-file",
            alias = "public-key-file",
            env = "NIXCAST_TRUSTED_KEY_FILES",
            value_delimiter = ' '
        )]
        public_key_files: Vec<PathBuf>,
        /// Opens sealed manifests (repeatable): an operator's identity or the publisher's secret key file.
        #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
        identities: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write a host's pointer, manifest and the NARs a base lacks into one file.
    Bundle {
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
    },
    /// Delete what no kept generation of any host needs.
    Gc {
        /// The cache: a directory, file://DIR or s3://BUCKET/PREFIX?….
        #[arg(
            long = "cache",
            alias = "to",
            value_name = "CACHE",
            env = "NIXCAST_CACHE"
        )]
        to: String,
        /// Generations kept per host (the current one is always kept).
        #[arg(long)]
        keep: usize,
        /// Only delete files older than this, so that agents pulling now lose nothing.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        grace: Duration,
        #[arg(long)]
        dry_run: bool,
        /// Opens sealed manifests (repeatable); without one, nothing sealed is deleted.
        #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
        identities: Vec<PathBuf>,
    },
    /// Serve a cache directory over HTTP, read-only.
    Serve {
        /// The cache directory to serve (also accepted as the one positional argument).
        #[arg(
            long = "cache",
            value_name = "DIR",
            required_unless_present = "dir_positional",
            conflicts_with = "dir_positional"
        )]
        dir: Option<PathBuf>,
        #[arg(hide = true, value_name = "DIR")]
        dir_positional: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Connections served at once; more wait to be accepted (lowered to what the file descriptor limit allows).
        #[arg(long, default_value_t = serve::Limits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        max_connections: usize,
        /// How long a client has to send a request's headers (also the idle time allowed between requests).
        #[arg(long, default_value = "10s", value_parser = parse_timeout)]
        header_timeout: Duration,
        /// How long a response may wait for the client to take more of it.
        #[arg(long, default_value = "60s", value_parser = parse_timeout)]
        send_timeout: Duration,
        /// Take `PUT /reports/HOST.json` when signed by a key --recipients-file lists for HOST.
        #[arg(long, requires = "recipients_file")]
        accept_reports: bool,
        /// Lists each host's ssh-ed25519 keys (`HOST ssh-ed25519 BASE64`), which sign its reports.
        #[arg(long, requires = "accept_reports")]
        recipients_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PromoteArgs {
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

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["path", "flake"]))]
struct PublishArgs {
    /// The host; its pointer is `hosts/HOST.json` (repeatable with --flake).
    #[arg(long = "host", required_unless_present = "all")]
    hosts: Vec<String>,
    /// With --flake: every attribute of nixosConfigurations.
    #[arg(long, requires = "flake", conflicts_with = "hosts")]
    all: bool,
    /// The cache to write: a directory, file://DIR or s3://BUCKET/PREFIX?… (`--to`, as in
    /// `nix copy --to`, is the same).
    #[arg(
        long = "cache",
        alias = "to",
        value_name = "CACHE",
        env = "NIXCAST_CACHE"
    )]
    to: String,
    /// An already-built system (a store path or a symlink to one, such as ./result).
    #[arg(long)]
    path: Option<PathBuf>,
    /// Build REF#nixosConfigurations.HOST.config.system.build.toplevel.
    #[arg(long)]
    flake: Option<String>,
    /// The signing key (`nixcast keygen`).
    #[arg(long, env = "NIXCAST_SECRET_KEY_FILE")]
    secret_key_file: PathBuf,
    #[arg(long, default_value = "xz", value_parser = parse_compression)]
    compression: Compression,
    /// How long the pointer stays valid ("30d", "12h"), or "never".
    #[arg(long, default_value = "30d", value_parser = parse_expiry)]
    expires_in: Expiry,
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
}

#[derive(Clone, Copy)]
struct Expiry(Option<Duration>);

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s == "never" {
        return Ok(Expiry(None));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: use a duration such as 30d or 12h, or never"))?;
    // Checked here, before any NAR is written, rather than when the pointer
    // is dated at the end.
    if d.as_secs() < 1 || d > publish::MAX_EXPIRES_IN {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1s to {}, or never",
            humantime::format_duration(publish::MAX_EXPIRES_IN)
        ));
    }
    Ok(Expiry(Some(d)))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}: use a duration such as 10s"))?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1ms to 1d"
        ));
    }
    Ok(d)
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log.log_format;
    let text = logging::Text {
        writer: std::io::stderr,
        ansi: std::io::stderr().is_terminal(),
    };
    logging::init(format, "warn", text);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Told once: a last line in text mode, an event in JSON mode.
            match format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                LogFormat::Json => tracing::error!("{e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Keygen {
            name,
            secret_key_file,
            public_key_file,
            force,
        } => keygen::keygen(&name, &secret_key_file, &public_key_file, force),
        Cmd::Publish(args) => publish_cmd(args),
        Cmd::Gc {
            to,
            keep,
            grace,
            dry_run,
            identities,
        } => gc::gc(
            &target::Target::open_existing(&to)?,
            keep,
            grace,
            &keys::read_identities(&identities)?,
            dry_run,
        ),
        Cmd::Bundle {
            host,
            from,
            base,
            base_path,
            output,
            identities,
        } => {
            cache::check_host(&host)?;
            let base = match (base, base_path) {
                (Some(g), _) => bundle::Base::Generation(g),
                (None, Some(p)) => {
                    bundle::Base::Path(nixcast_common::StorePath::from_absolute(&p)?)
                }
                (None, None) => bundle::Base::None,
            };
            bundle::bundle(
                &target::Target::open_existing(&from)?,
                &host,
                &base,
                &keys::read_identities(&identities)?,
                &output,
            )
        }
        Cmd::Hosts {
            to,
            public_key_files,
            identities,
            json,
            recipients_file,
            html,
        } => inspect::hosts(
            &target::Target::open_existing(&to)?,
            &keys::read_public_keys(&public_key_files)?,
            &keys::read_identities(&identities)?,
            json,
            recipients_file
                .as_deref()
                .map(load_recipients)
                .transpose()?
                .as_ref(),
            html.as_deref(),
        ),
        Cmd::Promote(a) => {
            let opts = promote::Options {
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
            promote::promote(&target::Target::open_existing(&a.cache)?, &a.hosts, &opts)
        }
        Cmd::Diff {
            to,
            host,
            from,
            to_generation,
            public_key_files,
            identities,
            json,
        } => {
            cache::check_host(&host)?;
            let trusted = keys::read_public_keys(&public_key_files)?;
            inspect::diff(
                &target::Target::open_existing(&to)?,
                &host,
                from,
                to_generation,
                &trusted,
                &keys::read_identities(&identities)?,
                json,
            )
        }
        Cmd::Serve {
            dir,
            dir_positional,
            listen,
            max_connections,
            header_timeout,
            send_timeout,
            accept_reports,
            recipients_file,
        } => {
            let dir = dir.or(dir_positional).expect("clap requires one");
            let reports = match (accept_reports, &recipients_file) {
                (true, Some(f)) => Some(serve::Reports::new(load_recipients(f)?, header_timeout)),
                _ => None,
            };
            let limits = serve::Limits {
                max_connections,
                header_timeout,
                send_timeout,
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!(
                    "serving {} on http://{}",
                    dir.display(),
                    listener.local_addr()?
                );
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                serve::run(listener, dir, limits, reports, shutdown).await?;
                Ok(())
            })
        }
    }
}

fn publish_cmd(a: PublishArgs) -> Result<()> {
    let key = keys::read_secret_key(&a.secret_key_file)?;
    let hosts = match &a.flake {
        Some(f) if a.all => nix::flake_hosts(f)?,
        _ => a.hosts.clone(),
    };
    for h in &hosts {
        cache::check_host(h)?;
    }
    let mut recipients = match &a.recipients_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            Recipients::parse(&text).with_context(|| format!("recipients file {}", f.display()))?
        }
        None => Recipients::default(),
    };
    for r in &a.recipients {
        let r: seal::Recipient = r.parse().context("--recipient")?;
        for h in &hosts {
            recipients.add(h, r.clone());
        }
    }
    let target = target::Target::open(&a.to)?;
    let tops: Vec<(String, Result<nixcast_common::StorePath>)> = match (&a.path, &a.flake) {
        (Some(p), _) => {
            anyhow::ensure!(
                hosts.len() == 1,
                "--path publishes one host: give one --host"
            );
            vec![(hosts[0].clone(), nix::resolve_store_path(p))]
        }
        (None, Some(f)) => nix::build_flake_hosts(f, &hosts),
        (None, None) => unreachable!("clap requires --path or --flake"),
    };
    let mut sealing = sealing::Sealing::new(recipients);
    // A path is sealed to every sealed host of this command that holds it,
    // so the closures of all of them are known before the first is written.
    for (host, top) in &tops {
        if let (true, Ok(top)) = (sealing.is_sealed(host), top) {
            let closure = nix::closure(top)?;
            sealing.add_closure(host, closure.iter().map(|i| &i.path));
        }
    }
    let opts = publish::Options {
        key,
        compression: a.compression,
        expires_in: a.expires_in.0,
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
    };
    // One host after another: paths shared by several are found in the
    // target by the later ones, so each is compressed and written once.
    let mut failed = Vec::new();
    for (host, top) in &tops {
        match top
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|t| publish::publish(&target, host, t, &opts))
        {
            Ok(publish::Outcome::Published(s)) => {
                tracing::info!(host = %s.host, generation = s.generation, new = s.new_paths, reused = s.reused_paths, bytes = s.bytes_written, "published");
                println!("{s}");
            }
            Ok(publish::Outcome::Unchanged {
                generation,
                store_path,
            }) => {
                println!("{host} is already at generation {generation} with {store_path}: nothing to publish");
            }
            Err(e) => {
                eprintln!("error: {host}: {e:#}");
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

fn load_recipients(file: &std::path::Path) -> Result<Recipients> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Recipients::parse(&text).with_context(|| format!("recipients file {}", file.display()))
}
