//! The subcommands of `nixcast-pull`, one module each: `run`, `enroll`,
//! `rollback`, `status`; `args` holds the flags `run` and `enroll` share.
//! `main.rs` parses the command line, sets up logging and hands each its
//! arguments; a command returns how it failed, and main tells it once.

pub mod args;
pub mod enroll;
pub mod rollback;
pub mod run;
pub mod status;

/// How a command failed: its exit code, and what to tell.
pub struct Failure {
    pub code: u8,
    pub message: String,
}
