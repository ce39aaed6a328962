//! Flags and values several subcommands take, parsed one way.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use nixcast_common::manifest::Compression;
use nixcast_common::seal::Recipients;

/// A pointer's lifetime: `None` for "never".
#[derive(Clone, Copy)]
pub struct Expiry(pub Option<Duration>);

pub fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s == "never" {
        return Ok(Expiry(None));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: use a duration such as 30d or 12h, or never"))?;
    // Checked here, before any NAR is written, rather than when the pointer
    // is dated at the end.
    if d.as_secs() < 1 || d > crate::publish::MAX_EXPIRES_IN {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1s to {}, or never",
            humantime::format_duration(crate::publish::MAX_EXPIRES_IN)
        ));
    }
    Ok(Expiry(Some(d)))
}

pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}: use a duration such as 10s"))?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!(
            "{s:?} is out of range: use a duration from 1ms to 1d"
        ));
    }
    Ok(d)
}

pub fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

/// A recipients file (`HOST ssh-ed25519 BASE64`, `HOST age1…`).
pub fn load_recipients(file: &Path) -> Result<Recipients> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Recipients::parse(&text).with_context(|| format!("recipients file {}", file.display()))
}
