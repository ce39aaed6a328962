//! The subcommands' command lines, one module each: a clap `Args` struct
//! and a `run` that turns it into the settings of the module doing the
//! work (`publish`, `gc`, `promote`, …) and calls it. Nothing here
//! decides what to write; `args` holds the flags several commands share.

pub mod args;
pub mod bundle;
pub mod diff;
pub mod enroll;
pub mod gc;
pub mod hosts;
pub mod invite;
pub mod keygen;
pub mod keys;
pub mod promote;
pub mod publish;
pub mod retire;
pub mod serve;
