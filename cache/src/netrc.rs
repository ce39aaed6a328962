//! Credentials for HTTP caches from a netrc file, read the way Nix reads its
//! `netrc-file` (Nix hands the file to curl, so this follows curl's parser):
//!
//! - tokens are separated by spaces, tabs and newlines; a token starting with
//!   `"` runs to the next unescaped `"` (`\n`, `\r`, `\t` and `\X` escapes);
//!   `#` at the start of a token comments out the rest of the line;
//! - `machine NAME` starts an entry for the host NAME (compared without case
//!   and without port), `default` an entry for any host; `login` and
//!   `password` take the next token; `macdef` skips up to an empty line;
//! - the first entry for the host that has a password wins (curl stops there);
//!   an entry with a login and no password gives an empty password.
//!
//! Nothing here ever prints a login or a password: errors name the line only,
//! and `Debug` of [`Credentials`] hides the password.

use std::path::Path;

use thiserror::Error;
use zeroize::Zeroizing;

/// Far above any real file of this kind.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum NetrcError {
    #[error("cannot read the netrc file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("netrc file {path}, line {line}: {what}")]
    Syntax {
        path: String,
        line: usize,
        what: &'static str,
    },
}

/// A login and password for one host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub login: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .field("password", &"<hidden>")
            .finish()
    }
}

#[derive(Default)]
struct Entry {
    /// `None` for `default`.
    machine: Option<String>,
    login: Option<String>,
    password: Option<Zeroizing<String>>,
}

/// The entries of a netrc file, in file order.
#[derive(Default)]
pub struct Netrc {
    entries: Vec<Entry>,
}

impl Netrc {
    pub fn read(path: &Path) -> Result<Self, NetrcError> {
        let text = Zeroizing::new(nixcast_cli::fs::read_small_text(path, MAX_FILE).map_err(
            |source| NetrcError::Read {
                path: path.display().to_string(),
                source,
            },
        )?);
        Self::parse(&text).map_err(|(line, what)| NetrcError::Syntax {
            path: path.display().to_string(),
            line,
            what,
        })
    }

    /// Parses netrc text; an error is the line number and what is wrong.
    pub fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        enum Want {
            Keyword,
            Machine,
            Login,
            Password,
            /// The value of a keyword curl knows but we do not use (`account`).
            Skip,
        }
        let mut netrc = Netrc::default();
        let mut want = Want::Keyword;
        let mut in_macro = false;
        let mut last_line = 0;
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            last_line = line_no;
            if in_macro {
                in_macro = !line.trim_end_matches('\r').is_empty();
                continue;
            }
            for token in tokens(line).map_err(|what| (line_no, what))? {
                let entry = netrc.entries.last_mut();
                match want {
                    Want::Machine => {
                        netrc.entries.push(Entry {
                            machine: Some(token.to_string()),
                            ..Entry::default()
                        });
                        want = Want::Keyword;
                    }
                    Want::Login => {
                        entry.expect("login follows an entry").login = Some(token.to_string());
                        want = Want::Keyword;
                    }
                    Want::Password => {
                        entry.expect("password follows an entry").password = Some(token);
                        want = Want::Keyword;
                    }
                    Want::Skip => want = Want::Keyword,
                    Want::Keyword => {
                        let in_entry = entry.is_some();
                        match token.to_ascii_lowercase().as_str() {
                            "machine" => want = Want::Machine,
                            "default" => netrc.entries.push(Entry::default()),
                            "macdef" => {
                                // The macro body starts on the next line.
                                in_macro = true;
                                break;
                            }
                            "login" if in_entry => want = Want::Login,
                            "password" if in_entry => want = Want::Password,
                            "account" if in_entry => want = Want::Skip,
                            "login" | "password" | "account" => {
                                return Err((line_no, "a login or password before any machine"))
                            }
                            _ => return Err((line_no, "unknown keyword")),
                        }
                    }
                }
            }
        }
        match want {
            Want::Keyword => Ok(netrc),
            _ => Err((last_line, "a keyword without its value at the end")),
        }
    }

    /// The credentials for `host`, if an entry names it (or is `default`).
    pub fn lookup(&self, host: &str) -> Option<Credentials> {
        let matching = self.entries.iter().filter(|e| {
            e.machine
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(host))
        });
        let mut login_only = None;
        for e in matching {
            match (&e.login, &e.password) {
                (Some(login), Some(password)) => {
                    return Some(Credentials {
                        login: login.clone(),
                        password: password.clone(),
                    })
                }
                (Some(login), None) if login_only.is_none() => login_only = Some(login),
                _ => {}
            }
        }
        login_only.map(|login| Credentials {
            login: login.clone(),
            password: Zeroizing::new(String::new()),
        })
    }
}

/// The tokens of one line, quotes and escapes resolved, up to a `#` comment.
fn tokens(line: &str) -> Result<Vec<Zeroizing<String>>, &'static str> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| matches!(c, ' ' | '\t' | '\r')).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(out);
        };
        if first == '#' {
            return Ok(out);
        }
        let mut token = Zeroizing::new(String::new());
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted string without its closing quote"),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => token.push('\n'),
                        Some('r') => token.push('\r'),
                        Some('t') => token.push('\t'),
                        Some(c) => token.push(c),
                        None => return Err("a quoted string without its closing quote"),
                    },
                    Some(c) => token.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !matches!(c, ' ' | '\t' | '\r')) {
                token.push(c);
            }
        }
        out.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(login: &str, password: &str) -> Option<Credentials> {
        Some(Credentials {
            login: login.into(),
            password: Zeroizing::new(password.into()),
        })
    }

    #[test]
    fn machines_match_by_host_without_case_and_default_matches_the_rest() {
        let n = Netrc::parse(
            "machine cache.example.org login alice password s3cret\n\
             # a comment line\n\
             machine other.example.org\n  login bob\n  password \"two words\" # trailing\n\
             default login anon password anon\n",
        )
        .unwrap();
        assert_eq!(n.lookup("cache.example.org"), creds("alice", "s3cret"));
        assert_eq!(n.lookup("CACHE.Example.ORG"), creds("alice", "s3cret"));
        assert_eq!(n.lookup("other.example.org"), creds("bob", "two words"));
        assert_eq!(n.lookup("elsewhere.org"), creds("anon", "anon"));
    }

    #[test]
    fn no_entry_no_credentials() {
        let n = Netrc::parse("machine a.org login x password y\n").unwrap();
        assert_eq!(n.lookup("b.org"), None);
        assert_eq!(n.lookup("a.org.evil.com"), None);
        assert_eq!(Netrc::parse("").unwrap().lookup("a.org"), None);
    }

    #[test]
    fn the_first_entry_with_a_password_wins() {
        let n = Netrc::parse(
            "machine a.org login first\n\
             machine a.org login second password p2\n\
             machine a.org login third password p3\n",
        )
        .unwrap();
        assert_eq!(n.lookup("a.org"), creds("second", "p2"));
        let n = Netrc::parse("machine a.org login only\n").unwrap();
        assert_eq!(n.lookup("a.org"), creds("only", ""));
    }

    #[test]
    fn quotes_escapes_macros_and_accounts() {
        let n = Netrc::parse(
            "macdef init\ncd /pub\nmachine fake.org login no password no\n\n\
             machine a.org account acct login \"u\\\"s\" password \"p\\tq\\\\\"\n",
        )
        .unwrap();
        assert_eq!(n.lookup("fake.org"), None, "inside the macro body");
        assert_eq!(n.lookup("a.org"), creds("u\"s", "p\tq\\"));
    }

    #[test]
    fn malformed_files_are_refused_naming_the_line_only() {
        for (text, line) in [
            ("machine a.org login x password \"unterminated\n", 1),
            ("machine a.org\nlogin x\npassword\n", 3),
            ("login x password y\n", 1),
            ("machine a.org frobnicate y\n", 1),
            ("machine\n", 1),
        ] {
            let err = Netrc::parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!(err.0, line, "{text:?}: {}", err.1);
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = creds("alice", "hunter2").unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
