//! What nixcast's two programs, `nixcast` (the publisher) and `nixcast-pull`
//! (the agent), do alike with the operating system and their command line,
//! so that each is written once:
//!
//! - `fs`: a file that appears whole (temporary name, mode, fsync, rename,
//!   fsync of the directory);
//! - `command`: a Nix command run to its end, its output captured;
//! - `keys`: public keys (a secret key given by mistake is refused and not
//!   echoed) and sealing identities read from files;
//! - `logging`: `--log-format` and `NIXCAST_LOG`, and the one way an
//!   error is told;
//! - `text`: text from outside escaped for a terminal or a log;
//! - `fmt`: sizes for people (`4.0 MiB`);
//! - `docs`: shell completions and man pages from a program's clap definition.
//!
//! `nixcast-common` stays pure (formats only); this crate is where the
//! binaries' shared I/O lives. Neither binary depends on the other.

pub mod command;
pub mod docs;
pub mod fmt;
pub mod fs;
pub mod keys;
pub mod logging;
pub mod text;
