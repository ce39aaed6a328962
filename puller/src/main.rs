//! `nixcast-pull`: the agent on each host. Reads its signed pointer, fetches
//! and verifies what is missing, imports it through Nix, sets the system
//! profile and switches.
//!
//! Exit codes: 0 applied or nothing to do, 1 local error, 2 usage,
//! 3 refused (verification failed), 4 fetch failed, 5 activation failed,
//! 6 another run holds the lock.

mod activate;
mod fetch;
mod netrc;
mod pipeline;
mod run;
mod schedule;
mod secrets;
mod source;
mod state;
mod store;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nixcast_common::PublicKey;

#[derive(Parser)]
#[command(
    name = "nixcast-pull",
    version,
    about = "Pull and switch to this host's signed NixOS system"
)]
struct Cli {
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "NIXCAST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the pointer once and apply it if it changed.
    Run(Box<RunArgs>),
    /// Go back to the previous system generation by hand; the generation
    /// left is recorded as bad so that later runs do not apply it again.
    Rollback {
        #[arg(
            long,
            default_value = "/nix/var/nix/profiles/system",
            env = "NIXCAST_PROFILE"
        )]
        profile: PathBuf,
        #[arg(long, env = "NIXCAST_STATE_DIR", default_value = "/var/lib/nixcast")]
        state_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = activate::Action::Switch, env = "NIXCAST_ACTION")]
        action: activate::Action,
    },
    /// Show what the agent last did.
    Status {
        #[arg(long, env = "NIXCAST_STATE_DIR", default_value = "/var/lib/nixcast")]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The cache: https://…, s3://BUCKET/PREFIX?endpoint=…&region=…, file://DIR or a directory
    /// (http:// needs --allow-insecure-http).
    #[arg(long, env = "NIXCAST_CACHE", required_unless_present = "bundle")]
    cache: Option<String>,
    /// Apply a file made by `nixcast bundle` instead of reading a cache: no network.
    #[arg(long, conflicts_with = "cache")]
    bundle: Option<PathBuf>,
    /// This host's name: its pointer is hosts/HOST.json.
    #[arg(long, env = "NIXCAST_HOST")]
    host: String,
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
    /// What opens a sealed host's objects (repeatable): an unencrypted OpenSSH ed25519 key or an
    /// age identity file [default when the pointer is sealed: /etc/ssh/ssh_host_ed25519_key].
    #[arg(long = "identity", env = "NIXCAST_IDENTITIES", value_delimiter = ' ')]
    identities: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = activate::Action::Switch, env = "NIXCAST_ACTION")]
    action: activate::Action,
    #[arg(
        long,
        default_value = "/nix/var/nix/profiles/system",
        env = "NIXCAST_PROFILE"
    )]
    profile: PathBuf,
    #[arg(long, default_value = "/var/lib/nixcast", env = "NIXCAST_STATE_DIR")]
    state_dir: PathBuf,
    /// Requests in flight at once (NARs are decoded one per CPU at a time, large ones as they arrive).
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
    schedule: Option<String>,
    /// With --schedule: a random delay of up to this much before each run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "NIXCAST_JITTER")]
    jitter: Duration,
    /// Write Prometheus textfile-collector metrics here after each run.
    #[arg(long, env = "NIXCAST_METRICS_FILE")]
    metrics_file: Option<PathBuf>,
    /// How long each health check may take.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "NIXCAST_HEALTH_TIMEOUT")]
    health_timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Cmd::Status { state_dir, json } => match status(&state_dir, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Rollback {
            profile,
            state_dir,
            action,
        } => match run::rollback_by_hand(&profile, &state::StateDir::new(&state_dir), action) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Cmd::Run(args) => {
            let (schedule, jitter) = (args.schedule.clone(), args.jitter);
            let code = match build_config(*args) {
                Ok(cfg) => match schedule {
                    None => run_once(&cfg),
                    Some(expr) => run_scheduled(&cfg, &expr, jitter),
                },
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            };
            ExitCode::from(code)
        }
    }
}

fn run_once(cfg: &run::Config) -> u8 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run::run(cfg)) {
        Ok(outcome) => {
            tracing::info!(?outcome, "done");
            0
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn run_scheduled(cfg: &run::Config, expr: &str, jitter: Duration) -> u8 {
    let result = schedule::parse(expr).and_then(|sched| {
        tokio::runtime::Runtime::new()?.block_on(schedule::run_forever(cfg, &sched, jitter))
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn build_config(a: RunArgs) -> Result<run::Config> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut trusted = Vec::new();
    for k in a.trusted_keys.iter().filter(|k| !k.is_empty()) {
        trusted.push(PublicKey::parse(k).with_context(|| format!("bad --trusted-key {k:?}"))?);
    }
    for f in &a.trusted_key_files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        trusted
            .push(PublicKey::parse(&text).with_context(|| format!("bad key in {}", f.display()))?);
    }
    anyhow::ensure!(
        !trusted.is_empty(),
        "no trusted key: pass --trusted-key or --trusted-key-file"
    );
    anyhow::ensure!(
        !a.host.is_empty()
            && a.host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            && !a.host.starts_with('.'),
        "invalid host name {:?}",
        a.host
    );
    let system = match a.system {
        Some(s) => s,
        None => std::fs::read_to_string("/run/current-system/system")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| format!("{}-linux", std::env::consts::ARCH)),
    };
    let mut secrets = secrets::Secrets::default();
    if let Some(f) = &a.netrc_file {
        secrets.netrc = Some(netrc::Netrc::read(f)?);
    }
    if let Some(f) = &a.environment_file {
        secrets.aws = secrets::read_env_file(f)?;
    }
    Ok(run::Config {
        source: match (&a.bundle, &a.cache) {
            (Some(b), _) => source::Source::bundle(b)?,
            (None, Some(c)) => {
                source::Source::new(c, a.allow_insecure_http, a.stall_timeout, &secrets)?
            }
            (None, None) => unreachable!("clap requires --cache or --bundle"),
        },
        host: a.host,
        system,
        trusted,
        identity_files: a.identities,
        action: a.action,
        profile: a.profile,
        state: state::StateDir::new(&a.state_dir),
        jobs: a.jobs,
        dry_run: a.dry_run,
        wait: a.wait,
        health_checks: a.health_checks,
        health_timeout: a.health_timeout,
        metrics_file: a.metrics_file,
        allow_insecure_http: a.allow_insecure_http,
        stall_timeout: a.stall_timeout,
        secrets: std::sync::Arc::new(secrets),
    })
}

fn status(dir: &std::path::Path, json: bool) -> Result<()> {
    let st = state::StateDir::new(dir).load()?;
    let link = |p: &str| {
        std::fs::canonicalize(p)
            .ok()
            .map(|p| p.display().to_string())
    };
    let (current, booted) = (link("/run/current-system"), link("/run/booted-system"));
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["currentSystem"] = current.into();
        v["bootedSystem"] = booted.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let show = |o: Option<String>| o.unwrap_or_else(|| "-".to_owned());
    println!(
        "applied generation: {}",
        show(st.applied_generation.map(|g| g.to_string()))
    );
    println!(
        "applied store path: {}",
        show(st.applied_store_path.map(|p| p.to_string()))
    );
    println!("current system:     {}", show(current));
    println!("booted system:      {}", show(booted));
    println!("highest accepted:   {}", st.highest_generation);
    println!(
        "last check:         {}",
        show(st.last_check.map(|t| t.to_string()))
    );
    println!(
        "last success:       {}",
        show(st.last_success.map(|t| t.to_string()))
    );
    println!(
        "last result:        {}",
        show(st.last_result.map(|r| r.as_str().to_owned()))
    );
    println!("last error:         {}", show(st.last_error));
    if !st.bad_generations.is_empty() {
        println!("bad generations:    {:?}", st.bad_generations);
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A byte progress bar on a terminal, nothing otherwise.
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "fetching [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("a valid template"),
    );
    bar
}
