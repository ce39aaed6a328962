//! The flags `run` and `enroll` share (the cache, the host, the keys, how
//! a run goes and what follows it), turned once into a run's settings
//! (`Config`), and the runtime a run is driven on.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nixcast_cli::keys;

use crate::config::{self, Config};
use crate::{host, source, state};

#[derive(clap::Args)]
pub struct Args {
    /// The cache: https://…, s3://BUCKET/PREFIX?endpoint=…&region=…, file://DIR or a directory
    /// (http:// needs --allow-insecure-http).
    #[arg(long, env = "NIXCAST_CACHE", required_unless_present = "bundle")]
    pub cache: Option<String>,
    /// Apply a file made by `nixcast bundle` instead of reading a cache: no network.
    #[arg(long, conflicts_with = "cache")]
    bundle: Option<PathBuf>,
    /// This host's name: its pointer is hosts/HOST.json.
    #[arg(long, env = "NIXCAST_HOST")]
    pub host: String,
    /// A trusted public key, `name:base64` (repeatable; space-separated in the variable).
    #[arg(
        long = "trusted-key",
        env = "NIXCAST_TRUSTED_KEYS",
        value_delimiter = ' '
    )]
    trusted_keys: Vec<String>,
    /// A file holding a trusted public key (repeatable).
    #[arg(
        long = "trusted-key-file",
        env = "NIXCAST_TRUSTED_KEY_FILES",
        value_delimiter = ' '
    )]
    trusted_key_files: Vec<PathBuf>,
    /// A root key, `name:base64` (repeatable): trust the signing keys of
    /// the newest key list the roots signed (`nixcast keys sign`) instead
    /// of pinning one with --trusted-key.
    #[arg(long = "root-key", env = "NIXCAST_ROOT_KEYS", value_delimiter = ' ')]
    root_keys: Vec<String>,
    /// A file holding a root key (repeatable).
    #[arg(
        long = "root-key-file",
        env = "NIXCAST_ROOT_KEY_FILES",
        value_delimiter = ' '
    )]
    root_key_files: Vec<PathBuf>,
    /// How many of the roots must sign the first key list this host accepts.
    #[arg(long, default_value_t = 1)]
    root_threshold: u32,
    /// What opens a sealed host's objects (repeatable): an unencrypted OpenSSH ed25519 key or an
    /// age identity file [default when the pointer is sealed: /etc/ssh/ssh_host_ed25519_key].
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    identities: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = crate::activate::Action::Switch, env = "NIXCAST_ACTION")]
    action: crate::activate::Action,
    #[arg(
        long,
        default_value = "/nix/var/nix/profiles/system",
        env = "NIXCAST_PROFILE"
    )]
    profile: PathBuf,
    #[arg(long, default_value = "/var/lib/nixcast", env = "NIXCAST_STATE_DIR")]
    state_dir: PathBuf,
    /// Requests for small NARs in flight at once (large ones, from 1 MiB, download CPUs + 1 at a time; every NAR is decoded once all of it is here, one per CPU at a time).
    #[arg(long, default_value_t = 32, env = "NIXCAST_JOBS")]
    jobs: usize,
    /// Show what would be fetched; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Credentials for HTTP caches and upstreams, in Nix's netrc format (`machine HOST login USER password PASS`).
    #[arg(long, env = "NIXCAST_NETRC_FILE")]
    netrc_file: Option<PathBuf>,
    /// AWS_* settings for s3:// caches, one KEY=VALUE a line; they take precedence over the environment.
    #[arg(long, env = "NIXCAST_ENVIRONMENT_FILE")]
    environment_file: Option<PathBuf>,
    /// Allow an http:// cache (closures reveal configuration; signatures still hold).
    #[arg(long, env = "NIXCAST_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
    /// The platform this host runs (default: /run/current-system/system, else this machine's).
    #[arg(long, env = "NIXCAST_SYSTEM")]
    system: Option<String>,
    /// Give up on a download when no byte arrives for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "NIXCAST_STALL_TIMEOUT")]
    stall_timeout: Duration,
    /// Give up on a download slower than this many bytes per second on
    /// average, counted after the first --stall-timeout (0: no minimum).
    #[arg(long, default_value_t = 4096, env = "NIXCAST_MIN_RATE")]
    min_rate: u64,
    /// Stop a run that has not reached the switch after this long (exit 4);
    /// below the NixOS module's start timeout of 45 minutes.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, env = "NIXCAST_RUN_TIMEOUT")]
    run_timeout: Duration,
    /// Refuse a pointer more than this many generations above the highest accepted one.
    #[arg(long, default_value_t = 1000, env = "NIXCAST_MAX_GENERATION_JUMP")]
    max_generation_jump: u64,
    /// Reach the cache through this HTTP(S) proxy. `http_proxy`, `https_proxy`
    /// and `all_proxy` are ignored: a proxy is used only when named here.
    #[arg(long, env = "NIXCAST_PROXY")]
    proxy: Option<String>,
    /// Wait for another run to finish instead of exiting.
    #[arg(long)]
    wait: bool,
    /// A command that must exit 0 after the switch, else the switch is rolled back (repeatable).
    #[arg(
        long = "health-check",
        env = "NIXCAST_HEALTH_CHECKS",
        value_delimiter = '\n'
    )]
    health_checks: Vec<String>,
    /// Keep running and pull on this cron schedule ("*/5 * * * *"; a seconds field is allowed).
    #[arg(long, env = "NIXCAST_SCHEDULE")]
    pub schedule: Option<String>,
    /// With --schedule: a random delay of up to this much before each run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "NIXCAST_JITTER")]
    pub jitter: Duration,
    /// Write Prometheus textfile-collector metrics here after each run.
    #[arg(long, env = "NIXCAST_METRICS_FILE")]
    metrics_file: Option<PathBuf>,
    /// How long each health check may take.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "NIXCAST_HEALTH_TIMEOUT")]
    health_timeout: Duration,
    /// After a run, write a signed report to reports/HOST.json here: a directory, file://DIR,
    /// http(s)://… (by PUT) or s3://…; only when something changed or --report-interval passed.
    #[arg(long, env = "NIXCAST_REPORT_TO")]
    pub report_to: Option<String>,
    /// A quiet host reports at least this often.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, env = "NIXCAST_REPORT_INTERVAL")]
    report_interval: Duration,
    /// Seal reports to this key, `age1…` or `ssh-ed25519 …` (repeatable; one a line in the variable).
    #[arg(
        long = "report-recipient",
        env = "NIXCAST_REPORT_RECIPIENTS",
        value_delimiter = '\n'
    )]
    report_recipients: Vec<String>,
    /// When a new system's kernel, initrd or modules differ from the booted system's, install it
    /// with `boot` instead of `switch` and reboot (inside --reboot-window).
    #[arg(long, env = "NIXCAST_ALLOW_REBOOT")]
    allow_reboot: bool,
    /// Reboot only within this daily window of local time, HH:MM-HH:MM (may wrap midnight).
    #[arg(long, requires = "allow_reboot", value_parser = crate::window::Window::parse, env = "NIXCAST_REBOOT_WINDOW")]
    reboot_window: Option<crate::window::Window>,
    /// How to reboot, run with `sh -c`.
    #[arg(
        long,
        default_value = "systemctl reboot",
        env = "NIXCAST_REBOOT_COMMAND"
    )]
    reboot_command: String,
    /// The system the running kernel booted (for tests).
    #[arg(long, default_value = "/run/booted-system", hide = true)]
    booted_system: PathBuf,
    /// After a successful switch, delete system profile generations beyond the last N (never the
    /// current or booted one) and the store paths only they held.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), env = "NIXCAST_KEEP_GENERATIONS")]
    keep_generations: Option<u32>,
}

/// The agent's runtime, with few blocking threads (decoders, spools, Nix's
/// commands): glibc gives each thread a malloc arena of its own and keeps
/// what a decoder freed there (an xz window is 8 MiB), so every thread more
/// than the work needs is resident memory.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2 * cpus + 4)
        .build()
}

/// The run's settings from its arguments: keys read and checked, the
/// cache and report target opened, the real store and switch.
pub fn build_config(a: Args) -> Result<Config> {
    let trusted = trusted_keys(&a)?;
    nixcast_common::layout::check_host(&a.host).map_err(anyhow::Error::msg)?;
    let system = match a.system.clone() {
        Some(s) => s,
        None => std::fs::read_to_string("/run/current-system/system")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| format!("{}-linux", std::env::consts::ARCH)),
    };
    let secrets = secrets(&a)?;
    let http = source::HttpOptions {
        allow_insecure_http: a.allow_insecure_http,
        stall_timeout: a.stall_timeout,
        min_rate: a.min_rate,
        proxy: a.proxy.clone(),
        user_agent: concat!("nixcast-pull/", env!("CARGO_PKG_VERSION")),
    };
    let report = report_to(&a, &http, &secrets)?;
    let state = state::StateDir::new(&a.state_dir);
    let source = cache(&a, &http, &secrets)?;
    Ok(Config {
        policy: config::Policy {
            host: a.host,
            system,
            trusted,
            identity_files: a.identities,
            max_generation_jump: a.max_generation_jump,
        },
        ports: config::Ports {
            source,
            http,
            secrets: std::sync::Arc::new(secrets),
            store: std::sync::Arc::new(host::NixStore::new(state.children())),
            activator: std::sync::Arc::new(host::Switch::new(state.children())),
            state,
            profile: a.profile,
            booted_system: a.booted_system,
        },
        apply: config::Apply {
            action: a.action,
            jobs: a.jobs,
            dry_run: a.dry_run,
            wait: a.wait,
            run_timeout: a.run_timeout,
            health_checks: a.health_checks,
            health_timeout: a.health_timeout,
        },
        after: config::After {
            report,
            reboot: a.allow_reboot.then_some(config::RebootPolicy {
                window: a.reboot_window,
                command: a.reboot_command,
            }),
            keep_generations: a.keep_generations,
            metrics_file: a.metrics_file,
        },
    })
}

/// The cache, or the bundle.
fn cache(
    a: &Args,
    http: &source::HttpOptions,
    secrets: &nixcast_cache::Secrets,
) -> Result<source::Source> {
    Ok(match (&a.bundle, &a.cache) {
        (Some(b), _) => source::Source::bundle(b)?,
        (None, Some(c)) => source::Source::new(c, http, secrets)?,
        (None, None) => unreachable!("clap requires --cache or --bundle"),
    })
}

/// The trusted keys, given and read from files: pinned signing keys, or
/// root keys; one kind, at least one key.
fn trusted_keys(a: &Args) -> Result<config::Trusted> {
    let read = |given: &[String], files: &[PathBuf], flag: &str| -> Result<Vec<_>> {
        let mut out = Vec::new();
        for (i, k) in given.iter().filter(|k| !k.is_empty()).enumerate() {
            out.push(keys::public_key(k, &format!("{flag} #{}", i + 1))?);
        }
        out.extend(keys::read_public_keys(files)?);
        Ok(out)
    };
    let pinned = read(&a.trusted_keys, &a.trusted_key_files, "--trusted-key")?;
    let roots = read(&a.root_keys, &a.root_key_files, "--root-key")?;
    match (pinned.is_empty(), roots.is_empty()) {
        (false, true) => Ok(config::Trusted::Pinned(pinned)),
        (true, false) => {
            anyhow::ensure!(
                a.root_threshold >= 1 && a.root_threshold as usize <= roots.len(),
                "--root-threshold {} is not between 1 and the {} root keys given",
                a.root_threshold,
                roots.len()
            );
            Ok(config::Trusted::Roots {
                roots: nixcast_common::keylist::Trust {
                    threshold: a.root_threshold,
                    keys: roots,
                },
                current: Default::default(),
            })
        }
        (true, true) => anyhow::bail!(
            "no trusted key: pass --trusted-key or --trusted-key-file, or --root-key or \
             --root-key-file"
        ),
        (false, false) => anyhow::bail!(
            "give either pinned keys (--trusted-key) or root keys (--root-key), not both"
        ),
    }
}

/// What opens private caches: `--netrc-file`, `--environment-file`.
fn secrets(a: &Args) -> Result<nixcast_cache::Secrets> {
    let mut secrets = nixcast_cache::Secrets::default();
    if let Some(f) = &a.netrc_file {
        secrets.netrc = Some(nixcast_cache::netrc::Netrc::read(f)?);
    }
    if let Some(f) = &a.environment_file {
        secrets.aws = nixcast_cache::secrets::read_env_file(f)?;
    }
    Ok(secrets)
}

/// `--report-to` and its settings, the target opened.
fn report_to(
    a: &Args,
    http: &source::HttpOptions,
    secrets: &nixcast_cache::Secrets,
) -> Result<Option<config::ReportTo>> {
    Ok(match &a.report_to {
        None => None,
        Some(spec) => {
            let mut recipients = Vec::new();
            for (i, r) in a
                .report_recipients
                .iter()
                .filter(|r| !r.is_empty())
                .enumerate()
            {
                recipients.push(
                    r.trim()
                        .parse::<nixcast_common::seal::Recipient>()
                        .with_context(|| format!("--report-recipient #{}", i + 1))?,
                );
            }
            Some(config::ReportTo {
                target: source::Source::new_for_writes(spec, http, secrets)
                    .context("--report-to")?,
                interval: a.report_interval,
                recipients,
            })
        }
    })
}
