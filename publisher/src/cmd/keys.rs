//! `nixcast keys sign`, `keys show` and `keys resign`'s command lines.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nixcast_cli::keys;
use nixcast_common::keylist::SigningKey;
use nixcast_common::pointer::Timestamp;
use nixcast_common::PublicKey;

use super::args::{load_recipients, CacheArg, IdentityArgs, SigningKeyArg, TrustArgs};
use crate::keys::SignOptions;
use crate::target::Target;

#[derive(clap::Subcommand)]
pub enum Args {
    /// Sign the next key list with root keys: the signing keys hosts trust, and the roots.
    Sign(SignArgs),
    /// Show the cache's key list: version, expiry, roots and signing keys.
    Show(ShowArgs),
    /// Sign what hosts read now again with a key of the list (after a rotation).
    Resign(ResignArgs),
}

#[derive(clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    cache: CacheArg,
    /// A root key that signs the list (repeatable: as many as the threshold asks).
    #[arg(long = "root-secret-key-file", required = true)]
    root_secret_key_files: Vec<PathBuf>,
    /// A key that may sign pointers and narinfos (repeatable); a key left
    /// out is revoked once hosts see the list.
    #[arg(long = "signing-key-file", required = true)]
    signing_key_files: Vec<PathBuf>,
    /// Limit a signing key to some hosts: `NAME=HOST,HOST` (repeatable).
    #[arg(long = "signing-key-hosts", value_name = "NAME=HOSTS")]
    signing_key_hosts: Vec<String>,
    /// The roots from this list on (repeatable; default: the current ones).
    /// Changing them needs the threshold of the old roots and of the new.
    #[arg(long = "root-key-file")]
    root_key_files: Vec<PathBuf>,
    /// How many roots must sign the next list (default: as now, 1 at first).
    #[arg(long)]
    threshold: Option<u32>,
    /// How long hosts accept the list ("365d").
    #[arg(long, default_value = "365d", value_parser = parse_lifetime)]
    expires_in: Duration,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    cache: CacheArg,
}

#[derive(clap::Args)]
pub struct ResignArgs {
    #[command(flatten)]
    cache: CacheArg,
    /// The key that signs now; the key list must name it.
    #[command(flatten)]
    key: SigningKeyArg,
    /// A key being retired (repeatable): what it signed is trusted and
    /// signed again, and its signatures are dropped once the list no longer names it.
    #[command(flatten)]
    retired: TrustArgs,
    #[command(flatten)]
    identities: IdentityArgs,
    /// Sealed hosts' recipients, to seal their manifests again.
    #[arg(long)]
    recipients_file: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    match a {
        Args::Sign(a) => sign(a),
        Args::Show(a) => show(a),
        Args::Resign(a) => resign(a),
    }
}

fn resign(a: ResignArgs) -> Result<()> {
    let target = Target::open_existing(&a.cache.cache)?;
    let recipients = match &a.recipients_file {
        Some(f) => load_recipients(f)?,
        None => Default::default(),
    };
    let opts = crate::resign::Options {
        key: a.key.read()?,
        retired: a.retired.read()?,
        identities: a.identities.read()?,
        sealing: crate::sealing::Sealing::new(recipients),
    };
    for d in crate::resign::resign(&target, &opts)? {
        println!("{d}");
    }
    Ok(())
}

fn sign(a: SignArgs) -> Result<()> {
    let target = Target::open(&a.cache.cache)?;
    let root_secrets = a
        .root_secret_key_files
        .iter()
        .map(|f| keys::read_secret_key(f))
        .collect::<Result<Vec<_>>>()?;
    let signing = signing_keys(&a.signing_key_files, &a.signing_key_hosts)?;
    let roots = match a.root_key_files.is_empty() {
        true => None,
        false => Some(keys::read_public_keys(&a.root_key_files)?),
    };
    let o = SignOptions {
        root_secrets,
        signing,
        roots,
        threshold: a.threshold,
        expires_in: a.expires_in,
    };
    let list = crate::keys::sign(&target, o, Timestamp::now())?;
    let (text, warning) = crate::keys::show(&list, Timestamp::now());
    print!("{text}");
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    Ok(())
}

fn show(a: ShowArgs) -> Result<()> {
    let target = Target::open_existing(&a.cache.cache)?;
    let Some(list) = crate::keys::current(&target)? else {
        bail!(
            "{} has no key list; sign one with `nixcast keys sign`",
            target.describe()
        );
    };
    let (text, warning) = crate::keys::show(&list, Timestamp::now());
    print!("{text}");
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// The signing keys, each limited to the hosts `--signing-key-hosts` names for it.
fn signing_keys(files: &[PathBuf], limits: &[String]) -> Result<Vec<SigningKey>> {
    let keys: Vec<PublicKey> = keys::read_public_keys(files)?;
    let mut out: Vec<SigningKey> = keys
        .into_iter()
        .map(|key| SigningKey { key, hosts: vec![] })
        .collect();
    for l in limits {
        let (name, hosts) = l
            .split_once('=')
            .with_context(|| format!("--signing-key-hosts {l:?}: use NAME=HOST,HOST"))?;
        let Some(k) = out.iter_mut().find(|k| k.key.name() == name) else {
            bail!("--signing-key-hosts names {name:?}, which no --signing-key-file holds");
        };
        k.hosts = hosts.split(',').map(str::to_owned).collect();
    }
    Ok(out)
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{e}: use a duration such as 365d"))?;
    if d.as_secs() < 60 || d > Duration::from_secs(10 * 365 * 86_400) {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1m to 10 years"
        ));
    }
    Ok(d)
}
