//! `nixcast invite`: what a fresh machine with nothing but Nix needs to
//! join the fleet, as one shell command (or a cloud-init user-data file).
//!
//! The agent is public software: its closure is published plain (NARs,
//! narinfos, manifest, through `publish::publish_closure`), and a pointer
//! to it signed with the fleet key is kept as `agents/HOST.json`, so that
//! `gc` keeps the closure while the invitation is open (`enroll accept`
//! removes it). The command has Nix realise the agent from the cache with
//! the fleet's key pinned (`nix-store -r … --option substituters URL
//! --option trusted-public-keys KEY`): Nix checks every narinfo's signature
//! before anything enters the store. It then runs `nixcast-pull enroll`
//! with a single-use token for the host (`nixcast_common::enroll`).

use std::time::Duration;

use anyhow::{ensure, Result};
use nixcast_common::enroll::Token;
use nixcast_common::layout::Key;
use nixcast_common::pointer::{Pointer, Timestamp};
use nixcast_common::{PublicKey, StorePath};

use crate::nix::Store;
use crate::publish::{self, Options};
use crate::target::Target;

/// What to invite, and how the command is written.
pub struct Invite {
    pub host: String,
    /// Where the host reads the cache.
    pub url: String,
    /// How long the token holds.
    pub lifetime: Duration,
    /// The agent's package: a store path holding `bin/nixcast-pull`.
    pub agent: StorePath,
    /// More arguments for `nixcast-pull enroll`, given as they are.
    pub agent_args: Vec<String>,
    /// The fleet's root keys and how many must sign (`--root-key`): the
    /// host then trusts the key list they signed instead of the pinned key.
    pub roots: Option<(Vec<PublicKey>, u32)>,
    pub cloud_init: bool,
}

/// What `invite` made: the command (or user-data) and what to tell about it.
pub struct Invitation {
    pub text: String,
    pub token: Token,
    pub new_paths: usize,
    pub bytes_written: u64,
}

pub fn invite(
    store: &dyn Store,
    target: &Target,
    inv: &Invite,
    opts: &Options,
) -> Result<Invitation> {
    crate::cache::check_host(&inv.host)?;
    let bin = store.files(&inv.agent).join("bin/nixcast-pull");
    ensure!(
        bin.is_file(),
        "{} holds no bin/nixcast-pull: give the agent's package with --agent-path",
        inv.agent
    );
    let (manifest, new_paths, bytes_written) =
        publish::publish_closure(store, target, &inv.agent, opts)?;
    let token = Token::new(&inv.host, &inv.url, inv.lifetime);
    let pointer = Pointer {
        host: inv.host.clone(),
        system: opts
            .system
            .clone()
            .unwrap_or_else(|| format!("{}-linux", std::env::consts::ARCH)),
        generation: 1,
        store_path: Some(inv.agent.clone()),
        manifest,
        issued_at: Timestamp::now(),
        expires_at: Some(token.expires_at),
    };
    target.put(
        &Key::Agent(inv.host.clone()).to_string(),
        &pointer.sign(&opts.key),
    )?;
    target.sync()?;
    let command = command(inv, &opts.key.public().to_string(), &token.sign(&opts.key));
    let text = match inv.cloud_init {
        false => format!("{command}\n"),
        true => cloud_init(&command),
    };
    Ok(Invitation {
        text,
        token,
        new_paths,
        bytes_written,
    })
}

/// The one command a new machine runs as root.
fn command(inv: &Invite, fleet_key: &str, token: &str) -> String {
    let agent = inv.agent.to_string();
    let mut enroll = vec![
        format!("{agent}/bin/nixcast-pull"),
        "enroll".into(),
        "--cache".into(),
        inv.url.clone(),
        "--host".into(),
        inv.host.clone(),
        "--token".into(),
        token.into(),
    ];
    match &inv.roots {
        None => enroll.extend(["--trusted-key".into(), fleet_key.into()]),
        Some((roots, threshold)) => {
            for r in roots {
                enroll.extend(["--root-key".into(), r.to_string()]);
            }
            enroll.extend(["--root-threshold".into(), threshold.to_string()]);
        }
    }
    if inv.url.starts_with("http://") {
        enroll.push("--allow-insecure-http".into());
    }
    enroll.extend(inv.agent_args.iter().cloned());
    let realise = [
        "nix-store",
        "-r",
        &agent,
        "--option",
        "substituters",
        &inv.url,
        "--option",
        "trusted-public-keys",
        fleet_key,
    ];
    let words = |w: &mut dyn Iterator<Item = &str>| w.map(quote).collect::<Vec<_>>().join(" ");
    format!(
        "{} >/dev/null && {}",
        words(&mut realise.into_iter()),
        words(&mut enroll.iter().map(String::as_str))
    )
}

/// A word for `sh`: as it is when it needs no quoting, else in single quotes.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./:=+@,".contains(&c));
    match plain {
        true => word.to_owned(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

/// Cloud-init user data that runs `command` once, at first boot.
fn cloud_init(command: &str) -> String {
    format!(
        "#cloud-config\n# Joins the nixcast fleet: realises the agent through Nix, asks to be \
         enrolled, waits for its first generation.\nruncmd:\n  - |\n    {command}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_sh() {
        assert_eq!(quote("fleet-1:abc+/="), "fleet-1:abc+/=");
        assert_eq!(
            quote("s3://b/p?region=x&endpoint=y"),
            "'s3://b/p?region=x&endpoint=y'"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn user_data_runs_the_command_once_at_first_boot() {
        let command =
            "nix-store -r /nix/store/x && /nix/store/x/bin/nixcast-pull enroll --url 'a&b'";
        let text = cloud_init(command);
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        // One runcmd entry, a literal block: sh gets the command as it is.
        let (_, entry) = text.split_once("runcmd:\n  - |\n").unwrap();
        assert_eq!(entry, format!("    {command}\n"));
    }
}
