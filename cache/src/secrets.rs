//! What opens a private cache: netrc entries for HTTP (`--netrc-file`) and
//! `AWS_*` settings for buckets (`--environment-file`, over the process's own
//! environment). The NixOS module hands both over as systemd credentials, so
//! neither passes through the Nix store or the unit's environment.
//!
//! No value read here is ever printed: errors name the file, the line and at
//! most the key.

use std::path::Path;

use thiserror::Error;
use zeroize::Zeroizing;

/// Far above any real file of this kind.
const MAX_FILE: u64 = 1 << 20;

use crate::netrc::Netrc;

#[derive(Debug, Error)]
pub enum EnvFileError {
    #[error("cannot read the environment file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("environment file {path}, line {line}: {what}")]
    Syntax {
        path: String,
        line: usize,
        what: String,
    },
}

/// `AWS_*` variables as object_store's configuration keys (lowercase), with their values.
pub type AwsSettings = Vec<(String, Zeroizing<String>)>;

#[derive(Default)]
pub struct Secrets {
    pub netrc: Option<Netrc>,
    pub aws: AwsSettings,
}

/// Reads `KEY=VALUE` lines (the common part of systemd's `EnvironmentFile=`
/// and shell syntax): blank lines and `#` comments are skipped, an optional
/// `export ` prefix and one pair of surrounding quotes are dropped. Only
/// `AWS_*` keys are accepted: this file configures buckets, nothing else.
pub fn read_env_file(path: &Path) -> Result<AwsSettings, EnvFileError> {
    let text = Zeroizing::new(nixcast_cli::fs::read_small_text(path, MAX_FILE).map_err(
        |source| EnvFileError::Read {
            path: path.display().to_string(),
            source,
        },
    )?);
    parse_env(&text).map_err(|(line, what)| EnvFileError::Syntax {
        path: path.display().to_string(),
        line,
        what,
    })
}

fn parse_env(text: &str) -> Result<AwsSettings, (usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((n + 1, "expected KEY=VALUE".to_owned()));
        };
        let key = key.trim();
        let name = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !name {
            // Not a name: it may be a mistyped line holding a secret.
            return Err((n + 1, "expected KEY=VALUE".to_owned()));
        }
        if !key.starts_with("AWS_") {
            return Err((n + 1, format!("{key} is not an AWS_* variable")));
        }
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|&(a, b)| value.strip_prefix(a)?.strip_suffix(b))
            .unwrap_or(value);
        out.push((key.to_ascii_lowercase(), Zeroizing::new(value.to_owned())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_variables_with_comments_quotes_and_export() {
        let got = parse_env(
            "# bucket credentials\n\nAWS_ACCESS_KEY_ID=AKIA123\n\
             export AWS_SECRET_ACCESS_KEY=\"s3cr=t\"\nAWS_REGION='eu-west-1'\n",
        )
        .unwrap();
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("aws_access_key_id", "AKIA123"),
                ("aws_secret_access_key", "s3cr=t"),
                ("aws_region", "eu-west-1"),
            ]
        );
    }

    #[test]
    fn other_keys_and_malformed_lines_are_refused_without_the_value() {
        let err = parse_env("AWS_ACCESS_KEY_ID=x\nPATH=/evil\n").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(
            err.1.contains("PATH") && !err.1.contains("evil"),
            "{}",
            err.1
        );
        for line in ["AWS_SECRET_ACCESS_KEY hunter2\n", "AWS_SECRET:hunter2=x\n"] {
            let err = parse_env(line).unwrap_err();
            assert_eq!(err.0, 1);
            assert!(!err.1.contains("hunter2"), "{}", err.1);
        }
    }
}
