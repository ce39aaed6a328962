//! `nixcast serve`'s command line: the listener and the limits, then
//! `serve::run` until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::args::{load_recipients, parse_timeout};
use crate::serve::{self, Limits, Reports};

#[derive(clap::Args)]
pub struct Args {
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
    #[arg(long, default_value_t = Limits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_connections: usize,
    /// Files sent at once; further requests for files wait (lowered to what the file descriptor
    /// limit allows beside the connections).
    #[arg(long, default_value_t = Limits::default().max_open_files, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_open_files: usize,
    /// How long a client has to send a request's headers (also the idle time allowed between requests).
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    header_timeout: Duration,
    /// How long a response may wait for the client to take more of it.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    send_timeout: Duration,
    /// Take `PUT /reports/HOST.json` when signed by a key --recipients-file lists for HOST.
    #[arg(long, requires = "recipients_file")]
    accept_reports: bool,
    /// Lists each host's ssh-ed25519 keys (`HOST ssh-ed25519 BASE64`), which sign its reports
    /// (read again when it changes).
    #[arg(long, requires = "accept_reports")]
    recipients_file: Option<PathBuf>,
    /// With --accept-reports: also take `PUT /enroll/HOST.json` from a host invited with a token
    /// this fleet key signed (`nixcast invite`; repeatable).
    #[arg(long = "trusted-key-file", requires = "accept_reports")]
    trusted_key_files: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.or(a.dir_positional).expect("clap requires one");
    let reports = match (a.accept_reports, &a.recipients_file) {
        (true, Some(f)) => {
            let mut r = Reports::new(load_recipients(f)?, a.header_timeout).reloading(f.clone());
            r.enroll_keys = nixcast_cli::keys::read_public_keys(&a.trusted_key_files)?;
            Some(r)
        }
        _ => None,
    };
    let limits = Limits {
        max_connections: a.max_connections,
        max_open_files: a.max_open_files,
        header_timeout: a.header_timeout,
        send_timeout: a.send_timeout,
    };
    let listen = a.listen;
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
